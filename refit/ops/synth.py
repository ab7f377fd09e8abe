"""A synthetic feedback stream for the demo, the tests and the benchmarks.

Reviews of items in categories, with ratings, behaviour features and timestamps. The words a
review uses follow its rating, as in real reviews, so a model can learn satisfaction from text.
``shifted=True`` gives the later regime: a new category with its own vocabulary, a new slang,
longer texts and a lower rating mix.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

CATEGORIES = {
    "electronics": ["headphones", "charger", "speaker", "tablet", "keyboard", "camera"],
    "books": ["novel", "cookbook", "biography", "paperback", "thriller", "atlas"],
    "kitchen": ["kettle", "blender", "pan", "knife set", "toaster", "mug"],
    "apparel": ["jacket", "sneakers", "scarf", "hoodie", "jeans", "backpack"],
}
NEW_CATEGORY = {"garden": ["hose", "planter", "lawn mower", "trellis", "seed kit", "pruner"]}

SENTIMENT = {
    1: ["terrible", "broke after a day", "complete waste of money", "awful", "returned it", "never again"],
    2: ["disappointing", "cheaply made", "not worth the price", "flimsy", "stopped working", "meh quality"],
    3: ["okay", "average", "does the job", "nothing special", "decent enough", "fine for now"],
    4: ["good", "solid", "works well", "happy with it", "nice quality", "would recommend"],
    5: ["excellent", "love it", "perfect", "amazing quality", "best purchase ever", "absolutely fantastic"],
}
# The later regime's slang: the same sentiments in words the first regime never used.
SLANG = {
    1: ["total scam fr", "straight trash", "mid af and broken"],
    2: ["kinda sus build", "lowkey bad", "not it"],
    3: ["it's whatever", "mid tbh", "fine i guess"],
    4: ["pretty fire", "slaps ngl", "lowkey great"],
    5: ["bussin no cap", "goated", "absolute banger"],
}
FILLER = [
    "arrived on time",
    "the packaging was plain",
    "bought it as a gift",
    "used it for two weeks",
    "compared it with other brands",
    "the color matches the photos",
    "setup took a few minutes",
    "customer service answered quickly",
    "shipping was a bit slow",
    "my partner uses it too",
]
BASE_MIX = [0.06, 0.09, 0.15, 0.30, 0.40]  # ~70% satisfied (4 or 5 stars)
SHIFTED_MIX = [0.20, 0.17, 0.18, 0.25, 0.20]  # ~45% satisfied
DEVICES = ["ios", "android", "web"]


def _review(rng: np.random.Generator, rating: int, product: str, shifted: bool, long: bool) -> str:
    words = SLANG[rating] if shifted and rng.random() < 0.6 else SENTIMENT[rating]
    parts = [f"the {product} is {rng.choice(words)}"]
    n_extra = rng.integers(2, 5) if long else rng.integers(0, 3)
    for _ in range(n_extra):
        parts.append(str(rng.choice(FILLER)))
    parts.append(str(rng.choice(words)))
    rng.shuffle(parts[1:])
    text = ", ".join(parts) + "."
    return text[0].upper() + text[1:]


def generate_feedback(
    n: int,
    seed: int = 0,
    shifted: bool = False,
    start: datetime | None = None,
    id_prefix: str = "fb",
    *,
    mix: list[float] | None = None,
    new_category_share: float | None = None,
) -> list[dict]:
    """``n`` feedback rows as dicts with the columns ``refit ingest`` reads.

    Args:
        n: number of rows.
        seed: random seed; the same seed gives the same rows.
        shifted: the later regime (new category, slang, longer texts, lower ratings).
        start: timestamp of the first row; rows are spread over the following days.
        id_prefix: prefix of ``feedback_id`` (give each batch its own).
        mix: the rating mix (probabilities of 1..5 stars) instead of the regime's own; one
            change alone, for the drift scenarios.
        new_category_share: the share of rows in the new category (with its own products)
            instead of the regime's own (0, or 0.2 when shifted).
    """
    rng = np.random.default_rng(seed)
    start = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
    categories = dict(CATEGORIES)
    weights = [0.25, 0.25, 0.25, 0.25]
    if shifted:
        categories.update(NEW_CATEGORY)
        weights = [0.2, 0.2, 0.2, 0.2, 0.2]
    if new_category_share is not None:
        if not 0 <= new_category_share < 1:
            raise ValueError(f"new_category_share must be in [0, 1), got {new_category_share}")
        categories = {**CATEGORIES, **NEW_CATEGORY}
        weights = [(1 - new_category_share) / len(CATEGORIES)] * len(CATEGORIES) + [new_category_share]
    names = list(categories)
    mix = mix if mix is not None else SHIFTED_MIX if shifted else BASE_MIX
    rows = []
    for i in range(n):
        category = names[rng.choice(len(names), p=weights)]
        product_index = int(rng.integers(len(categories[category])))
        product = categories[category][product_index]
        rating = int(rng.choice(5, p=mix)) + 1
        satisfied = rating >= 4
        rows.append(
            {
                "feedback_id": f"{id_prefix}-{seed}-{i:07d}",
                "user_id": f"u{int(rng.integers(0, max(50, n // 4))):05d}",
                "item_id": f"{category[:3]}-{product_index:02d}",
                "text": _review(rng, rating, product, shifted, long=shifted and rng.random() < 0.7),
                "rating": rating,
                "created_at": (start + timedelta(minutes=int(i * 7 + rng.integers(0, 5)))).isoformat(),
                "category": category,
                "device": str(rng.choice(DEVICES, p=[0.45, 0.4, 0.15])),
                "sessions_7d": int(rng.poisson(6 if satisfied else 3)),
                "dwell_seconds": round(float(rng.lognormal(4.0 if satisfied else 3.6, 0.5)), 1),
            }
        )
    return rows


def write_feedback(rows: list[dict], path: Path) -> Path:
    """Write rows as CSV or JSONL, by the file's suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        return path
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path

"""Augmenting training text: random deletion, random swap, synonym replacement (EDA).

Only the training rows of an epoch are augmented; dev and test texts never pass through here, so
early stopping, the gate and every reported metric see the data as it is. Each epoch draws new
edits from a generator seeded by (seed, epoch), so a run is reproducible and a resumed run makes
the same edits.

Why not a library: nlpaug (last release 2022) needs NLTK's WordNet corpus downloaded at run time
for synonyms and textattack pulls TensorFlow Hub and large models; refit must train offline. The
three operations of Wei and Zou's EDA are a few lines each, and the synonyms come from a word list
shipped in the package (``models/data/synonyms.txt``), hand-written for product feedback so that a
replacement keeps a review's sentiment (WordNet's senses often do not).

Paraphrase (back-translation) is a hook: any callable from a list of texts to a list of texts of
the same length, for example a pair of translation models a team runs itself. refit ships none.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

Paraphraser = Callable[[list[str]], list[str]]
WORD = re.compile(r"^[a-z][a-z'-]*$")


@dataclass(frozen=True)
class AugmentConfig:
    """Per-method rates: each word is deleted, swapped or replaced with that probability.

    Attributes:
        delete_rate: chance that a word is dropped (a text keeps at least one word).
        swap_rate: swaps per word: ``round(rate * words)`` random pairs trade places (at least one
            when the rate is positive and the text has two words).
        synonym_rate: chance that a word with an entry in the word list is replaced by a synonym.
        paraphrase_rate: share of texts passed through the paraphrase hook (needs a hook).
    """

    delete_rate: float = 0.0
    swap_rate: float = 0.0
    synonym_rate: float = 0.0
    paraphrase_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("delete_rate", "swap_rate", "synonym_rate", "paraphrase_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation {name} must be in [0, 1], not {value}")

    @property
    def active(self) -> bool:
        return any((self.delete_rate, self.swap_rate, self.synonym_rate, self.paraphrase_rate))


@lru_cache(maxsize=1)
def synonyms() -> dict[str, tuple[str, ...]]:
    """The shipped word list as word -> its synonyms (every other member of its groups)."""
    table: dict[str, set[str]] = {}
    text = resources.files("refit.models").joinpath("data/synonyms.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        group = [w.strip() for w in line.split(",") if w.strip()]
        for word in group:
            table.setdefault(word, set()).update(w for w in group if w != word)
    return {word: tuple(sorted(others)) for word, others in table.items() if others}


def random_deletion(words: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Drop each word with probability ``rate``, keeping at least one.

    Args:
        words: the text's words.
        rate: each word's chance to go.
        rng: the run's random generator.

    Returns:
        The words kept, in order (the words as they are for a one-word text or a zero rate).
    """
    if rate <= 0 or len(words) < 2:
        return words
    kept = [w for w, drop in zip(words, rng.random(len(words)) < rate, strict=True) if not drop]
    return kept or [words[int(rng.integers(len(words)))]]


def random_swap(words: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Swap random pairs of words: ``rate`` times the word count of swaps, at least one.

    Args:
        words: the text's words.
        rate: swaps per word.
        rng: the run's random generator.

    Returns:
        A swapped copy (the words as they are for a one-word text or a zero rate).
    """
    if rate <= 0 or len(words) < 2:
        return words
    words = list(words)
    for _ in range(max(1, round(rate * len(words)))):
        i, j = rng.choice(len(words), size=2, replace=False)
        words[i], words[j] = words[j], words[i]
    return words


def synonym_replacement(words: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Replace words that have synonyms in the shipped list, each with probability ``rate``.

    Case and trailing punctuation are kept: "Great," can become "Superb,".

    Args:
        words: the text's words.
        rate: each replaceable word's chance to be replaced.
        rng: the run's random generator.

    Returns:
        The words, some replaced.
    """
    if rate <= 0:
        return words
    table = synonyms()
    out = []
    for word in words:
        # Punctuation stays attached: "great," becomes "superb,".
        core = word.rstrip(".,!?;:")
        key = core.lower()
        choices = table.get(key) if WORD.match(key) else None
        if choices and rng.random() < rate:
            new = choices[int(rng.integers(len(choices)))]
            new = new.capitalize() if core[:1].isupper() else new
            word = new + word[len(core) :]
        out.append(word)
    return out


def augment_text(text: str, config: AugmentConfig, rng: np.random.Generator) -> str:
    """One augmented copy of a text: synonyms, then swaps, then deletions.

    Args:
        text: the text.
        config: the three rates.
        rng: the run's random generator.

    Returns:
        The augmented text (the text as it is when it has no words).
    """
    words = text.split()
    if not words:
        return text
    words = synonym_replacement(words, config.synonym_rate, rng)
    words = random_swap(words, config.swap_rate, rng)
    words = random_deletion(words, config.delete_rate, rng)
    return " ".join(words)


def augment_texts(
    texts: list[str],
    config: AugmentConfig,
    seed: int,
    epoch: int,
    paraphrase: Paraphraser | None = None,
) -> list[str]:
    """The training texts of one epoch, augmented (the input list is not changed).

    Args:
        texts: the training texts (never dev or test texts).
        config: the rate of each method.
        seed: the run's seed; with ``epoch`` it seeds the edits.
        epoch: the epoch number, so every epoch sees different edits.
        paraphrase: the back-translation hook; required when ``paraphrase_rate`` is positive.

    Returns:
        One text per input text, in the same order.
    """
    if not config.active:
        return list(texts)
    rng = np.random.default_rng([seed, epoch, 0xA06])
    out = list(texts)
    if config.paraphrase_rate > 0:
        if paraphrase is None:
            raise ValueError("paraphrase_rate is set but no paraphrase hook was given (refit ships no model)")
        chosen = np.flatnonzero(rng.random(len(out)) < config.paraphrase_rate)
        if len(chosen):
            rewritten = paraphrase([out[i] for i in chosen])
            if len(rewritten) != len(chosen):
                raise ValueError(f"the paraphrase hook returned {len(rewritten)} texts for {len(chosen)}")
            for i, new in zip(chosen, rewritten, strict=True):
                out[i] = str(new)
    return [augment_text(t, config, rng) for t in out]

"""The column-wise (Arrow) validation kernels give exactly what the per-value Python code gave:
the same redacted text, stripped values, feature JSON and content hashes, so rows stored before
still match their re-ingested files."""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from test_pii import KEPT, REDACTED

from refit.data import pii
from refit.data.kernels import PY_WHITESPACE, blank, has_nul, strip, to_arrow
from refit.data.pii import redact, redact_column
from refit.data.validate import _add_identity, _features_json

HARD = (
    [text for text, _ in REDACTED]
    + KEPT
    + [
        "",
        "plain review, nothing to see",
        "12.34@example.com and 555-1234-5678x@foo.com",
        "1\n2\n3\n4\n5\n6\n7 digits on lines",
        "WwW.Example.org and wWw. alone",
        "a@b",
        "@ 5pm",
        "email@@example.com @@handle",
        "https://x.com/a+b@c.com",
        "naïve café +33 1 42 68 53 00 😀",
        "٠١٢٣٤٥٦٧٨٩ arabic-indic digits with an @handle",
        "card 4111-1111-1111-1112 fails the Luhn check",
        "ftp://files.example.com/x",
        "(555)123-4567",
    ]
)


def _mixed(n: int, seed: int) -> list[str | None]:
    """Reviews built from the hard cases, filler and noise, with and without PII."""
    rng = random.Random(seed)
    filler = ["great kettle", "ok", "order 12", "v2.1", "WWW", "@", "://", " ", "\t", "7 7 7", "x@y.zz", "+1"]
    out: list[str | None] = []
    for _ in range(n):
        parts = [rng.choice(HARD + filler) for _ in range(rng.randint(0, 4))]
        out.append(None if rng.random() < 0.03 else rng.choice([" ", ", ", "", "\n"]).join(parts))
    return out


def test_python_whitespace_is_every_code_point_str_isspace_holds():
    assert "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()) == PY_WHITESPACE


def test_the_url_prefilter_misses_no_case_variant_of_www():
    """The column pre-filter looks for ``www.`` case-insensitively in RE2, and the variant choice
    for ``"www." in text.lower()``: no other character lowers or case-folds to w, . or :."""
    odd = [c for c in range(sys.maxunicode + 1) if set(chr(c).lower()) & set("w.:/@") and chr(c) not in "wW.:/@"]
    assert odd == []
    assert [c for c in range(sys.maxunicode + 1) if re.fullmatch("(?i:w)", chr(c)) and chr(c) not in "wW"] == []


@pytest.mark.parametrize("handles", [True, False])
def test_the_column_redaction_equals_redact_on_every_value(handles):
    texts = HARD + _mixed(3000, seed=1)
    series = pd.Series(texts, dtype=object)
    redacted, changed = redact_column(series, pa.array(texts, type=pa.string()), handles)
    expected = [redact(t, handles) if t is not None else None for t in texts]
    assert redacted.tolist() == expected
    assert changed.tolist() == [t is not None and e != t for t, e in zip(texts, expected, strict=True)]
    assert changed.sum() > 100  # the set holds plenty of PII, not only clean text


def test_the_reduced_patterns_find_what_the_full_pattern_finds():
    texts = [t for t in HARD + _mixed(3000, seed=2) if t]
    for text in texts:
        full = [(m.span(), m.lastgroup) for m in pii._PATTERN.finditer(text)]
        variant = pii._VARIANTS["://" in text or "www." in text.lower(), "@" in text]
        assert [(m.span(), m.lastgroup) for m in variant.finditer(text)] == full, text


EDGES = ["", " ", "a", " a ", "\ta\n", "\u3000x\u3000", "\x1cx\x1f", "\x85x\x85", "\xa0", "é", "x é", "日本 ", " 😀",
         "\u2028line\u2029", "a\u200b", "\u180e", "  \r\n  ", "\x00 ", "mid dle"]  # fmt: skip


def test_strip_and_blank_equal_python():
    values = pd.Series(EDGES + [None], dtype=object)
    array, _ = to_arrow(values)
    stripped, stripped_array = strip(values, array)
    expected = [v.strip() if v is not None else None for v in values]
    assert stripped.tolist() == expected
    assert stripped_array.to_pylist() == expected
    assert blank(array).tolist() == [v is None or not v.strip() for v in values]
    assert has_nul(array).tolist() == [v is not None and "\x00" in v for v in values]


def test_lone_surrogates_are_found_and_kept_out_of_arrow():
    values = pd.Series(["ok", "bad\ud800", None, "\udfff"], dtype=object)
    array, surrogates = to_arrow(values)
    assert surrogates.tolist() == [False, True, False, True]
    assert array.to_pylist() == ["ok", "bad\ufffd", None, "\ufffd"]


def _features_json_per_row(names, columns, n):
    """The per-row code the kernels replaced (refit before issue 16's part 5)."""
    if not names:
        return ["{}"] * n
    order = sorted(range(len(names)), key=lambda i: names[i])
    names = [names[i] for i in order]
    values = [columns[i].astype(object).where(columns[i].notna(), None).tolist() for i in order]
    return [
        json.dumps({k: v for k, v in zip(names, row, strict=True) if v is not None})
        for row in zip(*values, strict=True)
    ]


def test_feature_json_is_what_json_dumps_wrote():
    rng = np.random.default_rng(0)
    n = 2000
    strings = ["ios", 'q"uote', "back\\slash", "tab\t", "naïve", "😀", "\x7f", "ctl\x01", "", "a/b", "<b>", "\u2028"]
    columns = {
        "device": pd.Series(rng.choice(strings + [None], n), dtype=object),
        "dwell": pd.Series(np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(3, 2, n).round(rng.integers(0, 12)))),
        "tiny": pd.Series(rng.choice([1e-7, 1e16, 123456789012345678.0, -0.0, 0.1 + 0.2, 5e-324, np.nan], n)),
        "item_vec": pd.Series([[0.5, 1.0] if i % 3 else None for i in range(n)], dtype=object),
        "mixed": pd.Series([[1, "x"][i % 2] if i % 5 else None for i in range(n)], dtype=object),
        "all_missing": pd.Series([None] * n, dtype=object),
        "Zeta \u00e9": pd.Series(["z"] * n, dtype=object),
    }
    names, values = list(columns), list(columns.values())
    assert _features_json(names, values, n).tolist() == _features_json_per_row(names, values, n)
    assert _features_json(["only_missing"], [pd.Series([np.nan] * 3)], 3).tolist() == ["{}"] * 3
    assert list(_features_json([], [], 2)) == ["{}", "{}"]


def test_content_hash_is_the_stored_definition():
    valid = pd.DataFrame(
        {
            "feedback_id": ["a", None, "c"],
            "user_id": ["u1", None, "ü"],
            "item_id": [None, "i2", "i3"],
            "text": ["great kettle", "naïve café 😀", "x\x1fy"],
            "satisfaction": [0.75, 1.0, 1e-05],
            "label": ["positive", "positive", "negative"],
            "created_at": pd.to_datetime(
                ["2024-05-01T12:00:00Z", "1969-12-31T23:59:59.5Z", "2024-05-01"], utc=True, format="ISO8601"
            ),
            "features": ["{}", '{"device": "ios"}', '{"n": 3.0}'],
        }
    )
    expected = []
    for row, created in zip(valid.itertuples(), valid["created_at"].astype("int64").astype(str), strict=True):
        key = "\x1f".join(
            (row.text, repr(row.satisfaction), row.label, row.features, row.user_id or "", row.item_id or "", created)
        )
        expected.append(hashlib.sha256(key.encode("utf-8")).hexdigest())
    _add_identity(valid)
    assert valid["content_hash"].tolist() == expected
    assert valid["feedback_id"].tolist() == ["a", f"h-{expected[1][:32]}", "c"]

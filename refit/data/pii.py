"""PII redaction of feedback text before it is stored for training.

Emails, phone numbers, card-like numbers, URLs (any case, ``www.`` hosts included) and social
``@handles`` become typed placeholders (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[URL]``,
``[HANDLE]``; handles can be kept with ``REFIT_PII_HANDLES=false``). Numbers that only look like
phones (dates, prices, order numbers, years, versions) are left alone. A cheap pre-filter skips
texts that cannot hold any of these, which is most reviews, so redaction costs little on realistic
feedback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

MODES = ("off", "redact", "drop")

_URL = r"(?i:https?://|www\.)[^\s<>\"')\]]+[^\s<>\"')\].,;:!?]"
_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
# A social handle: @ after a space or punctuation (not inside a word or an email), then 2-30 of
# letters, digits, _ or inner dots ("@jane_doe", "@shop.official"); "@ 5pm" and "a@b" are not.
_HANDLE = r"(?<![\w@./])@[A-Za-z0-9_](?:[A-Za-z0-9_.]{0,28}[A-Za-z0-9_])(?![\w@])"
# 13-19 digits in groups separated by single spaces or dashes; confirmed by the Luhn check.
_CARD = r"(?<![\w.,])\d(?:[ -]?\d){12,18}(?![\w.,]|-\d)"
# A phone: an optional +country code, then digit groups with separators; checked by _is_phone.
_PHONE = (
    r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{1,5}(?:[\s.-]\d{1,8}){1,5}"
    r"|\+\d{7,14}|\(\d{3}\)\d{3}-?\d{4}|\d{10,11}"
)
_PATTERN = re.compile(
    rf"(?P<url>{_URL})|(?P<email>{_EMAIL})|(?P<handle>{_HANDLE})|(?P<card>{_CARD})|(?P<phone>{_PHONE})"
)


def _variant(url: bool, at: bool) -> re.Pattern:
    """_PATTERN without the alternatives that cannot match a text (no scheme or ``www.``: no URL;
    no ``@``: no email, no handle), each alternative led by a lookahead of its first character so
    a position fails fast. Both only drop what could never match, so every text gets exactly the
    matches _PATTERN finds, in the same groups."""
    parts = [f"(?P<url>{_URL})"] if url else []
    if at:
        parts += [f"(?P<email>{_EMAIL})", f"(?P<handle>(?=@){_HANDLE})"]
    parts += [f"(?P<card>(?=\\d){_CARD})", f"(?P<phone>(?=[+(\\d])(?:{_PHONE}))"]
    return re.compile("|".join(parts))


_VARIANTS = {(url, at): _variant(url, at) for url in (False, True) for at in (False, True)}
# Where a text may hold PII, for a whole column in one RE2 pass: everything _may_hold_pii lets through.
_CANDIDATE = r"@|://|(?i:www\.)|[0-9](?:[^0-9]*[0-9]){6}"
_DIGITS = "0123456789"
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
_TIME = re.compile(r"^\d{1,2}[:.]\d{2}")


def _luhn(digits: str) -> bool:
    total, double = 0, False
    for char in reversed(digits):
        d = ord(char) - 48
        if double:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        double = not double
    return total % 10 == 0


def _is_phone(candidate: str, before: str, after: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if not 7 <= len(digits) <= 15:
        return False
    if _DATE.match(candidate.strip()) or _TIME.match(candidate):
        return False
    left, right = before[-1:], after[:1]
    if (left and (left.isalnum() or left in ".,/$€£#-_")) or (right and (right.isalnum() or right == "%")):
        return False
    if before.rstrip().lower().endswith(("order", "order #", "order no", "#", "isbn", "id", "sku", "ref")):
        return False
    has_plus = candidate.lstrip().startswith("+")
    groups = re.split(r"[\s.()-]+", candidate.strip("() "))
    groups = [g for g in groups if g]
    if not has_plus and len(groups) == 1 and len(digits) < 10:
        return False  # a bare run of 7-9 digits is an id or an amount, not a phone
    # "1 2 3 4 5 6 7": single digits separated by spaces are counts, not phones
    return not all(len(g) == 1 for g in groups)


def _replace(match: re.Match, text: str, handles: bool = True) -> str:
    kind = match.lastgroup
    value = match.group(0)
    if kind == "handle":
        return "[HANDLE]" if handles else value
    if kind == "url":
        return "[URL]"
    if kind == "email":
        return "[EMAIL]"
    if kind == "card":
        digits = value.replace(" ", "").replace("-", "")
        if _luhn(digits):
            return "[CARD]"
        kind = "phone"
    if kind == "phone":
        start, end = match.span()
        if _is_phone(value, text[max(0, start - 12) : start], text[end : end + 2]):
            return "[PHONE]"
    return value


def _may_hold_pii(text: str) -> bool:
    # str methods run in C at memory speed; a regex scan costs ~20x more on a 400-char review.
    # Phones and cards need at least 7 digits, emails and handles an @, URLs a scheme or www.
    # (in any case: lower() is C speed too).
    return "@" in text or "://" in text or "www." in text.lower() or sum(map(text.count, _DIGITS)) >= 7


def redact(text: str, handles: bool = True) -> str:
    """The text with emails, phones, card numbers, URLs and @handles replaced by typed placeholders.

    Args:
        text: free text.
        handles: replace ``@handles`` by ``[HANDLE]`` (``REFIT_PII_HANDLES``).
    """
    if not _may_hold_pii(text):
        return text
    return _PATTERN.sub(lambda m: _replace(m, text, handles), text)


def _redact_candidate(text: str, handles: bool) -> str:
    """:func:`redact` of a text the column pre-filter flagged, with the smallest exact pattern."""
    if not _may_hold_pii(text):
        return text
    pattern = _VARIANTS["://" in text or "www." in text.lower(), "@" in text]
    return pattern.sub(lambda m: _replace(m, text, handles), text)


def redact_column(texts: pd.Series, array: pa.Array, handles: bool = True) -> tuple[pd.Series, np.ndarray]:
    """:func:`redact` of every text of a column, and where it changed one; ``None`` stays.

    One RE2 pass over the column (``array``, the same texts in Arrow) finds the texts that may hold
    PII (most reviews hold none); only those go through the Python pattern, which needs lookarounds
    RE2 lacks.

    Args:
        texts: str or None values.
        array: ``texts`` as an Arrow string array.
        handles: replace ``@handles`` (``REFIT_PII_HANDLES``).
    """
    changed = np.zeros(len(texts), dtype=bool)
    candidates = np.flatnonzero(pc.fill_null(pc.match_substring_regex(array, _CANDIDATE), False).to_numpy(False))
    if not len(candidates):
        return texts, changed
    values = texts.to_numpy(dtype=object, copy=True)
    for i in candidates:
        clean = _redact_candidate(values[i], handles)
        if clean != values[i]:
            values[i], changed[i] = clean, True
    return pd.Series(values, index=texts.index), changed


def redact_all(texts: Iterable[str]) -> tuple[list[str], list[bool]]:
    """Redacted texts, and whether each one contained PII."""
    out, found = [], []
    for text in texts:
        clean = redact(text)
        out.append(clean)
        found.append(clean is not text and clean != text)
    return out, found

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

MODES = ("off", "redact", "drop")

_URL = r"(?i:https?://|www\.)[^\s<>\"')\]]+[^\s<>\"')\].,;:!?]"
_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
# A social handle: @ after a space or punctuation (not inside a word or an email), then 2-30 of
# letters, digits, _ or inner dots ("@jane_doe", "@shop.official"); "@ 5pm" and "a@b" are not.
_HANDLE = r"(?<![\w@./])@[A-Za-z0-9_](?:[A-Za-z0-9_.]{0,28}[A-Za-z0-9_])(?![\w@])"
# 13-19 digits in groups separated by single spaces or dashes; confirmed by the Luhn check.
_CARD = r"(?<![\w.,])\d(?:[ -]?\d){12,18}(?![\w.,]|-\d)"
# A phone: an optional +country code, then digit groups with separators; checked by _is_phone.
_PATTERN = re.compile(
    rf"(?P<url>{_URL})|(?P<email>{_EMAIL})|(?P<handle>{_HANDLE})|(?P<card>{_CARD})|(?P<phone>(?:\+\d{{1,3}}[\s.-]?)?(?:\(\d{{1,4}}\)[\s.-]?)?"
    rf"\d{{1,5}}(?:[\s.-]\d{{1,8}}){{1,5}}|\+\d{{7,14}}|\(\d{{3}}\)\d{{3}}-?\d{{4}}|\d{{10,11}})"
)
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


def redact_all(texts: Iterable[str]) -> tuple[list[str], list[bool]]:
    """Redacted texts, and whether each one contained PII."""
    out, found = [], []
    for text in texts:
        clean = redact(text)
        out.append(clean)
        found.append(clean is not text and clean != text)
    return out, found

"""PII redaction on tricky cases: what must go, and what must stay."""

import pytest

from refit.data.pii import redact

REDACTED = [
    ("mail me at john.doe+shop@example.co.uk please", "mail me at [EMAIL] please"),
    ("Contact <jane_smith@mail.example.com> for a refund", "Contact <[EMAIL]> for a refund"),
    ("call +44 20 7946 0958 anytime", "call [PHONE] anytime"),
    ("my number is (555) 123-4567.", "my number is [PHONE]."),
    ("ring 555-123-4567 or 555.123.4567", "ring [PHONE] or [PHONE]"),
    ("in Germany: +49 30 1234567", "in Germany: [PHONE]"),
    ("France +33 1 42 68 53 00, ask for Paul", "France [PHONE], ask for Paul"),
    ("India +91 98765 43210", "India [PHONE]"),
    ("UK mobile 07700 900123 works", "UK mobile [PHONE] works"),
    ("whatsapp +4915112345678", "whatsapp [PHONE]"),
    ("paid with 4111 1111 1111 1111 yesterday", "paid with [CARD] yesterday"),
    ("card 5500-0000-0000-0004 was charged twice", "card [CARD] was charged twice"),
    ("see https://shop.example.com/item?id=3&ref=x, it's cheaper", "see [URL], it's cheaper"),
    ("details at www.example.org/help.", "details at [URL]."),
]

KEPT = [
    "order 123456789 never arrived",
    "order #5551234567 is late",
    "delivered on 2024-05-01 at 14:30",
    "it cost $1,299.99 and weighs 2.5 kg",
    "version 3.2.1 fixed the bug",
    "rated 5 out of 5, bought 2 of them in 2023",
    "the 1 2 3 4 5 6 7 buttons are sticky",
    "ISBN 9780306406157 is the paperback",
    "battery lasts 10-12 hours",
    "model number XJ-9000-B2 broke",
    "about 30% off, 100 % worth it",
    "tracking 1Z999AA10123456784",
    "4111 1111 1111 1112 is not a valid card number",
]


@pytest.mark.parametrize(("text", "expected"), REDACTED)
def test_pii_is_replaced_by_typed_placeholders(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_numbers_that_are_not_pii_are_kept(text):
    assert redact(text) == text

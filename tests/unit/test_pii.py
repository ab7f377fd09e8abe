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
    # --- issue 16: URLs in any case, www. hosts, @handles
    ("SEE HTTPS://SHOP.EXAMPLE.COM/ITEM?ID=3 NOW", "SEE [URL] NOW"),
    ("Http://Example.com/x and WWW.EXAMPLE.ORG/HELP.", "[URL] and [URL]."),
    ("go to Www.Shop.Example.com today", "go to [URL] today"),
    ("ask @jane_doe or @shop.official.", "ask [HANDLE] or [HANDLE]."),
    ("(@JaneDoe99) said so", "([HANDLE]) said so"),
    ("mail jane@example.com, not @jane", "mail [EMAIL], not [HANDLE]"),
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
    "meet me @ 5pm, 2 @ $3 each",
    "a@b is not an address",
    "the c@t sat",
]


@pytest.mark.parametrize(("text", "expected"), REDACTED)
def test_pii_is_replaced_by_typed_placeholders(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_numbers_that_are_not_pii_are_kept(text):
    assert redact(text) == text


def test_handles_can_be_kept():
    assert redact("thanks @jane_doe", handles=False) == "thanks @jane_doe"
    assert redact("thanks @jane_doe at jane@example.com", handles=False) == "thanks @jane_doe at [EMAIL]"

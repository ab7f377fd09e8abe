"""The text descriptors a drift check compares: text length, out-of-vocabulary rate under the
champion's tokenizer, share of text not in the reference's dominant language, and share of empty or
very short texts."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

DESCRIPTORS = ("text_length", "oov_rate", "non_dominant_language", "short_text")
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def dominant_words(texts: list[str], top: int = 100) -> set[str]:
    """The reference's most common words: its function words stand for its dominant language."""
    counts = Counter(word for text in texts for word in set(_words(text)))
    return {word for word, _ in counts.most_common(top)}


def describe_texts(texts: pd.Series, vocab: set[str] | None, dominant: set[str], short_chars: int) -> pd.DataFrame:
    """The text descriptors, one row per text.

    Args:
        texts: the (redacted) review texts.
        vocab: whole-word entries of the champion's tokenizer; a word that is not one of them is
            out of vocabulary (split into pieces or unknown). None leaves the rate out.
        dominant: the reference's most common words; a text of letters none of which are mostly
            ASCII, or of three or more words none of which is one of them, is not in the dominant
            language.
        short_chars: texts shorter than this (after stripping) are very short.
    """
    stripped = texts.astype(str).str.strip()
    lengths = stripped.str.len().astype(float)
    oov, foreign = [], []
    for text in stripped:
        words = _words(text)
        if vocab is not None:
            oov.append(sum(w not in vocab for w in words) / len(words) if words else 0.0)
        letters = [c for c in text if c.isalpha()]
        non_ascii = sum(not c.isascii() for c in letters) / len(letters) if letters else 0.0
        foreign.append(non_ascii > 0.5 or (len(words) >= 3 and not dominant.intersection(words)))
    frame = pd.DataFrame(
        {
            "text_length": lengths.to_numpy(),
            "non_dominant_language": np.where(foreign, "yes", "no"),
            "short_text": np.where(lengths.to_numpy() < short_chars, "yes", "no"),
        }
    )
    if vocab is not None:
        frame["oov_rate"] = oov
    return frame


def tokenizer_words(champion) -> set[str] | None:
    """The whole-word entries of the champion's tokenizer vocabulary (lower-cased)."""
    tokenizer = getattr(champion, "tokenizer", None)
    vocab = tokenizer.get_vocab() if tokenizer is not None and hasattr(tokenizer, "get_vocab") else None
    if not vocab:
        return None
    return {token.lower() for token in vocab if not token.startswith("##") and not token.startswith("[")}

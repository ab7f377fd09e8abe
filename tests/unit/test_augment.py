"""Augmentation of training text (models/augment.py): training batches change, dev and test don't."""

from __future__ import annotations

import numpy as np
import pytest

from refit.models.augment import AugmentConfig, augment_texts, synonyms
from refit.models.inference import predict_texts
from refit.models.metrics import task_metrics
from refit.models.train import train

from model_helpers import review_data, tiny_config

TEXTS = [
    "The headphones are great, fast delivery and good quality.",
    "Terrible charger, broke after a day and the seller was rude.",
    "okay kettle, does the job, nothing special at all",
]
EDA = AugmentConfig(delete_rate=0.1, swap_rate=0.1, synonym_rate=0.3)


def test_word_list_ships_with_the_package_and_keeps_sentiment():
    table = synonyms()
    assert len(table) > 200
    assert "superb" in table["great"] and "awful" in table["terrible"]
    positive, negative = {"great", "good", "excellent", "amazing"}, {"terrible", "bad", "awful", "poor"}
    for word in positive:
        assert not negative & set(table.get(word, ()))


def test_each_method_edits_the_text_and_is_seeded():
    for config in (AugmentConfig(delete_rate=0.3), AugmentConfig(swap_rate=0.3), AugmentConfig(synonym_rate=1.0)):
        out = augment_texts(TEXTS, config, seed=1, epoch=1)
        assert out != TEXTS, config
        assert out == augment_texts(TEXTS, config, seed=1, epoch=1)  # reproducible (and resumable)
        assert augment_texts(TEXTS, config, seed=1, epoch=2) != out  # a new draw every epoch
    swapped = augment_texts(TEXTS, AugmentConfig(swap_rate=0.3), seed=1, epoch=1)
    assert [sorted(t.split()) for t in swapped] == [sorted(t.split()) for t in TEXTS]  # same words, new order
    shorter = augment_texts(TEXTS, AugmentConfig(delete_rate=0.3), seed=1, epoch=1)
    assert all(0 < len(a.split()) <= len(b.split()) for a, b in zip(shorter, TEXTS, strict=True))
    replaced = augment_texts(["great product"], AugmentConfig(synonym_rate=1.0), seed=3, epoch=1)[0]
    assert replaced.split()[0] in synonyms()["great"] and replaced.split()[1] in synonyms()["product"]


def test_no_rates_no_change_and_rates_are_checked():
    assert augment_texts(TEXTS, AugmentConfig(), seed=1, epoch=1) == TEXTS
    with pytest.raises(ValueError, match="delete_rate"):
        AugmentConfig(delete_rate=1.5)


def test_paraphrase_is_a_hook():
    with pytest.raises(ValueError, match="no paraphrase hook"):
        augment_texts(TEXTS, AugmentConfig(paraphrase_rate=1.0), seed=1, epoch=1)
    out = augment_texts(TEXTS, AugmentConfig(paraphrase_rate=1.0), 1, 1, paraphrase=lambda ts: [t.upper() for t in ts])
    assert out == [t.upper() for t in TEXTS]


def test_trainer_augments_training_batches_only(tiny_model):
    data = review_data(200)
    seen: dict[int, list[str]] = {}
    config = tiny_config(tiny_model, epochs=2, augment_delete_rate=0.1, augment_swap_rate=0.1, augment_synonym_rate=0.2)
    result = train(config, data, on_epoch_texts=lambda epoch, texts: seen.setdefault(epoch, texts))
    assert seen[1] != data.train_texts and seen[2] != data.train_texts and seen[1] != seen[2]
    changed = np.mean([a != b for a, b in zip(seen[1], data.train_texts, strict=True)])
    assert changed > 0.5
    # The dev rows that chose the best epoch were scored as they are: re-scoring the returned
    # model on the untouched dev texts gives exactly the recorded dev metrics.
    again = predict_texts(result.model, result.tokenizer, data.dev_texts, None, "regression", config.max_length)
    assert task_metrics("regression", data.dev_targets, again, 1) == pytest.approx(result.dev_metrics, abs=1e-9)
    assert result.history[result.best_epoch - 1]["dev_mse"] == pytest.approx(result.dev_metrics["mse"], abs=1e-12)

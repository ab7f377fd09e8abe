"""SetFit's contrastive stage (refit.training.contrastive) on the tiny BERT: SetFit's pairs, an
encoder that pulls rows of one class together and pushes other classes apart on rows it never saw,
saved as a base-model folder, and a budget that stops it."""

from pathlib import Path

import numpy as np
import pytest
import torch

from refit.core.settings import Settings
from refit.training.contrastive import PAIRS_PER_ROW, contrastive_encoder, rows_digest, sentence_pairs

from model_helpers import Clock, clean_settings, review_data

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(root: Path, **overrides) -> Settings:
    """Settings with a work dir under ``root`` (no .env, no REFIT_*)."""
    values = {"max_length": 64, "batch_size": 16, "num_threads": 1, "seed": 3, **overrides}
    return clean_settings(work_dir=root / "work", **values)


def test_pairs_are_setfits_a_positive_and_a_negative_per_row_and_round():
    labels = np.array([0, 0, 0, 1, 1, 2])  # class 2 has one row: its positive partner is itself
    pairs = sentence_pairs(labels, np.random.default_rng(0))

    assert pairs.shape == (PAIRS_PER_ROW * len(labels), 3)
    for i in range(len(labels)):
        mine = pairs[pairs[:, 0] == i]
        assert (mine[:, 2] == 1).sum() == (mine[:, 2] == 0).sum() == PAIRS_PER_ROW // 2
    same, other = pairs[pairs[:, 2] == 1], pairs[pairs[:, 2] == 0]
    assert (labels[same[:, 0]] == labels[same[:, 1]]).all() and (labels[other[:, 0]] != labels[other[:, 1]]).all()
    assert (same[labels[same[:, 0]] != 2][:, 0] != same[labels[same[:, 0]] != 2][:, 1]).all()
    assert (same[labels[same[:, 0]] == 2][:, 1] == 5).all()
    # In a random order, the same for the same seed.
    assert not (pairs[:, 0] == np.sort(pairs[:, 0])).all()
    assert (sentence_pairs(labels, np.random.default_rng(0)) == pairs).all()


def _separation(folder: Path, texts: list[str], labels: np.ndarray) -> float:
    """Mean cosine of same-class pairs minus that of different-class pairs, of mean-pooled embeddings."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, encoder = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    cosine = (pooled @ pooled.T).numpy()
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return float(cosine[same & off_diagonal].mean() - cosine[~same].mean())


def test_tuning_separates_the_classes_on_rows_it_never_saw_and_saves_a_loadable_encoder(tiny_model, tmp_path):
    data = review_data(300, task="classification", seed=2)
    folder = tmp_path / "encoder"

    tuned = contrastive_encoder(
        _settings(tmp_path), str(tiny_model), data.train_texts, data.train_targets, folder, learning_rate=1e-3
    )  # a random BERT learns at the rate the tiny tests train it at

    record = tuned.record
    assert record["stopped_by"] == "pairs" and record["pairs_trained"] == record["pairs_planned"]
    assert record["pairs_planned"] == PAIRS_PER_ROW * len(data.train_texts) and record["classes"] == 3
    assert record["rows"] == len(data.train_texts)
    assert record["rows_digest"] == rows_digest(data.train_texts, data.train_targets)
    assert record["loss_last"] < record["loss_first"]
    before = _separation(tiny_model, data.dev_texts, data.dev_targets)
    after = _separation(folder, data.dev_texts, data.dev_targets)
    assert after > before + 0.05, (before, after)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert tuned.lineage()["rows_digest"] == record["rows_digest"]


def test_the_budget_stops_the_tuning_and_the_encoder_is_still_saved(tiny_model, tmp_path):
    data = review_data(300, task="classification", seed=2)
    settings = _settings(tmp_path, setfit_budget_minutes=0.5)  # 30 s of a clock that moves 1 s a read

    tuned = contrastive_encoder(
        settings, str(tiny_model), data.train_texts, data.train_targets, tmp_path / "encoder", clock=Clock()
    )

    assert tuned.record["stopped_by"] == "budget"
    assert 0 < tuned.record["pairs_trained"] < tuned.record["pairs_planned"]
    assert (tuned.folder / "model.safetensors").is_file()


def test_one_class_or_mismatched_labels_are_refused(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="at least two classes"):
        contrastive_encoder(_settings(tmp_path), str(tiny_model), ["a", "b"], np.array([1, 1]), tmp_path / "e")
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        contrastive_encoder(_settings(tmp_path), str(tiny_model), ["a", "b"], np.array([1]), tmp_path / "e")
    assert not (tmp_path / "e").exists()

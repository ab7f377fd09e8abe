"""Pruning (models/prune.py): the stated layers and heads, and a folder that loads alone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from refit.models.fusion import FeatureSchema, build_model
from refit.models.inference import collate, encode, predict_texts
from refit.models.objective import per_sample_loss
from refit.models.predict import Predictor
from refit.models.prune import head_counts, head_importance, least_important, prune_heads, remaining_heads
from refit.models.saving import save_checkpoint
from refit.models.train import train

from model_helpers import review_data, tiny_config


def _reload_elsewhere(result, tmp_path) -> Predictor:
    folder = save_checkpoint(result, tmp_path / "ckpt", {"version": "v-pruned"})
    moved = shutil.move(folder, tmp_path / "elsewhere")  # nothing but the folder itself
    return Predictor(moved)


def test_layer_dropping_keeps_the_bottom_layers_and_loads_alone(tiny_model, tmp_path):
    data = review_data(120)
    result = train(tiny_config(tiny_model, epochs=1, keep_layers=1), data)
    assert len(result.model.encoder.encoder.layer) == 1
    assert result.architecture["encoder"]["num_hidden_layers"] == 1
    base, _ = build_model(str(tiny_model), 1, FeatureSchema())
    loaded = _reload_elsewhere(result, tmp_path)
    assert loaded.model.encoder.config.num_hidden_layers == 1 and len(loaded.model.encoder.encoder.layer) == 1
    expected = predict_texts(result.model, result.tokenizer, data.dev_texts, None, "regression", 64)
    assert np.allclose(loaded.predict(data.dev_texts), expected, atol=1e-6)
    assert sum(p.numel() for p in loaded.model.parameters()) < sum(p.numel() for p in base.parameters())
    with pytest.raises(ValueError, match="keep_layers=3"):
        train(tiny_config(tiny_model, epochs=1, keep_layers=3), data)


def test_head_pruning_removes_the_stated_heads_and_loads_alone(tiny_model, tmp_path):
    data = review_data(120)
    result = train(tiny_config(tiny_model, epochs=2, prune_heads=2, prune_after_epoch=1), data)
    # The tiny BERT has 2 layers of 2 heads; 2 heads go, never a layer's last one.
    assert head_counts(result.model.encoder) == [1, 1]
    assert result.history[0]["pruned_heads"] == 2
    assert result.best_epoch == 2  # only epochs after the pruning can be the kept one
    loaded = _reload_elsewhere(result, tmp_path)
    assert head_counts(loaded.model.encoder) == [1, 1]
    meta = json.loads((loaded.folder / "refit.json").read_text())
    assert sum(len(v) for v in meta["architecture"]["pruned_heads"].values()) == 2
    assert loaded.model.encoder.encoder.layer[0].attention.self.query.out_features == 32
    expected = predict_texts(result.model, result.tokenizer, data.dev_texts, None, "regression", 64)
    assert np.allclose(loaded.predict(data.dev_texts), expected, atol=1e-6)
    # The unpadded forwards (both attention layouts) and the plain padded one agree on a pruned encoder.
    for layout in ("encoder", "packed"):
        loaded.model.attention = layout
        assert np.allclose(loaded.predict(data.dev_texts), expected, atol=1e-5), layout


def test_importance_ranks_heads_by_what_removing_them_costs(tiny_model):
    import copy

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, tokenizer = build_model(str(tiny_model), 1, FeatureSchema())
    model.eval()
    data = review_data(64)
    inputs = collate(encode(tokenizer, data.train_texts, 64), tokenizer.pad_token_id)
    targets = torch.tensor(data.train_targets)
    config = tiny_config(tiny_model)

    def loss(m) -> float:
        with torch.no_grad():
            return float(per_sample_loss(config, m(**inputs), targets).sum())

    try:
        scores = head_importance(model, [(inputs, targets)], lambda out, y: per_sample_loss(config, out, y).sum())
        assert scores.shape == (2, 2) and np.all(scores >= 0)
        heads = remaining_heads(model.encoder)
        least = least_important(scores, 1, heads)
        layer, [head] = next(iter(least.items()))
        assert scores[layer, head] == scores.min()
        most_layer, most_head = np.unravel_index(np.argmax(scores), scores.shape)
        costs = {}
        for name, remove in (("least", least), ("most", {int(most_layer): [int(most_head)]})):
            pruned = copy.deepcopy(model)
            prune_heads(pruned.encoder, remove)
            assert sum(head_counts(pruned.encoder)) == 3
            costs[name] = abs(loss(pruned) - loss(model))
        assert costs["least"] < costs["most"]
        # Never a layer's last head, however many are asked for.
        assert all(len(v) == 1 for v in least_important(scores, 4, heads).values())
    finally:
        torch.set_num_threads(threads)

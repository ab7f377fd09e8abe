"""The fusion model: behaviour features next to the text, their schema, and self-describing checkpoints."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from refit.core.errors import CheckpointError
from refit.models.config import TrainData
from refit.models.fusion import FeatureSchema, SatisfactionModel
from refit.models.predict import Predictor
from refit.models.saving import save_checkpoint
from refit.models.train import train
from refit.ops.synth import generate_feedback

from model_helpers import tiny_config

FEATURES = {"device": "categorical", "tenure": "numeric"}


def test_schema_standardizes_numbers_and_buckets_unknown_categories():
    frame = pd.DataFrame({"tenure": [1.0, 3.0, None, 5.0], "device": ["ios", "web", "ios", None]})
    schema = FeatureSchema.fit(FEATURES, frame)
    assert schema.numeric == ["tenure"] and schema.means == [3.0]
    assert schema.stds[0] == pytest.approx(np.std([1.0, 3.0, 5.0]))
    assert schema.vocab["device"] == ["ios", "web"]  # by frequency; index 0 is the unknown bucket
    encoded = schema.encode(pd.DataFrame({"tenure": [3.0, None], "device": ["web", "tv"]}), 2)
    assert encoded["numeric"][:, 0].tolist() == [0.0, 0.0]  # the mean, and a missing value read as the mean
    assert encoded["categorical"][:, 0].tolist() == [2, 0]  # "tv" was never seen: unknown
    # a frame without the feature columns at all still encodes (every value missing)
    assert schema.encode(None, 3)["categorical"].tolist() == [[0], [0], [0]]
    assert FeatureSchema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema


def test_schema_rejects_bad_input_with_a_clear_error():
    with pytest.raises(ValueError, match="type must be numeric or categorical"):
        FeatureSchema.fit({"x": "text"}, pd.DataFrame({"x": [1]}))
    schema = FeatureSchema.fit({}, pd.DataFrame({"v": [[1.0, 2.0], None]}), vector="v")
    assert schema.vector_dim == 2
    with pytest.raises(ValueError, match="row 0 has 3 values, expected 2"):
        schema.encode(pd.DataFrame({"v": [[1.0, 2.0, 3.0]]}), 1)


def feature_only_data(n: int = 500, seed: int = 5) -> TrainData:
    """Real-looking reviews whose score depends only on two behaviour features, not on the words."""
    rows = generate_feedback(n, seed=seed)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"device": rng.choice(["ios", "android", "web"], size=n), "tenure": rng.normal(12.0, 4.0, size=n)}
    )
    y = 0.2 + 0.55 * (frame["device"] == "ios").to_numpy() + 0.12 * np.tanh((frame["tenure"].to_numpy() - 12) / 4)
    texts = [r["text"] for r in rows]
    cut = int(n * 0.8)
    return TrainData(
        texts[:cut], y[:cut], texts[cut:], y[cut:], frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:]
    )


@pytest.fixture(scope="module")
def fused(tiny_model):
    data = feature_only_data()
    result = train(tiny_config(tiny_model, feature_types=FEATURES, epochs=3, max_length=32), data)
    return data, result


def test_fusion_learns_a_label_that_only_the_features_carry(tiny_model, fused):
    data, result = fused
    baseline_mse = float(np.mean((data.dev_targets - data.train_targets.mean()) ** 2))
    text_only = train(tiny_config(tiny_model, epochs=3, max_length=32), data)
    assert isinstance(result.model, SatisfactionModel) and result.model.fused and not text_only.model.fused
    assert result.dev_metrics["mse"] < 0.25 * baseline_mse
    assert text_only.dev_metrics["mse"] > 0.8 * baseline_mse


def test_fused_checkpoint_loads_from_its_folder_alone(fused, tmp_path):
    data, result = fused
    saved = save_checkpoint(result, tmp_path / "ckpt", lineage={"version": "v-fused", "snapshot_id": 3})
    folder = shutil.copytree(saved, tmp_path / "elsewhere")  # nothing outside the folder is needed
    shutil.rmtree(saved)
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "refit.json", "tokenizer.json", "training_curve.png"} <= names
    meta = json.loads((folder / "refit.json").read_text())
    assert meta["features"]["numeric"] == ["tenure"] and meta["features"]["vocab"]["device"]
    assert meta["features"]["means"][0] == pytest.approx(data.train_features["tenure"].mean())
    assert meta["architecture"]["head"] == "gated_fusion"
    assert meta["lineage"]["init"]["from"] == "base" and meta["lineage"]["seed"] == 3

    predictor = Predictor(folder)
    assert predictor.feature_names == ["tenure", "device"]
    prediction = predictor.predict(data.dev_texts, data.dev_features)
    assert np.mean((prediction - data.dev_targets) ** 2) == pytest.approx(result.dev_metrics["mse"], abs=1e-5)
    # rows without features, or with a value never seen, still score
    unseen = predictor.predict(data.dev_texts[:2], [{"device": "smart-tv"}, {}])
    assert np.all((unseen >= 0) & (unseen <= 1))
    assert predictor.embed(data.dev_texts[:3]).shape == (3, 64)

    (folder / "refit.json").write_text(json.dumps({**meta, "architecture": None}))
    with pytest.raises(CheckpointError, match="predates"):
        Predictor(folder)


def test_an_embedding_vector_column_is_fused_and_rows_without_it_still_score(tiny_model):
    rng = np.random.default_rng(2)
    n = 300
    rows = generate_feedback(n, seed=4)
    vectors = rng.normal(size=(n, 8))
    has = rng.random(n) < 0.7
    y = np.where(has, 1 / (1 + np.exp(-3 * vectors[:, 0])), 0.5)
    frame = pd.DataFrame({"item_vec": [list(v) if h else None for v, h in zip(vectors, has, strict=True)]})
    texts = [r["text"] for r in rows]
    data = TrainData(texts[:240], y[:240], texts[240:], y[240:], frame.iloc[:240], frame.iloc[240:])
    result = train(tiny_config(tiny_model, vector_feature="item_vec", epochs=3, max_length=32), data)
    baseline_mse = float(np.mean((data.dev_targets - data.train_targets.mean()) ** 2))
    assert result.model.schema.vector_dim == 8
    assert result.dev_metrics["mse"] < 0.5 * baseline_mse


def test_text_only_head_is_the_default():
    from transformers import BertConfig, BertModel

    encoder = BertModel(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        add_pooling_layer=False,
    )
    model = SatisfactionModel(encoder, n_outputs=3)
    assert not model.fused
    logits = model(torch.tensor([[2, 5, 7, 0]]), torch.tensor([[1, 1, 1, 0]]))
    assert logits.shape == (1, 3)


@pytest.mark.parametrize("train_mode", [False, True])
def test_packed_and_unpadded_forwards_give_the_padded_result_and_gradients(train_mode):
    """A batch of mixed lengths (one with no padding, one a single token): the packed attention
    (one block per sequence) and the unpadded one with padded attention give the plain Hugging
    Face forward's output and gradients, in eval mode and in train mode with dropout off."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = SatisfactionModel(BertModel(config, add_pooling_layer=False), n_outputs=1, dropout=0.0)
    model.train(train_mode)
    ids = torch.tensor([[2, 5, 7, 9, 3, 4, 6], [2, 8, 3, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0, 0], [2, 9, 9, 8, 7, 3, 0]])
    mask = (ids != 0).long()
    outputs, grads = {}, {}
    for layout in ("encoder", "padded", "packed"):
        model.attention = layout
        model.zero_grad()
        out = model(ids, mask)
        (out * torch.arange(1, 5).unsqueeze(1)).sum().backward()
        outputs[layout] = out.detach()
        grads[layout] = torch.cat(
            [
                model.encoder.encoder.layer[0].attention.self.query.weight.grad.flatten(),
                model.encoder.embeddings.word_embeddings.weight.grad.flatten(),
            ]
        )
    for layout in ("padded", "packed"):
        assert torch.allclose(outputs["encoder"], outputs[layout], atol=1e-6), layout
        assert torch.allclose(grads["encoder"], grads[layout], atol=1e-6), layout
    assert grads["packed"].abs().sum() > 0
    assert not torch.allclose(outputs["packed"][0], outputs["packed"][1])


def test_the_jagged_packed_attention_a_gpu_takes_equals_one_call_per_sequence():
    from refit.models.unpad import packed_attention

    torch.manual_seed(2)
    heads, dim, sizes = 4, 8, [5, 3, 1, 7]
    offsets = torch.tensor([0, 5, 8, 9, 16])
    q, k, v = (torch.randn(sum(sizes), heads * dim, requires_grad=True) for _ in range(3))
    grads = []
    outs = []
    for jagged in (False, True):
        out = packed_attention(q, k, v, sizes, offsets, heads, dim, 0.0, False, dim**-0.5, jagged=jagged)
        (out * torch.arange(out.shape[0]).unsqueeze(1)).sum().backward()
        outs.append(out.detach())
        grads.append(q.grad.clone())
        q.grad = None
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    # and each sequence sees only itself: changing one sequence leaves the others' rows alone
    k2 = k.detach().clone()
    k2[:5] = torch.randn(5, heads * dim)  # (a constant added to every key would not show: softmax ignores it)
    moved = packed_attention(q, k2, v, sizes, offsets, heads, dim, 0.0, False, dim**-0.5, jagged=True)
    assert torch.allclose(moved[5:], outs[1][5:], atol=1e-6) and not torch.allclose(moved[:5], outs[1][:5])


def test_the_cpu_dropout_keeps_its_share_and_scales_what_it_keeps():
    from refit.models.unpad import dropout

    torch.manual_seed(3)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.1, True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.004  # 6 sigma of 200,000 draws is 0.004
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # the gradient flows through the kept elements only
    assert torch.equal(dropout(x, 0.1, False), x)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.1, True), y)  # the seed decides the mask


def test_the_bf16_attention_softmax_matches_one_taken_through_fp32_and_back():
    """models/unpad.attention takes a bf16 softmax in bf16: the same probabilities and gradients as
    Hugging Face's softmax through fp32 and back, to bf16 rounding, with the same dropout draws."""
    from refit.models.unpad import attention, dropout

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 37, 16).bfloat16() for _ in range(3))
    mask = (torch.arange(37)[None, :] < torch.tensor([[37], [20], [5]]))[:, None, None, :]

    def through_fp32(q, k, v):
        scores = (torch.matmul(q, k.transpose(-1, -2)) * 0.25).masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(dropout(probs, 0.1, True), v)

    outs, grads = [], []
    for fn in (lambda q, k, v: attention(q, k, v, mask, 0.1, True, 0.25), through_fp32):
        torch.manual_seed(1)  # the same dropout mask for both
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.float().pow(2).sum().backward()
        outs.append(out.float())
        grads.append([t.grad.float() for t in leaves])
    scale = outs[1].abs().max()
    assert (outs[0] - outs[1]).abs().max() <= 0.02 * scale
    for ours, theirs in zip(*grads, strict=True):
        assert (ours - theirs).abs().max() <= 0.02 * theirs.abs().max()
    assert not torch.equal(outs[0], torch.zeros_like(outs[0]))

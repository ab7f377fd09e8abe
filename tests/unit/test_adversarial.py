"""Adversarial training on the word embeddings (models/adversarial.py): FGM and PGD raise the loss."""

from __future__ import annotations

import pytest
import torch

from refit.models.adversarial import EmbeddingAttack, _added, word_embeddings
from refit.models.fusion import FeatureSchema, build_model
from refit.models.inference import collate, encode
from refit.models.objective import per_sample_loss
from refit.models.train import train

from model_helpers import review_data, tiny_config


@pytest.fixture
def batch(tiny_model):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite shares two cores
    torch.manual_seed(0)
    model, tokenizer = build_model(str(tiny_model), 1, FeatureSchema())
    data = review_data(64)
    inputs = collate(encode(tokenizer, data.train_texts[:16], 64), tokenizer.pad_token_id)
    targets = torch.tensor(data.train_targets[:16])
    config = tiny_config(tiny_model)
    model.eval()  # no dropout: the loss is a function of the weights alone

    def loss_fn():
        return per_sample_loss(config, model(**inputs), targets).mean()

    yield model, loss_fn
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_attack_raises_the_loss_and_restores_the_embeddings(batch, method):
    model, loss_fn = batch
    attack = EmbeddingAttack(model, method, epsilon=0.5, steps=3)
    weight = word_embeddings(model).weight
    original = weight.detach().clone()
    clean = loss_fn()
    clean.backward()
    clean_grad = weight.grad.detach().clone()
    delta = attack.perturb(loss_fn, clean_grad)
    assert float(torch.linalg.vector_norm(delta)) == pytest.approx(0.5, rel=1e-4)  # on the epsilon ball
    with _added(weight, delta), torch.no_grad():
        attacked = float(loss_fn())
    # Along the gradient the loss goes up; a random step of the same size barely moves it.
    assert attacked > float(clean) + 1e-4
    random = torch.randn_like(delta)
    with _added(weight, random * (0.5 / torch.linalg.vector_norm(random))), torch.no_grad():
        assert abs(float(loss_fn()) - float(clean)) < attacked - float(clean)
    assert torch.equal(weight, original)

    adversarial_loss = attack.backward_adversarial(loss_fn)
    assert adversarial_loss == pytest.approx(attacked, rel=1e-4)
    assert torch.equal(weight, original)  # restored exactly
    assert not torch.allclose(weight.grad, 2 * clean_grad)  # the adversarial pass added its own gradients


def test_pgd_goes_further_than_fgm(batch):
    model, loss_fn = batch
    weight = word_embeddings(model).weight
    loss_fn().backward()
    grad = weight.grad.detach().clone()
    losses = {}
    for method in ("fgm", "pgd"):
        delta = EmbeddingAttack(model, method, epsilon=2.0, steps=4).perturb(loss_fn, grad)
        with _added(weight, delta), torch.no_grad():
            losses[method] = float(loss_fn())
    assert losses["pgd"] >= losses["fgm"] - 1e-6


def test_fgm_training_changes_the_model_and_frozen_embeddings_stay(tiny_model):
    data = review_data(120)
    plain = train(tiny_config(tiny_model, epochs=1), data)
    fgm = train(tiny_config(tiny_model, epochs=1, adversarial="fgm", adversarial_epsilon=1.0), data)
    assert plain.dev_metrics != fgm.dev_metrics
    frozen = train(tiny_config(tiny_model, epochs=1, adversarial="fgm", strategy="freeze", freeze_layers=1), data)
    base, _ = build_model(str(tiny_model), 1, FeatureSchema())
    assert torch.equal(word_embeddings(frozen.model).weight, word_embeddings(base).weight)
    with pytest.raises(ValueError, match="adversarial"):
        tiny_config(tiny_model, adversarial="fsgm")

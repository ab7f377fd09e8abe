"""The auto recipe's training behaviour on the tiny BERT: early stopping that fires and keeps the
best epoch's weights, and a compute budget that stops training with the best weights so far."""

from dataclasses import replace

import numpy as np
import pytest

from refit.core.settings import load_settings
from refit.models.config import TrainData
from refit.models.inference import predict_texts
from refit.models.metrics import task_metrics
from refit.models.train import train
from refit.training.modeling import train_config
from refit.training.recipe import decide

from model_helpers import review_data


def _shuffled(data: TrainData, seed: int = 0) -> TrainData:
    """The same texts with their training targets shuffled: nothing to learn, so the dev score
    peaks early and early stopping has something to stop."""
    rng = np.random.default_rng(seed)
    return replace(data, train_targets=rng.permutation(data.train_targets))


def _dev_score(result, data: TrainData) -> float:
    config = result.config
    prediction = predict_texts(result.model, result.tokenizer, data.dev_texts, None, config.task, config.max_length)
    return task_metrics(config.task, data.dev_targets, prediction, config.n_outputs)[config.metric]


def _default_config(tiny_model, data: TrainData, **pins):
    """The config the auto recipe gives for ``data`` with nothing pinned but ``pins``."""
    settings = load_settings(base_model=str(tiny_model), max_length=64, num_threads=1, **pins)
    recipe = decide(settings, len(data.train_texts), data.train_targets)
    return train_config(settings, base_model=str(tiny_model), recipe=recipe), recipe


def test_early_stopping_fires_and_restores_the_best_weights_under_the_default_recipe(tiny_model):
    data = _shuffled(review_data(300))
    # the recipe's schedule and patience; a rate that fits the tiny random BERT, which then
    # memorizes the shuffled targets and gets worse on the fold
    config, recipe = _default_config(tiny_model, data, learning_rate=1e-3)
    assert recipe.reasons["epochs"].startswith("about") and recipe.reasons["patience"] != "pinned"
    assert config.epochs > config.patience + 1  # the default recipe leaves room to stop

    result = train(config, data)

    assert result.stopped_by == "patience" and result.stopped_early
    assert len(result.history) < config.epochs
    assert len(result.history) == result.best_epoch + config.patience + 1
    best = result.history[result.best_epoch - 1][f"dev_{config.metric}"]
    last = result.history[-1][f"dev_{config.metric}"]
    assert best != last
    # the returned model is the best epoch's, not the last one's
    assert abs(_dev_score(result, data) - best) < 1e-5


def test_the_budget_stops_training_and_keeps_the_best_weights(tiny_model):
    data = review_data(600)
    config, _ = _default_config(tiny_model, data, epochs=50, patience=50, learning_rate=1e-3)
    config = replace(config, budget_seconds=4.0)

    result = train(config, data)

    assert result.stopped_by == "budget"
    assert len(result.history) < 50
    assert result.history[-1].get("stopped_at_budget") is True
    assert sum(r["train_seconds"] for r in result.history) < 4.0 + 2 * result.history[0]["train_seconds"] + 1
    best = result.history[result.best_epoch - 1][f"dev_{config.metric}"]
    assert abs(_dev_score(result, data) - best) < 1e-5


def test_the_head_gets_its_own_learning_rate_in_the_optimizer(tiny_model):
    import torch

    from refit.models.optimization import StepPlan, make_optimizer
    from refit.models.strategies import initial_model

    data = review_data(64)
    config, _ = _default_config(tiny_model, data)
    assert config.head_lr_factor == 20.0
    model, _, _ = initial_model(config, None)
    optimizer, _ = make_optimizer(model, config, torch.device("cpu"), StepPlan.of(config, 64))
    head = {id(p) for p in model.head.parameters()}
    for group in optimizer.param_groups:
        is_head = {id(p) in head for p in group["params"]}
        assert len(is_head) == 1
        assert group["initial_lr"] == pytest.approx(config.learning_rate * (20.0 if is_head.pop() else 1.0))

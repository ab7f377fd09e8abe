"""A run's parameters are settings: one definition of each choice, validated on every path in.

The fine-tune strategy, the task and the default labels are defined once in refit.core.settings;
the settings field, the retrain flow's parameter and the trainer's config take the same type, so
they accept exactly the same values. A flow parameter overrides a setting through
``Settings.with_overrides``, which validates like a fresh load (``model_copy`` did not).
"""

from __future__ import annotations

from typing import get_args, get_type_hints

import pytest

from refit.core.errors import ConfigError
from refit.core.settings import DEFAULT_LABELS, STRATEGIES, TASKS, Settings, Strategy, Task, load_settings
from refit.flows.retrain import retrain
from refit.models.config import TrainConfig


def test_a_bad_strategy_given_to_the_flow_is_a_clear_error_before_anything_runs():
    with pytest.raises(ConfigError) as info:
        retrain.fn(strategy="quantum")  # the flow's body, as Prefect runs it after its own checks
    message = str(info.value)
    assert "REFIT_FINE_TUNE" in message and "'full', 'freeze' or 'lora'" in message
    assert "\n" not in message


def test_overrides_are_validated_like_settings_and_none_keeps_the_setting():
    settings = load_settings()
    assert settings.with_overrides(fine_tune="lora").fine_tune == "lora"
    assert settings.with_overrides(fine_tune=None, warm_start=None) == settings
    assert settings.fine_tune == "full"  # the original is unchanged
    with pytest.raises(ConfigError, match="REFIT_SERVE_PORT"):
        settings.with_overrides(serve_port=70_000)
    with pytest.raises(ConfigError, match="REFIT_FINE_TUNE=lora"):  # the cross-field rules hold too
        settings.with_overrides(fine_tune="lora", prune_heads=2)
    with pytest.raises(ConfigError, match="unknown setting"):
        settings.with_overrides(strategy="lora")


def test_the_flow_the_settings_and_the_trainer_share_one_strategy_type():
    flow_choices = get_type_hints(retrain.fn)["strategy"]
    assert set(get_args(flow_choices)) == {Strategy, type(None)}
    assert Settings.model_fields["fine_tune"].annotation == Strategy
    assert get_type_hints(TrainConfig)["strategy"] == Strategy
    assert STRATEGIES == ("full", "freeze", "lora")


@pytest.mark.parametrize("value", [*STRATEGIES, "quantum"])
def test_settings_and_trainer_accept_exactly_the_same_strategies(value):
    settings_accepts = _accepts(lambda: load_settings().with_overrides(fine_tune=value), ConfigError)
    trainer_accepts = _accepts(lambda: TrainConfig(strategy=value), ValueError)
    assert settings_accepts == trainer_accepts == (value in get_args(Strategy))


@pytest.mark.parametrize("value", [*TASKS, "ranking"])
def test_settings_and_trainer_accept_exactly_the_same_tasks(value):
    settings_accepts = _accepts(lambda: load_settings().with_overrides(task=value), ConfigError)
    trainer_accepts = _accepts(lambda: TrainConfig(task=value), ValueError)
    assert settings_accepts == trainer_accepts == (value in get_args(Task))
    assert get_type_hints(TrainConfig)["task"] == Settings.model_fields["task"].annotation == Task


def test_settings_and_trainer_default_to_the_same_labels():
    assert load_settings().labels == TrainConfig().labels == list(DEFAULT_LABELS)


def _accepts(make, error: type[Exception]) -> bool:
    try:
        make()
    except error:
        return False
    return True

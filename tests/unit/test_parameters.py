"""A run's parameters are settings: one definition of each choice, validated on every path in.

The fine-tuning strategy, the task and the default labels are defined once in refit.core.settings;
the settings field, the retrain flow's parameter and the trainer's config take the same type, so
they accept exactly the same values. A flow parameter overrides a setting through
``Settings.with_overrides``, which validates like a fresh load (``model_copy`` did not).
"""

from __future__ import annotations

import json
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
    assert "REFIT_STRATEGY" in message and "'full', 'freeze' or 'lora'" in message
    assert "\n" not in message


def test_overrides_are_validated_like_settings_and_none_keeps_the_setting():
    settings = load_settings()
    assert settings.with_overrides(strategy="lora").strategy == "lora"
    assert settings.with_overrides(strategy=None, warm_start=None) == settings
    assert settings.strategy == "full"  # the original is unchanged
    with pytest.raises(ConfigError, match="REFIT_SERVE_PORT"):
        settings.with_overrides(serve_port=70_000)
    with pytest.raises(ConfigError, match="REFIT_STRATEGY=lora"):  # the cross-field rules hold too
        settings.with_overrides(strategy="lora", prune_heads=2)
    with pytest.raises(ConfigError, match="unknown setting"):  # the former name is the environment's only
        settings.with_overrides(fine_tune="lora")


def test_the_flow_the_settings_and_the_trainer_share_one_strategy_type():
    flow_choices = get_type_hints(retrain.fn)["strategy"]
    assert set(get_args(flow_choices)) == {Strategy, type(None)}
    assert Settings.model_fields["strategy"].annotation == Strategy
    assert get_type_hints(TrainConfig)["strategy"] == Strategy
    assert STRATEGIES == ("full", "freeze", "lora")


@pytest.mark.parametrize("value", [*STRATEGIES, "quantum"])
def test_settings_and_trainer_accept_exactly_the_same_strategies(value):
    settings_accepts = _accepts(lambda: load_settings().with_overrides(strategy=value), ConfigError)
    trainer_accepts = _accepts(lambda: TrainConfig(strategy=value), ValueError)
    assert settings_accepts == trainer_accepts == (value in get_args(Strategy))


def test_the_former_variable_still_sets_the_strategy_and_the_new_one_wins(monkeypatch):
    monkeypatch.delenv("REFIT_STRATEGY", raising=False)
    monkeypatch.setenv("REFIT_FINE_TUNE", "lora")
    assert load_settings().strategy == "lora"
    monkeypatch.setenv("REFIT_STRATEGY", "freeze")  # both set: the current name decides
    assert load_settings().strategy == "freeze"
    monkeypatch.setenv("REFIT_STRATEGY", "lora")
    assert load_settings().strategy == "lora"
    assert load_settings(strategy="full").strategy == "full"  # a value given in code beats both
    monkeypatch.delenv("REFIT_STRATEGY")
    monkeypatch.setenv("REFIT_FINE_TUNE", "quantum")  # a bad value names the variable and its former name
    with pytest.raises(ConfigError, match=r"REFIT_STRATEGY \(or REFIT_FINE_TUNE\): Input should be"):
        load_settings()


def test_the_strategy_survives_the_training_childs_settings_file(monkeypatch, tmp_path):
    from refit.training.launch import _settings_file

    monkeypatch.setenv("REFIT_FINE_TUNE", "freeze")  # the child's environment must not undo an override
    settings = load_settings().with_overrides(strategy="lora", work_dir=str(tmp_path))
    data = json.loads(_settings_file(settings, tmp_path).read_text())
    assert data["strategy"] == "lora" and "fine_tune" not in data
    assert load_settings(**data).strategy == "lora"


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

"""Retrain policies a backtest compares: never, every K steps, or on drift (with N-of-M
confirmation, a cooldown and a window), each with the promotion rule it runs under."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from refit.core.errors import InputError

_POLICY = re.compile(r"^(never|schedule|drift)(?::(.*))?$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([hdw]?)$")
# A policy's promotion rule (``+RULE``): the gate's rule and whether the dev set grows.
GATE_RULES = {
    "recent": {"gate_rule": "recent", "devset_grow": True},
    "pooled": {"gate_rule": "pooled", "devset_grow": True},
    "whole": {"gate_rule": "whole", "devset_grow": True},
    "old": {"gate_rule": "whole", "devset_grow": False},
}


@dataclass(frozen=True)
class Policy:
    """When to retrain: never, every K steps, or on drift (with N-of-M confirmation and cooldown)."""

    name: str
    kind: str  # never | schedule | drift
    every: int = 0
    confirm_n: int = 1
    confirm_m: int = 1
    cooldown_hours: float = 0.0
    window_days: float | None = None  # None: the settings' REFIT_DRIFT_WINDOW_DAYS
    gate_rule: str | None = None  # a key of GATE_RULES; None: the settings' REFIT_GATE_RULE

    @classmethod
    def parse(cls, spec: str) -> Policy:
        """``never``, ``schedule:K``, ``drift`` or ``drift:N/M[:COOLDOWN]`` (cooldown in hours, or
        with a unit: ``36h``, ``14d``, ``2w``); a drift policy may end in ``@WINDOW`` (``drift@14d``):
        its current window is the last WINDOW of feedback instead of all since the champion.

        Any policy may end in ``+RULE``, the promotion rule it runs under: ``recent`` (the dev set
        grows, and the rows newer than the champion decide, one-sided), ``whole`` (the dev set
        grows, every dev row decides, two-sided) or ``old`` (a dev set fixed by hand, every row,
        two-sided): ``schedule:1+old`` against ``schedule:1+recent`` compares the rules on one replay."""
        spec, _, rule = spec.strip().partition("+")
        if rule:
            if rule not in GATE_RULES:
                raise InputError(f"policy {spec}+{rule}: the promotion rule is one of {', '.join(GATE_RULES)}")
            policy = cls.parse(spec)
            return replace(policy, name=f"{policy.name}-gate-{rule}", gate_rule=rule)
        spec, _, window = spec.strip().partition("@")
        if window:
            days = _hours(window, spec) / 24
            if not spec.startswith("drift"):
                raise InputError(f"policy {spec}@{window}: only drift policies have a window")
            policy = cls.parse(spec)
            return replace(policy, name=f"{policy.name}-w{days:g}d", window_days=days)
        match = _POLICY.match(spec.strip())
        if not match:
            raise InputError(f"unknown policy {spec!r}: expected never, schedule:K, drift or drift:N/M[:COOLDOWN]")
        kind, arg = match.group(1), match.group(2)
        if kind == "never":
            if arg:
                raise InputError(f"policy {spec!r}: never takes no argument")
            return cls("never", "never")
        if kind == "schedule":
            every = int(arg) if arg and arg.isdigit() else 0
            if every < 1:
                raise InputError(f"policy {spec!r}: expected schedule:K with K >= 1 steps")
            return cls(f"schedule-{every}", "schedule", every=every)
        if not arg:
            return cls("drift", "drift")
        parts = arg.split(":")
        n_m = parts[0].split("/")
        if len(n_m) != 2 or not all(p.isdigit() for p in n_m) or not 1 <= int(n_m[0]) <= int(n_m[1]):
            raise InputError(f"policy {spec!r}: expected drift:N/M with 1 <= N <= M")
        cooldown = 0.0
        if len(parts) > 2:
            raise InputError(f"policy {spec!r}: expected drift:N/M[:COOLDOWN]")
        if len(parts) == 2:
            cooldown = _hours(parts[1], spec)
        n, m = int(n_m[0]), int(n_m[1])
        name = f"drift-{n}of{m}" + (f"-cd{cooldown:g}h" if cooldown else "")
        return cls(name, "drift", confirm_n=n, confirm_m=m, cooldown_hours=cooldown)

    def settings_overrides(self) -> dict:
        overrides = {
            "drift_confirm_n": self.confirm_n,
            "drift_confirm_m": self.confirm_m,
            "drift_cooldown_hours": self.cooldown_hours,
        }
        if self.window_days is not None:
            overrides["drift_window_days"] = self.window_days
        if self.gate_rule is not None:
            overrides.update(GATE_RULES[self.gate_rule])
        return overrides


def _hours(duration: str, spec: str) -> float:
    match = _DURATION.match(duration)
    if not match:
        raise InputError(f"policy {spec!r}: {duration!r} is not a duration like 36h, 14d or 2w")
    return float(match.group(1)) * {"": 1, "h": 1, "d": 24, "w": 168}[match.group(2)]

"""Retrain policies a backtest compares: never, every K steps, or on drift (with N-of-M
confirmation, a cooldown and a window)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from refit.core.errors import InputError

_POLICY = re.compile(r"^(never|schedule|drift)(?::(.*))?$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([hdw]?)$")


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

    @classmethod
    def parse(cls, spec: str) -> Policy:
        """``never``, ``schedule:K``, ``drift`` or ``drift:N/M[:COOLDOWN]`` (cooldown in hours, or
        with a unit: ``36h``, ``14d``, ``2w``); a drift policy may end in ``@WINDOW`` (``drift@14d``):
        its current window is the last WINDOW of feedback instead of all since the champion."""
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
        return overrides


def _hours(duration: str, spec: str) -> float:
    match = _DURATION.match(duration)
    if not match:
        raise InputError(f"policy {spec!r}: {duration!r} is not a duration like 36h, 14d or 2w")
    return float(match.group(1)) * {"": 1, "h": 1, "d": 24, "w": 168}[match.group(2)]

"""Safety that every policy gets, so a new policy cannot forget it.

`Bounded` clamps each knob change into the bounds derived from the config and the platform, drops
changes for unknown jobs or unavailable CPUs, and records what it changed in the action's notes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from cotrain.control import Action, InferenceChange, Observation, TrainingChange
from cotrain.controllers.base import Policy

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class KnobBounds:
    max_batch_size: tuple[int, int]
    max_queue_delay_ms: tuple[float, float]
    threads: tuple[int, int]
    num_workers: tuple[int, int]
    cpus: tuple[int, ...]
    jobs: frozenset[str]
    power_modes: frozenset[str] | None = None  # names the platform offers; None: no modes
    batch_size: tuple[int, int] = (1, 65_536)
    duty_cycle: tuple[float, float] = (0.05, 1.0)
    variants: frozenset[str] | None = None  # the inference ladder; None: no ladder
    instances: tuple[int, int] = (1, 16)


def _clamp(name: str, value: N | None, lo: N, hi: N, notes: list[str]) -> N | None:
    if value is None:
        return None
    clamped = min(max(value, lo), hi)
    if clamped != value:
        notes.append(f"{name} {value} clamped to {clamped}")
    return clamped


def _cpus(
    name: str, value: tuple[int, ...] | None, allowed: tuple[int, ...], notes: list[str]
) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not value or not set(value) <= set(allowed):
        notes.append(f"{name} {list(value)} dropped: not within available CPUs {list(allowed)}")
        return None
    return tuple(sorted(set(value)))


def bound_action(action: Action, bounds: KnobBounds) -> Action:
    notes: list[str] = []
    inference = None
    if action.inference is not None:
        a = action.inference
        variant = a.variant
        if variant is not None and bounds.variants is not None and variant not in bounds.variants:
            notes.append(f"variant {variant!r} dropped: not in the ladder")
            variant = None
        inference = InferenceChange(
            variant=variant,
            max_batch_size=_clamp("max_batch_size", a.max_batch_size, *bounds.max_batch_size, notes),
            max_queue_delay_ms=_clamp(
                "max_queue_delay_ms", a.max_queue_delay_ms, *bounds.max_queue_delay_ms, notes
            ),
            threads=_clamp("inference threads", a.threads, *bounds.threads, notes),
            cpus=_cpus("inference cpus", a.cpus, bounds.cpus, notes),
            instances=_clamp("inference instances", a.instances, *bounds.instances, notes),
        )
    training: dict[str, TrainingChange] = {}
    for job, t in action.training.items():
        if job not in bounds.jobs:
            notes.append(f"unknown training job {job!r} ignored")
            continue
        training[job] = TrainingChange(
            threads=_clamp(f"{job} threads", t.threads, *bounds.threads, notes),
            cpus=_cpus(f"{job} cpus", t.cpus, bounds.cpus, notes),
            num_workers=_clamp(f"{job} num_workers", t.num_workers, *bounds.num_workers, notes),
            paused=t.paused,
            batch_size=_clamp(f"{job} batch_size", t.batch_size, *bounds.batch_size, notes),
            duty_cycle=_clamp(f"{job} duty_cycle", t.duty_cycle, *bounds.duty_cycle, notes),
            gate_policy=t.gate_policy if t.gate_policy in (None, "off", "yield") else None,
            gate_max_wait_ms=t.gate_max_wait_ms,
        )
    power_mode = action.power_mode
    if power_mode is not None and bounds.power_modes is not None and power_mode not in bounds.power_modes:
        notes.append(f"power mode {power_mode!r} dropped: not offered by this platform")
        power_mode = None
    return Action(
        inference=inference,
        training=training,
        power_mode=power_mode,
        reason=action.reason,
        notes=(*action.notes, *notes),
    )


class Bounded:
    """Wraps any policy; its actions always come out within `bounds`."""

    def __init__(self, policy: Policy, bounds: KnobBounds) -> None:
        self.policy = policy
        self.bounds = bounds
        self.name = policy.name

    def initial_state(self) -> Any:
        return self.policy.initial_state()

    def decide(self, obs: Observation, state: Any) -> tuple[Action, Any]:
        action, state = self.policy.decide(obs, state)
        return bound_action(action, self.bounds), state


class CanonicalModeNames:
    """Renames a requested power mode to the name the guard's rules use (on the simulated board
    `50W` and a named mode's clock label become `MODE_50W`), so every accepted spelling is judged
    alike."""

    def __init__(self, policy: Policy, canonical: Callable[[str], str]) -> None:
        self.policy = policy
        self.canonical = canonical
        self.name = policy.name

    def initial_state(self) -> Any:
        return self.policy.initial_state()

    def decide(self, obs: Observation, state: Any) -> tuple[Action, Any]:
        action, state = self.policy.decide(obs, state)
        if action.power_mode is not None:
            action = replace(action, power_mode=self.canonical(action.power_mode))
        return action, state


@dataclass(frozen=True)
class PowerModeRules:
    """What the power-mode policy config and the platform allow.

    `order` lists the platform's mode names from most to least capable (`by_capability`), so
    "never step up while over budget" can be checked without knowing per-mode power.
    """

    order: tuple[str, ...]
    allowed: frozenset[str] | None = None  # None: every mode the platform offers
    needs_reboot: frozenset[str] = frozenset()
    allow_reboot_modes: bool = False
    min_dwell_s: float = 0.0
    power_budget_w: float | None = None


class PowerModeGuard:
    """Wraps any policy: a power-mode change passes only if allowed, reboot-free (unless the
    policy says otherwise), after the dwell time since the last switch, and never upwards while
    measured power is over the budget. Refusals are explained in the action's notes."""

    def __init__(self, policy: Policy, rules: PowerModeRules) -> None:
        self.policy = policy
        self.rules = rules
        self.name = policy.name

    def initial_state(self) -> tuple[Any, float | None]:
        return self.policy.initial_state(), None

    def _refusal(self, mode: str, obs: Observation, last_switch_s: float | None) -> str | None:
        rules = self.rules
        if mode not in rules.order:
            return f"power mode {mode!r} does not exist on this platform"
        if rules.allowed is not None and mode not in rules.allowed:
            return f"power mode {mode!r} is not in the policy's allowed modes"
        if mode in rules.needs_reboot and not rules.allow_reboot_modes:
            return f"power mode {mode!r} needs a reboot"
        if last_switch_s is not None and obs.time_s - last_switch_s < rules.min_dwell_s:
            return f"power mode {mode!r} held back: {rules.min_dwell_s:g} s dwell since the last switch"
        current = obs.knobs.power_mode
        over_budget = (
            rules.power_budget_w is not None
            and obs.power_w is not None
            and obs.power_w > rules.power_budget_w
        )
        if over_budget and current in rules.order and rules.order.index(mode) < rules.order.index(current):
            budget = f"{obs.power_w:.1f} W is over the {rules.power_budget_w:g} W budget"
            return f"power mode {mode!r} refused: {budget}"
        return None

    def decide(
        self, obs: Observation, state: tuple[Any, float | None]
    ) -> tuple[Action, tuple[Any, float | None]]:
        inner, last_switch_s = state
        action, inner = self.policy.decide(obs, inner)
        mode = action.power_mode
        if mode is None:
            return action, (inner, last_switch_s)
        if mode == obs.knobs.power_mode:
            return replace(action, power_mode=None), (inner, last_switch_s)
        refusal = self._refusal(mode, obs, last_switch_s)
        if refusal is not None:
            return replace(action, power_mode=None, notes=(*action.notes, refusal)), (
                inner,
                last_switch_s,
            )
        return action, (inner, obs.time_s)

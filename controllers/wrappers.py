"""Safety that every policy gets, so a new policy cannot forget it.

`Bounded` clamps each knob change into the bounds derived from the config and the platform, drops
changes for unknown jobs or unavailable CPUs, and says what it changed in the action's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        inference = InferenceChange(
            max_batch_size=_clamp("max_batch_size", a.max_batch_size, *bounds.max_batch_size, notes),
            max_queue_delay_ms=_clamp(
                "max_queue_delay_ms", a.max_queue_delay_ms, *bounds.max_queue_delay_ms, notes
            ),
            threads=_clamp("inference threads", a.threads, *bounds.threads, notes),
            cpus=_cpus("inference cpus", a.cpus, bounds.cpus, notes),
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
        )
    reason = action.reason
    if notes:
        reason = f"{reason} [bounded: {'; '.join(notes)}]".strip()
    return Action(inference=inference, training=training, reason=reason)


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

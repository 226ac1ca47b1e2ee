"""`schedule`: scripted knob changes at given run times.

Used for sweeps (e.g. CCGrid'23's batch-size sweep inside one run; docs/references.md), demos, and to prove in
tests that every knob applies live. The state is the index of the next step, so the policy stays
pure and a late observation applies every step that has come due, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cotrain.control import Action, InferenceChange, Observation, TrainingChange


@dataclass(frozen=True)
class ScheduledAction:
    at_s: float
    action: Action


class SchedulePolicy:
    name = "schedule"

    def __init__(self, steps: Sequence[ScheduledAction]) -> None:
        self.steps = tuple(sorted(steps, key=lambda s: s.at_s))

    def initial_state(self) -> int:
        return 0

    def decide(self, obs: Observation, state: int) -> tuple[Action, int]:
        due: list[ScheduledAction] = []
        while state < len(self.steps) and self.steps[state].at_s <= obs.time_s:
            due.append(self.steps[state])
            state += 1
        if not due:
            return Action(), state
        return merge_actions(
            [d.action for d in due], reason=f"scheduled at {', '.join(f'{d.at_s:g}s' for d in due)}"
        ), state


def merge_actions(actions: Sequence[Action], reason: str) -> Action:
    """Later actions override earlier ones knob by knob."""
    inference: dict[str, object] = {}
    training: dict[str, dict[str, object]] = {}
    power_mode: str | None = None
    for action in actions:
        power_mode = action.power_mode if action.power_mode is not None else power_mode
        if action.inference is not None:
            inference.update(action.inference.changes())
        for job, change in action.training.items():
            training.setdefault(job, {}).update(change.changes())
    return Action(
        inference=InferenceChange(**inference) if inference else None,  # type: ignore[arg-type]
        training={job: TrainingChange(**c) for job, c in training.items()},  # type: ignore[arg-type]
        power_mode=power_mode,
        reason=reason,
    )

"""`static`: the knobs stay as configured. The baseline every other policy is measured against."""

from __future__ import annotations

from cotrain.control import NO_ACTION, Action, Observation


class StaticPolicy:
    name = "static"

    def initial_state(self) -> None:
        return None

    def decide(self, obs: Observation, state: None) -> tuple[Action, None]:
        return NO_ACTION, state

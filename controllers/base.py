"""The policy protocol. Policies do no I/O and read no clock: time arrives in the Observation."""

from __future__ import annotations

from typing import Any, Protocol

from cotrain.control import Action, Observation


class Policy(Protocol):
    name: str

    def initial_state(self) -> Any:
        """The state handed to the first `decide` call."""
        ...

    def decide(self, obs: Observation, state: Any) -> tuple[Action, Any]:
        """Return the knob changes for this period and the state for the next call."""
        ...

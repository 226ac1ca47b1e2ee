"""`check_policy`: the contract every registered policy must keep (after Gymnasium's check_env).

- `decide` returns an `Action` and a state;
- it is deterministic: the same observation and state give the same action and state;
- it does not mutate its inputs (the state it was given compares equal afterwards);
- wrapped as a run wraps it (`Bounded`, then the power-mode guard), every knob it sets lies
  within the bounds: the wrapped action is a fixed point of `bound_action`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import replace

from cotrain.control import Action, Observation
from cotrain.controllers.base import Policy
from cotrain.controllers.wrappers import Bounded, KnobBounds, PowerModeGuard, PowerModeRules, bound_action


class PolicyContractError(AssertionError):
    pass


def _strip_notes(action: Action) -> Action:
    return replace(action, notes=())


def check_policy(
    policy: Policy,
    observations: Iterable[Observation],
    bounds: KnobBounds,
    rules: PowerModeRules | None = None,
) -> None:
    """Run `policy` over a sequence of observations; raise PolicyContractError on any breach.

    The bounds are judged by the wrapper's own rule, not a copy of it: an action that came out of
    the wrappers must be a fixed point of `bound_action`. The policy also runs inside the
    power-mode guard (with `rules`, or rules that allow every mode of `bounds`), as it does in a
    run, and must keep the same contract there."""
    modes = tuple(sorted(bounds.power_modes or ()))
    wrapped = PowerModeGuard(Bounded(policy, bounds), rules or PowerModeRules(order=modes))
    state = policy.initial_state()
    wrapped_state = wrapped.initial_state()
    for i, obs in enumerate(observations):
        before = copy.deepcopy(state)
        action, next_state = policy.decide(obs, state)
        if not isinstance(action, Action):
            raise PolicyContractError(f"{policy.name}: decide returned {type(action).__name__}, not Action")
        if state != before:
            raise PolicyContractError(f"{policy.name}: decide mutated its state at observation {i}")
        again, again_state = policy.decide(obs, copy.deepcopy(before))
        if again != action or again_state != next_state:
            raise PolicyContractError(f"{policy.name}: not deterministic at observation {i}")
        guarded, wrapped_state = wrapped.decide(obs, wrapped_state)
        rebound = bound_action(guarded, bounds)
        if _strip_notes(rebound) != _strip_notes(guarded) or rebound.notes != guarded.notes:
            problems = rebound.notes[len(guarded.notes) :] or ("a knob the bounds rewrite",)
            raise PolicyContractError(f"{policy.name}: out of bounds after wrapping: {', '.join(problems)}")
        state = next_state

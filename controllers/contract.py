"""`check_policy`: the contract every registered policy must keep (after Gymnasium's check_env).

- `decide` returns an `Action` and a state;
- it is deterministic: the same observation and state give the same action and state;
- it does not mutate its inputs (the state it was given compares equal afterwards);
- wrapped in `Bounded`, every knob it sets lies within the bounds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from cotrain.control import Action, Observation
from cotrain.controllers.base import Policy
from cotrain.controllers.wrappers import Bounded, KnobBounds


class PolicyContractError(AssertionError):
    pass


def _within(action: Action, bounds: KnobBounds) -> list[str]:
    problems = []
    if action.inference is not None:
        a = action.inference
        if (
            a.max_batch_size is not None
            and not bounds.max_batch_size[0] <= a.max_batch_size <= bounds.max_batch_size[1]
        ):
            problems.append(f"max_batch_size {a.max_batch_size}")
        if a.max_queue_delay_ms is not None and not (
            bounds.max_queue_delay_ms[0] <= a.max_queue_delay_ms <= bounds.max_queue_delay_ms[1]
        ):
            problems.append(f"max_queue_delay_ms {a.max_queue_delay_ms}")
        if a.threads is not None and not bounds.threads[0] <= a.threads <= bounds.threads[1]:
            problems.append(f"inference threads {a.threads}")
        if a.cpus is not None and not set(a.cpus) <= set(bounds.cpus):
            problems.append(f"inference cpus {a.cpus}")
        if a.instances is not None and not bounds.instances[0] <= a.instances <= bounds.instances[1]:
            problems.append(f"inference instances {a.instances}")
    for job, t in action.training.items():
        if job not in bounds.jobs:
            problems.append(f"unknown job {job}")
        if t.threads is not None and not bounds.threads[0] <= t.threads <= bounds.threads[1]:
            problems.append(f"{job} threads {t.threads}")
        if t.num_workers is not None and not bounds.num_workers[0] <= t.num_workers <= bounds.num_workers[1]:
            problems.append(f"{job} num_workers {t.num_workers}")
        if t.cpus is not None and not set(t.cpus) <= set(bounds.cpus):
            problems.append(f"{job} cpus {t.cpus}")
    return problems


def check_policy(policy: Policy, observations: Iterable[Observation], bounds: KnobBounds) -> None:
    """Run `policy` over a sequence of observations; raise PolicyContractError on any breach."""
    bounded = Bounded(policy, bounds)
    state = policy.initial_state()
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
        bounded_action, _ = bounded.decide(obs, copy.deepcopy(before))
        problems = _within(bounded_action, bounds)
        if problems:
            raise PolicyContractError(f"{policy.name}: out of bounds after wrapping: {', '.join(problems)}")
        state = next_state

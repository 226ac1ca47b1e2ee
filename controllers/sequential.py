"""`sequential`: training only runs while inference is idle.

The opposite baseline to `naive`: inference gets the device whenever it has a request waiting
or a batch running, training gets whatever is left. Every training job is unpaused and set to
gate `yield` with no wait bound (`gate_max_wait_ms` None, which the change carries explicitly
so that a bound from the config is removed, not kept). Under sustained load training can starve;
that is the point of the baseline, it prices the inference side's best case.

The policy is stateless: each decision compares every job's knobs with the wanted ones and
re-applies only what differs. On the first decision that is the whole setting; afterwards it
holds, and re-applies only if something else (a wrapper, an operator) moved the knobs.
"""

from __future__ import annotations

from cotrain.control import NO_ACTION, Action, Observation, TrainingChange, TrainingKnobs

GATE_POLICY = "yield"


def _change(knobs: TrainingKnobs) -> TrainingChange | None:
    """What to send a job so it waits on the gate without limit and is not paused; None if it does."""
    gate_off = knobs.gate_policy != GATE_POLICY or knobs.gate_max_wait_ms is not None
    if not gate_off and not knobs.paused:
        return None
    return TrainingChange(
        gate_policy=GATE_POLICY if gate_off else None,
        gate_max_wait_ms=None,  # with gate_policy set: unbounded wait
        paused=False if knobs.paused else None,
    )


class SequentialPolicy:
    name = "sequential"

    def initial_state(self) -> None:
        return None

    def decide(self, obs: Observation, state: None) -> tuple[Action, None]:
        changes = {}
        for job in sorted(obs.knobs.training):
            change = _change(obs.knobs.training[job])
            if change is not None:
                changes[job] = change
        if not changes:
            return NO_ACTION, state
        return Action(
            training=changes,
            reason=(
                "sequential: training yields to inference without a wait bound, unpaused "
                f"({', '.join(changes)})"
            ),
        ), state

"""`naive`: inference and training both run free, as if nobody had thought about co-location.

The baseline that shows what co-scheduling is worth: no interleaving gate, nothing adapts. A job
configured with a gate would still step aside for inference, so on its first decision the policy
turns every job's gate `off` (which also drops any wait bound: the policy and its bound are one
setting). It pauses nothing and unpauses nothing either: a job paused in the config stays as the
experiment asked. After that first decision it never acts again, even if the knobs change, so
what is measured is the free-running system and not a controller. The state is "done yet?".
"""

from __future__ import annotations

from cotrain.control import NO_ACTION, Action, Observation, TrainingChange


class NaivePolicy:
    name = "naive"

    def initial_state(self) -> bool:
        return False

    def decide(self, obs: Observation, state: bool) -> tuple[Action, bool]:
        if state:
            return NO_ACTION, state
        gated = sorted(job for job, knobs in obs.knobs.training.items() if knobs.gate_policy != "off")
        if not gated:
            return NO_ACTION, True
        return Action(
            training={job: TrainingChange(gate_policy="off") for job in gated},
            reason=f"naive: training runs free, gate off for {', '.join(gated)}",
        ), True

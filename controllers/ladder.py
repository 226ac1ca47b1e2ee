"""`ladder`: choose the variant from the micro-profile, Tango-style, with the CCGrid'23 batch model.

CCGrid'23 (docs/references.md): with arrival rate λ, a batch of b is stable only if its execution
time e(b) is at most the time b/λ it takes to accumulate, and the worst latency is about b/λ + e(b). From the
micro-profile (e per variant and batch size, measured on this device at start-up) a variant is
*feasible* at rate λ if some profiled batch size b (up to the current max_batch_size) forms within
the queue delay, is stable, and (b−1)/λ + e(b) (the first request waits for the other b−1) fits
within `headroom` × SLO. The policy serves the heaviest (most accurate,
first in the ladder) feasible variant:
- it steps down at once when the current variant is not feasible, or when the measured p99
  broke the SLO (the profile was taken alone; interference can make it optimistic);
- it steps up only after `up_after_windows` consecutive windows in which the heavier variant
  was feasible and the SLO held, so a noisy rate estimate cannot make it flap.
Pure: no clock, no I/O; the state is the count of calm windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cotrain.control import Action, InferenceChange, Observation
from cotrain.queueing import fill_ms, worst_latency_ms


def feasible(
    variant: str,
    rate_per_s: float,
    slo_ms: float,
    profile_ms: Mapping[tuple[str, int], float],
    max_batch_size: int,
    headroom: float,
    max_queue_delay_ms: float = float("inf"),
) -> bool:
    """Some batch size b can be the operating point: it forms within the queue delay (the first
    request waits (b-1)/λ for the rest), it is stable (e(b) <= b/λ), and (b-1)/λ + e(b) fits."""
    if rate_per_s <= 0:
        return True
    for (name, batch), exec_ms in sorted(profile_ms.items()):
        if name != variant or batch > max_batch_size:
            continue
        if batch > 1 and fill_ms(batch, rate_per_s) > max_queue_delay_ms:
            continue  # the batcher would dispatch before this batch forms
        worst_ms = worst_latency_ms(batch, rate_per_s, exec_ms)
        if worst_ms is not None and worst_ms <= headroom * slo_ms:
            return True
    return False


def choose(
    ladder: Sequence[str],
    rate_per_s: float,
    slo_ms: float,
    profile_ms: Mapping[tuple[str, int], float],
    max_batch_size: int,
    headroom: float,
    max_queue_delay_ms: float = float("inf"),
) -> str:
    """The heaviest feasible variant, else the lightest."""
    for name in ladder:
        if feasible(name, rate_per_s, slo_ms, profile_ms, max_batch_size, headroom, max_queue_delay_ms):
            return name
    return ladder[-1]


class LadderPolicy:
    name = "ladder"

    def __init__(self, headroom: float = 0.7, up_after_windows: int = 4) -> None:
        self.headroom = headroom
        self.up_after_windows = up_after_windows

    def initial_state(self) -> int:
        return 0

    def decide(self, obs: Observation, state: int) -> tuple[Action, int]:
        inference, knobs = obs.inference, obs.knobs.inference
        ladder = [v.name for v in obs.variants]
        if inference is None or knobs is None or not ladder or not obs.profile_ms:
            return Action(), state
        if not obs.inference_fresh:
            return Action(), state  # no new stats since the last decision: never act twice on one window
        current = knobs.variant if knobs.variant in ladder else ladder[0]
        rate = inference.arrival_rate_per_s
        target = choose(
            ladder,
            rate,
            inference.slo_ms,
            obs.profile_ms,
            knobs.max_batch_size,
            self.headroom,
            knobs.max_queue_delay_ms,
        )
        here, there = ladder.index(current), ladder.index(target)
        slo_broken = inference.latency_p99_ms is not None and inference.latency_p99_ms > inference.slo_ms
        if there > here or (slo_broken and here < len(ladder) - 1):
            step = max(there, here + 1) if slo_broken else there
            reason = (
                f"p99 {inference.latency_p99_ms:.0f} ms > SLO {inference.slo_ms:g} ms"
                if slo_broken
                else f"{current} not feasible at {rate:.1f} req/s"
            )
            return Action(inference=InferenceChange(variant=ladder[step]), reason=f"step down: {reason}"), 0
        if slo_broken:
            return Action(), 0  # already on the lightest variant: nothing lighter to go to, and no calm
        if there < here:
            calm = state + 1
            if calm >= self.up_after_windows:
                reason = f"{ladder[here - 1]} feasible at {rate:.1f} req/s for {calm} windows"
                return Action(
                    inference=InferenceChange(variant=ladder[here - 1]), reason=f"step up: {reason}"
                ), 0
            return Action(), calm
        return Action(), 0

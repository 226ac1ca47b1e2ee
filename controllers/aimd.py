"""`aimd`: Clipper's additive-increase / multiplicative-decrease on the inference batch size.

Clipper (NSDI'17) tunes each model's maximum batch size online: grow it by a constant while the
latency objective holds, cut it by a factor (10 %) when it breaks, so the batch settles just under
the largest one the SLO allows. Here the signal is the control window's p99 end-to-end latency
against `headroom` x SLO:
- p99 <= headroom x SLO: max_batch_size += `additive_step`;
- p99 >  headroom x SLO: max_batch_size = max(1, floor(max_batch_size x `decrease_factor`)), and
  always at least one smaller than now, since with a factor of 0.9 any batch below 10 would
  otherwise round back to itself and the decrease would never happen.

Choices:
- Shed requests are *not* treated as "over". Clipper's AIMD controls batch latency, and a queue
  that overflows says the service lacks throughput, not that batches are too big: cutting the
  batch would lower throughput and shed more. Overload that also breaks the latency objective
  shows up in p99 and is cut there; shedding alone is left to the policies that move load
  (variant, training knobs).
- It acts only on a fresh window that served requests (`obs.inference_fresh`, `served` > 0, a
  p99): never twice on one window, and never on silence, which says nothing about latency.
- It changes nothing but `max_batch_size`; training knobs are other policies' business. The
  upper limit is the queue capacity, enforced by the `Bounded` wrapper.
Pure: no clock, no I/O, no state.
"""

from __future__ import annotations

import math

from cotrain.control import NO_ACTION, Action, InferenceChange, Observation


def next_batch_size(current: int, over: bool, additive_step: int, decrease_factor: float) -> int:
    """One AIMD step: add when under the objective, multiply down (by at least 1, to at least 1) when over."""
    if not over:
        return current + additive_step
    return max(1, min(math.floor(current * decrease_factor), current - 1))


class AimdPolicy:
    name = "aimd"

    def __init__(self, additive_step: int = 1, decrease_factor: float = 0.9, headroom: float = 1.0) -> None:
        self.additive_step = additive_step
        self.decrease_factor = decrease_factor
        self.headroom = headroom

    def initial_state(self) -> None:
        return None

    def decide(self, obs: Observation, state: None) -> tuple[Action, None]:
        window, knobs = obs.inference, obs.knobs.inference
        if window is None or knobs is None or not obs.inference_fresh:
            return NO_ACTION, state
        p99_ms = window.latency_p99_ms
        if window.served <= 0 or p99_ms is None:
            return NO_ACTION, state
        limit_ms = self.headroom * window.slo_ms
        over = p99_ms > limit_ms
        current = knobs.max_batch_size
        target = next_batch_size(current, over, self.additive_step, self.decrease_factor)
        if target == current:
            return NO_ACTION, state  # over the objective at batch 1: nothing smaller to go to
        verdict = f"p99 {p99_ms:.1f} ms {'>' if over else '<='} {limit_ms:g} ms ({self.headroom:g} x SLO)"
        step = "decrease" if over else "increase"
        return Action(
            inference=InferenceChange(max_batch_size=target),
            reason=f"aimd {step}: {verdict}, max_batch_size {current} -> {target}",
        ), state

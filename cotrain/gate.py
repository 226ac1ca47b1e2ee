"""The interleaving gate: inference says "I have work", training steps aside.

Jetson has no MPS, so co-running GPU processes are time-sliced and inference latency becomes
erratic; Fulcrum's answer is to interleave training and inference at minibatch granularity. On a
CPU the contended resource is cores, and the same idea applies. The inference process raises the
gate while a request is waiting or a batch is running; a training loop checks it before each
minibatch and, by policy:
- `off`: ignores it (both run free);
- `yield`: waits until it is lowered;
- `yield` with `max_wait_ms`: waits at most that long, so training cannot starve under load.

Why a shared byte and polling rather than a multiprocessing Condition: the inference side sits
on the latency-critical path, and `Condition.notify_all` blocks the notifier until every waiter
in the other process has woken up and acknowledged — measured here to add tens of ms to p99 on a
shared core. Raising or lowering the gate is a single write to shared memory; a yielding
training loop polls it every `POLL_S` (2 ms), which costs it nothing it was not giving up anyway.
"""

from __future__ import annotations

import time
from multiprocessing.context import BaseContext
from typing import Any

POLL_S = 0.002


class InterleavingGate:
    def __init__(self, ctx: BaseContext) -> None:
        self._raised: Any = ctx.RawValue("b", 0)  # written only by the inference process
        self._raised_total: Any = ctx.RawValue("q", 0)

    def set(self, raised: bool) -> None:
        """Raise or lower. One shared-memory write; never blocks."""
        if bool(self._raised.value) == raised:
            return
        if raised:
            self._raised_total.value += 1
        self._raised.value = 1 if raised else 0

    @property
    def raised(self) -> bool:
        return bool(self._raised.value)

    @property
    def times_raised(self) -> int:
        return int(self._raised_total.value)

    def wait_lowered(self, timeout_s: float | None) -> bool:
        """Return True once the gate is lowered, False if `timeout_s` passes first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._raised.value:
            remaining = POLL_S if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(POLL_S, remaining))
        return True

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
from collections.abc import Callable, Iterable
from multiprocessing.context import BaseContext
from typing import Any

POLL_S = 0.002


class InterleavingGate:
    """One busy byte per inference service (`slots`); training sees the gate raised if any is.

    Several services also read each other's slots: a lower-priority service defers its next
    batch while a higher-priority slot is raised (workloads/inference/priority.py). Each slot
    is written only by its own service, so no lock is needed.
    """

    def __init__(self, ctx: BaseContext, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"a gate needs at least one slot, got {slots}")
        self._raised: Any = ctx.RawArray("b", slots)
        self._raised_total: Any = ctx.RawValue("q", 0)

    @property
    def slots(self) -> int:
        return len(self._raised)

    def set(self, raised: bool, slot: int = 0) -> None:
        """Raise or lower one service's slot. One shared-memory write; never blocks."""
        if bool(self._raised[slot]) == raised:
            return
        if raised:
            self._raised_total.value += 1
        self._raised[slot] = 1 if raised else 0

    def slot_setter(self, slot: int) -> Callable[[bool], None]:
        """`set` bound to one slot: what a service's queue calls when it turns busy or idle."""
        return lambda raised: self.set(raised, slot)

    def any_raised(self, slots: Iterable[int]) -> bool:
        raised = self._raised
        return any(raised[i] for i in slots)

    @property
    def raised(self) -> bool:
        return any(self._raised)

    @property
    def times_raised(self) -> int:
        return int(self._raised_total.value)

    def wait_lowered(self, timeout_s: float | None) -> bool:
        """Return True once every slot is lowered, False if `timeout_s` passes first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while any(self._raised):
            remaining = POLL_S if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(POLL_S, remaining))
        return True

"""The interleaving gate: inference says "I have work", training steps aside.

Jetson has no MPS, so co-running GPU processes are time-sliced and inference latency becomes
erratic; Fulcrum's answer is to interleave training and inference at minibatch granularity. On a
CPU the contended resource is cores, and the same idea applies. The inference process raises the
gate while a request is waiting or a batch is running; a training loop checks it before each
minibatch and, by policy:
- `off`: ignores it (both run free);
- `yield`: waits until it is lowered;
- `yield` with `max_wait_ms`: waits at most that long, so training cannot starve under load.

The gate is a multiprocessing Condition plus a shared flag, created by the runtime with the
spawn context and handed to the workload processes when they are started.
"""

from __future__ import annotations

import time
from multiprocessing.context import BaseContext
from typing import Any


class InterleavingGate:
    def __init__(self, ctx: BaseContext) -> None:
        self._raised: Any = ctx.Value("b", 0, lock=False)  # guarded by _cond
        self._cond = ctx.Condition()
        self._raised_total: Any = ctx.Value("q", 0, lock=False)  # times raised, for records

    def set(self, raised: bool) -> None:
        """Raise or lower; waiters are woken on lowering. Cheap when nothing changes."""
        with self._cond:
            was = bool(self._raised.value)
            if was == raised:
                return
            self._raised.value = 1 if raised else 0
            if raised:
                self._raised_total.value += 1
            else:
                self._cond.notify_all()

    @property
    def raised(self) -> bool:
        return bool(self._raised.value)

    @property
    def times_raised(self) -> int:
        return int(self._raised_total.value)

    def wait_lowered(self, timeout_s: float | None) -> bool:
        """Block until the gate is lowered (True) or `timeout_s` passes (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._raised.value:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

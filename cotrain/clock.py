"""Time as an injected dependency.

Every timing decision in cotrain (batch deadlines, control periods, dwell times) reads time
through a `Clock`, so tests drive it with `FakeClock` instead of sleeping and hoping.
Timestamps are integer nanoseconds on the monotonic clock: on Linux `time.monotonic_ns()` is
system-wide, so stamps taken in the inference and training processes compare directly.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000


class Clock(Protocol):
    """Monotonic time source in nanoseconds."""

    def now_ns(self) -> int: ...


class MonotonicClock:
    """The real clock: `time.monotonic_ns()`, comparable across processes on one host."""

    def now_ns(self) -> int:
        return time.monotonic_ns()


class FakeClock:
    """A clock that only moves when a test says so. Thread-safe."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now_ns = start_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._now_ns

    def advance_ms(self, ms: float) -> None:
        self.advance_ns(round(ms * NS_PER_MS))

    def advance_ns(self, ns: int) -> None:
        if ns < 0:
            raise ValueError("a monotonic clock cannot go backwards")
        with self._lock:
            self._now_ns += ns

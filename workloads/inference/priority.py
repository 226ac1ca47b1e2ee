"""Priorities between inference services that share one device, without starving any of them.

RankMap serves several DNNs by priority and disqualifies any mapping that starves one. Here
each service process raises its own slot of the shared gate (cotrain/gate.py) while it has
work. Before a service of lower priority runs a batch, it defers while any higher-priority slot
is raised, so the important service gets the cores when it needs them. Two rules bound the
deferral, so the lower service is degraded, never starved:

- **Throughput floor.** A deficit counter (`FloorCredit`) earns `min_throughput_per_s`
  credits per second and spends one per served request. While it is positive the service is
  behind its floor, and it runs at once, whoever is busy.
- **Bounded wait.** A batch defers at most `max_defer_ms` (by default half the service's late
  budget). Waiting longer would only turn the whole batch into late requests; running it with
  half the budget left still serves some within the SLO.

Deferring the *start* of a batch is not enough on a CPU: a long low-priority batch that
started while the high one was idle still competes for the cores when the next high-priority
request arrives, and a model cannot be preempted mid-batch. The kernel can: each service that
is outranked runs at a higher nice value (`priority_nice`, 10 per priority level above it), set
before torch starts its thread pool so every compute thread inherits it. The CPU scheduler
then gives the outranked service's threads a small share of a contended core (about 10 % at
nice 10) and all of an idle one: preemption without starvation. Raising one's own nice value
needs no privilege.

The decision is a pure function (`may_run`) of what the gate and the counter say, so it is
tested with a fake clock; the waiting loop polls like the training side of the gate does.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cotrain.clock import NS_PER_MS, NS_PER_S, Clock
from cotrain.gate import POLL_S, InterleavingGate

FLOOR_WINDOW_S = 1.0  # the counter holds at most this many seconds' worth of floor, either way

Turn = Literal["free", "floor", "waited", "stopping"]


class FloorCredit:
    """A deficit counter for a throughput floor, clamped to +-`FLOOR_WINDOW_S` of the floor.

    Clamping from above keeps a long idle spell from banking a burst that would then run over a
    busy higher-priority service; clamping from below keeps a spell of free running from
    leaving the service in debt for long.
    """

    def __init__(self, floor_per_s: float, now_ns: int, min_cap: float = 1.0) -> None:
        self.floor_per_s = floor_per_s
        self.cap = max(min_cap, floor_per_s * FLOOR_WINDOW_S)
        self._credit = 0.0
        self._at_ns = now_ns

    def _refill(self, now_ns: int) -> None:
        elapsed_s = max(0, now_ns - self._at_ns) / NS_PER_S
        self._credit = min(self.cap, self._credit + elapsed_s * self.floor_per_s)
        self._at_ns = max(self._at_ns, now_ns)

    def behind(self, now_ns: int) -> bool:
        """True while the service has served less than its floor over the recent window."""
        if self.floor_per_s <= 0:
            return False
        self._refill(now_ns)
        return self._credit > 0

    def served(self, n: int, now_ns: int) -> None:
        self._refill(now_ns)
        self._credit = max(-self.cap, self._credit - n)


def may_run(higher_busy: bool, behind_floor: bool, waited_ns: int, max_defer_ns: int) -> Turn | None:
    """Why a lower-priority batch may run now, or None to keep deferring."""
    if not higher_busy:
        return "free"
    if behind_floor:
        return "floor"
    if waited_ns >= max_defer_ns:
        return "waited"
    return None


@dataclass
class DeferStats:
    batches_deferred: int = 0
    deferred_ms: float = 0.0


class PriorityYield:
    """One service's view of the others: whose slots outrank it, its floor, and its wait bound."""

    def __init__(
        self,
        gate: InterleavingGate,
        higher_slots: Sequence[int],
        floor_per_s: float,
        max_defer_ms: float,
        clock: Clock,
        batch_size_hint: int = 1,
    ) -> None:
        self.gate = gate
        self.higher_slots = tuple(higher_slots)
        self.max_defer_ns = round(max_defer_ms * NS_PER_MS)
        self.clock = clock
        # The counter must be able to hold a whole batch, or a floor below one batch per
        # window would let the service run only after it had fallen behind by a batch.
        self.credit = FloorCredit(floor_per_s, clock.now_ns(), min_cap=max(1.0, batch_size_hint))
        self.stats = DeferStats()
        self._lock = threading.Lock()  # several model instances share the counter

    def wait_turn(self, stopping: threading.Event) -> Turn:
        """Block until this service may run a batch; returns why it may."""
        if not self.higher_slots:
            return "free"
        start_ns = self.clock.now_ns()
        deferred = False
        while True:
            now_ns = self.clock.now_ns()
            with self._lock:
                behind = self.credit.behind(now_ns)
            turn = may_run(
                self.gate.any_raised(self.higher_slots), behind, now_ns - start_ns, self.max_defer_ns
            )
            if turn is not None:
                break
            deferred = True
            if stopping.wait(POLL_S / 2):
                turn = "stopping"
                break
        if deferred:
            with self._lock:
                self.stats.batches_deferred += 1
                self.stats.deferred_ms += (self.clock.now_ns() - start_ns) / NS_PER_MS
        return turn

    def served(self, n: int) -> None:
        with self._lock:
            self.credit.served(n, self.clock.now_ns())


NICE_PER_LEVEL = 10


def priority_nice(priorities: Sequence[int], mine: int) -> int:
    """The nice value for service `mine`: 10 per distinct priority level above it, at most 19."""
    levels_above = len({p for p in priorities if p > priorities[mine]})
    return min(19, NICE_PER_LEVEL * levels_above)


def lower_own_cpu_priority(nice: int) -> int:
    """Raise this process's nice value to `nice` (never lowers it); returns the value in force.

    Must run before torch creates its threads: Linux nice is per thread, inherited at creation.
    """
    import os

    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    return os.getpriority(os.PRIO_PROCESS, 0)


def higher_priority_slots(priorities: Sequence[int], mine: int) -> tuple[int, ...]:
    """Slots (indices into `priorities`) of the services that outrank service `mine`."""
    return tuple(i for i, p in enumerate(priorities) if p > priorities[mine])

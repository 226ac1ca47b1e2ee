"""Priorities between services: the floor counter and the deferral rule, with a fake clock."""

from __future__ import annotations

import multiprocessing as mp
import threading

import pytest

from cotrain.clock import NS_PER_MS, NS_PER_S, FakeClock
from cotrain.gate import InterleavingGate
from cotrain.workloads.inference.priority import (
    FloorCredit,
    PriorityYield,
    higher_priority_slots,
    may_run,
)


def test_floor_credit_is_behind_only_while_served_less_than_the_floor() -> None:
    credit = FloorCredit(10.0, now_ns=0)
    assert not credit.behind(0)  # nothing owed yet
    assert credit.behind(NS_PER_S // 2)  # 5 requests owed
    credit.served(8, NS_PER_S // 2)  # served more than owed: 3 ahead
    assert not credit.behind(NS_PER_S // 2 + 200 * NS_PER_MS)  # 1 ahead
    assert credit.behind(NS_PER_S // 2 + 400 * NS_PER_MS)  # 1 owed again


def test_floor_credit_neither_banks_nor_owes_more_than_a_window() -> None:
    credit = FloorCredit(10.0, now_ns=0)
    credit.behind(100 * NS_PER_S)  # a long idle spell: capped at one window (10)
    credit.served(10, 100 * NS_PER_S)
    assert not credit.behind(100 * NS_PER_S)
    credit.served(10_000, 100 * NS_PER_S)  # a long free-running spell: debt capped at 10
    assert credit.behind(100 * NS_PER_S + 1_100 * NS_PER_MS)


def test_no_floor_is_never_behind() -> None:
    credit = FloorCredit(0.0, now_ns=0)
    assert not credit.behind(10 * NS_PER_S)


@pytest.mark.parametrize(
    ("higher_busy", "behind", "waited_ms", "expected"),
    [
        (False, False, 0, "free"),
        (False, True, 0, "free"),
        (True, True, 0, "floor"),
        (True, False, 0, None),
        (True, False, 49, None),
        (True, False, 50, "waited"),
    ],
)
def test_may_run(higher_busy: bool, behind: bool, waited_ms: int, expected: str | None) -> None:
    assert may_run(higher_busy, behind, waited_ms * NS_PER_MS, 50 * NS_PER_MS) == expected


def test_higher_priority_slots() -> None:
    assert higher_priority_slots([10, 0, 5, 10], 1) == (0, 2, 3)
    assert higher_priority_slots([10, 0, 5, 10], 0) == ()  # ties do not outrank
    assert higher_priority_slots([10, 0, 5, 10], 2) == (0, 3)


def _start(py: PriorityYield, stopping: threading.Event) -> tuple[threading.Thread, list[str]]:
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(py.wait_turn(stopping)), daemon=True)
    thread.start()
    return thread, result


def test_a_lower_service_defers_while_a_higher_one_is_busy_and_runs_when_it_is_idle() -> None:
    gate = InterleavingGate(mp.get_context("spawn"), slots=2)
    clock = FakeClock()
    py = PriorityYield(gate, (0,), floor_per_s=0.0, max_defer_ms=1_000, clock=clock)
    assert py.wait_turn(threading.Event()) == "free"  # nobody busy: no waiting at all
    gate.set(True, slot=0)
    assert gate.raised and gate.any_raised([0]) and not gate.any_raised([1])
    thread, result = _start(py, threading.Event())
    thread.join(timeout=0.05)
    assert thread.is_alive() and result == [], "must wait while the higher slot is raised"
    gate.set(False, slot=0)
    thread.join(timeout=60)
    assert result == ["free"]
    assert py.stats.batches_deferred == 1


def test_a_deferred_batch_runs_once_the_wait_bound_passes() -> None:
    gate = InterleavingGate(mp.get_context("spawn"), slots=2)
    gate.set(True, slot=0)
    clock = FakeClock()
    py = PriorityYield(gate, (0,), floor_per_s=0.0, max_defer_ms=100, clock=clock)
    thread, result = _start(py, threading.Event())
    thread.join(timeout=0.05)
    assert thread.is_alive()
    clock.advance_ms(100)
    thread.join(timeout=60)
    assert result == ["waited"]


def test_a_service_behind_its_floor_runs_even_while_a_higher_one_is_busy() -> None:
    gate = InterleavingGate(mp.get_context("spawn"), slots=2)
    gate.set(True, slot=0)
    clock = FakeClock()
    py = PriorityYield(gate, (0,), floor_per_s=10.0, max_defer_ms=10_000, clock=clock, batch_size_hint=4)
    thread, result = _start(py, threading.Event())
    thread.join(timeout=0.05)
    assert thread.is_alive(), "not behind yet: defers"
    clock.advance_ms(150)  # 1.5 requests owed
    thread.join(timeout=60)
    assert result == ["floor"]
    py.served(4)  # now ahead of the floor: defers again
    thread, result = _start(py, threading.Event())
    thread.join(timeout=0.05)
    assert thread.is_alive()
    stopping = threading.Event()
    stopping.set()
    py2 = PriorityYield(gate, (0,), floor_per_s=0.0, max_defer_ms=10_000, clock=clock)
    assert py2.wait_turn(stopping) == "stopping"  # a stop never waits behind a busy neighbour
    gate.set(False, slot=0)
    thread.join(timeout=60)
    assert result == ["free"]


def test_the_training_side_sees_the_gate_raised_while_any_service_is_busy() -> None:
    gate = InterleavingGate(mp.get_context("spawn"), slots=3)
    gate.set(True, slot=2)
    gate.set(True, slot=0)
    gate.set(False, slot=2)
    assert gate.raised and gate.wait_lowered(0.0) is False
    gate.set(False, slot=0)
    assert not gate.raised and gate.wait_lowered(0.0) is True
    assert gate.times_raised == 2

"""The interleaving gate works across processes: a spawned waiter is released by a lower."""

from __future__ import annotations

import multiprocessing as mp

from cotrain.gate import InterleavingGate


def _wait(gate: InterleavingGate, ready: mp.synchronize.Event, result: mp.queues.Queue[bool]) -> None:  # type: ignore[name-defined]
    ready.set()
    result.put(gate.wait_lowered(60))


def test_a_waiter_in_another_process_is_released_when_the_gate_is_lowered() -> None:
    ctx = mp.get_context("spawn")
    gate = InterleavingGate(ctx)
    gate.set(True)
    ready, result = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_wait, args=(gate, ready, result))
    child.start()
    assert ready.wait(60)
    gate.set(False)
    assert result.get(timeout=60) is True
    child.join(timeout=60)
    assert child.exitcode == 0
    assert gate.times_raised == 1


def test_wait_times_out_while_raised() -> None:
    gate = InterleavingGate(mp.get_context("spawn"))
    gate.set(True)
    assert gate.wait_lowered(0.01) is False
    gate.set(False)
    assert gate.wait_lowered(0) is True

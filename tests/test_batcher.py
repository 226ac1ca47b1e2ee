"""The dynamic batcher's contract, on a fake clock (no sleeps): Triton dispatch semantics,
bounded queue, one outcome per request, and a failed batch failing every request in it."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from cotrain.clock import FakeClock
from cotrain.workloads.inference.batcher import BatchPolicy, BatchQueue, DynamicBatcher
from cotrain.workloads.inference.requests import Outcome, Request, execute_batch


def make(
    max_batch_size: int = 4, delay_ms: float = 10.0, capacity: int = 16
) -> tuple[DynamicBatcher[int], FakeClock]:
    clock = FakeClock(start_ns=1_000_000_000)
    return DynamicBatcher(BatchPolicy(max_batch_size, delay_ms), capacity, clock), clock


def test_dispatches_as_soon_as_a_full_batch_waits() -> None:
    batcher, clock = make(max_batch_size=3, delay_ms=1000)
    for i in range(2):
        batcher.offer(i, clock.now_ns())
    assert batcher.take() == []  # two of three, oldest waited 0 ms
    batcher.offer(2, clock.now_ns())
    assert batcher.time_until_ready_ns() == 0
    assert batcher.take() == [0, 1, 2]
    assert len(batcher) == 0


def test_dispatches_a_partial_batch_when_the_oldest_reaches_max_delay() -> None:
    batcher, clock = make(max_batch_size=8, delay_ms=10)
    batcher.offer(1, clock.now_ns())
    clock.advance_ms(4)
    batcher.offer(2, clock.now_ns())
    clock.advance_ms(5.9)  # oldest has waited 9.9 ms
    assert batcher.take() == []
    assert batcher.time_until_ready_ns() == pytest.approx(100_000, abs=1)
    clock.advance_ms(0.1)
    assert batcher.take() == [1, 2]


def test_delay_is_measured_from_the_arrival_stamp_not_the_enqueue_time() -> None:
    batcher, clock = make(max_batch_size=8, delay_ms=10)
    batcher.offer(1, clock.now_ns() - 10_000_000)  # arrived 10 ms ago, enqueued now
    assert batcher.take() == [1]


def test_full_queue_refuses_and_keeps_fifo_order() -> None:
    batcher, clock = make(max_batch_size=2, delay_ms=0, capacity=3)
    assert all(batcher.offer(i, clock.now_ns()) for i in range(3))
    assert batcher.offer(99, clock.now_ns()) is False
    assert batcher.take() == [0, 1]
    assert batcher.take() == [2]
    assert batcher.take() == []


def test_a_smaller_max_batch_size_applies_to_the_next_dispatch() -> None:
    batcher, clock = make(max_batch_size=8, delay_ms=1000)
    for i in range(3):
        batcher.offer(i, clock.now_ns())
    assert batcher.take() == []
    batcher.policy = BatchPolicy(2, 1000)
    assert batcher.take() == [0, 1]


def test_take_now_and_drain_empty_the_queue_for_shutdown() -> None:
    batcher, clock = make(max_batch_size=2, delay_ms=1000)
    for i in range(5):
        batcher.offer(i, clock.now_ns())
    assert batcher.take_now() == [0, 1]
    assert batcher.drain() == [2, 3, 4]
    assert batcher.time_until_ready_ns() is None


def test_invalid_policies_are_rejected() -> None:
    with pytest.raises(ValueError):
        BatchPolicy(0, 1.0)
    with pytest.raises(ValueError):
        BatchPolicy(1, -1.0)


# --- one outcome per request ------------------------------------------------------------------


def requests(n: int) -> list[Request]:
    return [Request(request_id=i, arrival_ns=0, sample_index=i) for i in range(n)]


def test_one_served_record_per_request_with_batch_timing() -> None:
    clock = FakeClock(start_ns=5_000_000)

    def infer(batch: Sequence[Request]) -> list[int]:
        clock.advance_ms(7)
        return [r.sample_index for r in batch]

    records = execute_batch(requests(3), infer, clock, "m/fp32")
    assert [r.request.request_id for r in records] == [0, 1, 2]
    assert {r.outcome for r in records} == {Outcome.SERVED}
    assert all(r.batch_size == 3 and r.variant == "m/fp32" for r in records)
    assert all(
        r.end_ns is not None and r.start_ns is not None and r.end_ns - r.start_ns == 7_000_000
        for r in records
    )
    assert records[0].latency_ns == 5_000_000 + 7_000_000


def test_an_exception_fails_every_request_in_the_batch() -> None:
    def infer(batch: Sequence[Request]) -> list[int]:
        raise RuntimeError("CUDA error: out of memory")

    records = execute_batch(requests(4), infer, FakeClock(), "v")
    assert len(records) == 4
    assert {r.outcome for r in records} == {Outcome.FAILED}
    assert all("out of memory" in r.reason for r in records)
    assert all(r.latency_ns is None for r in records)


def test_a_wrong_number_of_outputs_fails_the_batch() -> None:
    records = execute_batch(requests(3), lambda batch: [0], FakeClock(), "v")
    assert {r.outcome for r in records} == {Outcome.FAILED}
    assert "1 outputs for 3 inputs" in records[0].reason


# --- the blocking queue, driven by event gates -------------------------------------------------


def test_next_batch_returns_when_a_producer_completes_the_batch() -> None:
    clock = FakeClock()
    q: BatchQueue[int] = BatchQueue(DynamicBatcher(BatchPolicy(3, 1e6), 10, clock))
    got: list[list[int]] = []
    done = threading.Event()

    def consumer() -> None:
        got.append(q.next_batch(max_wait_s=1000))  # only a full batch can end this wait early
        done.set()

    thread = threading.Thread(target=consumer)
    thread.start()
    for i in range(3):
        q.offer(i, clock.now_ns())
    assert done.wait(timeout=30), "next_batch did not wake on a full batch"
    thread.join()
    assert got == [[0, 1, 2]]


def test_flush_dispatches_partial_batches_at_stop() -> None:
    clock = FakeClock()
    q: BatchQueue[int] = BatchQueue(DynamicBatcher(BatchPolicy(2, 1e6), 10, clock))
    for i in range(3):
        q.offer(i, clock.now_ns())
    assert q.next_batch(0.0) == [0, 1]
    assert q.next_batch(0.0) == []  # [2] alone is neither full nor timed out
    assert q.next_batch(0.0, flush=True) == [2]
    assert q.depth() == 0


def test_busy_signal_covers_waiting_and_running_batches() -> None:
    clock = FakeClock()
    changes: list[bool] = []
    q: BatchQueue[int] = BatchQueue(DynamicBatcher(BatchPolicy(2, 0), 10, clock), on_busy=changes.append)
    q.offer(1, clock.now_ns())
    assert changes == [True]
    assert q.next_batch(0.0) == [1]
    assert changes == [True], "still busy while the batch runs"
    q.offer(2, clock.now_ns())
    q.batch_done()
    assert changes == [True], "a request is waiting"
    assert q.next_batch(0.0) == [2]
    q.batch_done()
    assert changes == [True, False]

"""Dynamic batching with Triton's semantics, bounded, and testable with a fake clock.

A batch is dispatched when `max_batch_size` requests are waiting, or when the oldest waiting
request has waited `max_queue_delay_ms` (measured from its arrival stamp). The queue is bounded:
an offer beyond `capacity` is refused and the caller sheds the request, so overload shows up as
counted sheds rather than unbounded memory and latency.

`DynamicBatcher` is the pure policy over an injected clock. `BatchQueue` wraps it for the
inference process: a producer thread offers, the executor thread blocks in `next_batch`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cotrain.clock import NS_PER_MS, NS_PER_S, Clock

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_ms: float

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_queue_delay_ms < 0:
            raise ValueError("max_queue_delay_ms must be >= 0")


def _one(item: object) -> int:
    return 1


class DynamicBatcher(Generic[T]):
    """The dispatch rule over a FIFO of (arrival_ns, item). Not thread-safe; see BatchQueue.

    An item may stand for several images (a network request with a batch dimension): `size_of`
    says how many, and the batch limit and the queue capacity count images, as Triton's do. A
    batch takes whole items, the oldest first, up to `max_batch_size` images; an item larger
    than the limit (the limit was lowered after it was admitted) runs alone.
    """

    def __init__(
        self, policy: BatchPolicy, capacity: int, clock: Clock, size_of: Callable[[T], int] = _one
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.policy = policy
        self.capacity = capacity
        self._clock = clock
        self._size_of = size_of
        self._queue: deque[tuple[int, T]] = deque()
        self._images = 0

    def __len__(self) -> int:
        """Items waiting (requests)."""
        return len(self._queue)

    @property
    def images(self) -> int:
        return self._images

    def offer(self, item: T, arrival_ns: int) -> bool:
        """Enqueue; False when the queue is full (the caller sheds the item)."""
        size = self._size_of(item)
        if self._images + size > self.capacity:
            return False
        self._queue.append((arrival_ns, item))
        self._images += size
        return True

    def time_until_ready_ns(self) -> int | None:
        """0 if a batch is ready now, None if the queue is empty, else ns until the oldest times out."""
        if not self._queue:
            return None
        if self._images >= self.policy.max_batch_size:
            return 0
        oldest_ns = self._queue[0][0]
        deadline_ns = oldest_ns + round(self.policy.max_queue_delay_ms * NS_PER_MS)
        return max(0, deadline_ns - self._clock.now_ns())

    def ready(self) -> bool:
        return self.time_until_ready_ns() == 0

    def take(self) -> list[T]:
        """The oldest items, up to `max_batch_size` images, if a batch is ready, else []."""
        if not self.ready():
            return []
        return self.take_now()

    def take_now(self) -> list[T]:
        """The oldest items up to `max_batch_size` images, ready or not (flushing at stop)."""
        batch: list[T] = []
        images = 0
        while self._queue:
            size = self._size_of(self._queue[0][1])
            if batch and images + size > self.policy.max_batch_size:
                break
            batch.append(self._queue.popleft()[1])
            images += size
        self._images -= images
        return batch

    def drain(self) -> list[T]:
        """Remove and return everything still waiting (for shutdown accounting)."""
        items = [item for _, item in self._queue]
        self._queue.clear()
        self._images = 0
        return items


class BatchQueue(Generic[T]):
    """Thread-safe blocking front of a DynamicBatcher.

    `on_busy` (optional) is told, under the queue's lock, whenever "a request is waiting or a
    batch is running" changes; the interleaving gate hangs off it. Doing it under the lock keeps
    the signal exact: a producer's offer and the executor's `batch_done` cannot interleave so as
    to leave the gate lowered with a request waiting.
    """

    def __init__(self, batcher: DynamicBatcher[T], on_busy: Callable[[bool], None] | None = None) -> None:
        self._batcher = batcher
        self._cond = threading.Condition()
        self._running = 0  # batches taken and not yet done: one per model instance at most
        self._on_busy = on_busy
        self._busy = False

    def _update_busy(self) -> None:
        busy = self._running > 0 or len(self._batcher) > 0
        if busy != self._busy:
            self._busy = busy
            if self._on_busy is not None:
                self._on_busy(busy)

    def offer(self, item: T, arrival_ns: int) -> bool:
        with self._cond:
            accepted = self._batcher.offer(item, arrival_ns)
            if accepted:
                self._update_busy()
                self._cond.notify_all()
            return accepted

    def batch_done(self) -> None:
        """The executor finished the batch `next_batch` gave it."""
        with self._cond:
            self._running = max(0, self._running - 1)
            self._update_busy()

    def depth(self) -> int:
        with self._cond:
            return len(self._batcher)

    def policy(self) -> BatchPolicy:
        with self._cond:
            return self._batcher.policy

    def set_policy(self, policy: BatchPolicy) -> None:
        """Takes effect for the next dispatch decision (a smaller batch may be ready at once)."""
        with self._cond:
            self._batcher.policy = policy
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake a waiting `next_batch` (stop or control change)."""
        with self._cond:
            self._cond.notify_all()

    def next_batch(self, max_wait_s: float, *, flush: bool = False) -> list[T]:
        """Block until a batch is ready, `wake()` is called, or `max_wait_s` passes.

        Returns [] when nothing is ready, so the caller can do periodic work and re-check its
        stop flag. With `flush=True` (draining at shutdown) whatever waits is dispatched at once,
        in batches of at most max_batch_size.
        """
        with self._cond:
            wait_ns = self._batcher.time_until_ready_ns()
            if wait_ns is None:
                self._cond.wait(timeout=max_wait_s)
            elif wait_ns > 0 and not flush:
                self._cond.wait(timeout=min(max_wait_s, wait_ns / NS_PER_S))
            batch = self._batcher.take_now() if flush else self._batcher.take()
            if batch:
                self._running += 1
            return batch

    def drain(self) -> list[T]:
        with self._cond:
            items = self._batcher.drain()
            self._update_busy()
            return items

"""The batching queue's rule, in one place, for every controller and the simulator.

Requests arrive at λ per second and the batcher dispatches a batch of b once it has formed (or
its oldest request has waited the queue delay). The first request of a batch waits (b−1)/λ for
the rest; the batch then runs for e(b). The queue is stable iff a batch runs no longer than the
next one takes to form, e(b) ≤ b/λ; the worst latency of a stable operating point is then
(b−1)/λ + e(b). The same rule appears in CCGrid'23's analysis (docs/references.md) and in
Triton's dynamic batcher documentation.

All times are milliseconds; the simulator, which keeps seconds, converts at its call.
"""

from __future__ import annotations

MS_PER_S = 1000.0


def fill_ms(batch: int, rate_per_s: float) -> float:
    """How long a batch of `batch` takes to form at `rate_per_s`: its first request waits this
    long for the rest, (b−1)/λ. Zero when nothing arrives."""
    if rate_per_s <= 0:
        return 0.0
    return (batch - 1) / rate_per_s * MS_PER_S


def batch_interval_ms(batch: int, rate_per_s: float) -> float:
    """b/λ: how long `batch` requests take to arrive, the time a batch has to run in."""
    return batch / rate_per_s * MS_PER_S


def is_stable(exec_ms: float, batch: int, rate_per_s: float) -> bool:
    """e(b) ≤ b/λ: a batch runs no longer than the next one takes to arrive, so the queue does
    not grow. Always stable when nothing arrives."""
    if rate_per_s <= 0:
        return True
    return exec_ms <= batch_interval_ms(batch, rate_per_s)


def worst_latency_ms(
    batch: int, rate_per_s: float, exec_ms: float, wait_ms: float | None = None
) -> float | None:
    """The worst latency of a stable operating point, (b−1)/λ + e(b), or None if it is unstable.

    `wait_ms`, when given, replaces the fill time (a queue delay shorter than (b−1)/λ dispatches
    the batch before it is full)."""
    if not is_stable(exec_ms, batch, rate_per_s):
        return None
    return (fill_ms(batch, rate_per_s) if wait_ms is None else wait_ms) + exec_ms


def formed_batch(max_batch_size: int, delay_ms: float, rate_per_s: float) -> int:
    """The batch that forms under a cap and a queue delay: about min(b, 1 + λ·delay), since the
    batcher dispatches at the cap or when the oldest request has waited the delay."""
    if rate_per_s <= 0:
        return 1
    return max(1, min(max_batch_size, 1 + int(rate_per_s * delay_ms / MS_PER_S)))

"""What the front end and an inference process say to each other about client requests.

The front end lives in the runtime's process, never in the worker that can die: it owns each
request's outcome and its record, so a worker's death cannot lose one. The worker connects to
the front end's Unix socket when it starts serving (and again after a restart), announces
itself with `Hello`, then receives `NetRequest`s and answers each with one `NetResult`, in
lists: one message per batch rather than one per request keeps the per-request cost low.

Tensors travel as raw little-endian bytes beside their dtype and shape; pickling `bytes` with
protocol 5 copies them once, which at 2,000 requests of 49 KB per second is far from the
bottleneck (measured in docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hello:
    worker: str  # "inference" or "inference:<service>"
    pid: int


@dataclass(frozen=True)
class NetRequest:
    request_id: int
    arrival_ns: int
    datatype: str  # FP32 or UINT8
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class NetResult:
    request_id: int
    outcome: str  # served, failed or shed
    reason: str
    start_ns: int | None
    end_ns: int | None
    batch_size: int | None
    variant: str
    model_version: int
    logits: bytes = b""  # FP32, row-major
    shape: tuple[int, ...] = ()

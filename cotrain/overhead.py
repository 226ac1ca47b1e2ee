"""How much time cotrain itself adds to each request, beyond the model and beyond queueing.

The real inference service code runs in this process with a model that does nothing, one request
per batch, arrivals spaced so that no request ever waits behind another. What remains of each
request's time is cotrain's own path: the source thread waking at the arrival time and offering
the request, the batcher handing it to the executor, the executor's bookkeeping around the model
call, and writing its record. Per request:

    overhead = (start - max(arrival, previous end))   # source -> queue -> batcher -> executor
             + (end - start)                          # bookkeeping around a no-op model
             + its share of the record write          # requests.csv, flushed per batch

Anything the OS adds (thread wake-up latency on a busy machine) is included: it is part of what
a request pays. Results go to `overhead.json`.
"""

from __future__ import annotations

import json
import os
import platform as host
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cotrain.clock import MonotonicClock
from cotrain.config import parse_config
from cotrain.messages import Stop
from cotrain.records import CsvAppender, read_csv_rows
from cotrain.workloads.inference.requests import Request
from cotrain.workloads.inference.service import InferenceService


class _NullChannel:
    """Swallows reports; `recv` blocks until the bench says stop."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.closed = False

    def send(self, message: object) -> None:
        return None

    def recv(self, timeout_s: float | None = None) -> object:
        self.stop.wait(timeout_s)
        return Stop() if self.stop.is_set() else None


class _TimedWriter:
    """Wraps the CSV appender to measure the record write per request."""

    def __init__(self, inner: CsvAppender) -> None:
        self.inner = inner
        self.per_request_ms: list[float] = []

    def write_rows(self, rows: Sequence[Sequence[object]]) -> None:
        start = time.perf_counter_ns()
        self.inner.write_rows(rows)
        each_ms = (time.perf_counter_ns() - start) / 1e6 / max(1, len(rows))
        self.per_request_ms.extend([each_ms] * len(rows))

    def close(self) -> None:
        self.inner.close()


def _no_op(batch: Sequence[Request]) -> list[int]:
    return [0] * len(batch)


def run_overhead_bench(out: Path, requests: int = 2000, rate_per_s: float = 200.0) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    config = parse_config(
        {
            "duration_s": requests / rate_per_s,
            "workloads": {
                "inference": {
                    "model": {"name": "resnet18"},
                    "dataset": {"kind": "synthetic", "num_samples": 8, "num_classes": 2, "image_size": 8},
                    "arrivals": {"process": "constant", "rate_per_s": rate_per_s},
                    "slo_ms": 1000,
                    "batching": {"max_batch_size": 1, "max_queue_delay_ms": 0},
                    "stats_period_s": 1.0,
                }
            },
        }
    ).workloads.inference
    assert config is not None
    channel = _NullChannel()
    service = InferenceService(config, out / "requests.csv", channel, _no_op, "no-op", iter(range(10**9)))  # type: ignore[arg-type]
    writer = _TimedWriter(service.writer)
    service.writer = writer  # type: ignore[assignment]
    offsets = (i / rate_per_s for i in range(requests))
    listener = threading.Thread(target=service.listen, daemon=True)
    listener.start()
    serving = threading.Thread(target=service.serve, args=(MonotonicClock().now_ns() + 50_000_000, offsets))
    serving.start()
    service.arrivals_done.wait()
    while service.queue.depth():
        time.sleep(0.01)  # let the executor finish the last request before stopping
    channel.stop.set()
    service.queue.wake()
    serving.join()

    rows = sorted(read_csv_rows(out / "requests.csv"), key=lambda r: float(r["start_s"]))
    overhead_ms = []
    previous_end = 0.0
    for row, record_ms in zip(rows, writer.per_request_ms, strict=False):
        arrival, start, end = float(row["arrival_s"]), float(row["start_s"]), float(row["end_s"])
        to_executor_s = start - max(arrival, previous_end)
        overhead_ms.append(to_executor_s * 1e3 + (end - start) * 1e3 + record_ms)
        previous_end = end
    arr = np.asarray(overhead_ms)
    result = {
        "overhead_ms": {
            "p50": round(float(np.percentile(arr, 50)), 4),
            "p99": round(float(np.percentile(arr, 99)), 4),
            "max": round(float(arr.max()), 4),
            "mean": round(float(arr.mean()), 4),
        },
        "requests": len(overhead_ms),
        "rate_per_s": rate_per_s,
        "target_p99_ms": 0.5,
        "definition": "per request: source wake-up and offer, batcher and dispatch, bookkeeping around a "
        "no-op model, and the record write; queueing behind other requests and model time excluded",
        "machine": {"cpus": os.cpu_count(), "python": host.python_version(), "processor": host.machine()},
    }
    (out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result

"""A summary kept up to date while a run goes on, at a cost that does not grow with the run.

`summary.json` is normally recomputed from the record files when a run ends (cotrain/summary.py).
A service that runs for days cannot wait for its end, and cannot re-read gigabytes of records
every minute either. So the runtime keeps running aggregates of what it already sees, and writes
them to summary.json every `output.summary_period_s`: a crash loses at most one period.

- A service with ingress: every answer the front end gives, exactly (outcome, latency).
- A service fed by generated arrivals: its stats windows (every request's outcome and the served
  latencies, once per stats period).
- A training job: its stats windows (steps and samples).

Latency percentiles come from a log-bucketed histogram with 1 % wide buckets from 1 µs to 1 h:
bounded memory, and a percentile within 1 % of the exact one. Counts are exact. The written
summary says `"partial": true` and `"status": "running"`; when the run ends cleanly it is
replaced by the summary recomputed from the records, unless records were rotated away
(`output.rotate_mb`), in which case these aggregates are the only whole-run figures and stay.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_LOW_MS = 1e-3
_HIGH_MS = 3_600_000.0
_GROWTH = 1.01
_BUCKETS = math.ceil(math.log(_HIGH_MS / _LOW_MS) / math.log(_GROWTH)) + 2


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts = np.zeros(_BUCKETS, dtype=np.int64)
        self.n = 0
        self.total_ms = 0.0
        self.max_ms = 0.0

    @staticmethod
    def _bucket(ms: float) -> int:
        if ms <= _LOW_MS:
            return 0
        return min(_BUCKETS - 1, 1 + int(math.log(ms / _LOW_MS) / math.log(_GROWTH)))

    def add(self, ms: float) -> None:
        self.counts[self._bucket(ms)] += 1
        self.n += 1
        self.total_ms += ms
        self.max_ms = max(self.max_ms, ms)

    def at_most(self, ms: float) -> int:
        """How many are at or below `ms` (to the bucket holding it)."""
        return int(self.counts[: self._bucket(ms) + 1].sum())

    def percentile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.n))
        index = int(np.searchsorted(np.cumsum(self.counts), rank))
        if index == 0:
            return _LOW_MS
        upper = _LOW_MS * _GROWTH**index
        return min(upper / math.sqrt(_GROWTH), self.max_ms)  # the bucket's middle, never beyond the max


@dataclass
class _Service:
    slo_ms: float
    counts: dict[str, int] = field(default_factory=lambda: {"served": 0, "failed": 0, "shed": 0})
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    images: int = 0
    batches: int = 0


@dataclass
class _Job:
    kind: str
    steps: int = 0
    samples: int = 0
    first_loss: float | None = None
    final_loss: float | None = None


class RunningSummary:
    def __init__(self, services: dict[str, float], jobs: dict[str, str]) -> None:
        """`services`: name -> SLO (ms); `jobs`: name -> kind."""
        self._lock = threading.Lock()
        self.services = {name: _Service(slo) for name, slo in services.items()}
        self.jobs = {name: _Job(kind) for name, kind in jobs.items()}

    def reply(self, service: str, outcome: str, latency_ms: float | None) -> None:
        with self._lock:
            s = self.services[service]
            s.counts[outcome] = s.counts.get(outcome, 0) + 1
            if outcome == "served" and latency_ms is not None:
                s.latency.add(latency_ms)

    def window(
        self,
        service: str,
        *,
        served: int,
        failed: int,
        shed: int,
        latencies_ms: list[float],
        batch_sizes: list[int],
    ) -> None:
        with self._lock:
            s = self.services[service]
            s.counts["served"] += served
            s.counts["failed"] += failed
            s.counts["shed"] += shed
            for ms in latencies_ms:
                s.latency.add(ms)
            s.images += sum(batch_sizes)
            s.batches += len(batch_sizes)

    def batches(self, service: str, batch_sizes: list[int]) -> None:
        with self._lock:
            s = self.services[service]
            s.images += sum(batch_sizes)
            s.batches += len(batch_sizes)

    def training(self, job: str, *, steps: int, samples: int, loss: float | None = None) -> None:
        with self._lock:
            j = self.jobs[job]
            j.steps += steps
            j.samples += samples
            if loss is not None:
                j.first_loss = loss if j.first_loss is None else j.first_loss
                j.final_loss = loss

    def summary(self, run: dict[str, Any], elapsed_s: float, restarts: dict[str, int]) -> dict[str, Any]:
        with self._lock:
            services = {name: self._service(s, elapsed_s) for name, s in self.services.items()}
            training = {
                name: {
                    "kind": j.kind,
                    "steps": j.steps,
                    "samples_per_s": round(j.samples / elapsed_s, 3) if elapsed_s > 0 else 0.0,
                    "steps_per_s": round(j.steps / elapsed_s, 3) if elapsed_s > 0 else 0.0,
                    "first_loss": j.first_loss,
                    "final_loss": j.final_loss,
                }
                for name, j in self.jobs.items()
            }
        return {
            "run": {**run, "status": "running", "duration_s": round(elapsed_s, 3)},
            "partial": True,
            "source": "running aggregates (cotrain/running_summary.py): exact counts, latency within 1 %",
            "services": services,
            "training": training,
            "restarts": restarts,
        }

    @staticmethod
    def _service(s: _Service, elapsed_s: float) -> dict[str, Any]:
        arrived = sum(s.counts.values())
        h = s.latency
        within = h.at_most(s.slo_ms)

        def p(q: float) -> float | None:
            value = h.percentile(q)
            return None if value is None else round(value, 3)

        return {
            "slo_ms": s.slo_ms,
            "latency_ms": {
                "p50": p(50),
                "p95": p(95),
                "p99": p(99),
                "max": round(h.max_ms, 3) if h.n else None,
                "mean": round(h.total_ms / h.n, 3) if h.n else None,
            },
            "slo_attainment": round(within / arrived, 6) if arrived else None,
            "requests": {"arrived": arrived, **s.counts},
            "throughput_per_s": round(s.counts["served"] / elapsed_s, 3) if elapsed_s > 0 else None,
            "mean_batch_size": round(s.images / s.batches, 3) if s.batches else None,
        }

"""What a run tells its Prometheus page (cotrain/metrics.py), in one place.

The runtime calls these at the moments it already has the figures: a client's reply (from the
front end's threads), a service's stats message, a control tick (telemetry, training windows,
the knobs), a decision, a restart. Requests of a service with ingress are counted one by one as
the front end answers them, with their status; a service fed by generated arrivals is counted
from its stats windows, so no request is counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from cotrain.config import ExperimentConfig, ServiceSpec
from cotrain.control import Knobs, TrainingWindow
from cotrain.messages import InferenceStats
from cotrain.metrics import Metrics, MetricsServer
from cotrain.observe import inference_window
from cotrain.platform.base import TelemetrySample


class RunMetrics:
    def __init__(
        self, config: ExperimentConfig, services: Sequence[ServiceSpec], workers: Sequence[str]
    ) -> None:
        self.metrics = Metrics()
        self.services = {s.worker: s for s in services}
        self._counted_by_front_end = {s.worker for s in services if s.config.ingress is not None}
        self._stats: dict[str, list[InferenceStats]] = {}
        self._versions: dict[str, int] = {}
        self._controller = config.controller.name
        for service in services:
            self.metrics.add_service(service.name, service.config.slo_ms)
        for worker in workers:
            self.metrics.add_worker(worker)
        self._info = {
            "name": config.name,
            "controller": config.controller.name,
            "platform": config.platform.kind,
        }
        self.server: MetricsServer | None = None

    def serve(self, host: str, port: int, *, certfile: str | None, keyfile: str | None) -> str:
        self.server = self.metrics.serve(host, port, certfile=certfile, keyfile=keyfile)
        return self.server.address

    def started(self) -> None:
        self.metrics.set_run_info(**self._info, start_time_s=time.time())

    def reply(self, service: str, outcome: str, status: int, latency_s: float | None) -> None:
        self.metrics.request_finished(service, outcome, str(status), latency_s)

    def stats(self, worker: str, report: InferenceStats) -> None:
        if worker in self.services:
            self._stats.setdefault(worker, []).append(report)

    def model_swapped(self, worker: str, version: int) -> None:
        self._versions[worker] = version

    def tick(
        self,
        window_s: float,
        sample: TelemetrySample,
        training: Mapping[str, TrainingWindow],
        knobs: Knobs,
        primary: str,
    ) -> None:
        m = self.metrics
        for worker, service in self.services.items():
            stats = self._stats.pop(worker, [])
            if not stats:
                continue
            window = inference_window(stats, window_s, service.config.slo_ms)
            variant = knobs.inference.variant if worker == primary and knobs.inference is not None else None
            if variant is None:
                variant = (service.config.variants or [f"{service.config.model.name}/fp32"])[0]
            m.observe_service(
                service.name,
                queue_depth=window.queue_depth,
                mean_batch_size=window.mean_batch_size,
                arrival_rate_per_s=window.arrival_rate_per_s,
                slo_attainment=window.slo_attainment,
                variant=variant,
                model_version=self._versions.get(worker, 0),
            )
            if worker not in self._counted_by_front_end:
                latencies = [ms / 1000.0 for s in stats for ms in s.latencies_ms]
                served = sum(s.served for s in stats)
                m.requests_finished(service.name, "served", "", count=served, latencies_s=latencies[:served])
                m.requests_finished(service.name, "failed", "", count=sum(s.failed for s in stats))
                m.requests_finished(service.name, "shed", "", count=sum(s.shed for s in stats))
        for job, w in training.items():
            m.observe_training(job, samples_per_s=w.samples_per_s, steps_total=w.total_steps)
        m.observe_platform(
            power_w=sample.power_w,
            temperature_c=sample.temperature_c,
            power_mode=sample.power_mode,
            cpu_util_percent=sample.cpu_util_percent,
            gpu_util_percent=sample.gpu_util_percent,
        )

    def decision(self) -> None:
        self.metrics.decision(self._controller)

    def restarted(self, worker: str) -> None:
        self.metrics.worker_restarted(worker)

    def federated_rounds(self, jobs: Sequence[str], rounds_total: int) -> None:
        for job in jobs:
            self.metrics.federated_rounds(job, rounds_total)

    def stopped(self) -> None:
        self.metrics.run_stopped()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

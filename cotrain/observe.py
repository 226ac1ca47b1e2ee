"""Turning the workers' stats messages and a telemetry sample into a controller's Observation,
as the runtime and the simulator both do every control period. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

from cotrain.control import InferenceWindow, Knobs, Observation, TrainingWindow, VariantInfo
from cotrain.messages import InferenceStats, TrainingStats
from cotrain.platform.base import TelemetrySample


def _q(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def _rate(stats: Sequence[InferenceStats], arrived: int, window_s: float) -> float:
    """Arrivals over the time the stats messages really cover (not the control tick, which a
    message can straddle)."""
    covered_s = sum(s.window_s for s in stats)
    if covered_s > 0:
        return arrived / covered_s
    return arrived / window_s if window_s > 0 else 0.0


def inference_window(stats: Sequence[InferenceStats], window_s: float, slo_ms: float) -> InferenceWindow:
    latencies = [v for s in stats for v in s.latencies_ms]
    sizes = [b for s in stats for b in s.batch_sizes]
    execs = [e for s in stats for e in s.batch_exec_ms]
    served = sum(s.served for s in stats)
    failed = sum(s.failed for s in stats)
    shed = sum(s.shed for s in stats)
    arrived = sum(s.arrived for s in stats)
    finished = served + failed + shed
    within = sum(1 for v in latencies if v <= slo_ms)
    return InferenceWindow(
        arrived=arrived,
        served=served,
        failed=failed,
        shed=shed,
        queue_depth=stats[-1].queue_depth if stats else 0,
        arrival_rate_per_s=_rate(stats, arrived, window_s),
        latency_p50_ms=_q(latencies, 50),
        latency_p95_ms=_q(latencies, 95),
        latency_p99_ms=_q(latencies, 99),
        slo_ms=slo_ms,
        slo_attainment=within / finished if finished else None,
        mean_batch_size=float(np.mean(sizes)) if sizes else None,
        batch_exec_p50_ms=_q(execs, 50),
        batch_exec_max_ms=max(execs) if execs else None,
    )


def training_window(stats: Sequence[TrainingStats], window_s: float, paused: bool) -> TrainingWindow:
    samples = sum(s.samples for s in stats)
    return TrainingWindow(
        steps=sum(s.steps for s in stats),
        samples=samples,
        samples_per_s=samples / window_s if window_s > 0 else 0.0,
        total_steps=stats[-1].total_steps if stats else 0,
        last_loss=next((s.last_loss for s in reversed(stats) if s.last_loss is not None), None),
        paused=stats[-1].paused if stats else paused,
        data_wait_fraction=min(1.0, sum(s.data_wait_ms for s in stats) / 1000.0 / window_s)
        if window_s > 0
        else 0.0,
    )


def build_observation(
    *,
    time_s: float,
    window_s: float,
    knobs: Knobs,
    inference_stats: Sequence[InferenceStats] | None,
    slo_ms: float | None,
    training_stats: Mapping[str, Sequence[TrainingStats]],
    sample: TelemetrySample,
    cpu_count: int,
    power_budget_w: float | None,
    variants: tuple[VariantInfo, ...] = (),
    profile_ms: Mapping[tuple[str, int], float] | None = None,
    inference_fresh: bool = True,
) -> Observation:
    """The Observation of one control period, as the runtime and the simulator both build it:
    the window's stats messages and a telemetry sample. The (wrapped) policy decides on it."""
    inference = None
    if inference_stats is not None and slo_ms is not None:
        inference = inference_window(inference_stats, window_s, slo_ms)
    training = {
        job: training_window(stats, window_s, knobs.training[job].paused if job in knobs.training else False)
        for job, stats in training_stats.items()
    }
    return Observation(
        time_s=time_s,
        window_s=window_s,
        knobs=knobs,
        inference=inference,
        training=training,
        cpu_util_percent=sample.cpu_util_percent,
        cpu_count=cpu_count,
        power_w=sample.power_w,
        power_budget_w=power_budget_w,
        temperature_c=sample.temperature_c,
        gpu_util_percent=sample.gpu_util_percent,
        power_mode=sample.power_mode,
        variants=variants,
        inference_fresh=inference_fresh,
        profile_ms=MappingProxyType({}) if profile_ms is None else profile_ms,
    )

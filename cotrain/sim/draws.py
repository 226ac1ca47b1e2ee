"""Scenarios drawn at random around a bench scenario, so no controller can be tuned to one.

`cotrain bench SCENARIO --platform sim --scenarios N --seed S` runs every controller over N
scenarios drawn here from one seeded generator: the same N and S give the same scenarios on any
machine. Each draw varies what a deployment varies and a controller must not assume:
- the arrival process: constant, Poisson, bursty on/off, a rate step, or a recorded trace
  (files of `traces_dir`, replayed through the real service's arrival offsets and scaled to
  the drawn rate);
- the mean rate: the scenario's rate times a factor log-uniform in [1/2, 2];
- the SLO: the scenario's SLO times a factor log-uniform in [1/2, 2];
- the inference and the training model, from the calibrated catalogue's common backbones;
- the power budget: none, or uniform in [25, 45] W (the AGX Orin's MODE_30W to MAXN range).
The rest (batching, queue, jobs' batch sizes and loader workers, duration, start mode) is the
scenario's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cotrain.config import TraceArrivalsConfig
from cotrain.sim.engine import ArrivalSpec
from cotrain.sim.scenario import SimScenario
from cotrain.workloads.inference.arrivals import read_trace_s

INFERENCE_MODELS = ("resnet50", "resnet18", "mobilenet_v3_large", "efficientnet_b0", "resnet34")
TRAINING_MODELS = ("mobilenet_v3_large", "resnet18", "efficientnet_b0", "mobilenet_v2")
PROCESSES = ("constant", "poisson", "bursty", "step", "trace")
BUDGET_W = (25.0, 45.0)
TRACE_SUFFIXES = (".csv", ".txt")


@dataclass(frozen=True)
class Draw:
    """One drawn scenario and what was drawn, for the bench's table."""

    index: int
    scenario: SimScenario
    process: str
    rate_per_s: float
    trace: str | None = None

    def describe(self) -> str:
        s = self.scenario
        where = f" ({self.trace})" if self.trace else ""
        budget = "no budget" if s.power_budget_w is None else f"{s.power_budget_w:.0f} W"
        training = ",".join(j.model for j in s.training) or "no training"
        return (
            f"{self.process}{where} {self.rate_per_s:.0f}/s, SLO {s.slo_ms:.0f} ms, "
            f"{s.inference_model} + {training}, {budget}"
        )


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def trace_files(traces_dir: Path | None) -> list[Path]:
    if traces_dir is None or not traces_dir.is_dir():
        return []
    return sorted(p for p in traces_dir.iterdir() if p.suffix in TRACE_SUFFIXES and p.is_file())


def _arrivals(
    rng: np.random.Generator, process: str, rate: float, duration_s: float, traces: list[Path]
) -> tuple[ArrivalSpec, str | None]:
    if process == "constant":
        return ArrivalSpec.constant(rate), None
    if process == "poisson":
        return ArrivalSpec.poisson(rate), None
    if process == "bursty":
        # on a quarter of the time at 3.4x the mean, off the rest at a tenth: the mean is `rate`
        on_s = float(rng.uniform(5.0, 30.0))
        off_s = 3.0 * on_s
        on, off = rate * 3.4, rate * 0.2
        steps = []
        t = 0.0
        while t < duration_s:
            steps += [(t, on), (t + on_s, off)]
            t += on_s + off_s
        return ArrivalSpec("poisson", tuple(steps)), None
    if process == "step":
        at = float(rng.uniform(0.3, 0.7)) * duration_s
        low, high = rate * 0.6, rate * 1.4
        first, second = (low, high) if rng.random() < 0.5 else (high, low)
        return ArrivalSpec("poisson", ((0.0, first), (at, second))), None
    path = traces[int(rng.integers(len(traces)))]
    times = read_trace_s(path.read_text(encoding="utf-8"))
    native = (len(times) - 1) / times[-1] if len(times) > 1 and times[-1] > 0 else rate
    scale = min(1000.0, max(1e-3, native / rate))
    source = TraceArrivalsConfig(process="trace", path=str(path), time_scale=scale, loop=True)
    return ArrivalSpec.replay(source, duration_s), path.name


def draw_scenarios(base: SimScenario, n: int, seed: int, traces_dir: Path | None = None) -> list[Draw]:
    """`n` scenarios around `base`, reproducible from `seed` (see the module's docstring)."""
    rng = np.random.default_rng([seed, 15])
    traces = trace_files(traces_dir)
    processes = [p for p in PROCESSES if p != "trace" or traces]
    base_rate = base.arrivals.rate_at(0.0) or 50.0
    draws = []
    for i in range(n):
        process = processes[int(rng.integers(len(processes)))]
        rate = base_rate * _log_uniform(rng, 0.5, 2.0)
        slo_ms = base.slo_ms * _log_uniform(rng, 0.5, 2.0)
        arrivals, trace = _arrivals(rng, process, rate, base.duration_s, traces)
        model = INFERENCE_MODELS[int(rng.integers(len(INFERENCE_MODELS)))]
        training = tuple(
            replace(j, model=TRAINING_MODELS[int(rng.integers(len(TRAINING_MODELS)))]) for j in base.training
        )
        budget = None if rng.random() < 0.5 else float(rng.uniform(*BUDGET_W))
        scenario = replace(
            base,
            name=f"{base.name}-draw{i:02d}",
            inference_model=model,
            arrivals=arrivals,
            slo_ms=slo_ms,
            training=training,
            power_budget_w=budget,
            seed=int(rng.integers(2**31)),
        )
        draws.append(Draw(i, scenario, process, rate, trace))
    return draws

"""Seeded arrival processes, as offsets in seconds from the start of the run.

They are pure iterators (no clock, no sleeping), so a test can check the schedule exactly; the
inference process turns offsets into absolute times and waits for them. Processes:
- constant: evenly spaced;
- poisson: exponential gaps;
- bursty: Poisson at one rate for `on_s`, at another for `off_s`, repeating;
- schedule: piecewise-constant rate steps (Poisson or evenly spaced within each step);
- trace: recorded arrival times replayed, optionally faster/slower and looped.
Piecewise-Poisson is exact: the process is memoryless, so at a rate change the pending gap is
dropped and a new one drawn at the new rate from the boundary.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from cotrain.config import (
    ArrivalsConfig,
    BurstyArrivalsConfig,
    ConstantArrivalsConfig,
    PoissonArrivalsConfig,
    RateScheduleArrivalsConfig,
    TraceArrivalsConfig,
)

Segment = tuple[float, float | None, float]  # (start_s, end_s or None for open-ended, rate_per_s)


def constant_offsets_s(rate_per_s: float) -> Iterator[float]:
    """Evenly spaced arrivals: the i-th at i / rate."""
    i = 0
    while True:
        yield i / rate_per_s
        i += 1


def poisson_offsets_s(rate_per_s: float, seed: int) -> Iterator[float]:
    """A Poisson process: exponential gaps with mean 1/rate, reproducible from `seed`."""
    return piecewise_offsets_s([(0.0, None, rate_per_s)], poisson=True, seed=seed)


def piecewise_offsets_s(segments: Iterable[Segment], *, poisson: bool, seed: int) -> Iterator[float]:
    """Arrivals of a process whose rate is constant within each segment (segments in time order)."""
    rng = np.random.default_rng(seed)
    for start_s, end_s, rate in segments:
        if rate <= 0:
            continue
        t = start_s
        for k in itertools.count():
            # evenly spaced: computed from the index, so no rounding drift across a long segment
            t = t + float(rng.exponential(1.0 / rate)) if poisson else start_s + k / rate
            if end_s is not None and t >= end_s:
                break
            yield t


def bursty_segments(config: BurstyArrivalsConfig) -> Iterator[Segment]:
    period = config.on_s + config.off_s
    for k in itertools.count():
        yield (k * period, k * period + config.on_s, config.on_rate_per_s)
        yield (k * period + config.on_s, (k + 1) * period, config.off_rate_per_s)


def schedule_segments(config: RateScheduleArrivalsConfig) -> list[Segment]:
    steps = config.steps
    return [
        (step.at_s, steps[i + 1].at_s if i + 1 < len(steps) else None, step.rate_per_s)
        for i, step in enumerate(steps)
    ]


def read_trace_s(text: str) -> list[float]:
    """Arrival times from a trace: numbers one per line ('#' comments allowed), or a CSV with an
    `arrival_s` column. Returned sorted and shifted so the first arrival is at 0."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    if "arrival_s" in first:
        try:
            rows = list(csv.DictReader(io.StringIO(text)))
        except csv.Error as exc:
            raise ValueError(f"not a readable CSV: {exc}") from None
        times = [float(row["arrival_s"]) for row in rows if row.get("arrival_s")]
    else:
        times = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                times.append(float(line.split(",")[0]))
            except ValueError:
                raise ValueError(f"line {number}: not a number of seconds: {line[:40]!r}") from None
    if not times:
        raise ValueError("the trace has no arrival times")
    times.sort()
    return [t - times[0] for t in times]


def trace_offsets_s(times_s: list[float], time_scale: float, loop: bool) -> Iterator[float]:
    gaps = np.diff(times_s)
    mean_gap = float(np.mean(gaps)) if len(gaps) else 1.0
    period = times_s[-1] + max(mean_gap, 0.001)  # a trace of identical times must not loop at 0 s
    for k in itertools.count():
        for t in times_s:
            yield (k * period + t) * time_scale
        if not loop:
            return


def arrival_offsets_s(config: ArrivalsConfig) -> Iterator[float]:
    if isinstance(config, ConstantArrivalsConfig):
        return constant_offsets_s(config.rate_per_s)
    if isinstance(config, PoissonArrivalsConfig):
        return poisson_offsets_s(config.rate_per_s, config.seed)
    if isinstance(config, BurstyArrivalsConfig):
        return piecewise_offsets_s(bursty_segments(config), poisson=True, seed=config.seed)
    if isinstance(config, RateScheduleArrivalsConfig):
        return piecewise_offsets_s(schedule_segments(config), poisson=config.poisson, seed=config.seed)
    if isinstance(config, TraceArrivalsConfig):
        times = read_trace_s(Path(config.path).read_text(encoding="utf-8"))
        return trace_offsets_s(times, config.time_scale, config.loop)
    raise TypeError(f"unknown arrival process {config!r}")

"""Arrival processes are pure, seeded schedules: checked exactly, with no clock."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from cotrain.config import (
    BurstyArrivalsConfig,
    ConstantArrivalsConfig,
    PoissonArrivalsConfig,
    RateScheduleArrivalsConfig,
    RateStepConfig,
    TraceArrivalsConfig,
)
from cotrain.workloads.inference.arrivals import arrival_offsets_s, read_trace_s


def take_until(it: object, t_s: float) -> list[float]:
    return list(itertools.takewhile(lambda t: t < t_s, it))  # type: ignore[arg-type]


def test_constant_is_evenly_spaced() -> None:
    assert take_until(arrival_offsets_s(ConstantArrivalsConfig(process="constant", rate_per_s=4)), 1.0) == [
        0.0,
        0.25,
        0.5,
        0.75,
    ]


def test_poisson_has_its_rate_and_is_reproducible() -> None:
    config = PoissonArrivalsConfig(process="poisson", rate_per_s=50, seed=3)
    a = take_until(arrival_offsets_s(config), 200.0)
    b = take_until(arrival_offsets_s(config), 200.0)
    assert a == b
    assert len(a) / 200 == pytest.approx(50, rel=0.05)
    gaps = np.diff(a)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.05), "exponential gaps: CV of 1"


def test_bursty_alternates_rates() -> None:
    config = BurstyArrivalsConfig(
        process="bursty", on_rate_per_s=100, off_rate_per_s=0, on_s=1, off_s=1, seed=1
    )
    times = take_until(arrival_offsets_s(config), 10.0)
    in_on = [t for t in times if int(t) % 2 == 0]
    assert len(in_on) == len(times), "nothing arrives in the off periods"
    assert len(times) / 5 == pytest.approx(100, rel=0.15)


def test_rate_schedule_steps_up_and_down() -> None:
    steps = [
        RateStepConfig(at_s=0, rate_per_s=10),
        RateStepConfig(at_s=10, rate_per_s=100),
        RateStepConfig(at_s=20, rate_per_s=10),
    ]
    config = RateScheduleArrivalsConfig(process="schedule", steps=steps, poisson=False)
    times = take_until(arrival_offsets_s(config), 30.0)
    counts = [sum(1 for t in times if lo <= t < lo + 10) for lo in (0, 10, 20)]
    assert counts == [100, 1000, 100]
    with pytest.raises(ValueError, match="strictly increasing"):
        RateScheduleArrivalsConfig(process="schedule", steps=[steps[1], steps[0]])


def test_trace_replays_numbers_or_a_requests_csv_scaled_and_looped(tmp_path: Path) -> None:
    plain = tmp_path / "trace.txt"
    plain.write_text("# recorded\n10.5\n10.0\n11.0\n")
    assert read_trace_s(plain.read_text()) == [0.0, 0.5, 1.0]
    config = TraceArrivalsConfig(process="trace", path=str(plain), time_scale=2.0)
    assert list(arrival_offsets_s(config)) == [0.0, 1.0, 2.0]
    looped = TraceArrivalsConfig(process="trace", path=str(plain), loop=True)
    assert list(itertools.islice(arrival_offsets_s(looped), 5)) == [0.0, 0.5, 1.0, 1.5, 2.0]
    previous_run = tmp_path / "requests.csv"
    previous_run.write_text("request_id,arrival_s,outcome\n0,100.25,served\n1,100.75,shed\n")
    assert read_trace_s(previous_run.read_text()) == [0.0, 0.5]
    with pytest.raises(ValueError, match="line 1"):
        read_trace_s("soon\n")

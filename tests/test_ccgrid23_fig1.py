"""experiments/ccgrid23_fig1.py: the row/stability bookkeeping of the real sweep, and the sim path
end to end (a few seconds: the calibration and five simulated 600 s runs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fig1() -> ModuleType:
    """The script as a module (experiments/ is not a package)."""
    path = REPO / "experiments" / "ccgrid23_fig1.py"
    spec = importlib.util.spec_from_file_location("ccgrid23_fig1", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ccgrid23_fig1"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _requests(served: list[tuple[float, float]], queued_arrivals: list[float]) -> list[dict[str, str]]:
    rows = [{"arrival_s": str(a), "latency_ms": str(v), "outcome": "served", "reason": ""} for a, v in served]
    rows += [
        {"arrival_s": str(a), "latency_ms": "", "outcome": "shed", "reason": "stopped before dispatch"}
        for a in queued_arrivals
    ]
    return rows


TRAINING = {"mnv3": {"samples_per_s": 100.0, "steps_per_s": 3.125}}


def test_fixed_batch_config_waits_for_full_batches_and_keeps_the_backlog(fig1: ModuleType) -> None:
    base = yaml.safe_load((REPO / "experiments" / "ccgrid23-fig1.yaml").read_text())
    data = fig1.fixed_batch_config(base, 4)
    service = data["workloads"]["inference"]
    assert service["batching"] == {"max_batch_size": 4, "max_queue_delay_ms": 60_000.0}
    assert service["admission"] == {"policy": "queue_full"}
    assert service["drain_timeout_s"] == 0 and service["queue_capacity"] >= 100_000
    assert base["workloads"]["inference"]["batching"]["max_batch_size"] == 16  # base untouched

    from cotrain.config import ExperimentConfig

    ExperimentConfig.model_validate(data)  # a config `cotrain run` accepts


def test_queue_stable_allows_two_batches_and_a_second_of_arrivals(fig1: ModuleType) -> None:
    assert fig1.queue_stable(16, 82, 50.0)
    assert not fig1.queue_stable(16, 83, 50.0)
    assert not fig1.queue_stable(1, 600, 50.0)


def test_latency_trend_is_flat_for_a_sawtooth_and_steep_for_a_growing_queue(fig1: ModuleType) -> None:
    t = [i * 0.02 for i in range(1000)]  # 20 s at 50 req/s
    sawtooth = [300.0 - 20.0 * (i % 16) for i in range(1000)]
    growing = [50.0 + 500.0 * x for x in t]
    flat = fig1.latency_trend_ms_per_s(t, sawtooth)
    assert flat is not None and abs(flat) < 5.0
    assert fig1.latency_trend_ms_per_s(t, growing) == pytest.approx(500.0)
    assert fig1.latency_trend_ms_per_s([1.0], [2.0]) is None


def test_real_row_stable_batch(fig1: ModuleType) -> None:
    # batch 4 at 50 req/s: 80 ms to fill, ~60 ms to run; 3 requests wait at stop
    served = [(100.0 + i * 0.02, 140.0 - 20.0 * (i % 4)) for i in range(996)]
    queued = [100.0 + i * 0.02 for i in range(996, 999)]
    row = fig1.real_row(4, 50.0, _requests(served, queued), TRAINING, stop_s=100.0 + 999 * 0.02)
    assert row.stable and row.backlog_at_stop == 3 and row.served == 996 and row.arrived == 999
    assert row.latency_ms_max == 140.0 and row.peak_latency_ms == 140.0  # the queued waited < 140 ms
    assert row.accumulation_ms == 80.0 and row.implied_exec_ms == pytest.approx(60.0)
    assert row.train_samples_per_s == 100.0 and row.train_steps_per_s == 3.125
    assert abs(row.latency_trend_ms_per_s) < 1.0


def test_real_row_unstable_batch_counts_the_oldest_wait_in_the_peak(fig1: ModuleType) -> None:
    # batch 1 served at 25/s against 50/s arriving: latency climbs, half the requests still queue
    served = [(i * 0.02, 40.0 + 500.0 * i * 0.02) for i in range(500)]
    queued = [i * 0.02 for i in range(500, 1000)]
    row = fig1.real_row(1, 50.0, _requests(served, queued), TRAINING, stop_s=20.0)
    assert not row.stable and row.backlog_at_stop == 500
    assert row.oldest_wait_at_stop_ms == pytest.approx(10_000.0)
    assert row.peak_latency_ms == pytest.approx(10_000.0)
    assert row.peak_latency_ms > row.latency_ms_max
    assert row.latency_trend_ms_per_s == pytest.approx(500.0)


def test_near_the_edge_a_small_backlog_with_rising_latency_is_unstable(fig1: ModuleType) -> None:
    # batch 2 at 30 req/s: the backlog at stop is small, but latency climbs 40 ms/s all run long
    served = [(i / 30, 100.0 + 40.0 * i / 30) for i in range(590)]
    queued = [i / 30 for i in range(590, 600)]
    row = fig1.real_row(2, 30.0, _requests(served, queued), TRAINING, stop_s=20.0)
    assert fig1.queue_stable(2, row.backlog_at_stop, 30.0)
    assert row.latency_trend_ms_per_s == pytest.approx(40.0)
    assert not row.stable
    assert fig1.latency_rising(40.0, 18.0, 2, 30.0)
    assert not fig1.latency_rising(5.0, 18.0, 2, 30.0)  # 90 ms of drift: under the 100 ms floor
    assert not fig1.latency_rising(10.0, 18.0, 16, 30.0)  # 180 ms: under one tooth (533 ms)
    assert not fig1.latency_rising(None, 18.0, 1, 30.0)


def _row(fig1: ModuleType, batch: int, stable: bool, peak_ms: float, train: float) -> Any:
    return fig1.RealRow(
        batch=batch,
        rate_per_s=50.0,
        arrived=1000,
        served=1000,
        backlog_at_stop=0 if stable else 500,
        oldest_wait_at_stop_ms=None,
        latency_ms_p50=peak_ms / 2,
        latency_ms_p99=peak_ms * 0.9,
        latency_ms_max=peak_ms,
        peak_latency_ms=peak_ms,
        latency_trend_ms_per_s=0.0,
        train_samples_per_s=train,
        train_steps_per_s=train / 32,
        stable=stable,
    )


def test_findings_and_table(fig1: ModuleType) -> None:
    rows = [
        _row(fig1, 1, False, 12_000.0, 70.0),
        _row(fig1, 4, True, 150.0, 90.0),
        _row(fig1, 16, True, 600.0, 105.0),
    ]
    assert all(fig1.real_findings(rows).values())
    rows[2] = _row(fig1, 16, True, 600.0, 85.0)
    found = fig1.real_findings(rows)
    assert not found["training throughput rises with batch size (stable batches)"]
    text = fig1.real_table(rows, "title")
    assert "FAILS: training throughput" in text and "holds: batch 1 unstable" in text
    assert text.splitlines()[2].split()[:3] == ["1", "NO", "500"]


def test_sim_path_end_to_end(fig1: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fig1.main(["--platform", "sim", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Simulator calibration, held-out points" in out and "time MAPE" in out
    assert "holds: batch 1 and 4 unstable" in out
    assert (tmp_path / "fig1-sim.png").stat().st_size > 10_000
    assert not (tmp_path / "fig1-real.png").exists()
    result = json.loads((tmp_path / "fig1.json").read_text())
    sim = result["sim"]
    assert [r["batch"] for r in sim["rows"]] == [1, 4, 16, 64, 256]
    assert all(sim["findings"].values())
    assert len(sim["calibration"]["held_out_fig1"]) == 7
    assert 0 < sim["calibration"]["fig1_mape_leave_one_out"] < 0.15
    assert "real" not in result

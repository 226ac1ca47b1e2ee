"""experiments/ccgrid23_fig1.py: the row/stability bookkeeping of the real sweep, how its repeats
combine into median rows (no real `cotrain run` here: those take minutes), and the sim path
end to end (a few seconds: the calibration and five simulated 600 s runs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from cotrain import ccgrid23_real as real

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


def test_fixed_batch_config_waits_for_full_batches_and_keeps_the_backlog() -> None:
    base = yaml.safe_load((REPO / "experiments" / "ccgrid23-fig1.yaml").read_text())
    data = real.fixed_batch_config(base, 4)
    service = data["workloads"]["inference"]
    assert service["batching"] == {"max_batch_size": 4, "max_queue_delay_ms": 60_000.0}
    assert service["admission"] == {"policy": "queue_full"}
    assert service["drain_timeout_s"] == 0 and service["queue_capacity"] >= 100_000
    assert base["workloads"]["inference"]["batching"]["max_batch_size"] == 16  # base untouched

    from cotrain.config import ExperimentConfig

    ExperimentConfig.model_validate(data)  # a config `cotrain run` accepts


def test_queue_stable_allows_two_batches_and_a_second_of_arrivals() -> None:
    assert real.queue_stable(16, 82, 50.0)
    assert not real.queue_stable(16, 83, 50.0)
    assert not real.queue_stable(1, 600, 50.0)


def test_latency_trend_is_flat_for_a_sawtooth_and_steep_for_a_growing_queue() -> None:
    t = [i * 0.02 for i in range(1000)]  # 20 s at 50 req/s
    sawtooth = [300.0 - 20.0 * (i % 16) for i in range(1000)]
    growing = [50.0 + 500.0 * x for x in t]
    flat = real.latency_trend_ms_per_s(t, sawtooth)
    assert flat is not None and abs(flat) < 5.0
    assert real.latency_trend_ms_per_s(t, growing) == pytest.approx(500.0)
    assert real.latency_trend_ms_per_s([1.0], [2.0]) is None


def test_real_row_stable_batch() -> None:
    # batch 4 at 50 req/s: 80 ms to fill, ~60 ms to run; 3 requests wait at stop
    served = [(100.0 + i * 0.02, 140.0 - 20.0 * (i % 4)) for i in range(996)]
    queued = [100.0 + i * 0.02 for i in range(996, 999)]
    row = real.real_row(4, 50.0, _requests(served, queued), TRAINING, stop_s=100.0 + 999 * 0.02)
    assert row.stable and row.backlog_at_stop == 3 and row.served == 996 and row.arrived == 999
    assert row.latency_ms_max == 140.0 and row.peak_latency_ms == 140.0  # the queued waited < 140 ms
    assert row.accumulation_ms == 80.0 and row.implied_exec_ms == pytest.approx(60.0)
    assert row.train_samples_per_s == 100.0 and row.train_steps_per_s == 3.125
    assert abs(row.latency_trend_ms_per_s) < 1.0


def test_real_row_unstable_batch_counts_the_oldest_wait_in_the_peak() -> None:
    # batch 1 served at 25/s against 50/s arriving: latency climbs, half the requests still queue
    served = [(i * 0.02, 40.0 + 500.0 * i * 0.02) for i in range(500)]
    queued = [i * 0.02 for i in range(500, 1000)]
    row = real.real_row(1, 50.0, _requests(served, queued), TRAINING, stop_s=20.0)
    assert not row.stable and row.backlog_at_stop == 500
    assert row.oldest_wait_at_stop_ms == pytest.approx(10_000.0)
    assert row.peak_latency_ms == pytest.approx(10_000.0)
    assert row.peak_latency_ms > row.latency_ms_max
    assert row.latency_trend_ms_per_s == pytest.approx(500.0)


def test_near_the_edge_a_small_backlog_with_rising_latency_is_unstable() -> None:
    # batch 2 at 30 req/s: the backlog at stop is small, but latency climbs 40 ms/s all run long
    served = [(i / 30, 100.0 + 40.0 * i / 30) for i in range(590)]
    queued = [i / 30 for i in range(590, 600)]
    row = real.real_row(2, 30.0, _requests(served, queued), TRAINING, stop_s=20.0)
    assert real.queue_stable(2, row.backlog_at_stop, 30.0)
    assert row.latency_trend_ms_per_s == pytest.approx(40.0)
    assert not row.stable
    assert real.latency_rising(40.0, 18.0, 2, 30.0)
    assert not real.latency_rising(5.0, 18.0, 2, 30.0)  # 90 ms of drift: under the 100 ms floor
    assert not real.latency_rising(10.0, 18.0, 16, 30.0)  # 180 ms: under one tooth (533 ms)
    assert not real.latency_rising(None, 18.0, 1, 30.0)


def _row(
    batch: int,
    stable: bool,
    peak_ms: float | None,
    train: float,
    *,
    backlog: int | None = None,
    oldest_ms: float | None = None,
    run_dir: str = "",
) -> Any:
    return real.RealRow(
        batch=batch,
        rate_per_s=50.0,
        arrived=1000,
        served=1000,
        backlog_at_stop=(0 if stable else 500) if backlog is None else backlog,
        oldest_wait_at_stop_ms=oldest_ms,
        latency_ms_p50=None if peak_ms is None else peak_ms / 2,
        latency_ms_p99=None if peak_ms is None else peak_ms * 0.9,
        latency_ms_max=peak_ms,
        peak_latency_ms=peak_ms,
        latency_trend_ms_per_s=0.0,
        train_samples_per_s=train,
        train_steps_per_s=train / 32,
        stable=stable,
        run_wall_s=25.0,
        run_dir=run_dir,
    )


def _repeated(batch: int, stable: bool, peak_ms: float, train: float) -> Any:
    """Three runs around (peak_ms, train): the middle one is the median."""
    runs = [
        _row(batch, stable, peak_ms * f, train * f, run_dir=f"runs/b{batch}-r{k}")
        for k, f in ((1, 1.0), (2, 0.8), (3, 1.25))
    ]
    return real.combine_repeats(runs)


def test_run_order_interleaves_the_repeats(fig1: ModuleType) -> None:
    assert real.run_order([1, 4, 16], 2) == [(1, 1), (4, 1), (16, 1), (1, 2), (4, 2), (16, 2)]
    assert real.run_order([8, 2], 1) == [(8, 1), (2, 1)]  # the order given, not sorted
    with pytest.raises(ValueError):
        real.run_order([1], 0)
    assert fig1.run_dir_for(Path("out"), 4, 1) == Path("out/runs/b4-r1")  # suffixed even for N = 1


def test_median_row_odd_repeats_and_majority_stability() -> None:
    runs = [
        _row(4, True, 150.0, 90.0, backlog=3),
        _row(4, False, 900.0, 60.0, backlog=40),
        _row(4, True, 200.0, 100.0, backlog=5),
    ]
    med = real.median_row(runs)
    assert med.batch == 4 and med.stable  # 2 of 3 stable
    assert med.peak_latency_ms == 200.0 and med.train_samples_per_s == 90.0
    assert med.backlog_at_stop == 5 and isinstance(med.backlog_at_stop, int)
    assert med.latency_ms_p99 == pytest.approx(180.0) and med.run_wall_s == 25.0
    assert med.run_dir == ""  # each run keeps its own
    assert not real.median_row([runs[1], runs[1], runs[0]]).stable  # 1 of 3 stable

    rr = real.combine_repeats(runs)
    assert rr.batch == 4 and rr.repeats == 3 and rr.stable_repeats == 2
    assert rr.runs == tuple(runs) and rr.median == med
    assert rr.peak_latency_ms_spread == (150.0, 900.0)
    assert rr.train_samples_per_s_spread == (60.0, 100.0)


def test_median_row_even_repeats_average_the_middle_and_a_tie_is_unstable() -> None:
    runs = [_row(2, True, 100.0, 80.0, backlog=3), _row(2, False, 301.0, 70.0, backlog=4)]
    med = real.median_row(runs)
    assert not med.stable  # 1 of 2 is not a majority
    assert med.peak_latency_ms == pytest.approx(200.5) and med.train_samples_per_s == pytest.approx(75.0)
    assert med.backlog_at_stop == pytest.approx(3.5)  # an even count of runs may land between two
    assert med.arrived == 1000 and isinstance(med.arrived, int)
    four = [_row(2, s, 100.0, 80.0) for s in (True, True, True, False)]
    assert real.median_row(four).stable


def test_median_row_ignores_none_and_keeps_none_when_all_are_none() -> None:
    runs = [
        _row(1, False, None, 50.0, oldest_ms=9000.0),  # served nothing
        _row(1, False, 300.0, 55.0),
        _row(1, False, 500.0, 60.0, oldest_ms=7000.0),
    ]
    med = real.median_row(runs)
    assert med.peak_latency_ms == pytest.approx(400.0)  # median of the two known
    assert med.oldest_wait_at_stop_ms == pytest.approx(8000.0)
    assert real.median_row(runs[:1]).latency_ms_p50 is None
    assert real.median_row([runs[1], runs[1]]).oldest_wait_at_stop_ms is None
    assert real.combine_repeats(runs).peak_latency_ms_spread == (300.0, 500.0)
    assert real.combine_repeats(runs[:1]).peak_latency_ms_spread == (None, None)
    with pytest.raises(ValueError):
        real.median_row([])
    with pytest.raises(ValueError):
        real.median_row([runs[0], _row(2, True, 100.0, 80.0)])


def test_findings_and_table() -> None:
    rows = [
        _repeated(1, False, 12_000.0, 70.0),
        _repeated(4, True, 150.0, 90.0),
        _repeated(16, True, 600.0, 105.0),
    ]
    assert all(real.real_findings([r.median for r in rows]).values())
    rows[2] = _repeated(16, True, 600.0, 85.0)
    found = real.real_findings([r.median for r in rows])
    assert not found["training throughput rises with batch size (stable batches)"]
    text = real.real_table(rows, "title")
    assert "median of 3 runs" in text
    assert "FAILS (on the medians): training throughput" in text
    assert "holds (on the medians): batch 1 unstable" in text
    lines = text.splitlines()
    assert lines[0] == "title" and "peak min–max" in lines[2]
    assert lines[3].split()[:4] == ["1", "NO", "0/3", "500"]
    assert lines[4].split()[:3] == ["4", "yes", "3/3"]
    assert "120–188" in lines[4] and "72.0–112.5" in lines[4]  # the spread over the three runs


def test_mixed_stability_shows_the_vote() -> None:
    runs = [_row(2, s, 300.0, 80.0) for s in (True, False, True)]
    text = real.real_table([real.combine_repeats(runs)], "t")
    assert text.splitlines()[3].split()[:3] == ["2", "yes", "2/3"]


def test_real_json_keeps_the_old_keys_and_adds_repeats_and_runs() -> None:
    rows = [_repeated(1, False, 12_000.0, 70.0), _repeated(4, True, 150.0, 90.0)]
    section = real.real_json(rows, "setup text", "cfg.yaml", 50.0, 20.0)
    json.dumps(section)  # serialisable as is
    assert {"setup", "config", "rate_per_s", "duration_s", "rows", "findings"} <= set(section)
    assert section["repeats"] == 3 and len(section["runs"]) == 6
    old_keys = {f.name for f in fields(real.RealRow)} | {"accumulation_ms", "implied_exec_ms"}
    row = section["rows"][1]
    assert old_keys <= set(row)
    assert row["batch"] == 4 and row["stable"] and row["repeats"] == 3 and row["stable_repeats"] == 3
    assert row["peak_latency_ms"] == 150.0
    assert (row["peak_latency_ms_min"], row["peak_latency_ms_max"]) == (120.0, 187.5)
    assert (row["train_samples_per_s_min"], row["train_samples_per_s_max"]) == (72.0, 112.5)
    assert row["accumulation_ms"] == 80.0 and row["implied_exec_ms"] == pytest.approx(70.0)
    # every run, in the order they ran (interleaved), each with its repeat number
    assert [(r["batch"], r["repeat"]) for r in section["runs"]] == [
        (1, 1),
        (4, 1),
        (1, 2),
        (4, 2),
        (1, 3),
        (4, 3),
    ]
    assert section["runs"][3]["run_dir"] == "runs/b4-r2" and section["runs"][3]["peak_latency_ms"] == 120.0
    assert old_keys <= set(section["runs"][0])
    assert section["findings"] == real.real_findings([r.median for r in rows])


def test_plot_real_writes_a_png(fig1: ModuleType, tmp_path: Path) -> None:
    rows = [
        _repeated(1, False, 12_000.0, 70.0),
        real.combine_repeats([_row(2, s, 300.0, 80.0) for s in (True, False, True)]),
        _repeated(4, True, 150.0, 90.0),
    ]
    path = fig1.plot_real(rows, "title, median of 3 runs", tmp_path / "fig1-real.png")
    assert path.stat().st_size > 10_000


def test_repeats_must_be_positive_and_batches_distinct(
    fig1: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        fig1.main(["--platform", "real", "--repeats", "0", "--out", str(tmp_path)])
    assert "must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fig1.main(["--platform", "real", "--batches", "2,2", "--out", str(tmp_path)])
    assert "each batch size once" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


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


# --- the rate λ: capacity from saturated runs, and the choice -------------------------------------


def _saturated_rows(
    batch: int, exec_s: float, gap_s: float, *, warmup: int = 0, warmup_exec_s: float = 0.2, queued: int = 50
) -> list[dict[str, str]]:
    """A saturated run at a fixed batch size: everything arrives at t = 100 s (far faster than it
    is served), then batches run back to back, each `exec_s` with `gap_s` between them, for 10 s;
    the first `warmup` batches are slow (the model's first calls); `queued` requests are left."""
    rows: list[dict[str, str]] = []
    t = 100.0
    while t < 110.0:
        run_s = warmup_exec_s if len(rows) < warmup * batch else exec_s
        for _ in range(batch):
            rows.append(
                {
                    "arrival_s": "100.0",
                    "start_s": f"{t:.6f}",
                    "end_s": f"{t + run_s:.6f}",
                    "outcome": "served",
                    "reason": "",
                }
            )
        t += run_s + gap_s
    rows += [
        {
            "arrival_s": "100.0",
            "start_s": "",
            "end_s": "",
            "outcome": "shed",
            "reason": "stopped before dispatch",
        }
    ] * queued
    return rows


def test_service_capacity_counts_the_gaps_between_batches_and_skips_the_warmup() -> None:
    # 23 ms a batch of 1 plus 2 ms between batches: 40 req/s, not the 43.5 req/s of 1/e(1)
    assert real.service_capacity_per_s(_saturated_rows(1, 0.023, 0.002)) == pytest.approx(40.0, rel=0.002)
    # batch 4 at 30 ms + 2 ms: 125 req/s; ten 200 ms warm-up batches (2.3 s) are left out
    rows = _saturated_rows(4, 0.030, 0.002, warmup=10)
    assert real.service_capacity_per_s(rows) == pytest.approx(125.0, rel=0.002)
    with_warmup = real.service_capacity_per_s(rows, settle_s=0.0)
    assert with_warmup < 110.0  # the slow first batches would pull it down


def test_service_capacity_needs_enough_batches_after_the_settle_time() -> None:
    with pytest.raises(real.CalibrationError, match="only 0 batches"):
        real.service_capacity_per_s(_saturated_rows(4, 0.030, 0.002), settle_s=20.0)
    few = [r for r in _saturated_rows(1, 0.5, 0.0) if r["outcome"] != "served" or float(r["start_s"]) < 104.0]
    with pytest.raises(real.CalibrationError, match="only 4 batches"):  # 2.0, 2.5, 3.0, 3.5 s
        real.service_capacity_per_s(few)
    with pytest.raises(real.CalibrationError, match="no requests"):
        real.service_capacity_per_s([])


def test_choose_rate_goes_midway_between_the_b1_and_b4_capacities() -> None:
    assert real.choose_rate_per_s(71.2, 125.6) == 98.4
    assert real.choose_rate_per_s(40.0, 150.0) == 95.0
    assert real.choose_rate_per_s(40.04, 125.02) == 82.5  # rounded to 0.1 req/s
    assert real.choose_rate_per_s(100.0, 115.2) == 107.6  # just above the 15 % gap


def test_choose_rate_refuses_when_b4_is_not_clearly_faster() -> None:
    for c1, c4 in ((100.0, 115.0), (100.0, 100.0), (60.0, 45.0)):
        with pytest.raises(real.CalibrationError, match="no unstable-then-stable regime") as err:
            real.choose_rate_per_s(c1, c4)
        assert f"{c1:.1f} req/s at b=1" in str(err.value) and f"{c4:.1f} req/s at b=4" in str(err.value)
    with pytest.raises(real.CalibrationError, match="positive"):
        real.choose_rate_per_s(0.0, 50.0)


def _calibration(batch: int, capacity: float, backlog: int = 3000) -> Any:
    return real.CalibrationRun(
        batch=batch,
        rate_per_s=400.0,
        arrived=4000,
        backlog_at_stop=backlog,
        capacity_per_s=capacity,
        run_wall_s=17.0,
        run_dir=f"out/runs/calibrate-b{batch}",
    )


def test_a_calibration_run_is_saturated_only_with_a_backlog_a_stable_queue_would_not_hold() -> None:
    assert _calibration(1, 40.0, backlog=3000).saturated
    assert not _calibration(4, 400.0, backlog=408).saturated  # 2b + 400 x 1 s: what stable holds
    assert _calibration(4, 380.0, backlog=409).saturated


def test_rate_choice_says_how_the_rate_was_chosen() -> None:
    auto = real.RateChoice(
        rate_per_s=98.4, mode="auto", calibration=(_calibration(1, 71.2), _calibration(4, 125.6))
    )
    assert auto.describe() == (
        "λ = 98.4 req/s, auto: midway between the measured b=1 and b=4 capacities 71.2 and 125.6 req/s"
    )
    data = auto.json()
    json.dumps(data)
    assert data["mode"] == "auto" and data["capacity_per_s"] == {"1": 71.2, "4": 125.6}
    assert data["calibration_runs"] == ["out/runs/calibrate-b1", "out/runs/calibrate-b4"]
    assert all(c["saturated"] for c in data["calibration"])
    fixed = real.RateChoice(rate_per_s=30.0, mode="fixed")
    assert fixed.describe() == "λ = 30 req/s, fixed (--rate 30)"
    assert fixed.json() | {"description": ""} == {"mode": "fixed", "calibration_runs": [], "description": ""}

    rows = [_repeated(1, False, 12_000.0, 70.0), _repeated(4, True, 150.0, 90.0)]
    assert real.real_json(rows, "s", "c", 98.4, 20.0, auto)["rate_choice"] == data
    assert real.real_json(rows, "s", "c", 30.0, 20.0)["rate_choice"]["mode"] == "fixed"


# --- the command, with a stand-in for `cotrain run` -----------------------------------------------

FAKE_COLUMNS = "request_id,arrival_s,start_s,end_s,latency_ms,batch_size,variant,model_version,outcome,reason"


def _fake_cotrain_run(exec_s: Mapping[int, float], gap_s: float = 0.002) -> Any:
    """A stand-in for run_with_cli: a queue with constant arrivals at the config's rate, served in
    full batches of the config's size, each taking exec_s[b] plus gap_s; it writes the records
    measure_run and measure_capacity read (requests.csv, events.jsonl, summary.json)."""

    def run(data: dict[str, Any], out: Path, duration_s: float) -> None:
        service = data["workloads"]["inference"]
        b, rate = service["batching"]["max_batch_size"], float(service["arrivals"]["rate_per_s"])
        t0, stop = 100.0, 100.0 + duration_s
        arrivals = [t0 + i / rate for i in range(int(rate * duration_s))]
        lines, free, i = [FAKE_COLUMNS], t0, 0
        while i + b <= len(arrivals):
            start = max(free, arrivals[i + b - 1])
            if start >= stop:
                break
            end = start + exec_s[b]
            for j in range(i, i + b):
                ms = (end - arrivals[j]) * 1000
                lines.append(f"{j},{arrivals[j]:.6f},{start:.6f},{end:.6f},{ms:.3f},{b},r18,0,served,")
            free, i = end + gap_s, i + b
        lines += [
            f"{j},{arrivals[j]:.6f},,,,,,,shed,stopped before dispatch" for j in range(i, len(arrivals))
        ]
        out.mkdir(parents=True, exist_ok=True)
        (out / "requests.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (out / "events.jsonl").write_text(json.dumps({"event": "run_stopped", "t_mono_s": stop}) + "\n")
        summary = {"training": {"mnv3": {"samples_per_s": 50.0 + 10 * b, "steps_per_s": 2.0}}}
        (out / "summary.json").write_text(json.dumps(summary), encoding="utf-8")

    return run


def test_auto_rate_calibrates_then_sweeps_at_the_midway_rate(
    fig1: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # capacities 1/(23+2 ms) = 40 req/s at b=1 and 4/(30+2 ms) = 125 req/s at b=4: λ = 82.5
    monkeypatch.setattr(fig1, "run_with_cli", _fake_cotrain_run({1: 0.023, 4: 0.030}))
    argv = ["--platform", "real", "--batches", "1,4", "--repeats", "1", "--calibration-repeats", "1"]
    assert fig1.main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    described = (
        "λ = 82.5 req/s, auto: midway between the measured b=1 and b=4 capacities 40.0 and 125.0 req/s"
    )
    assert described in out.replace("\n", " ")
    real = json.loads((tmp_path / "fig1.json").read_text())["real"]
    assert real["rate_per_s"] == 82.5
    choice = real["rate_choice"]
    assert choice["mode"] == "auto" and choice["capacity_per_s"] == pytest.approx(
        {"1": 40.0, "4": 125.0}, rel=0.01
    )
    runs = tmp_path / "runs"
    assert choice["calibration_runs"] == [str(runs / "calibrate-b1"), str(runs / "calibrate-b4")]
    assert [(r["batch"], r["stable"]) for r in real["rows"]] == [(1, False), (4, True)]
    assert all(r["rate_per_s"] == 82.5 for r in real["runs"])  # the sweep ran at λ, not at 400 req/s
    assert described in real["setup"]


def test_each_capacity_is_the_median_of_its_calibration_repeats_run_interleaved(
    fig1: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One noisy calibration run must not move λ: b=1's three runs measure 40, 50 and 31.25 req/s
    (batch + gap of 25, 20 and 32 ms); their median, 40, and b=4's 125 give λ = 82.5."""
    calibration_exec_s = {1: iter([0.023, 0.018, 0.030]), 4: iter([0.030, 0.030, 0.030])}
    order: list[str] = []

    def run(data: dict[str, Any], out: Path, duration_s: float) -> None:
        b = data["workloads"]["inference"]["batching"]["max_batch_size"]
        exec_s = {1: 0.023, 4: 0.030}
        if out.name.startswith("calibrate"):
            order.append(out.name)
            exec_s[b] = next(calibration_exec_s[b])
        _fake_cotrain_run(exec_s)(data, out, duration_s)

    monkeypatch.setattr(fig1, "run_with_cli", run)
    argv = ["--platform", "real", "--batches", "1,4", "--repeats", "1", "--out", str(tmp_path)]
    assert fig1.main(argv) == 0  # the default: 3 calibration repeats
    assert order == [
        "calibrate-b1",
        "calibrate-b4",
        "calibrate-b1-r2",
        "calibrate-b4-r2",
        "calibrate-b1-r3",
        "calibrate-b4-r3",
    ]
    choice = json.loads((tmp_path / "fig1.json").read_text())["real"]["rate_choice"]
    assert choice["capacity_per_s"] == pytest.approx({"1": 40.0, "4": 125.0}, rel=0.01)
    assert [round(c["capacity_per_s"]) for c in choice["calibration"] if c["batch"] == 1] == [40, 50, 31]
    assert choice["calibration_runs"] == [str(tmp_path / "runs" / name) for name in order]
    assert "capacities 40.0 and 125.0 req/s (medians of 3 runs each)" in choice["description"]
    assert json.loads((tmp_path / "fig1.json").read_text())["real"]["rate_per_s"] == 82.5
    printed = capsys.readouterr()
    assert "calibration batch 1 run 2/3" in printed.out + printed.err  # the progress console's line


def test_fixed_rate_skips_the_calibration(
    fig1: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fig1, "run_with_cli", _fake_cotrain_run({1: 0.023, 4: 0.030}))
    argv = [
        "--platform",
        "real",
        "--batches",
        "1,4",
        "--repeats",
        "1",
        "--rate",
        "30",
        "--out",
        str(tmp_path),
    ]
    assert fig1.main(argv) == 0
    assert "λ = 30 req/s, fixed (--rate 30)" in capsys.readouterr().out
    real = json.loads((tmp_path / "fig1.json").read_text())["real"]
    assert real["rate_per_s"] == 30.0 and real["rate_choice"]["mode"] == "fixed"
    assert real["rate_choice"]["calibration_runs"] == [] and "capacity_per_s" not in real["rate_choice"]
    assert not (tmp_path / "runs" / "calibrate-b1").exists()
    assert [(r["batch"], r["stable"]) for r in real["rows"]] == [(1, True), (4, True)]  # 40 and 125 > 30


def test_auto_rate_stops_when_there_is_no_regime_or_no_saturation(
    fig1: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # b=4 takes 4x as long as b=1: both serve 40 req/s, so no λ is between them
    monkeypatch.setattr(fig1, "run_with_cli", _fake_cotrain_run({1: 0.023, 4: 0.098}))
    argv = ["--platform", "real", "--batches", "1,4", "--out", str(tmp_path / "a")]
    assert fig1.main(argv) == 1
    err = capsys.readouterr().err
    assert (
        "no unstable-then-stable regime" in err and "40.0 req/s at b=1" in err and "40.0 req/s at b=4" in err
    )
    assert not (tmp_path / "a" / "fig1.json").exists() and not (tmp_path / "a" / "runs" / "b1-r1").exists()

    # 1 ms a batch: 1000 req/s, above the calibration rate and its retry at twice that
    monkeypatch.setattr(fig1, "run_with_cli", _fake_cotrain_run({1: 0.0005, 4: 0.030}, gap_s=0.0005))
    argv = ["--platform", "real", "--batches", "1,4", "--out", str(tmp_path / "b")]
    assert fig1.main(argv) == 1
    assert "batch 1 did not saturate even at 800 req/s" in capsys.readouterr().err


def test_rate_must_be_auto_or_positive(
    fig1: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("0", "-5", "fast"):
        with pytest.raises(SystemExit):
            fig1.main(["--platform", "real", "--rate", bad, "--out", str(tmp_path)])
        assert "--rate" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()

"""summary.json is a pure function of the record files, and the records survive a torn line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from cotrain.records import REQUEST_COLUMNS, TRAIN_COLUMNS, CsvAppender, read_csv_rows, read_jsonl
from cotrain.rundir import RunDir
from cotrain.summary import compute_summary
from tests.conftest import TINY


def fake_run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.prepare()
    run.config.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    events = [
        {"event": "run_started", "t_mono_s": 100.0},
        {"event": "run_stopped", "t_mono_s": 110.0, "status": "completed"},
    ]
    run.events.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    req = CsvAppender(run.requests_csv, REQUEST_COLUMNS)
    rows = []
    for i in range(100):
        latency = 10.0 + i * 6  # 10 .. 604 ms; SLO is 500 ms
        rows.append((i, f"{100 + i * 0.1:.6f}", "", "", f"{latency:.3f}", 4, "m/fp32", 0, "served", ""))
    rows.append((100, "109.9", "", "", "", "", "m/fp32", 0, "shed", "queue full"))
    rows.append((101, "109.9", "110.0", "110.1", "", 1, "m/fp32", 0, "failed", "boom"))
    req.write_rows(rows)
    req.close()
    train = CsvAppender(run.train_csv("cl"), TRAIN_COLUMNS)
    # 3 steps inside the window, 1 finishing after the stop (not counted in the rate)
    train.write_rows(
        [
            (s, f"{t:.6f}", 8, "1.0", "5", "1", 8, 0, 1, "0", "0")
            for s, t in [(1, 101), (2, 105), (3, 109), (4, 111)]
        ]
    )
    train.close()
    return run


def test_summary_is_recomputed_from_records(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    summary = compute_summary(run.path)
    inf = summary["inference"]
    assert inf["requests"] == {"arrived": 102, "served": 100, "failed": 1, "shed": 1}
    latencies = [10.0 + i * 6 for i in range(100)]
    assert inf["latency_ms"]["p99"] == round(float(np.percentile(latencies, 99)), 3)
    assert inf["latency_ms"]["max"] == 604.0
    within = sum(1 for v in latencies if v <= 500)
    assert inf["slo_attainment"] == round(within / 102, 6)  # over *arrived*, not served
    assert summary["run"]["duration_s"] == 10.0
    cl = summary["training"]["cl"]
    assert cl["steps"] == 4
    assert cl["samples_per_s"] == 3 * 8 / 10.0


def test_torn_last_lines_are_tolerated(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    with run.requests_csv.open("a") as f:
        f.write("102,109.95,,")  # crash mid-write: no newline
    with run.events.open("a") as f:
        f.write('{"event": "run_sto')
    assert len(read_csv_rows(run.requests_csv)) == 102
    assert len(list(read_jsonl(run.events))) == 2
    assert compute_summary(run.path)["inference"]["requests"]["arrived"] == 102


def test_a_run_without_a_stop_event_still_summarises(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    run.events.write_text(
        json.dumps({"event": "run_started", "t_mono_s": 100.0})
        + "\n"
        + json.dumps({"event": "knob_applied", "t_mono_s": 104.0})
        + "\n"
    )
    summary = compute_summary(run.path)
    assert summary["run"]["status"] == "incomplete"
    assert summary["run"]["duration_s"] == 4.0


def test_variant_switches_and_accuracy_weighted_mean(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    rows = read_csv_rows(run.requests_csv)
    (run.path / "variants.json").write_text(
        json.dumps([{"name": "m/fp32", "accuracy": 0.8}, {"name": "m/int8", "accuracy": 0.6}])
    )
    run.requests_csv.unlink()
    req = CsvAppender(run.requests_csv, REQUEST_COLUMNS)
    req.write_rows(
        [
            (
                i,
                f"{100 + i:.6f}",
                f"{100 + i:.6f}",
                f"{100.01 + i:.6f}",
                "10.0",
                1,
                "m/fp32" if i < 3 or i >= 6 else "m/int8",
                0,
                "served",
                "",
            )
            for i in range(8)
        ]
    )
    req.close()
    inference = compute_summary(run.path)["inference"]
    assert inference["variant_switches"] == 2
    assert inference["mean_accuracy"] == round((5 * 0.8 + 3 * 0.6) / 8, 6)
    assert len(rows) == 102  # the fake run's own rows were there before


def test_a_resumed_job_counts_each_step_once_and_nan_losses_stay_valid_json(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    run.train_csv("cl").unlink()
    train = CsvAppender(run.train_csv("cl"), TRAIN_COLUMNS)
    rows = [(1, "101", 8, "1.0"), (2, "102", 8, "0.9"), (2, "104", 8, "0.8"), (3, "105", 8, "nan")]
    train.write_rows([(s, t, n, loss, "5", "1", 8, 0, 1, "0", "0") for s, t, n, loss in rows])
    train.close()
    summary = compute_summary(run.path)
    cl = summary["training"]["cl"]
    assert cl["steps"] == 3 and cl["samples"] == 24
    assert cl["final_loss"] is None
    json.dumps(summary, allow_nan=False)  # what summary.json is written with

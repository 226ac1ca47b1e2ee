"""The dashboard's frame, from a recorded run directory (tests/data/recorded-run).

The recorded run is a real 8 s `cotrain run experiments/quickstart.yaml --duration 8`: resnet18
serving 20 req/s under a 200 ms SLO beside a mobilenet_v3_small training job. Its summary.json
is the reference the frame's figures are checked against.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rich.console import Console

from cotrain import cli
from cotrain.dashboard import (
    MET_MARK,
    MISSED_MARK,
    RUN_QUIT_HINT,
    WATCH_QUIT_HINT,
    Dashboard,
    DashboardThread,
    Frame,
    KeyReader,
    WorkerSampler,
    build_frame,
    describe_action,
    latency_chart,
    render_frame,
    render_lines,
    watch,
)
from cotrain.runread import (
    CsvTail,
    LineTail,
    RequestColumns,
    RequestRow,
    RunReader,
    knob_timeline,
    queue_depths,
    read_run,
    request_row,
)

RECORDED = Path(__file__).parent / "data" / "recorded-run"
SUMMARY = json.loads((RECORDED / "summary.json").read_text(encoding="utf-8"))
ALT_SCREEN_OFF = "\x1b[?1049l"  # rich leaves the alternate screen: what follows stays on the terminal


def frame_text(frame: Frame, width: int, height: int) -> str:
    console = Console(width=width, height=height, record=True, color_system=None, file=io.StringIO())
    console.print(render_frame(frame, width, height))
    return console.export_text()


def copy_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(RECORDED, run)
    return run


@pytest.mark.parametrize(("width", "height"), [(80, 24), (120, 40)])
def test_the_frame_shows_slo_p99_attainment_batch_variant_and_training_rate(width: int, height: int) -> None:
    frame = build_frame(read_run(RECORDED), chart_bars=width - 8)

    text = frame_text(frame, width, height)

    inference = SUMMARY["inference"]
    assert "SLO 200 ms" in text
    assert f"p99 {inference['latency_ms']['p99']:.1f} ms" in text  # the run's p99, as the summary has it
    assert f"attain {inference['slo_attainment']:.1%}" in text
    assert "batch ≤8" in text and "delay 25.0 ms" in text
    assert "resnet18/fp32" in text
    assert f"(run {SUMMARY['training']['cl']['samples_per_s']:.1f})" in text and "samples/s" in text
    assert "initial knobs from config" in text  # the controller's decision, with its reason
    assert "mode 2core" in text
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= height
    assert max(len(line) for line in lines) <= width


def test_frame_figures_agree_with_the_summary() -> None:
    frame = build_frame(read_run(RECORDED))

    service = frame.services[0]
    inference = SUMMARY["inference"]
    assert frame.status == "completed"
    assert service.total.served == inference["requests"]["served"]
    assert service.total.p99_ms == pytest.approx(inference["latency_ms"]["p99"], abs=1e-3)
    assert service.total.attainment == pytest.approx(inference["slo_attainment"], abs=1e-6)
    assert frame.jobs[0].run_samples_per_s == pytest.approx(
        SUMMARY["training"]["cl"]["samples_per_s"], abs=0.01
    )
    assert frame.jobs[0].steps == SUMMARY["training"]["cl"]["steps"]
    assert service.queue_max is not None and service.queue_max >= 1


def with_reported_queue(run: Path, depths: dict[int, int], rate_per_s: float) -> None:
    """Give the recorded run's telemetry.csv the service's own queue depth (the column runs
    record since the runtime has kept it): `depths` by row index, a blank for every other row."""
    lines = (run / "telemetry.csv").read_text(encoding="utf-8").splitlines()
    rows = [lines[0] + ",queue_depth,arrival_rate_per_s"]
    for i, line in enumerate(lines[1:]):
        rows.append(f"{line},{depths[i]},{rate_per_s}" if i in depths else f"{line},,")
    (run / "telemetry.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_the_queue_the_service_reported_includes_requests_not_yet_in_requests_csv(tmp_path: Path) -> None:
    run = copy_run(tmp_path)
    rebuilt = build_frame(read_run(run)).services[0]
    assert rebuilt.queue_now is None and rebuilt.arrival_per_s is None  # an older run: no such column
    last = len((run / "telemetry.csv").read_text(encoding="utf-8").splitlines()) - 2
    # 30 requests waiting at the last tick: still queued, so requests.csv has no row for them
    with_reported_queue(run, {last - 1: 30, last: 3}, rate_per_s=20.5)

    service = build_frame(read_run(run)).services[0]

    assert rebuilt.queue_max is not None and rebuilt.queue_max < 30
    assert service.queue_now == 3  # the latest report
    assert service.queue_max == 30  # the window's most, which only the report saw
    assert service.arrival_per_s == pytest.approx(20.5)
    text = frame_text(build_frame(read_run(run)), 120, 30)
    assert "queue 3 max 30" in text and "(20.5 arriving)" in text
    narrow = frame_text(build_frame(read_run(run)), 80, 24)
    assert "queue 3" in narrow and max(len(line) for line in narrow.splitlines()) <= 80


def test_a_bigger_screen_gets_a_taller_chart_and_more_events() -> None:
    frame = build_frame(read_run(RECORDED), chart_bars=72)

    small = render_lines(frame, 80, 24)
    large = render_lines(frame, 80, 50)

    def chart_rows(lines: list[object]) -> int:
        return sum(1 for line in lines if "│" in str(line))

    assert len(small) <= 24
    assert chart_rows(large) > chart_rows(small)
    assert not any("run_created" in str(line) for line in small)  # the oldest event had no room
    assert any("run_created" in str(line) for line in large)


# Each torn line already has every column, so only the missing newline gives it away.
TORN = {
    "requests.csv": "999,11316.100000,11316.120000,11316.200000,80.0,1,resnet18/fp32,0,serv",
    "train-cl.csv": "38,11316.700000,32,0.2,250.000,6.000,32,0,1,0.000,0.0",
    "telemetry.csv": "9.002,psu",
    "decisions.jsonl": '{"t_s":9.0,"policy":"sta',
    "events.jsonl": '{"event":"worker_fai',
}


def test_a_torn_last_line_in_every_file_renders_as_if_absent(tmp_path: Path) -> None:
    run = copy_run(tmp_path)
    for name, partial in TORN.items():
        with (run / name).open("a", encoding="utf-8", newline="") as f:
            f.write(partial)  # a writer caught mid-line: no newline yet

    frame = build_frame(read_run(run), chart_bars=72)
    text = frame_text(frame, 80, 24)

    assert frame.services[0].total.done == SUMMARY["inference"]["requests"]["arrived"]
    assert frame.jobs[0].steps == SUMMARY["training"]["cl"]["steps"]
    assert len(frame.decisions) == 1
    assert "SLO 200 ms" in text


def test_a_torn_line_is_read_whole_once_the_writer_finishes_it(tmp_path: Path) -> None:
    run = copy_run(tmp_path)
    reader = RunReader(run)
    before = reader.read()
    with (run / "requests.csv").open("a", encoding="utf-8", newline="") as f:
        f.write("999,11316.100000,11316.1")
    assert len(reader.read().requests["inference"]) == len(before.requests["inference"])

    with (run / "requests.csv").open("a", encoding="utf-8", newline="") as f:
        f.write("50000,11316.150000,150.000,1,resnet18/fp32,0,served,\r\n")
    after = reader.read().requests["inference"]

    assert len(after) == len(before.requests["inference"]) + 1
    assert after[-1].latency_ms == 150.0 and after[-1].end_s == 11316.15


@pytest.mark.parametrize("change", ["missing", "empty", "header-only", "garbage"])
def test_missing_empty_or_garbled_files_never_crash_the_frame(tmp_path: Path, change: str) -> None:
    run = copy_run(tmp_path)
    for name in ("requests.csv", "train-cl.csv", "telemetry.csv", "decisions.jsonl", "summary.json"):
        path = run / name
        if change == "missing":
            path.unlink()
        elif change == "empty":
            path.write_text("", encoding="utf-8")
        elif change == "header-only":
            path.write_text(path.read_text(encoding="utf-8").splitlines()[0][:7], encoding="utf-8")
        else:
            path.write_bytes(b"\xff\xfe,,\n{[\n\x00\x00,1,2\n")

    frame = build_frame(read_run(run), chart_bars=72)
    text = frame_text(frame, 80, 24)

    assert frame.services[0].total.done == 0
    assert "SLO 200 ms" in text and "none yet" in text


def test_a_run_still_loading_its_models(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(RECORDED / "config.yaml", run / "config.yaml")
    (run / "events.jsonl").write_text(
        json.dumps({"event": "run_created", "t_mono_s": 100.0, "t_s": None, "pid": 1}) + "\n",
        encoding="utf-8",
    )

    frame = build_frame(read_run(run), chart_bars=72)
    text = frame_text(frame, 80, 24)

    assert frame.status == "loading" and frame.live
    assert "loading" in text and "run_created" in text


def test_a_run_whose_runtime_died_is_marked_stale(tmp_path: Path) -> None:
    run = copy_run(tmp_path)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    kept = [e for e in events if e["event"] not in ("run_stopped",)]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in kept), encoding="utf-8")

    assert build_frame(read_run(run)).status == "running"
    assert build_frame(read_run(run), runtime_alive=False).status == "stale"


def test_a_replay_sees_only_what_was_written_by_then() -> None:
    records = read_run(RECORDED)

    frame = build_frame(records, now_s=4.0, chart_bars=72)

    assert frame.status == "running" and frame.now_s == 4.0
    assert 0 < frame.services[0].total.done < SUMMARY["inference"]["requests"]["arrived"]
    assert all(e.t_s is None or e.t_s <= 4.0 for e in frame.events)
    assert "run_stopped" not in {e.name for e in frame.events}
    assert frame.jobs[0].steps < SUMMARY["training"]["cl"]["steps"]


def test_decisions_show_the_change_its_reason_and_the_guards_notes(tmp_path: Path) -> None:
    run = copy_run(tmp_path)
    first = json.loads((run / "decisions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    knobs = first["knobs"]
    knobs["inference"]["max_batch_size"] = 4
    decision = {
        "t_s": 5.0,
        "policy": "aimd",
        "action": {"inference": {"max_batch_size": 4}, "training": {"cl": {"paused": True}}},
        "reason": "aimd decrease: p99 250 ms > 200 ms",
        "notes": ["power mode refused: not permitted"],
        "knobs": knobs,
    }
    with (run / "decisions.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(decision) + "\n")

    text = frame_text(build_frame(read_run(run), chart_bars=100), 140, 30)

    assert "batch=4 cl.paused=True aimd decrease: p99 250 ms > 200 ms" in text
    assert "[power mode refused: not permitted]" in text
    assert "batch ≤4" in text  # the policy now in force comes from the last decision


def test_failures_swaps_and_publications_are_shown(tmp_path: Path) -> None:
    run = copy_run(tmp_path)
    extra = [
        {"event": "model_published", "t_s": 3.0, "worker": "train:cl", "version": 2, "accuracy": 0.9},
        {"event": "model_swapped", "t_s": 3.5, "worker": "inference", "version": 2},
        {"event": "worker_failed", "t_s": 7.9, "worker": "train:cl", "error": "CUDA out of memory"},
    ]
    lines = (run / "events.jsonl").read_text(encoding="utf-8").splitlines()
    stop = next(i for i, line in enumerate(lines) if '"run_stopped"' in line)
    lines[stop:stop] = [json.dumps(e) for e in extra]
    (run / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    frame = build_frame(read_run(run), chart_bars=72)
    text = frame_text(frame, 100, 50)

    assert frame.services[0].swaps == 1
    assert "published v2" in text
    failed = next(e for e in frame.events if e.name == "worker_failed")
    assert failed.severity == "bad" and "CUDA out of memory" in failed.text


def split_into_services(run: Path, services: dict[str, dict[str, Any]]) -> None:
    """Turn the recorded single-service run into one with `services` (name -> config overrides),
    each with a copy of its requests.csv: the same records, laid out as several services'."""
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    single = config["workloads"].pop("inference")
    config["workloads"]["services"] = [{**single, "name": name, **extra} for name, extra in services.items()]
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    for name in services:
        (run / "services" / name).mkdir(parents=True)
        shutil.copy(run / "requests.csv", run / "services" / name / "requests.csv")


def test_several_services_each_get_a_line(tmp_path: Path) -> None:
    run = copy_run(tmp_path)
    split_into_services(
        run, {"analytics": {"priority": 0, "slo_ms": 500.0}, "camera": {"priority": 10, "slo_ms": 100.0}}
    )

    frame = build_frame(read_run(run), chart_bars=72)
    text = frame_text(frame, 80, 24)

    assert [s.name for s in frame.services] == ["camera", "analytics"]  # the controller's first
    assert "camera (prio 10) · SLO 100 ms" in text
    assert "analytics (prio 0, SLO 500 ms)" in text
    assert len(text.rstrip("\n").split("\n")) <= 24


def test_each_service_shows_the_queue_it_reported_in_its_own_queue_csv(tmp_path: Path) -> None:
    """With several services the runtime writes services/<name>/queue.csv for each; the frame
    and RunRecords.reported_queue take each service's own, never another's (nor telemetry's)."""
    run = copy_run(tmp_path)
    split_into_services(run, {"analytics": {"priority": 0}, "camera": {"priority": 10}})
    last_s = float((run / "telemetry.csv").read_text(encoding="utf-8").splitlines()[-1].split(",")[0])
    with_reported_queue(run, {0: 99}, rate_per_s=1.0)  # telemetry's, which no service may take
    for name, depth, rate in (("analytics", 17, 40.0), ("camera", 2, 12.5)):
        (run / "services" / name / "queue.csv").write_text(
            "t_s,queue_depth,arrival_rate_per_s\n"
            f"{last_s - 1:.3f},{depth + 5},{rate}\n{last_s - 0.5:.3f},,\n{last_s:.3f},{depth},{rate}\n",
            encoding="utf-8",
        )

    records = read_run(run)
    frame = build_frame(records)

    assert [(q.queue_depth, q.arrival_rate_per_s) for q in records.reported_queue("analytics")] == [
        (22, 40.0),
        (None, None),
        (17, 40.0),
    ]
    views = {s.name: s for s in frame.services}
    assert (views["analytics"].queue_now, views["analytics"].arrival_per_s) == (17, pytest.approx(40.0))
    assert views["analytics"].queue_max is not None and views["analytics"].queue_max >= 22
    assert (views["camera"].queue_now, views["camera"].arrival_per_s) == (2, pytest.approx(12.5))
    assert all(v.queue_max is not None and v.queue_max < 99 for v in views.values()), "not telemetry's"
    assert records.reported_queue("nobody") == []
    text = frame_text(frame, 80, 24)
    assert "queue 2 max" in text  # camera, the controller's
    analytics = next(line for line in text.splitlines() if line.startswith(" analytics"))
    assert "queue 17 max" in analytics


def test_without_queue_csv_only_the_controllers_service_has_a_reported_queue(tmp_path: Path) -> None:
    """Runs recorded before queue.csv existed: telemetry's columns belong to the primary alone."""
    run = copy_run(tmp_path)
    last = len((run / "telemetry.csv").read_text(encoding="utf-8").splitlines()) - 2
    with_reported_queue(run, {last: 7}, rate_per_s=3.0)
    split_into_services(run, {"analytics": {"priority": 0}, "camera": {"priority": 10}})

    views = {s.name: s for s in build_frame(read_run(run)).services}

    assert views["camera"].queue_now == 7
    assert views["analytics"].queue_now is None and views["analytics"].arrival_per_s is None


def test_bars_over_the_slo_are_red_and_the_slo_row_is_dashed() -> None:
    service = build_frame(read_run(RECORDED), chart_bars=20).services[0]
    over = replace(service.chart[0], p99_ms=350.0)  # one bar 1.75 x over the 200 ms SLO

    chart = latency_chart(replace(service, chart=[over, *service.chart[1:]]), 40, 5)

    assert len(chart) == 5  # three bar rows, the attainment strip and its legend
    top, slo_row = chart[0], chart[1]
    assert top.plain.startswith("   350│█")  # scale 0-350 ms: the bar over the SLO fills the top row
    assert {str(s.style) for s in top.spans if top.plain[s.start : s.end] == "█"} == {"red"}
    assert slo_row.plain.startswith("   SLO│") and "┄" in slo_row.plain
    assert "▀" in chart[3].plain


def test_the_attainment_strip_reads_without_colour() -> None:
    """The strip was one glyph in green or red: without colour (NO_COLOR, colour blindness) a
    window that missed the SLO looked like one that met it. Now its shape differs, and a legend
    line says what each shape means."""
    service = build_frame(read_run(RECORDED), chart_bars=20).services[0]
    missed = replace(service.chart[2], within_slo=service.chart[2].done - 1)  # one request late
    assert missed.attainment is not None and 0.5 < missed.attainment < 0.99
    chart = latency_chart(replace(service, chart=[*service.chart[:2], missed, *service.chart[3:]]), 40, 5)

    strip, legend = chart[3].plain, chart[4].plain

    assert strip.startswith("attain│")
    marks = strip.removeprefix("attain│")
    assert marks[2] == MISSED_MARK and marks.count(MISSED_MARK) == 1
    assert set(marks) - {MISSED_MARK} == {MET_MARK}
    assert "▀ met the SLO (≥99% within 200 ms)" in legend and "✗ missed" in legend
    text = frame_text(build_frame(read_run(RECORDED), chart_bars=72), 80, 24)  # no colour at all
    assert "▀ met the SLO" in text and "attain│▀▀▀" in text


def test_the_strip_uses_the_bench_attainment_target_when_the_config_has_one(tmp_path: Path) -> None:
    run = copy_run(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    config["bench"] = {"slo_attainment_target": 0.9}
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    frame = build_frame(read_run(run), chart_bars=20)
    service = frame.services[0]
    late = replace(service.chart[0], done=20, within_slo=19)  # 95%: met at 0.9, missed at 0.99

    chart = latency_chart(replace(service, chart=[late]), 40, 5, frame.attainment_target)

    assert frame.attainment_target == 0.9
    assert chart[3].plain == f"attain│{MET_MARK}" and "≥90%" in chart[4].plain


def test_queue_depth_is_rebuilt_from_arrivals_and_batch_starts() -> None:
    def row(arrival: float, start: float | None) -> RequestRow:
        return RequestRow(arrival, start, None if start is None else start + 0.05, 1.0, 1, "m", 0, "served")

    rows = [row(0.0, 0.3), row(0.1, 0.3), row(0.2, 0.3), row(0.4, 0.45), row(0.5, None)]

    times, depths = queue_depths(RequestColumns.from_rows(rows), t0_mono_s=0.0)

    assert times.tolist() == [0.0, 0.1, 0.2, 0.4]  # the shed one (never started) never queued
    assert depths.tolist() == [1, 2, 3, 1]


def test_knob_timeline_records_only_changes() -> None:
    records = read_run(RECORDED)
    base = records.decisions[0]
    changed = base.__class__(
        t_s=2.0,
        policy="x",
        action={"inference": {"max_batch_size": 2}},
        reason="r",
        notes=(),
        knobs={**base.knobs, "inference": {**base.knobs["inference"], "max_batch_size": 2}},
    )

    timeline = knob_timeline([base, changed, changed])

    assert timeline["inference.max_batch_size"] == [(0.0, 8), (2.0, 2)]
    assert timeline["cl.num_workers"] == [(0.0, 0)]


def test_describe_action_is_short() -> None:
    action = {
        "inference": {"max_queue_delay_ms": 5.0},
        "training": {"cl": {"num_workers": 2}},
        "power_mode": "15W",
    }
    assert describe_action(action) == "delay_ms=5 cl.workers=2 mode=15W"


def test_a_replaced_file_is_read_again_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    shutil.copy(RECORDED / "requests.csv", path)
    tail = CsvTail(path, request_row)
    assert len(tail.read()) == SUMMARY["inference"]["requests"]["arrived"]

    lines = (RECORDED / "requests.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    path.unlink()
    path.write_text("".join(lines[:3]), encoding="utf-8")  # a new run in the same directory

    assert len(tail.read()) == 2


def test_line_tail_waits_for_the_newline(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    tail = LineTail(path)
    assert tail.read() == (False, "")  # missing
    path.write_text('{"a": 1}\n{"b"', encoding="utf-8")
    assert tail.read() == (False, '{"a": 1}\n')
    with path.open("a", encoding="utf-8") as f:
        f.write(": 2}\n")
    assert tail.read() == (False, '{"b": 2}\n')


def test_watch_once_prints_one_frame_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["watch", str(RECORDED), "--once"])

    out = capsys.readouterr().out
    assert code == 0
    assert "SLO 200 ms" in out and "resnet18/fp32" in out


def test_watch_refuses_a_directory_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")

    assert cli.main(["watch", str(tmp_path), "--once"]) == 2
    assert "is not a cotrain run directory" in capsys.readouterr().err
    assert cli.main(["watch", str(tmp_path / "nope"), "--once"]) == 2
    assert cli.main(["watch", str(RECORDED), "--refresh-s", "0"]) == 2


def test_the_dashboard_thread_draws_while_the_work_runs_and_stops_after() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, force_terminal=True, color_system=None)
    shown = DashboardThread(RECORDED, console, refresh_s=0.2, keys_fd=None)
    drawn = threading.Event()

    def work() -> int:
        shown.log("  inference ready (pid 1, resnet18/fp32)")
        deadline = time.monotonic() + 10.0  # the first frame is drawn as the thread starts
        while time.monotonic() < deadline and not drawn.is_set():
            if "SLO 200 ms" in out.getvalue():
                drawn.set()
            drawn.wait(0.01)
        return 42

    assert shown.run_beside(work) == 42
    assert drawn.is_set()
    assert not any(t.name == "cotrain-dashboard" for t in threading.enumerate())
    after = out.getvalue().split(ALT_SCREEN_OFF)[-1]  # the run is over: its last frame stays
    assert "SLO 200 ms" in after and "Ctrl-C stops the run" not in after
    assert "Ctrl-C stops the run" in out.getvalue()  # the footer while it ran (no keys read here)


def test_the_dashboard_thread_stops_when_the_work_raises() -> None:
    console = Console(file=io.StringIO(), width=80, height=24, force_terminal=True)
    shown = DashboardThread(RECORDED, console, refresh_s=0.2, keys_fd=None)

    def work() -> None:
        raise RuntimeError("run failed")

    with pytest.raises(RuntimeError, match="run failed"):
        shown.run_beside(work)
    assert not any(t.name == "cotrain-dashboard" for t in threading.enumerate())


# --- events in one time base ---------------------------------------------------------------------------


def test_every_event_is_stamped_in_run_seconds_never_wall_clock(tmp_path: Path) -> None:
    """Before t0 was known the event lines showed wall-clock HH:MM:SS, after it run seconds: two
    time bases in one list. Now a loading event reads "load" until t0 is known, then its negative
    run seconds, like the report; a monotonic field is shown in run seconds too."""
    records = read_run(RECORDED)
    assert records.t0_mono_s is not None
    loading = tmp_path / "loading"
    loading.mkdir()
    shutil.copy(RECORDED / "config.yaml", loading / "config.yaml")
    early = (RECORDED / "events.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:5]
    (loading / "events.jsonl").write_text("".join(early), encoding="utf-8")
    run = copy_run(tmp_path)
    swapped = {
        "event": "model_swapped",
        "t_mono_s": records.t0_mono_s + 3.6,
        "t_s": 3.6,
        "wall": "2026-12-01T00:57:51.709+00:00",
        "worker": "inference",
        "version": 1,
        "swapped_mono_s": records.t0_mono_s + 3.5,
    }
    lines = (run / "events.jsonl").read_text(encoding="utf-8").splitlines()
    stop = next(i for i, line in enumerate(lines) if '"run_stopped"' in line)
    lines.insert(stop, json.dumps(swapped))
    (run / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    while_loading = frame_text(build_frame(read_run(loading), chart_bars=72), 100, 40)
    finished = build_frame(read_run(run), chart_bars=72)
    after = frame_text(finished, 100, 60)

    assert [ln.split()[0] for ln in while_loading.splitlines() if "run_created" in ln] == ["load"]
    assert sum(1 for ln in while_loading.splitlines() if ln.startswith("    load worker_ready")) == 2
    assert "00:57" not in while_loading and "00:57" not in after  # no wall-clock anywhere
    created = next(e for e in finished.events if e.name == "run_created")
    assert created.t_s == pytest.approx(-6.667, abs=1e-3) and not created.loading
    assert "   -6.7s run_created" in after
    assert "swapped_s=3.500" in after and "mono" not in after


# --- keys --------------------------------------------------------------------------------------------


@pytest.fixture
def pty_pair() -> Any:
    """(controller, terminal) ends of a fresh pseudo-terminal, closed afterwards."""
    import pty

    controller, terminal = pty.openpty()
    yield controller, terminal
    os.close(controller)
    os.close(terminal)


def test_q_is_read_without_enter_and_the_terminal_mode_comes_back(pty_pair: tuple[int, int]) -> None:
    import termios

    controller, terminal = pty_pair
    saved = termios.tcgetattr(terminal)
    pressed = threading.Event()

    with KeyReader(terminal, pressed.set) as keys:
        assert keys.reading
        assert not termios.tcgetattr(terminal)[3] & termios.ICANON  # cbreak: keys one by one
        os.write(controller, b"x")  # any other key is ignored
        os.write(controller, b"q")  # no newline: a line-buffered read would never see it
        assert pressed.wait(10.0)

    assert termios.tcgetattr(terminal) == saved


def test_q_through_a_pipe_and_closing_without_a_key() -> None:
    read_end, write_end = os.pipe()
    try:
        pressed = threading.Event()
        with KeyReader(read_end, pressed.set):
            os.write(write_end, b"q")
            assert pressed.wait(10.0)
        untouched = threading.Event()
        with KeyReader(read_end, untouched.set):
            pass  # closing wakes the reader at once, with no key pressed
        assert not untouched.is_set()
    finally:
        os.close(read_end)
        os.close(write_end)


class GatedDashboard(Dashboard):
    """The recorded run's dashboard, which sets `drawn` after each frame and can raise instead."""

    def __init__(
        self, run_dir: Path, raise_on: int | None = None, error: BaseException | None = None
    ) -> None:
        super().__init__(run_dir)
        self.drawn = threading.Event()
        self.frames = 0
        self.raise_on, self.error = raise_on, error

    def render(self, width: int, height: int, footer: str = "", now_s: float | None = None) -> Any:
        self.frames += 1
        if self.raise_on is not None and self.frames >= self.raise_on and self.error is not None:
            raise self.error
        group = super().render(width, height, footer, now_s)
        self.drawn.set()
        return group


def terminal_console(out: io.StringIO, width: int = 100, height: int = 30) -> Console:
    return Console(file=out, width=width, height=height, force_terminal=True, color_system=None)


def test_q_quits_watch_and_its_last_frame_stays(pty_pair: tuple[int, int]) -> None:
    import termios

    controller, terminal = pty_pair
    saved = termios.tcgetattr(terminal)
    out = io.StringIO()
    dashboard = GatedDashboard(RECORDED)
    result: list[bool] = []
    # 1000 s between frames: only the key can end it in time
    thread = threading.Thread(
        target=lambda: result.append(
            watch(dashboard, terminal_console(out), refresh_s=1000, keys_fd=terminal)
        )
    )
    thread.start()
    assert dashboard.drawn.wait(10.0)

    os.write(controller, b"q")
    thread.join(10.0)

    assert not thread.is_alive() and result == [True]
    assert f"refresh 1000 s · {WATCH_QUIT_HINT}" in out.getvalue()
    after = out.getvalue().split(ALT_SCREEN_OFF)[-1]  # what stays once the alternate screen is gone
    assert "completed" in after and "SLO 200 ms" in after and WATCH_QUIT_HINT not in after
    assert termios.tcgetattr(terminal) == saved


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("disk gone")])
def test_the_terminal_mode_comes_back_when_watch_is_interrupted_or_fails(
    pty_pair: tuple[int, int], error: BaseException
) -> None:
    import termios

    _, terminal = pty_pair
    saved = termios.tcgetattr(terminal)
    dashboard = GatedDashboard(RECORDED, raise_on=2, error=error)

    if isinstance(error, KeyboardInterrupt):
        assert watch(dashboard, terminal_console(io.StringIO()), refresh_s=0.2, keys_fd=terminal) is False
    else:
        with pytest.raises(RuntimeError, match="disk gone"):
            watch(dashboard, terminal_console(io.StringIO()), refresh_s=0.2, keys_fd=terminal)

    assert termios.tcgetattr(terminal) == saved
    assert not any(t.name == "cotrain-keys" for t in threading.enumerate())


@pytest.mark.parametrize("screen", [True, False])
def test_the_last_frame_stays_when_watch_is_stopped(screen: bool) -> None:
    out = io.StringIO()
    stop = threading.Event()
    stop.set()

    assert watch(Dashboard(RECORDED), terminal_console(out), stop=stop, screen=screen) is False

    shown = out.getvalue().split(ALT_SCREEN_OFF)[-1] if screen else out.getvalue()
    assert "SLO 200 ms" in shown and "completed" in shown
    assert "Ctrl-C to quit" in out.getvalue()  # no keys read: the footer says how to quit instead


def test_q_closes_only_the_dashboard_and_the_run_goes_on(pty_pair: tuple[int, int]) -> None:
    controller, terminal = pty_pair
    out = io.StringIO()
    resumed: list[str] = []
    shown = DashboardThread(
        RECORDED, terminal_console(out), refresh_s=0.2, keys_fd=terminal, resume_log=resumed.append
    )
    gated = GatedDashboard(RECORDED)
    shown.dashboard = gated

    def work() -> int:
        shown.log("  inference ready (pid 1, resnet18/fp32)")  # while the dashboard is up
        assert gated.drawn.wait(10.0)
        os.write(controller, b"q")
        assert shown.closed.wait(10.0)  # the dashboard is down and the work still runs
        shown.log("running for 8 s")
        return 42

    assert shown.run_beside(work) == 42
    assert resumed == ["running for 8 s"]  # progress lines resume once the dashboard is closed
    assert RUN_QUIT_HINT in out.getvalue()
    assert "SLO 200 ms" in out.getvalue().split(ALT_SCREEN_OFF)[-1]  # its last frame stays
    assert not any(t.name == "cotrain-dashboard" for t in threading.enumerate())


# --- the workers' CPU and memory ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def live_run(tmp_path: Path, workers: dict[str, int], spawned_wall_s: float) -> Path:
    """The recorded run cut at run_started (so still running), its runtime this test process, and
    `workers` (name -> pid) in processes.json, each named by a worker_spawned at `spawned_wall_s`."""
    from datetime import datetime, timezone

    run = copy_run(tmp_path)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    started = next(i for i, e in enumerate(events) if e["event"] == "run_started")
    events = [e for e in events[: started + 1] if e["event"] not in ("worker_spawned", "worker_ready")]
    events[0]["pid"] = os.getpid()
    wall = datetime.fromtimestamp(spawned_wall_s, timezone.utc).isoformat(timespec="milliseconds")
    spawned = [
        {"event": "worker_spawned", "t_s": None, "wall": wall, "worker": w, "pid": p}
        for w, p in workers.items()
    ]
    events[1:1] = spawned
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    (run / "processes.json").write_text(json.dumps(workers), encoding="utf-8")
    return run


def test_workers_cpu_and_memory_for_a_live_pid_and_a_dash_for_a_dead_one(tmp_path: Path) -> None:
    import psutil

    me = psutil.Process()
    run = live_run(tmp_path, {"inference": os.getpid(), "train:cl": dead_pid()}, me.create_time() + 1)
    clock = FakeClock()
    dashboard = Dashboard(run, sampler=WorkerSampler(clock=clock))

    first = dashboard.frame(100)
    sum(i * i for i in range(200_000))  # some CPU time between the two samples
    clock.now_s += 0.5
    second = dashboard.frame(100)

    assert first.status == "running"
    mine, gone = second.workers
    assert (mine.name, mine.pid) == ("inference", os.getpid())
    assert first.workers[0].cpu_percent is None  # one sample: no interval to measure over yet
    assert first.workers[0].rss_mb is not None and first.workers[0].rss_mb > 10
    assert mine.cpu_percent is not None and mine.cpu_percent > 0
    assert gone.cpu_percent is None and gone.rss_mb is None
    text = frame_text(second, 100, 40)
    line = next(ln for ln in text.splitlines() if ln.startswith(" inference cpu "))
    assert f"inference cpu {mine.cpu_percent:.0f}%" in line and " MB" in line
    assert "train:cl cpu - rss -" in line


def test_a_reused_pid_shows_a_dash_not_someone_elses_figures(tmp_path: Path) -> None:
    """processes.json still names a worker's pid after the worker exited; here the pid belongs to
    a process started an hour after the run last named it, so it is not the worker."""
    import psutil

    run = live_run(tmp_path, {"inference": os.getpid()}, psutil.Process().create_time() - 3600)
    clock = FakeClock()
    dashboard = Dashboard(run, sampler=WorkerSampler(clock=clock))

    dashboard.frame(100)
    clock.now_s += 1.0
    (worker,) = dashboard.frame(100).workers

    assert worker.cpu_percent is None and worker.rss_mb is None


def test_a_finished_or_replayed_run_shows_no_worker_figures(tmp_path: Path) -> None:
    run = copy_run(tmp_path)
    (run / "processes.json").write_text(json.dumps({"inference": os.getpid()}), encoding="utf-8")
    dashboard = Dashboard(run, sampler=WorkerSampler(clock=FakeClock()))
    live = live_run(tmp_path / "live", {"inference": os.getpid()}, time.time())

    finished = dashboard.frame(100)
    replayed = Dashboard(live, sampler=WorkerSampler(clock=FakeClock())).frame(100, now_s=0.5)

    assert read_run(run).processes == {"inference": os.getpid()}
    assert finished.status == "completed" and finished.workers == []
    assert replayed.workers == []
    assert "rss" not in frame_text(finished, 100, 40)


def test_a_garbled_processes_json_reads_as_no_workers(tmp_path: Path) -> None:
    run = copy_run(tmp_path)
    for garbage in ("{not json", '["a", 1]', '{"inference": "12", "x": -3, "y": true}'):
        (run / "processes.json").write_text(garbage, encoding="utf-8")
        assert read_run(run).processes == {}


TMUX = shutil.which("tmux")


def _capture(tmux: list[str], predicate: Callable[[str], bool], deadline_s: float = 30.0) -> str:
    """Poll the pane until `predicate` holds for what it shows; fail with the last capture."""
    deadline = time.monotonic() + deadline_s
    frame = ""
    while time.monotonic() < deadline:
        result = subprocess.run([*tmux, "capture-pane", "-p", "-t", "dash"], capture_output=True, text=True)
        frame = result.stdout
        if predicate(frame):
            return frame
        time.sleep(0.05)  # between polls of a condition with a deadline, not a hopeful wait
    raise AssertionError(f"the pane never showed the expected frame; last capture:\n{frame}")


@pytest.mark.slow
@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_watch_follows_a_run_being_written_in_a_real_80x24_terminal(tmp_path: Path) -> None:
    """`cotrain watch` in a detached 80x24 tmux session, attached before the run starts.

    The run directory is written as a run would write it: first only config.yaml and
    run_created (models loading), then the start, half the requests and a torn line, then
    the rest. The pane must follow each step and fit 80x24. Then `q` must end the dashboard,
    leave its last frame on the terminal and the terminal's mode as it found it; a second
    `cotrain watch` in the same pane must end on Ctrl-C.
    """
    assert TMUX is not None
    run = tmp_path / "live"
    run.mkdir()
    shutil.copy(RECORDED / "config.yaml", run / "config.yaml")
    events = (RECORDED / "events.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    created = json.loads(events[0])
    created["pid"] = os.getpid()  # a live runtime: this test process
    (run / "events.jsonl").write_text(json.dumps(created) + "\n", encoding="utf-8")
    started = next(i for i, e in enumerate(events) if '"run_started"' in e)
    stopped = next(i for i, e in enumerate(events) if '"run_stopped"' in e)
    requests = (RECORDED / "requests.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    tmux = [TMUX, "-L", f"cotrain-test-{os.getpid()}", "-f", "/dev/null"]
    env = {**os.environ, "LANG": "C.UTF-8"}
    watch_command = f"{sys.executable} -m cotrain watch {run} --refresh-s 0.2"
    script = tmp_path / "pane.sh"
    script.write_text(
        "trap true INT\n"  # a handler, not an ignore: the dashboard still gets Ctrl-C's SIGINT
        f"stty -g > {tmp_path}/mode-before\n"
        f"{watch_command}\n"
        'echo "watch exited $?"\n'
        f"stty -g > {tmp_path}/mode-after\n"
        f"{watch_command}\n"
        'echo "watch stopped $?"\n'
        "exec cat\n",
        encoding="utf-8",
    )
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "dash", "-x", "80", "-y", "24", f"sh {script}"],
        check=True,
        env=env,
    )
    try:
        _capture(tmux, lambda f: "loading" in f and "run_created" in f)

        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.writelines(events[1 : started + 1])
        torn = requests[76]
        with (run / "requests.csv").open("a", encoding="utf-8", newline="") as f:
            f.writelines(requests[:76])  # the header and 75 requests
            f.write(torn[:30])
        shutil.copy(RECORDED / "train-cl.csv", run / "train-cl.csv")
        shutil.copy(RECORDED / "telemetry.csv", run / "telemetry.csv")
        shutil.copy(RECORDED / "decisions.jsonl", run / "decisions.jsonl")
        running = _capture(tmux, lambda f: "served 75 " in f and "running" in f)
        assert "SLO 200 ms" in running and "samples/s" in running

        with (run / "requests.csv").open("a", encoding="utf-8", newline="") as f:
            f.write(torn[30:])
            f.writelines(requests[77:])
        with (run / "events.jsonl").open("a", encoding="utf-8") as f:
            f.writelines(events[started + 1 : stopped + 1])
        done = _capture(tmux, lambda f: "completed" in f and f"served {len(requests) - 1} " in f)

        lines = done.rstrip("\n").split("\n")
        assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
        assert "q: quit watch" in done

        subprocess.run([*tmux, "send-keys", "-t", "dash", "q"], check=True)
        quit_ = _capture(tmux, lambda f: "watch exited 0" in f)
        assert "cotrain quickstart  completed" in quit_ and f"served {len(requests) - 1} " in quit_
        assert "q: quit watch" not in quit_  # the frame that stays is the final one, without footer

        again = _capture(tmux, lambda f: "q: quit watch" in f and "watch exited" not in f)
        assert "completed" in again
        before = (tmp_path / "mode-before").read_text(encoding="utf-8")
        assert before and (tmp_path / "mode-after").read_text(encoding="utf-8") == before
        subprocess.run([*tmux, "send-keys", "-t", "dash", "C-c"], check=True)
        _capture(tmux, lambda f: "watch stopped 0" in f, deadline_s=10.0)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_columns_kept_by_the_reader_match_a_fresh_read(tmp_path: Path) -> None:
    run = copy_run(tmp_path)
    lines = (run / "requests.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (run / "requests.csv").write_text("".join(lines[:60]), encoding="utf-8")
    reader = RunReader(run)
    assert len(reader.read().columns("inference")) == 59

    with (run / "requests.csv").open("a", encoding="utf-8") as f:
        f.writelines(lines[60:])
    grown = reader.read().request_columns["inference"]
    fresh = RequestColumns.from_rows(read_run(run).requests["inference"])

    assert len(grown) == len(lines) - 1
    assert np.array_equal(grown.latency_ms, fresh.latency_ms, equal_nan=True)
    assert np.array_equal(grown.done_s, fresh.done_s)

    (run / "requests.csv").unlink()  # a new run in the same directory, as long as the old one
    (run / "requests.csv").write_text("".join(lines[:1] + lines[:0:-1]), encoding="utf-8")
    replaced = reader.read().request_columns["inference"]
    fresh = RequestColumns.from_rows(read_run(run).requests["inference"])
    assert len(replaced) == len(lines) - 1
    assert np.array_equal(replaced.latency_ms, fresh.latency_ms, equal_nan=True)  # rebuilt, not kept

"""Supervision: a dead worker is restarted with back-off, and nothing it held goes unaccounted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotrain.records import REQUEST_COLUMNS, read_csv_rows, read_jsonl
from cotrain.recovery import DIED, RESTARTING, account_lost_requests, cut_torn_tail, lost_requests
from cotrain.supervisor import restart_delay_s
from cotrain.workloads.inference.arrivals import constant_offsets_s
from tests.test_e2e import COTRAIN, REPO, check_accounting

T0_NS = 5_000_000_000


def test_restart_back_off_doubles_and_is_capped() -> None:
    assert [restart_delay_s(n, 0.5, 3.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert restart_delay_s(1, 0.0, 10.0) == 0.0


def test_lost_requests_fail_what_has_no_record_and_resume_after_the_cutoff() -> None:
    # 10 req/s: ids 0..9 in the first second. The dead process recorded 0-3 and 5; it died at
    # 0.55 s and the replacement takes over at 0.85 s.
    lost = lost_requests({0, 1, 2, 3, 5}, constant_offsets_s(10.0), T0_NS, 0, died_at_s=0.55, until_s=0.85)
    ids = [row[0] for row in lost.rows]
    assert ids == [4, 6, 7, 8]
    assert [row[-1] for row in lost.rows] == [DIED, RESTARTING, RESTARTING, RESTARTING]
    assert (lost.died, lost.during_restart, lost.next_request_id) == (1, 3, 9)
    assert all(row[REQUEST_COLUMNS.index("outcome")] == "failed" for row in lost.rows)
    assert lost.rows[0][1] == f"{(T0_NS + 400_000_000) / 1e9:.6f}"  # arrival time of id 4


def test_a_second_death_accounts_only_from_where_the_replacement_started() -> None:
    lost = lost_requests({9, 10}, constant_offsets_s(10.0), T0_NS, 9, died_at_s=1.25, until_s=1.5)
    assert [row[0] for row in lost.rows] == [11, 12, 13, 14, 15]
    assert lost.next_request_id == 16


def test_an_unbounded_schedule_that_ends_early_still_gives_a_next_id() -> None:
    lost = lost_requests(set(), iter([0.1, 0.2]), T0_NS, 0, died_at_s=5.0, until_s=9.0)
    assert [row[0] for row in lost.rows] == [0, 1] and lost.next_request_id == 2


def test_a_torn_last_line_is_cut_before_rows_are_appended(tmp_path: Path) -> None:
    csv_path = tmp_path / "requests.csv"
    header = ",".join(REQUEST_COLUMNS)
    good = "0,5.000000,5.001,5.002,2.000,1,m,0,served,"
    csv_path.write_text(f"{header}\n{good}\n1,5.1000", encoding="utf-8")  # killed mid-row
    assert cut_torn_tail(csv_path) == len("1,5.1000")
    assert cut_torn_tail(csv_path) == 0
    csv_path.write_text(f"{header}\n{good}\n1,5.1000", encoding="utf-8")
    lost = account_lost_requests(csv_path, constant_offsets_s(10.0), T0_NS, 0, died_at_s=0.15, until_s=0.25)
    rows = read_csv_rows(csv_path)
    assert [r["request_id"] for r in rows] == ["0", "1", "2"]
    assert [r["outcome"] for r in rows] == ["served", "failed", "failed"]
    assert [r["reason"] for r in rows[1:]] == [DIED, RESTARTING]
    assert lost.next_request_id == 3


# --- real processes -------------------------------------------------------------------------------


def _start(tmp_path: Path, config: dict[str, Any]) -> tuple[subprocess.Popen[str], Path]:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*COTRAIN, "run", str(path), "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out


def _wait_event(proc: subprocess.Popen[str], out: Path, predicate: Any, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(predicate(e) for e in read_jsonl(out / "events.jsonl")):
        assert proc.poll() is None, f"cotrain run ended while waiting for {what}: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
        time.sleep(0.2)  # polling a file another process writes; no assertion depends on the timing


def _wait_served(proc: subprocess.Popen[str], out: Path, timeout_s: float = 120) -> None:
    """Until the service has served a request: accounting is then checked on a mix of outcomes."""
    deadline = time.monotonic() + timeout_s
    while not any(r["outcome"] == "served" for r in read_csv_rows(out / "requests.csv")):
        assert proc.poll() is None, f"cotrain run ended before serving: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"nothing served within {timeout_s:.0f} s"
        time.sleep(0.2)  # polling a file another process writes; no assertion depends on the timing


def _kill(out: Path, worker: str) -> int:
    pid = int(json.loads((out / "processes.json").read_text())[worker])
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.slow
def test_killed_workers_are_restarted_and_every_request_is_accounted(
    tmp_path: Path, tiny: dict[str, Any]
) -> None:
    tiny["duration_s"] = 600
    tiny["workloads"]["training"][0]["checkpoint_every_steps"] = 5
    proc, out = _start(tmp_path, tiny)
    try:
        _wait_event(proc, out, lambda e: e.get("event") == "run_started", "run start", 180)
        dead_inference = _kill(out, "inference")
        _wait_event(
            proc,
            out,
            lambda e: e.get("event") == "worker_recovered" and e["worker"] == "inference",
            "inference recovery",
            180,
        )
        steps_before = len(read_csv_rows(out / "train-cl.csv"))
        dead_training = _kill(out, "train:cl")
        _wait_event(
            proc,
            out,
            lambda e: e.get("event") == "worker_recovered" and e["worker"] == "train:cl",
            "training recovery",
            180,
        )
        # the replacement serves: wait for a served request from the new process's ids on
        accounted = next(
            e for e in read_jsonl(out / "events.jsonl") if e.get("event") == "requests_accounted"
        )
        deadline = time.monotonic() + 120
        while not any(
            int(r["request_id"]) >= accounted["next_request_id"] and r["outcome"] == "served"
            for r in read_csv_rows(out / "requests.csv")
        ):
            assert time.monotonic() < deadline, "the restarted service never served a request"
            time.sleep(0.2)
        processes = json.loads((out / "processes.json").read_text())
        assert processes["inference"] != dead_inference and processes["train:cl"] != dead_training
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr  # interrupted
    summary = check_accounting(out)  # ids contiguous across both processes, each with one outcome
    assert summary["restarts"]["inference"] == 1 and summary["restarts"]["train:cl"] == 1
    failed = [r for r in read_csv_rows(out / "requests.csv") if r["outcome"] == "failed"]
    assert failed and {r["reason"] for r in failed} <= {DIED, RESTARTING}
    assert summary["inference"]["requests"]["failed"] == len(failed)
    events = list(read_jsonl(out / "events.jsonl"))
    died = [e for e in events if e.get("event") == "worker_died"]
    assert [(e["worker"], e["signal"]) for e in died] == [("inference", "SIGKILL"), ("train:cl", "SIGKILL")]
    rows = read_csv_rows(out / "train-cl.csv")
    steps = [int(r["step"]) for r in rows]
    assert len(rows) > steps_before
    resumed_at = steps[steps_before] if len(steps) > steps_before else None
    assert resumed_at is not None and resumed_at > 1, "the restarted job resumed from a checkpoint"
    ready = [e for e in events if e.get("event") == "worker_ready" and e["worker"] == "train:cl"]
    assert "resumed from step-" in ready[-1]["detail"]


@pytest.mark.slow
def test_a_worker_that_keeps_dying_stops_the_run_with_its_reason(
    tmp_path: Path, tiny: dict[str, Any]
) -> None:
    tiny["duration_s"] = 600
    tiny["supervision"] = {"max_restarts": 0}
    proc, out = _start(tmp_path, tiny)
    try:
        _wait_event(proc, out, lambda e: e.get("event") == "run_started", "run start", 180)
        _wait_served(proc, out)
        _kill(out, "inference")
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "supervision.max_restarts is 0" in stderr
    summary = check_accounting(out)
    assert summary["run"]["status"] == "failed"
    assert summary["restarts"]["inference"] == 0
    events = [e["event"] for e in read_jsonl(out / "events.jsonl")]
    assert "worker_died" in events and "platform_restored" in events
    assert "worker_restarted" not in events


def test_a_gap_below_the_last_recorded_id_is_failed_even_after_the_cutoff() -> None:
    lost = lost_requests({0, 5}, constant_offsets_s(10.0), T0_NS, 0, died_at_s=0.15, until_s=0.15)
    assert [row[0] for row in lost.rows] == [1, 2, 3, 4]
    assert lost.next_request_id == 6


@pytest.mark.slow
def test_a_warm_standby_takes_over_at_once(tmp_path: Path, tiny: dict[str, Any]) -> None:
    tiny["duration_s"] = 600
    tiny["supervision"] = {"standby": True}
    proc, out = _start(tmp_path, tiny)
    try:
        _wait_event(proc, out, lambda e: e.get("event") == "run_started", "run start", 180)
        standby_pid = int(json.loads((out / "processes.json").read_text())["inference~standby"])
        _kill(out, "inference")
        _wait_event(
            proc,
            out,
            lambda e: e.get("event") == "standby_spawned",
            "a new standby",
            60,
        )
        assert int(json.loads((out / "processes.json").read_text())["inference"]) == standby_pid
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr
    summary = check_accounting(out)
    assert summary["restarts"] == {"inference": 1, "train:cl": 0}
    events = list(read_jsonl(out / "events.jsonl"))
    restarted = next(e for e in events if e.get("event") == "worker_restarted")
    assert restarted["from_standby"] is True and restarted["pid"] == standby_pid
    died = next(e for e in events if e.get("event") == "worker_died")
    recovered = next(e for e in events if e.get("event") == "worker_recovered")
    # the spare was loaded: taking over is bookkeeping, not a model load (cold restarts take 10 s+)
    assert recovered["t_s"] - died["t_s"] < 2.0


@pytest.mark.slow
def test_a_second_sigint_forces_the_exit_and_still_accounts_and_restores(
    tmp_path: Path, tiny: dict[str, Any]
) -> None:
    tiny["duration_s"] = 600
    proc, out = _start(tmp_path, tiny)
    try:
        _wait_event(proc, out, lambda e: e.get("event") == "run_started", "run start", 180)
        _wait_served(proc, out)
        children = [int(p) for p in json.loads((out / "processes.json").read_text()).values()]
        # a stopped training process cannot obey Stop: the first SIGINT alone would wait ~30 s
        os.kill(int(json.loads((out / "processes.json").read_text())["train:cl"]), signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        _wait_event(proc, out, lambda e: e.get("event") == "run_stopped", "the first stop", 30)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr
    summary = check_accounting(out)
    assert summary["run"]["status"] == "interrupted"
    records = list(read_jsonl(out / "events.jsonl"))
    assert "platform_restored" in [e["event"] for e in records]
    killed = [e for e in records if e["event"] == "worker_killed"]
    assert "train:cl" in [e["worker"] for e in killed]  # the stopped one; inference may still be draining
    assert all("second signal" in e["reason"] for e in killed)
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_overload_sheds_counts_and_recovers_without_a_death(tmp_path: Path, tiny: dict[str, Any]) -> None:
    """Far beyond capacity for 8 s: the bounded queue and drop-late shed, and nothing dies; after
    the load drops, admitted requests meet the SLO again.

    "Far beyond" must hold on any machine the suite runs on, and the same machine type has been
    measured 3-4x faster on one day than on another: at the tiny 32-pixel images one core served
    ~1,000 req/s (2026-12-01), so 2,000 req/s shed only 48 %. At 320 pixels the same core serves
    ~130 req/s (93 % shed), so 2,000 req/s stays over twice capacity on a machine 7x faster."""
    tiny["duration_s"] = 22
    inference = tiny["workloads"]["inference"]
    inference["dataset"]["image_size"] = 320
    inference["arrivals"] = {
        "process": "schedule",
        "seed": 2,
        "steps": [
            {"at_s": 0, "rate_per_s": 20},
            {"at_s": 4, "rate_per_s": 2000},
            {"at_s": 12, "rate_per_s": 20},
        ],
    }
    proc, out = _start(tmp_path, tiny)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    summary = check_accounting(out)
    req = summary["inference"]["requests"]
    assert req["shed"] > 0 and req["failed"] == 0
    events = [e["event"] for e in read_jsonl(out / "events.jsonl")]
    assert "worker_died" not in events
    rows = read_csv_rows(out / "requests.csv")
    t0 = min(float(r["arrival_s"]) for r in rows)
    overload = [r for r in rows if 4 <= float(r["arrival_s"]) - t0 < 12]
    assert sum(r["outcome"] == "shed" for r in overload) > len(overload) / 2, (
        "2000 req/s is far beyond capacity: most of the overload is shed"
    )
    after = [r for r in rows if float(r["arrival_s"]) - t0 >= 16 and r["outcome"] == "served"]
    assert after, "the service kept serving after the overload"
    within = sum(float(r["latency_ms"]) <= inference["slo_ms"] for r in after)
    assert within / len(after) >= 0.9


@pytest.mark.slow
def test_a_worker_killed_while_loading_is_started_again(tmp_path: Path, tiny: dict[str, Any]) -> None:
    """processes.json names the pids at once; an operator (or the OOM killer) may strike before
    the models are loaded. The run must still start, and count the restart."""
    tiny["duration_s"] = 3
    proc, out = _start(tmp_path, tiny)
    try:
        _wait_event(proc, out, lambda e: e.get("event") == "worker_spawned", "the spawn", 60)
        first = _kill(out, "inference")
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    summary = check_accounting(out)
    assert summary["restarts"]["inference"] == 1
    assert int(json.loads((out / "processes.json").read_text())["inference"]) != first
    events = [e["event"] for e in read_jsonl(out / "events.jsonl")]
    assert events.index("worker_died") < events.index("worker_restarted") < events.index("run_started")

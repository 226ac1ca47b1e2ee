"""Service mode: bounded records (rotation) and a summary that is rewritten while the run goes on.

The histogram and the rotating appender are checked exactly; one real `cotrain serve` with tiny
limits checks that they hold together: segments rotate and the oldest are dropped, summary.json
says `partial` while serving, and at the end the whole-run counts equal what the client sent,
although most of the records were rotated away.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cotrain.records import KEEP_ENV, ROTATE_ENV, CsvAppender, read_segments, rotated_away
from cotrain.running_summary import LatencyHistogram, RunningSummary
from tests.conftest import REPO, TINY
from tests.test_e2e import COTRAIN


def test_histogram_percentiles_are_within_one_percent_of_the_exact_ones() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.lognormal(3, 1, 20_000), rng.uniform(0.01, 5, 500), [7_200_000.0]])
    h = LatencyHistogram()
    for v in values:
        h.add(float(v))
    for q in (50, 90, 95, 99, 99.9):
        exact = float(np.percentile(values, q, method="inverted_cdf"))
        got = h.percentile(q)
        assert got is not None and abs(got - exact) / exact <= 0.01, (q, got, exact)
    assert h.n == len(values) and h.max_ms == 7_200_000.0
    assert LatencyHistogram().percentile(50) is None


def test_the_running_summary_counts_exactly_and_measures_attainment_against_the_slo() -> None:
    running = RunningSummary({"camera": 100.0}, {"cl": "sgd"})
    for ms in (10.0, 50.0, 99.0, 150.0):
        running.reply("camera", "served", ms)
    running.reply("camera", "shed", None)
    running.window("camera", served=1, failed=1, shed=0, latencies_ms=[20.0], batch_sizes=[2, 4])
    running.training("cl", steps=10, samples=80)
    summary = running.summary({"name": "x"}, 4.0, {"inference:camera": 0})
    camera = summary["services"]["camera"]
    assert camera["requests"] == {"arrived": 7, "served": 5, "failed": 1, "shed": 1}
    assert camera["slo_attainment"] == round(4 / 7, 6)
    assert camera["mean_batch_size"] == 3.0
    assert summary["training"]["cl"] == {
        "kind": "sgd",
        "steps": 10,
        "samples_per_s": 20.0,
        "steps_per_s": 2.5,
        "first_loss": None,
        "final_loss": None,
    }
    assert summary["partial"] is True and summary["run"]["status"] == "running"


def test_a_rotating_appender_keeps_its_segments_in_order_and_counts_what_it_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ROTATE_ENV, str(200 / (1024 * 1024)))  # 200 bytes
    monkeypatch.setenv(KEEP_ENV, "2")
    path = tmp_path / "requests.csv"
    appender = CsvAppender(path, ("request_id", "payload"))
    for i in range(40):
        appender.write_rows([(i, "x" * 20)])
    appender.close()
    kept = read_segments(path)
    ids = [int(r["request_id"]) for r in kept]
    assert ids == list(range(ids[0], 40)), "oldest first, nothing missing in what is kept"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "requests.csv.dropped") == [
        "requests.csv",
        "requests.csv.1",
        "requests.csv.2",
    ]
    assert int((tmp_path / "requests.csv.dropped").read_text()) >= 1 and rotated_away(tmp_path)
    for segment in (p for p in tmp_path.glob("requests.csv*") if "dropped" not in p.name):
        assert segment.read_text().splitlines()[0] == "request_id,payload", "each segment has its header"


def test_serve_rotates_its_records_and_keeps_a_whole_run_summary(tmp_path: Path) -> None:
    data = copy.deepcopy(TINY)
    data.pop("duration_s")
    inference = data["workloads"]["inference"]
    inference["arrivals"] = {"process": "constant", "rate_per_s": 60}
    inference["ingress"] = {"grpc": "127.0.0.1:0"}
    data["output"] = {"rotate_mb": 0.004, "keep_rotated": 2, "summary_period_s": 1}
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*COTRAIN, "serve", str(config), "--out", str(out), "--duration", "6", "--quiet"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    partial = None
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "summary.json").exists():
            seen = json.loads((out / "summary.json").read_text())
            if seen.get("partial") and seen["inference"]["requests"]["arrived"] > 0:
                partial = seen
        time.sleep(0.2)  # polling a file another process rewrites; assertions use its content only
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert partial is not None and partial["run"]["status"] == "running", "a summary while serving"
    final = json.loads((out / "summary.json").read_text())
    client = json.loads((out / "client" / "inference" / "summary.json").read_text())
    assert rotated_away(out) and (out / "requests.csv.1").exists() and (out / "requests.csv.2").exists()
    assert len(read_segments(out / "requests.csv")) < client["requests"]["sent"], "records were dropped"
    assert final["partial"] is False and final["run"]["status"] == "completed"
    assert final["inference"]["requests"]["arrived"] == client["requests"]["sent"]
    assert final["inference"]["requests"]["served"] == client["requests"]["ok"]
    assert partial["inference"]["requests"]["arrived"] <= final["inference"]["requests"]["arrived"]

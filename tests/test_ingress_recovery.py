"""A worker killed while `cotrain load` drives the front end: every request the client sent got
exactly one answer, and the client's counts equal the server's records, status by status.

The client is `cotrain load` in its own process (tritonclient underneath), so this is what an
outside client sees. The default suite runs 8 s at 50 req/s; the slow ones are the full 60 s
and the warm standby with `retry_on_restart`.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotrain.records import read_csv_rows, read_jsonl
from tests.conftest import REPO, TINY
from tests.test_e2e import COTRAIN
from tests.test_ingress_e2e import _wait_ready

GRPC_TO_HTTP = {"OK": "200", "UNAVAILABLE": "503", "RESOURCE_EXHAUSTED": "429", "INTERNAL": "500"}


def _config(tmp: Path, **supervision: Any) -> Path:
    data = copy.deepcopy(TINY)
    data["duration_s"] = 300
    inference = data["workloads"]["inference"]
    inference.pop("arrivals")
    inference["ingress"] = {"http": "127.0.0.1:0", "grpc": "127.0.0.1:0", **supervision.pop("ingress", {})}
    if supervision:
        data["supervision"] = supervision
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _load_and_kill(tmp: Path, config: Path, duration_s: float, rate_per_s: float) -> dict[str, Any]:
    out = tmp / "run"
    server = subprocess.Popen(
        [*COTRAIN, "run", str(config), "--out", str(out), "--quiet"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(server, out)
        arrivals = tmp / "arrivals.yaml"
        arrivals.write_text(yaml.safe_dump({"process": "constant", "rate_per_s": rate_per_s}))
        grpc = json.loads((out / "ingress.json").read_text())["grpc"]
        client_out = tmp / "client"
        client = subprocess.Popen(
            [
                *COTRAIN,
                "load",
                f"grpc://{grpc}",
                "--model",
                "inference",
                "--arrivals",
                str(arrivals),
                "--duration",
                str(duration_s),
                "--out",
                str(client_out),
                "--timeout-s",
                "30",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while len(read_csv_rows(client_out / "requests.csv")) < rate_per_s * duration_s / 4:
            assert client.poll() is None, client.communicate()[1]
            assert time.monotonic() < deadline, "the client sent too little"
            time.sleep(0.1)  # polling another process's records; no assertion depends on the timing
        victim = int(json.loads((out / "processes.json").read_text())["inference"])
        os.kill(victim, signal.SIGKILL)
        _, client_err = client.communicate(timeout=duration_s + 120)
        assert client.returncode == 0, client_err
        server.send_signal(signal.SIGTERM)
        _, server_err = server.communicate(timeout=120)
        assert server.returncode == 1, server_err
    finally:
        for proc in (server,):
            if proc.poll() is None:
                proc.kill()
    return {"out": out, "client": client_out, "victim": victim}


def _check(result: dict[str, Any]) -> tuple[Counter[str], Counter[str]]:
    client_rows = read_csv_rows(result["client"] / "requests.csv")
    client_summary = json.loads((result["client"] / "summary.json").read_text())
    server_rows = read_csv_rows(result["out"] / "requests.csv")
    requests = client_summary["requests"]
    assert requests["sent"] == requests["ok"] + requests["error"] == len(client_rows)
    assert sorted(int(r["request_id"]) for r in server_rows) == list(range(len(server_rows))), (
        "none missing or doubled"
    )
    assert len(server_rows) == len(client_rows), "every request the client sent reached the server once"
    client = Counter(GRPC_TO_HTTP.get(r["status"], r["status"]) for r in client_rows)
    server = Counter(r["status"] for r in server_rows)
    assert client == server, (client, server)
    assert server["200"] > 0 and server["503"] > 0, server
    for r in server_rows:
        assert (r["outcome"] == "served") == (r["status"] == "200")
    summary = json.loads((result["out"] / "summary.json").read_text())
    assert summary["restarts"]["inference"] == 1
    assert summary["inference"]["requests"]["arrived"] == len(server_rows)
    died = [e for e in read_jsonl(result["out"] / "events.jsonl") if e["event"] == "worker_died"]
    assert died and died[0]["pid"] == result["victim"]
    print(f"client {dict(client)} server {dict(server)} ({len(server_rows)} requests)")
    return client, server


def test_a_killed_worker_under_load_leaves_client_and_server_counts_equal(tmp_path: Path) -> None:
    result = _load_and_kill(tmp_path, _config(tmp_path), duration_s=8, rate_per_s=50)
    _check(result)
    reasons = Counter(
        r["reason"] for r in read_csv_rows(result["out"] / "requests.csv") if r["status"] == "503"
    )
    assert set(reasons) <= {"worker died", "service restarting"}, reasons


@pytest.mark.slow
def test_with_a_warm_standby_and_retry_the_requests_in_flight_are_served_by_the_replacement(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, standby=True, ingress={"retry_on_restart": True})
    result = _load_and_kill(tmp_path, config, duration_s=12, rate_per_s=50)
    client_rows = read_csv_rows(result["client"] / "requests.csv")
    server_rows = read_csv_rows(result["out"] / "requests.csv")
    assert len(client_rows) == len(server_rows)
    assert Counter(GRPC_TO_HTTP.get(r["status"], r["status"]) for r in client_rows) == Counter(
        r["status"] for r in server_rows
    )
    failed = [r for r in server_rows if r["status"] != "200"]
    assert len(failed) <= 5, f"the standby took over within the SLO budget: {failed[:5]}"


@pytest.mark.slow
def test_the_full_minute_at_50_per_second_with_a_kill(tmp_path: Path) -> None:
    _check(_load_and_kill(tmp_path, _config(tmp_path), duration_s=60, rate_per_s=50))

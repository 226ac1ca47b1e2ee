"""What cotrain's network path adds per request, against a bare server of the same protocol.

Three processes per measurement, as in production: the client (`cotrain load`, open loop,
tritonclient underneath), and the server: either the bare echo server (cotrain/echo_server.py,
nothing but the protocol) or `cotrain serve` with the `noop` model (the whole product path: the
front end in the runtime's process, the dispatcher and its records, the Unix socket, the
worker's batcher and executor, and back). The same client at the same constant rate drives both,
alternating, `repeats` times, so the machine's drift lands on both alike.

    overhead = cotrain's client-side latency - the echo server's, per percentile,
               the median over the repeats of the per-pair difference

Written to `overhead.json`: `overhead_ms.{p50,p99}` and each server's own figures.
"""

from __future__ import annotations

import json
import os
import platform as host
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

TARGET_P99_MS = {"grpc": 0.5, "http": 1.0}
IMAGE_SIZE = 64
COTRAIN = [sys.executable, "-m", "cotrain"]


def _start_echo(protocol: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cotrain.echo_server",
            protocol,
            "--model",
            "inference",
            "--shape",
            f"3,{IMAGE_SIZE},{IMAGE_SIZE}",
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"the echo server did not start: {line!r}")
    return proc, line.split("listening on ")[1].split()[0]


def _serve_config(protocol: str, path: Path, max_batch_size: int = 1) -> Path:
    max_queue_delay_ms = 1.0 if max_batch_size > 1 else 0.0  # alone: dispatch at once
    config = {
        "name": "overhead",
        "controller": {"name": "static", "period_s": 1.0},
        "workloads": {
            "inference": {
                "model": {"name": "noop"},
                "dataset": {
                    "kind": "synthetic",
                    "num_samples": 8,
                    "num_classes": 4,
                    "image_size": IMAGE_SIZE,
                },
                "slo_ms": 1000,
                "batching": {"max_batch_size": max_batch_size, "max_queue_delay_ms": max_queue_delay_ms},
                "queue_capacity": max(1024, 4 * max_batch_size),
                "threads": 1,
                "ingress": {protocol: "127.0.0.1:0"},
            }
        },
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _start_cotrain(protocol: str, out: Path, max_batch_size: int = 1) -> tuple[subprocess.Popen[str], str]:
    config = _serve_config(protocol, out / "serve.yaml", max_batch_size)
    run_dir = out / "cotrain-run"
    (run_dir / "ingress.json").unlink(missing_ok=True)  # a previous run's addresses are stale
    proc = subprocess.Popen(
        [*COTRAIN, "serve", str(config), "--out", str(run_dir), "--quiet", "--force"],
        stdout=subprocess.DEVNULL,
        stderr=(out / "cotrain-serve.log").open("w"),
        text=True,
    )
    deadline = time.monotonic() + 180
    bound = run_dir / "ingress.json"
    while not bound.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"cotrain serve did not start (see {out / 'cotrain-serve.log'})")
        time.sleep(0.1)  # polling a file the server writes once it listens
    return proc, str(json.loads(bound.read_text(encoding="utf-8"))[protocol])


def _load(url: str, rate_per_s: float, requests: int, out: Path) -> dict[str, Any]:
    arrivals = out.parent / "arrivals.yaml"
    arrivals.write_text(yaml.safe_dump({"process": "constant", "rate_per_s": rate_per_s}), encoding="utf-8")
    result = subprocess.run(
        [
            *COTRAIN,
            "load",
            url,
            "--model",
            "inference",
            "--arrivals",
            str(arrivals),
            "--duration",
            f"{requests / rate_per_s:g}",
            "--out",
            str(out),
            "--wait-ready-s",
            "120",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cotrain load {url} exited {result.returncode}: {result.stderr.strip()[-1000:]}")
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return summary


def run_ingress_overhead(
    protocol: str,
    out: Path,
    *,
    requests: int = 2000,
    rate_per_s: float = 200.0,
    repeats: int = 3,
    max_batch_size: int = 1,
) -> dict[str, Any]:
    """`max_batch_size` 1 (the latency figure) dispatches each request alone; a larger one, with a
    1 ms queue delay, lets the batcher amortise the worker's per-batch cost (the throughput figure)."""
    out.mkdir(parents=True, exist_ok=True)
    echo, echo_address = _start_echo(protocol, out / "echo.log")
    cotrain, cotrain_address = _start_cotrain(protocol, out, max_batch_size)
    runs: list[dict[str, Any]] = []
    try:
        for r in range(repeats):
            pair: dict[str, Any] = {"repeat": r + 1}
            for name, address in (("echo", echo_address), ("cotrain", cotrain_address)):
                summary = _load(f"{protocol}://{address}", rate_per_s, requests, out / f"{name}-{r + 1}")
                pair[name] = {"latency_ms": summary["latency_ms"], "requests": summary["requests"]}
            runs.append(pair)
    finally:
        for proc in (cotrain, echo):
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()

    def median(name: str, q: str) -> float:
        return round(float(np.median([run[name]["latency_ms"][q] for run in runs])), 4)

    def overhead(q: str) -> float:
        return round(
            float(
                np.median([run["cotrain"]["latency_ms"][q] - run["echo"]["latency_ms"][q] for run in runs])
            ),
            4,
        )

    result = {
        "protocol": protocol,
        "rate_per_s": rate_per_s,
        "requests_per_run": requests,
        "repeats": repeats,
        "input": f"1x3x{IMAGE_SIZE}x{IMAGE_SIZE} FP32",
        "max_batch_size": max_batch_size,
        "overhead_ms": {"p50": overhead("p50"), "p99": overhead("p99")},
        "cotrain": {"latency_ms": {"p50": median("cotrain", "p50"), "p99": median("cotrain", "p99")}},
        "echo": {"latency_ms": {"p50": median("echo", "p50"), "p99": median("echo", "p99")}},
        "target_p99_ms": TARGET_P99_MS[protocol],
        "runs": runs,
        "definition": "client-side latency (cotrain load, same client, same rate, alternating) of cotrain "
        "serve with the noop model minus that of the bare echo server, median over the repeats",
        "machine": {"cpus": os.cpu_count(), "python": host.python_version(), "processor": host.machine()},
    }
    (out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result

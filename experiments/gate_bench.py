"""Benchmark: the interleaving gate `off` vs `yield`, side by side in one run.

Runs experiments/gate-bench.yaml (inference and training pinned to one shared core; the gate
policy alternates every 10 s) and splits the records into phases at the moments the training
job applied each switch (events.jsonl `knob_applied`). For each policy it prints the median
over its phases of inference p50/p99 latency, SLO attainment and training samples/s. Comparing
phases of one run cancels most of this shared machine's drift between runs.

    .venv/bin/python experiments/gate_bench.py [--duration 60] [--out runs/gate-bench]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cotrain.records import read_csv_rows, read_jsonl

REPO = Path(__file__).resolve().parent.parent
SETTLE_S = 1.0  # skip the first second of each phase: requests queued under the old policy


def phases(out: Path, start_s: float, stop_s: float) -> list[tuple[str, float, float]]:
    switches = [
        (float(e["applied_mono_s"]), str(e["value"][0]))
        for e in read_jsonl(out / "events.jsonl")
        if e.get("event") == "knob_applied" and e.get("knob") == "interleave"
    ]
    bounds = [(start_s, "off"), *switches, (stop_s, "")]
    return [(policy, t0, t1) for (t0, policy), (t1, _) in itertools.pairwise(bounds) if t1 > t0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--out", default=str(REPO / "runs" / "gate-bench"))
    args = parser.parse_args()
    out = Path(args.out)
    cmd = [
        sys.executable,
        "-m",
        "cotrain",
        "run",
        str(REPO / "experiments" / "gate-bench.yaml"),
        "--duration",
        str(args.duration),
        "--out",
        str(out),
        "--quiet",
        "--force",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return 1
    events = list(read_jsonl(out / "events.jsonl"))
    start_s = next(float(e["t_mono_s"]) for e in events if e["event"] == "run_started")
    stop_s = next(float(e["t_mono_s"]) for e in events if e["event"] == "run_stopped")
    slo_ms = json.loads((out / "summary.json").read_text())["inference"]["slo_ms"]
    requests = read_csv_rows(out / "requests.csv")
    steps = read_csv_rows(out / "train-cl.csv")

    per_policy: dict[str, list[dict[str, float]]] = {"off": [], "yield": []}
    for policy, t0, t1 in phases(out, start_s, stop_s):
        lo = t0 + SETTLE_S
        arrived = [r for r in requests if lo <= float(r["arrival_s"]) < t1]
        lat = [float(r["latency_ms"]) for r in arrived if r["outcome"] == "served"]
        samples = sum(int(s["samples"]) for s in steps if lo <= float(s["t_s"]) < t1)
        if not arrived or not lat or t1 - lo <= 0:
            continue
        per_policy[policy].append(
            {
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "slo_attainment": sum(v <= slo_ms for v in lat) / len(arrived),
                "train_samples_per_s": samples / (t1 - lo),
            }
        )

    table = Table(title=f"interleaving gate, one run of {args.duration:g} s, phases of ~10 s ({out})")
    table.add_column("gate policy")
    table.add_column("phases", justify="right")
    for column in ("p50_ms", "p99_ms", "slo_attainment", "train_samples_per_s"):
        table.add_column(f"median {column}", justify="right")
    for policy, rows in per_policy.items():
        if not rows:
            continue
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        table.add_row(
            policy,
            str(len(rows)),
            f"{med['p50_ms']:.1f}",
            f"{med['p99_ms']:.1f}",
            f"{med['slo_attainment']:.3f}",
            f"{med['train_samples_per_s']:.1f}",
        )
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

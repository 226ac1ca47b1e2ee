"""Benchmark: two services under overload, with priorities vs with equal priorities.

Runs experiments/priorities-demo.yaml as written (camera outranks analytics, which has a
throughput floor) and the same scenario with both services at the same priority, in one
invocation, `--repeats` times each, alternating, and prints the median of each figure per
service. The claim it checks: with priorities, the high-priority service keeps its SLO while
the overloaded low-priority one is degraded but meets its floor; with equal priorities, both
suffer.

    .venv/bin/python experiments/priorities_bench.py [--duration 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent


def run(config: dict[str, Any], out: Path, duration: float) -> dict[str, Any]:
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "cotrain", "run", str(path), "--duration", str(duration)]
    result = subprocess.run(
        [*cmd, "--out", str(out), "--quiet", "--force"], capture_output=True, text=True, cwd=REPO
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    services: dict[str, Any] = json.loads((out / "summary.json").read_text())["services"]
    return services


def equal_priorities(config: dict[str, Any]) -> dict[str, Any]:
    fair = copy.deepcopy(config)
    top = max(s.get("priority", 0) for s in fair["workloads"]["services"])
    for service in fair["workloads"]["services"]:
        service["priority"] = top
    return fair


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = yaml.safe_load((REPO / "experiments" / "priorities-demo.yaml").read_text())
    scenarios = {"priorities": base, "equal priorities": equal_priorities(base)}
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in scenarios}
    with tempfile.TemporaryDirectory(prefix="cotrain-priorities-") as tmp:
        for repeat in range(args.repeats):
            for label, config in scenarios.items():
                out = Path(tmp) / f"{label.replace(' ', '-')}-{repeat}"
                results[label].append(run(config, out, args.duration))
                print(f"  run {repeat + 1}/{args.repeats} {label}: done", file=sys.stderr)

    table = Table(
        title=f"priorities-demo, {args.duration:g} s per run, median of {args.repeats} run(s) per row"
    )
    columns = ("scenario", "service", "priority", "SLO ms", "SLO attainment", "p99 ms", "served/s", "floor/s")
    for column in (*columns, "floor met", "shed %"):
        table.add_column(column, justify="right")
    for label, runs in results.items():
        for name in runs[0]:

            def median(get: Any, name: str = name, runs: list[dict[str, Any]] = runs) -> float:
                return statistics.median(get(r[name]) for r in runs)

            first = runs[0][name]
            floor = first["min_throughput_per_s"]
            table.add_row(
                label,
                name,
                str(first["priority"]),
                f"{first['slo_ms']:g}",
                f"{median(lambda s: s['slo_attainment']):.3f}",
                f"{median(lambda s: s['latency_ms']['p99']):.0f}",
                f"{median(lambda s: s['throughput_per_s']):.1f}",
                f"{floor:g}" if floor else "-",
                f"{sum(bool(r[name]['floor_met']) for r in runs)}/{len(runs)}" if floor else "-",
                f"{median(lambda s: 100 * s['requests']['shed'] / max(1, s['requests']['arrived'])):.0f}",
            )
    Console(width=140).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the quickstart, repeated, reported as medians.

This machine is shared and noisy (figures move by tens of percent between runs), so a single
run proves little. Each repeat is a full `cotrain run` of experiments/quickstart.yaml in its own
run directory; the table shows every repeat and the median of each column.

    .venv/bin/python experiments/quickstart_bench.py --repeats 3 --duration 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent


def _fmt(column: str, value: float) -> str:
    if column == "slo_attainment":
        return f"{value:.3f}"
    return f"{value:.0f}" if column == "arrived" else f"{value:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--config", default=str(REPO / "experiments" / "quickstart.yaml"))
    args = parser.parse_args()

    columns = ("wall_s", "p50_ms", "p99_ms", "slo_attainment", "arrived", "train_samples_per_s")
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="cotrain-bench-") as tmp:
        for i in range(args.repeats):
            out = Path(tmp) / f"run{i}"
            start = time.monotonic()
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cotrain",
                    "run",
                    args.config,
                    "--duration",
                    str(args.duration),
                    "--out",
                    str(out),
                    "--quiet",
                    "--force",
                ],
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            wall_s = time.monotonic() - start
            if result.returncode != 0:
                print(result.stderr, file=sys.stderr)
                return 1
            s = json.loads((out / "summary.json").read_text())
            inf = s["inference"]
            train = next(iter(s["training"].values()))
            rows.append(
                {
                    "wall_s": wall_s,
                    "p50_ms": inf["latency_ms"]["p50"],
                    "p99_ms": inf["latency_ms"]["p99"],
                    "slo_attainment": inf["slo_attainment"],
                    "arrived": inf["requests"]["arrived"],
                    "train_samples_per_s": train["samples_per_s"],
                }
            )

    table = Table(title=f"quickstart x{args.repeats}, {args.duration:g} s each ({Path(args.config).name})")
    table.add_column("run")
    for c in columns:
        table.add_column(c, justify="right")
    for i, row in enumerate(rows):
        table.add_row(
            str(i), *(f"{row[c]:.3f}" if c == "slo_attainment" else f"{row[c]:.1f}" for c in columns)
        )
    medians = {c: statistics.median(r[c] for r in rows) for c in columns}
    table.add_row(
        "median",
        *(f"{medians[c]:.3f}" if c == "slo_attainment" else f"{medians[c]:.1f}" for c in columns),
        style="bold",
    )
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

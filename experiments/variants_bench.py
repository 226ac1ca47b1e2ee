"""Benchmark: variant switching vs the heaviest variant alone, through the same rate step.

Runs experiments/variants-demo.yaml twice in one invocation: with its `ladder` controller, and
with the `static` controller (which keeps the first, heaviest variant). Prints SLO attainment,
p99, shed requests, the accuracy-weighted mean over served requests and the variant switches.

    .venv/bin/python experiments/variants_bench.py [--duration 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent


def run(config: dict, out: Path, duration: float) -> dict:
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "cotrain",
        "run",
        str(path),
        "--duration",
        str(duration),
        "--out",
        str(out),
        "--quiet",
        "--force",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    return json.loads((out / "summary.json").read_text())["inference"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args()
    base = yaml.safe_load((REPO / "experiments" / "variants-demo.yaml").read_text())
    fixed = {**base, "controller": {"name": "static", "period_s": 0.5}}
    table = Table(title=f"variants-demo, {args.duration:g} s each: rate 20 -> 150 -> 20 req/s, SLO 150 ms")
    for column in ("controller", "SLO attainment", "p99 ms", "shed", "mean accuracy", "variant switches"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory(prefix="cotrain-variants-") as tmp:
        for label, config in (("ladder (switching)", base), ("static (heaviest only)", fixed)):
            inf = run(config, Path(tmp) / label.split()[0], args.duration)
            accuracy = inf["mean_accuracy"]
            table.add_row(
                label,
                f"{inf['slo_attainment']:.3f}",
                f"{inf['latency_ms']['p99']:.0f}",
                str(inf["requests"]["shed"]),
                "-" if accuracy is None else f"{accuracy:.4f}",
                str(inf["variant_switches"]),
            )
    Console(width=120).print(table)
    print(
        "mean accuracy: ImageNet top-1 of each variant's architecture from torchvision's weights metadata "
        "(the demo serves untrained weights; see variants.json in a run directory)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

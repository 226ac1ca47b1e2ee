"""The power-mode search under power budgets, on the simulated AGX Orin.

For each budget, the bench scenario (experiments/bench-orin-sim.yaml) with that whole-board power
budget: `adaptive` (online, ≤ 10 profiles), the 15-profile gradient-style and random searches,
and the oracle (the simulator's optimum: see cotrain/sim/bench.py). A row counts only if it
meets the SLO and its mean power is within the budget.

    .venv/bin/python experiments/modesearch_sim.py --out runs/modesearch-sim
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cotrain.config import load_config
from cotrain.sim.bench import run_sim_bench

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "experiments" / "bench-orin-sim.yaml"
ROWS = ("adaptive", "gradient-search", "random-search", "oracle")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[40.0, 35.0, 30.0, 25.0], help="W")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "modesearch-sim")
    args = parser.parse_args()
    config = load_config(SCENARIO)
    results: dict[str, Any] = {}
    lines = [
        "| budget | row | training samples/s | vs oracle | profiles | SLO attainment | power (W) "
        "| configuration |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for budget in args.budgets:
        result = run_sim_bench(
            config,
            args.out / f"{budget:g}W",
            str(SCENARIO.name),
            controllers=["adaptive"],
            power_budget_w=budget,
        )
        rows = {r["controller"]: r for r in result["rows"]}
        results[f"{budget:g}"] = result
        best = rows["oracle"]["training_samples_per_s"]
        for name in ROWS:
            r = rows[name]
            ok = r["meets_slo"] and r["power_w"] <= budget
            ratio = r["training_samples_per_s"] / best if best else 0.0
            verdict = "" if ok else " (fails)"
            lines.append(
                f"| {budget:g} W | {name} | {r['training_samples_per_s']:.1f} | {ratio:.3f}{verdict} "
                f"| {r['configs_profiled']} | {r['slo_attainment']:.3f} | {r['power_w']:.1f} "
                f"| {r['detail']} |"
            )
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "modesearch.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (args.out / "modesearch.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

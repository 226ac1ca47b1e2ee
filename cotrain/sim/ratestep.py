"""A step in the arrival rate on the simulated Orin: how fast `adaptive` re-converges, and what the
SLO suffers meanwhile.

The run: the bench scenario (experiments/bench-orin-sim.yaml: ResNet50 inference, SLO 1 s,
MobileNetV3 training, starting in MODE_50W with every reboot-free mode offered), Poisson arrivals
at `rate_before` until `step_at_s`, then at `rate_after`. The controller first converges at the
low rate (its initial search), then has to notice the step and re-plan.

Definitions (all on requests, by arrival time, so shed requests count as misses):
- a *second* is a 1 s bin [step + k, step + k + 1) after the step; it *meets the SLO* when at
  least `target` of the requests arriving in it were served within the SLO;
- the run has *re-converged* k seconds after the step for the smallest k such that every second
  from k to the horizon meets the SLO and no knob changes after step + k. k = 0 means the step
  disturbed nothing. The resolution is 1 s. The horizon is `END_MARGIN_S` before the end of the
  run: requests of the last second are cut short by the stop (training stops, the queue drains);
- the *transient* is [step, step + k); its SLO attainment is served-within-SLO / arrived over it
  (None when k = 0). *After* is [step + k, end).

`python -m cotrain.sim.ratestep` (or experiments/ratestep_sim.py) prints the report.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cotrain.config import load_config
from cotrain.controllers.base import Policy
from cotrain.sim.bench import bench_scenario
from cotrain.sim.calibration import calibrate
from cotrain.sim.engine import ArrivalSpec
from cotrain.sim.model import DeviceModel
from cotrain.sim.modes import mode_space
from cotrain.sim.policies import sim_policy
from cotrain.sim.runner import SimResult, TraceRow, run_policy, sim_power_rules
from cotrain.sim.scenario import SimScenario

BENCH_SCENARIO = Path(__file__).resolve().parents[2] / "experiments" / "bench-orin-sim.yaml"
SLO_TARGET = 0.99
END_MARGIN_S = 2.0


@dataclass(frozen=True)
class RateStepReport:
    policy: str
    rate_before_per_s: float
    rate_after_per_s: float
    step_at_s: float
    duration_s: float
    reconverge_s: float | None  # None: never re-converged before the run ended
    transient_slo_attainment: float | None  # None: no transient (re-converged at once); to the
    # horizon if it never re-converged
    before_slo_attainment: float
    after_slo_attainment: float | None
    training_before_per_s: float  # samples/s over the 20 s before the step
    training_after_per_s: float  # samples/s from re-convergence to the end
    knob_changes_after_step: tuple[tuple[float, str], ...]  # (time, knobs in force after it)
    configs_profiled: int


def _attainment(result: SimResult, start_s: float, end_s: float, slo_ms: float) -> float | None:
    """Served within the SLO / arrived, for requests arriving in [start, end)."""
    mask = (result.arrivals_s >= start_s) & (result.arrivals_s < end_s)
    arrived = int(mask.sum())
    if not arrived:
        return None
    within = np.count_nonzero(result.latencies_ms[mask] <= slo_ms)  # NaN (shed) compares False
    return float(within) / arrived


def _knobs_key(row: TraceRow) -> tuple[object, ...]:
    return (row.max_batch_size, row.max_queue_delay_ms, row.power_mode, row.training)


def _describe(row: TraceRow) -> str:
    gates = ",".join(sorted({gate for *_, gate in row.training}))
    return f"b={row.max_batch_size}, delay {row.max_queue_delay_ms:g} ms, gate {gates}, {row.power_mode}"


def _training_rate(trace: Sequence[TraceRow], start_s: float, end_s: float) -> float:
    rows = [r for r in trace if start_s < r.t_s <= end_s]
    return sum(r.training_samples_per_s for r in rows) / len(rows) if rows else 0.0


def analyse(result: SimResult, step_at_s: float, target: float = SLO_TARGET) -> RateStepReport:
    """Re-convergence time and the attainments around a rate step, as the module defines them."""
    scenario = result.scenario
    slo = scenario.slo_ms
    end = scenario.duration_s
    # a row's knobs were in force during its window; a change between rows happened at the end
    # of the earlier row's window (the controller decided then)
    changes = [
        (prev.t_s, _describe(row))
        for prev, row in zip(result.trace, result.trace[1:], strict=False)
        if _knobs_key(prev) != _knobs_key(row) and prev.t_s > step_at_s - 1e-9
    ]
    last_change = max((t for t, _ in changes), default=step_at_s)
    seconds = math.floor(end - END_MARGIN_S - step_at_s)
    bins = [_attainment(result, step_at_s + k, step_at_s + k + 1, slo) for k in range(seconds)]
    meets = [a is None or a >= target for a in bins]  # a second without arrivals missed nothing
    reconverge: float | None = None
    for k in range(seconds):
        if step_at_s + k + 1e-9 >= last_change and all(meets[k:]):
            reconverge = float(k)
            break
    horizon = step_at_s + seconds
    settled = step_at_s + reconverge if reconverge is not None else horizon
    transient = None if reconverge == 0 else _attainment(result, step_at_s, settled, slo)
    before = _attainment(result, 0.0, step_at_s, slo)
    return RateStepReport(
        policy=result.policy,
        rate_before_per_s=scenario.arrivals.rate_at(step_at_s - 1e-9),
        rate_after_per_s=scenario.arrivals.rate_at(step_at_s),
        step_at_s=step_at_s,
        duration_s=end,
        reconverge_s=reconverge,
        transient_slo_attainment=transient,
        before_slo_attainment=1.0 if before is None else before,
        after_slo_attainment=_attainment(result, settled, horizon, slo) if reconverge is not None else None,
        training_before_per_s=_training_rate(result.trace, step_at_s - 20.0, step_at_s),
        training_after_per_s=_training_rate(result.trace, settled, horizon),
        knob_changes_after_step=tuple(changes),
        configs_profiled=result.configs_profiled,
    )


def rate_step_scenario(
    rate_before_per_s: float = 50.0,
    rate_after_per_s: float = 100.0,
    step_at_s: float = 60.0,
    duration_s: float = 120.0,
    base: SimScenario | None = None,
) -> SimScenario:
    """The bench scenario with Poisson arrivals stepping from one rate to the other."""
    scenario = base or bench_scenario(load_config(BENCH_SCENARIO))
    arrivals = ArrivalSpec("poisson", ((0.0, rate_before_per_s), (step_at_s, rate_after_per_s)))
    return replace(scenario, arrivals=arrivals, duration_s=duration_s)


def run_rate_step(
    scenario: SimScenario,
    step_at_s: float,
    *,
    policy: Policy | None = None,
    device: DeviceModel | None = None,
) -> tuple[RateStepReport, SimResult]:
    """Run `policy` (default: `adaptive` with the board's mode table) through `scenario`."""
    device = device or calibrate().device
    rules = sim_power_rules(scenario, device)
    policy = policy or sim_policy("adaptive", scenario, mode_space(scenario.board), rules)
    result = run_policy(scenario, policy, device=device, power_rules=rules)
    return analyse(result, step_at_s), result


def report_table(reports: Sequence[RateStepReport]) -> str:
    """The report as a Markdown table, as docs/benchmarks.md quotes it."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = [
        "| step | re-converged after | transient SLO attainment | before | after "
        "| training before → after (samples/s) | knob changes after the step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        conv = "never" if r.reconverge_s is None else f"{r.reconverge_s:.0f} s"
        changes = "; ".join(f"{t - r.step_at_s:+.1f} s: {d}" for t, d in r.knob_changes_after_step) or "none"
        lines.append(
            f"| {r.rate_before_per_s:g} → {r.rate_after_per_s:g} req/s at {r.step_at_s:g} s | {conv} "
            f"| {pct(r.transient_slo_attainment)} | {pct(r.before_slo_attainment)} "
            f"| {pct(r.after_slo_attainment)} | {r.training_before_per_s:.1f} → {r.training_after_per_s:.1f} "
            f"| {changes} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cotrain.sim.ratestep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--before", type=float, default=50.0, help="req/s before the step")
    parser.add_argument("--after", type=float, nargs="+", default=[100.0], help="req/s after (one run each)")
    parser.add_argument("--at", type=float, default=60.0, help="simulated seconds of the step")
    parser.add_argument("--duration", type=float, default=120.0, help="simulated seconds of the run")
    args = parser.parse_args(argv)
    print_rate_steps([(args.before, after) for after in args.after], args.at, args.duration)
    return 0


def print_rate_steps(steps: Sequence[tuple[float, float]], step_at_s: float, duration_s: float) -> None:
    """Run `adaptive` through each (before, after) rate step and print the table with its
    definitions: the one report both `python -m cotrain.sim.ratestep` and the experiment print."""
    device = calibrate().device
    reports = []
    for before, after in steps:
        scenario = rate_step_scenario(before, after, step_at_s, duration_s)
        report, _ = run_rate_step(scenario, step_at_s, device=device)
        reports.append(report)
    print(report_table(reports))
    print(
        f"\nRe-converged: the first whole second after the step from which every 1 s bin has SLO "
        f"attainment >= {SLO_TARGET:g} and no knob changes any more. Transient: from the step to then."
    )


if __name__ == "__main__":
    raise SystemExit(main())

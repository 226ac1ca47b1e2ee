"""A ×2 rate step on the simulated AGX Orin: how fast `adaptive` re-converges, and the SLO
attainment of the transient (definitions in cotrain/sim/ratestep.py).

    .venv/bin/python experiments/ratestep_sim.py

Runs the bench scenario (experiments/bench-orin-sim.yaml) with Poisson arrivals stepping at 60 s
from 50 to 100 req/s (×2, the main case), from 100 to 200 req/s (×2 past what inference and
training can share: only yielding the GPU to inference holds the SLO, which leaves training
almost nothing) and back down from 100 to 50 req/s, 120 simulated seconds each.
"""

from __future__ import annotations

from cotrain.sim.calibration import calibrate
from cotrain.sim.ratestep import SLO_TARGET, rate_step_scenario, report_table, run_rate_step

STEPS = ((50.0, 100.0), (100.0, 200.0), (100.0, 50.0))
STEP_AT_S = 60.0
DURATION_S = 120.0


def main() -> int:
    device = calibrate().device
    reports = []
    for before, after in STEPS:
        scenario = rate_step_scenario(before, after, STEP_AT_S, DURATION_S)
        report, _ = run_rate_step(scenario, STEP_AT_S, device=device)
        reports.append(report)
    print(report_table(reports))
    print(
        f"\nRe-converged: the first whole second after the step from which every 1 s bin has SLO "
        f"attainment >= {SLO_TARGET:g} and no knob changes any more. Transient: from the step to then."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

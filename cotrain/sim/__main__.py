"""`python -m cotrain.sim`: print the calibration report and the CCGrid'23 reproduction
(`--rate-step`: also the rate-step re-convergence report of cotrain/sim/ratestep.py)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from cotrain.sim.calibration import calibrate, calibration_table
from cotrain.sim.ccgrid23 import ccgrid23_table, reproduce_ccgrid23


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cotrain.sim", description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds per batch size")
    parser.add_argument(
        "--rate-step", action="store_true", help="also run adaptive through a x2 rate step (50 -> 100 req/s)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cal = calibrate()
    print(calibration_table(cal))
    print(f"\n(calibration took {time.perf_counter() - started:.2f} s)\n")
    print(ccgrid23_table(reproduce_ccgrid23(cal.device, duration_s=args.duration)))
    if args.rate_step:
        from cotrain.sim.ratestep import rate_step_scenario, report_table, run_rate_step

        report, _ = run_rate_step(rate_step_scenario(50.0, 100.0, 60.0, 120.0), 60.0, device=cal.device)
        print("\nRate step (adaptive, cotrain/sim/ratestep.py):\n")
        print(report_table([report]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

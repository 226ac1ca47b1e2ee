"""`python -m cotrain.sim`: print the calibration report and the CCGrid'23 reproduction."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from cotrain.sim.calibration import calibrate, calibration_table
from cotrain.sim.ccgrid23 import ccgrid23_table, reproduce_ccgrid23


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cotrain.sim", description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds per batch size")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cal = calibrate()
    print(calibration_table(cal))
    print(f"\n(calibration took {time.perf_counter() - started:.2f} s)\n")
    print(ccgrid23_table(reproduce_ccgrid23(cal.device, duration_s=args.duration)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

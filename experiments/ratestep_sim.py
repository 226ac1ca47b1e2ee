"""A ×2 rate step on the simulated AGX Orin: how fast `adaptive` re-converges, and the SLO
attainment of the transient (definitions in cotrain/sim/ratestep.py).

    .venv/bin/python experiments/ratestep_sim.py

Runs the bench scenario (experiments/bench-orin-sim.yaml) with Poisson arrivals stepping at 60 s
from 50 to 100 req/s (×2, the main case), from 100 to 200 req/s (×2 past what inference and
training can share: only yielding the GPU to inference holds the SLO, which leaves training
almost nothing) and back down from 100 to 50 req/s, 120 simulated seconds each.
"""

from __future__ import annotations

from cotrain.sim.ratestep import print_rate_steps

STEPS = ((50.0, 100.0), (100.0, 200.0), (100.0, 50.0))
STEP_AT_S = 60.0
DURATION_S = 120.0


def main() -> int:
    print_rate_steps(STEPS, STEP_AT_S, DURATION_S)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

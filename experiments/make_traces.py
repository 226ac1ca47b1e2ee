"""Writes the arrival traces of experiments/traces/ that drawn bench scenarios may replay.

    .venv/bin/python experiments/make_traces.py

Synthetic, seeded, and labelled so in their file names; each file has an `arrival_s` column, the
format `process: trace` reads (as it reads a run's requests.csv). The bench rescales a trace to
the rate it draws (`time_scale`), so only a trace's shape matters, not its mean rate (10/s here):
- mmpp-bursty.csv: a three-state Markov-modulated Poisson process (quiet, normal and burst at
  0.2x, 1x and 4x, mean sojourn 20 s, 10 s and 4 s): the bursty load a camera fleet or an event
  stream produces;
- diurnal-sine.csv: a Poisson process whose rate follows a sine between 0.2x and 1.8x over a
  300-s period (a compressed day), drawn by thinning;
- recorded-quickstart.csv: the arrivals of a real `cotrain run` of experiments/quickstart.yaml
  (tests/data/recorded-run/requests.csv, shifted to start at 0).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "traces"
DURATION_S = 600.0
MEAN_PER_S = 10.0


def mmpp(rng: np.random.Generator) -> list[float]:
    factors = np.array([0.2, 1.0, 4.0])
    sojourn_s = np.array([20.0, 10.0, 4.0])
    # stationary shares ~ sojourn; normalise the rates so the mean is MEAN_PER_S
    share = sojourn_s / sojourn_s.sum()
    rates = factors * MEAN_PER_S / float((factors * share).sum())
    t, state, times = 0.0, 1, []
    while t < DURATION_S:
        stay = float(rng.exponential(sojourn_s[state]))
        end = min(DURATION_S, t + stay)
        n = int(rng.poisson(rates[state] * (end - t)))
        times += sorted(float(x) for x in rng.uniform(t, end, n))
        t = end
        state = int(rng.choice([s for s in range(3) if s != state]))
    return times


def diurnal(rng: np.random.Generator) -> list[float]:
    peak = 1.8 * MEAN_PER_S
    n = int(rng.poisson(peak * DURATION_S))
    candidates = np.sort(rng.uniform(0.0, DURATION_S, n))
    rate = MEAN_PER_S * (1.0 + 0.8 * np.sin(2 * np.pi * candidates / 300.0))
    keep = rng.uniform(0.0, peak, n) < rate
    return [float(x) for x in candidates[keep]]


def recorded() -> list[float]:
    path = HERE.parent / "tests" / "data" / "recorded-run" / "requests.csv"
    with path.open(encoding="utf-8") as f:
        times = sorted(float(r["arrival_s"]) for r in csv.DictReader(f))
    return [t - times[0] for t in times]


def write(name: str, times: list[float]) -> None:
    OUT.mkdir(exist_ok=True)
    with (OUT / name).open("w", encoding="utf-8") as f:
        f.write("arrival_s\n")
        f.writelines(f"{t:.6f}\n" for t in times)
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    print(f"{name}: {len(times)} arrivals over {times[-1]:.1f} s, mean {rate:.2f}/s")


def main() -> None:
    write("mmpp-bursty.csv", mmpp(np.random.default_rng(1)))
    write("diurnal-sine.csv", diurnal(np.random.default_rng(2)))
    write("recorded-quickstart.csv", recorded())


if __name__ == "__main__":
    main()

"""Seeded arrival processes, as offsets in seconds from the start of the run.

They are pure iterators (no clock, no sleeping), so a test can check the schedule exactly; the
inference process turns offsets into absolute times and waits for them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cotrain.config import ArrivalsConfig, ConstantArrivalsConfig, PoissonArrivalsConfig


def constant_offsets_s(rate_per_s: float) -> Iterator[float]:
    """Evenly spaced arrivals: the i-th at i / rate."""
    i = 0
    while True:
        yield i / rate_per_s
        i += 1


def poisson_offsets_s(rate_per_s: float, seed: int) -> Iterator[float]:
    """A Poisson process: exponential gaps with mean 1/rate, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    t = 0.0
    while True:
        for gap in rng.exponential(1.0 / rate_per_s, size=256):
            t += float(gap)
            yield t


def arrival_offsets_s(config: ArrivalsConfig) -> Iterator[float]:
    if isinstance(config, ConstantArrivalsConfig):
        return constant_offsets_s(config.rate_per_s)
    if isinstance(config, PoissonArrivalsConfig):
        return poisson_offsets_s(config.rate_per_s, config.seed)
    raise TypeError(f"unknown arrival process {config!r}")

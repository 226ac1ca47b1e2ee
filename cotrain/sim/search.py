"""Model-free searches over static configurations: the baselines `adaptive`'s mode search is shown
beside, and the oracle's refinement over the full mode space.

The space is the oracle's, over the *full* mode space: an inference batch size (the bench's
oracle grid), a gate policy, and a power mode given by its four coordinates (online cores, CPU,
GPU and EMC frequency step) among the modes the board can switch to live (`mode_table`: the
15,312 DVFS modes of the AGX Orin from MODE_50W or MAXN). A *profile* evaluates one
configuration statically (`sim_static`) for `profile_s` simulated seconds. Every search scores
with `merit`, the bench's objective: meet the SLO (attainment >= target) and the power budget
first, then the most training; short of that, the higher attainment (then the lower power).

- `gradient_search`: a coordinate hill-climb (compass search), the gradient-style baseline.
  From the scenario's configuration it steps one coordinate at a time, up or down by its step
  (batch 1 grid step, gate flip, cores 4, CPU 8, GPU 4, EMC 1 steps); an improvement is taken
  and its step doubled (keep going downhill while it works), a full round without one halves the
  steps. Coordinates are visited in an order drawn from `seed`. Stops at `budget` profiles.
- `random_search`: `budget` configurations drawn uniformly (seeded).
- `refine`: the same compass moves at unit steps from a start until no neighbour improves
  (the oracle's last stage: exhaustive on a coarse grid, then a local search on the full grid).

These searches are offline: their profiles cost the bench row nothing (the row is their best
configuration run statically for the whole scenario), whereas `adaptive` pays for every profile
inside its own run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from cotrain.control import Knobs
from cotrain.controllers.modesearch import ModeInfo
from cotrain.sim.model import DeviceModel
from cotrain.sim.modes import ModeSpace, SimMode
from cotrain.sim.runner import SimResult, sim_static
from cotrain.sim.scenario import SimScenario

GATES = ("off", "yield")


@dataclass(frozen=True, order=True)
class StaticConfig:
    """One point of the search space."""

    max_batch_size: int
    gate_policy: str
    mode: str  # the mode's label (nvpmodel name or `c…-cpu…-gpu…-emc…`)
    # a joint oracle grid's further knobs; None: the scenario's own setting
    num_workers: int | None = None
    max_queue_delay_ms: float | None = None

    def describe(self) -> str:
        text = f"b={self.max_batch_size}, gate {self.gate_policy}, {self.mode}"
        if self.max_queue_delay_ms is not None:
            text += f", delay {self.max_queue_delay_ms:g} ms"
        if self.num_workers is not None:
            text += f", workers {self.num_workers}"
        return text


Merit = tuple[float, float, float]


def merit(result: SimResult, target: float, budget_w: float | None) -> Merit:
    """Meeting the SLO and the budget first, then training throughput; short of that, attainment."""
    within_budget = budget_w is None or result.power_w <= budget_w
    if result.slo_attainment >= target and within_budget:
        return (1.0, result.training_samples_per_s, -result.power_w)
    return (0.0, result.slo_attainment if within_budget else 0.0, -result.power_w)


def static_knobs(scenario: SimScenario, config: StaticConfig) -> Knobs:
    """The scenario's knobs with this configuration's batch size, gate and power mode."""
    base = scenario.initial_knobs()
    assert base.inference is not None
    training = {
        job: replace(
            t,
            gate_policy=config.gate_policy,
            gate_max_wait_ms=None,
            num_workers=t.num_workers if config.num_workers is None else config.num_workers,
        )
        for job, t in base.training.items()
    }
    delay_ms = base.inference.max_queue_delay_ms
    if config.max_queue_delay_ms is not None:
        delay_ms = config.max_queue_delay_ms
    return replace(
        base,
        inference=replace(base.inference, max_batch_size=config.max_batch_size, max_queue_delay_ms=delay_ms),
        training=training,
        power_mode=config.mode,
    )


def evaluate(
    scenario: SimScenario, config: StaticConfig, duration_s: float, device: DeviceModel | None = None
) -> SimResult:
    """One profile: the configuration run statically for `duration_s` simulated seconds."""
    short = replace(
        scenario,
        duration_s=min(scenario.duration_s, duration_s),
        max_batch_size=config.max_batch_size,
        queue_capacity=max(scenario.queue_capacity, config.max_batch_size),
    )
    return sim_static(short, static_knobs(short, config), device=device)


@dataclass(frozen=True)
class SearchResult:
    best: StaticConfig | None  # the best configuration profiled (by merit)
    best_merit: Merit | None
    profiled: tuple[tuple[StaticConfig, Merit], ...]  # in the order profiled

    @property
    def profiles(self) -> int:
        return len(self.profiled)


class Space:
    """Coordinates over the search space: (batch index, gate index, cores, CPU, GPU, EMC index)."""

    def __init__(self, batches: Sequence[int], gates: Sequence[str], modes: Sequence[ModeInfo]) -> None:
        self.batches = tuple(sorted(set(batches)))
        self.gates = tuple(gates)
        self.modes = {(m.cores, m.cpu_mhz, m.gpu_mhz, m.emc_mhz): m.name for m in modes}
        self.names = {name: key for key, name in self.modes.items()}
        self.axes: tuple[tuple[float, ...], ...] = (
            tuple(sorted({float(k[0]) for k in self.modes})),
            tuple(sorted({k[1] for k in self.modes})),
            tuple(sorted({k[2] for k in self.modes})),
            tuple(sorted({k[3] for k in self.modes})),
        )

    def sizes(self) -> tuple[int, ...]:
        return (len(self.batches), len(self.gates), *(len(a) for a in self.axes))

    def coords(self, config: StaticConfig) -> tuple[int, ...] | None:
        key = self.names.get(config.mode)
        if key is None or config.max_batch_size not in self.batches or config.gate_policy not in self.gates:
            return None
        return (
            self.batches.index(config.max_batch_size),
            self.gates.index(config.gate_policy),
            *(axis.index(v) for axis, v in zip(self.axes, key, strict=True)),
        )

    def config(self, coords: Sequence[int]) -> StaticConfig | None:
        """The configuration at these coordinates, or None off the grid or where no mode is."""
        if any(not 0 <= c < n for c, n in zip(coords, self.sizes(), strict=True)):
            return None
        cores, cpu, gpu, emc = (axis[c] for axis, c in zip(self.axes, coords[2:], strict=True))
        name = self.modes.get((int(cores), cpu, gpu, emc))
        if name is None:
            return None
        return StaticConfig(self.batches[coords[0]], self.gates[coords[1]], name)


INITIAL_STEPS = (1, 1, 4, 8, 4, 1)  # batch, gate, cores, CPU, GPU, EMC (grid steps)


def _compass(
    space: Space,
    start: StaticConfig,
    score: Callable[[StaticConfig], Merit],
    budget: int | None,
    steps: Sequence[int],
    order: Sequence[int],
) -> SearchResult:
    """Compass search: try ± each coordinate's step in `order`; take an improvement and double
    that step; after a full round without one halve every step; stop at `budget` profiles, or
    when a round at unit steps finds nothing better."""
    seen: dict[StaticConfig, Merit] = {}
    profiled: list[tuple[StaticConfig, Merit]] = []

    def profile(c: StaticConfig) -> Merit:
        if c not in seen:
            seen[c] = score(c)
            profiled.append((c, seen[c]))
        return seen[c]

    x = start
    fx = profile(x)
    step = list(steps)
    while budget is None or len(profiled) < budget:
        xc = space.coords(x)
        assert xc is not None
        improved = False
        for axis in order:
            for sign in (1, -1):
                if budget is not None and len(profiled) >= budget:
                    break
                yc = list(xc)
                yc[axis] = xc[axis] + sign * step[axis]
                y = space.config(yc)
                if y is None or y in seen:
                    continue
                fy = profile(y)
                if fy > fx:
                    x, fx, improved = y, fy, True
                    step[axis] *= 2
                    break
            if improved:
                break
        if not improved:
            if all(s == 1 for s in step):
                break
            step = [max(1, s // 2) for s in step]
    best = max(profiled, key=lambda p: p[1])
    return SearchResult(best[0], best[1], tuple(profiled))


def gradient_search(
    space: Space, start: StaticConfig, score: Callable[[StaticConfig], Merit], budget: int, seed: int = 0
) -> SearchResult:
    """The gradient-style baseline: compass search from `start` with `budget` profiles."""
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(INITIAL_STEPS))]
    return _compass(space, start, score, budget, INITIAL_STEPS, order)


def random_search(
    space: Space, score: Callable[[StaticConfig], Merit], budget: int, seed: int = 0
) -> SearchResult:
    """`budget` distinct configurations drawn uniformly from the space (seeded)."""
    rng = np.random.default_rng(seed)
    modes = sorted(space.names)
    profiled: list[tuple[StaticConfig, Merit]] = []
    seen: set[StaticConfig] = set()
    while len(profiled) < budget and len(seen) < len(modes) * len(space.batches) * len(space.gates):
        c = StaticConfig(
            space.batches[int(rng.integers(len(space.batches)))],
            space.gates[int(rng.integers(len(space.gates)))],
            modes[int(rng.integers(len(modes)))],
        )
        if c in seen:
            continue
        seen.add(c)
        profiled.append((c, score(c)))
    best = max(profiled, key=lambda p: p[1]) if profiled else None
    return SearchResult(best[0] if best else None, best[1] if best else None, tuple(profiled))


def refine(space: Space, start: StaticConfig, score: Callable[[StaticConfig], Merit]) -> SearchResult:
    """Local search at unit steps from `start` until no neighbour improves (no budget)."""
    return _compass(space, start, score, None, (1,) * len(INITIAL_STEPS), range(len(INITIAL_STEPS)))


def start_config(scenario: SimScenario, space: ModeSpace) -> StaticConfig:
    """The scenario's own configuration, as a point of the space."""
    knobs = scenario.initial_knobs()
    assert knobs.inference is not None
    gates = {t.gate_policy for t in knobs.training.values()}
    mode: SimMode = space.resolve(scenario.mode)
    return StaticConfig(
        knobs.inference.max_batch_size, gates.pop() if len(gates) == 1 else "off", space.label(mode)
    )

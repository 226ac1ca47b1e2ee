"""`cotrain bench SCENARIO.yaml --platform sim`: the same side-by-side bench, on the simulated Orin.

Every controller drives the scenario through the simulator in simulated time (`run_policy`),
wrapped like the runtime wraps it (knob bounds and the power-mode guard); `adaptive` is given the
board's mode table (every mode it can switch to live, with its clocks), as a Jetson would give it.

Beside them, two model-free searches over the full mode space with `SEARCH_BUDGET` profiles each
(cotrain/sim/search.py): `gradient-search` (a coordinate hill-climb from the scenario's
configuration) and `random-search`. Their rows run the best configuration they found statically
for the whole scenario; their profiles (`SEARCH_PROFILE_S` simulated seconds each) are offline.

The oracle, the *simulator's optimum*, is the best static configuration meeting the SLO (and the
power budget, if the scenario sets one), found in three stages:
1. screen every batch size and gate policy of the `bench.oracle` grid in every mode of a coarse
   mode set (the named nvpmodel modes, plus every GPU step x every EMC step x every fourth CPU
   step at the full core count: 355 modes) on `ORACLE_SEARCH_S` simulated seconds;
2. refine the `ORACLE_REFINE` best by a local search over the full mode space (every
   neighbouring core count, CPU, GPU and EMC step, batch size and gate) until no neighbour is
   better;
3. run the five best of all those for the whole scenario; the best of them is the oracle row.
Its `configs_profiled` counts the configurations of stages 1 and 2.

Without a configured power mode the board starts in BENCH_START_MODE (MODE_50W), not the board's
default MODE_30W, from which every other mode needs a reboot.

The calibration and its error on held-out points are written next to the results
(`D/calibration.txt`), as the simulator is only as good as its fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

from cotrain.bench import (
    INFERENCE_ALONE,
    TRAINING_ALONE,
    BenchRow,
    bench_markdown,
    plot_bench,
    row_json,
    with_ratios,
)
from cotrain.config import BenchConfig, ExperimentConfig
from cotrain.records import write_json_atomic
from cotrain.sim.calibration import Calibration, calibrate, calibration_table
from cotrain.sim.model import DeviceModel
from cotrain.sim.modes import ModeSpace, SimMode, mode_space
from cotrain.sim.policies import mode_table, sim_policy
from cotrain.sim.runner import SimResult, run_policy, sim_power_rules, sim_static
from cotrain.sim.scenario import SimScenario, scenario_from_config
from cotrain.sim.search import (
    Merit,
    SearchResult,
    Space,
    StaticConfig,
    evaluate,
    gradient_search,
    merit,
    random_search,
    refine,
    start_config,
)

ORACLE_SEARCH_S = 30.0  # each grid point is screened on this much simulated time
ORACLE_REFINE = 3  # the best screened points the oracle refines over the full mode space
ORACLE_FINALISTS = 5  # run for the whole scenario
SEARCH_BUDGET = 15  # profiles of each model-free search (Fulcrum's GMD profiles 15 modes)
SEARCH_PROFILE_S = ORACLE_SEARCH_S  # simulated seconds per search profile (as the oracle screens)
SEARCH_SEED = 0
# Where the simulated board starts when the scenario sets no power mode. A live mode switch needs
# the same GPU power-gating on both sides (power_modes/policy.py: the board must be put in MAXN
# or MODE_50W first); the board's default MODE_30W gates half the TPCs, so from it no controller
# could leave. The lower of the two ungated named modes leaves the search something to find.
BENCH_START_MODE = "MODE_50W"


def bench_scenario(config: ExperimentConfig) -> SimScenario:
    """The simulated scenario of a bench config: its run duration, and BENCH_START_MODE unless
    the config sets a power mode."""
    bench = config.bench or BenchConfig()
    scenario = scenario_from_config(config)
    if config.platform.power_mode is None:
        scenario = replace(scenario, mode=BENCH_START_MODE)
    if bench.run_duration_s:
        scenario = replace(scenario, duration_s=bench.run_duration_s)
    return scenario


def oracle_modes(space: ModeSpace) -> list[str]:
    """The named modes and a coarse grid of the DVFS space: a few hundred, not fifteen thousand.

    Every GPU step (the clock that sets the speed, and under a power budget the step that fits
    decides the optimum), every EMC step, every fourth CPU step, all cores online."""
    modes: list[SimMode] = list(space.modes)
    cores = max(m.cores for m in modes)
    cpus = sorted({m.cpu_mhz for m in modes})[::-4]
    gpus = sorted({m.gpu_mhz for m in modes})
    emcs = sorted({m.emc_mhz for m in modes})
    wanted = {(cores, c, g, e) for c, g, e in product(cpus, gpus, emcs)}
    grid = [space.label(m) for m in modes if (m.cores, m.cpu_mhz, m.gpu_mhz, m.emc_mhz) in wanted]
    return sorted(set(space.named) | set(grid))


def _row(controller: str, result: SimResult, target: float, detail: str = "") -> BenchRow:
    return BenchRow(
        controller=controller,
        slo_attainment=round(result.slo_attainment, 6),
        latency_ms_p99=None if result.latency_ms_p99 is None else round(result.latency_ms_p99, 3),
        training_samples_per_s=round(result.training_samples_per_s, 3),
        configs_profiled=result.configs_profiled,
        meets_slo=result.slo_attainment >= target,
        power_w=round(result.power_w, 3),
        run_dir="",
        detail=detail,
        inference_busy=None if result.inference_busy is None else round(result.inference_busy, 6),
    )


def _knobs_at_end(run: SimResult) -> str:
    last = run.trace[-1]
    gates = ",".join(sorted({gate for *_, gate in last.training}))
    return f"b={last.max_batch_size}, gate {gates}, {last.power_mode}"


def _scorer(
    scenario: SimScenario, bench: BenchConfig, device: DeviceModel, duration_s: float
) -> Callable[[StaticConfig], Merit]:
    def score(config: StaticConfig) -> Merit:
        result = evaluate(scenario, config, duration_s, device)
        return merit(result, bench.slo_attainment_target, scenario.power_budget_w)

    return score


def _full_row(
    name: str,
    scenario: SimScenario,
    bench: BenchConfig,
    device: DeviceModel,
    config: StaticConfig,
    detail: str,
) -> tuple[Merit, BenchRow]:
    """A configuration run statically for the whole scenario, as a bench row."""
    result = evaluate(scenario, config, scenario.duration_s, device)
    return merit(result, bench.slo_attainment_target, scenario.power_budget_w), _row(
        name, result, bench.slo_attainment_target, detail
    )


def oracle_search(
    scenario: SimScenario,
    bench: BenchConfig,
    modes: list[str],
    *,
    device: DeviceModel | None = None,
    space: Space | None = None,
) -> tuple[BenchRow, int]:
    """The best static configuration meeting the SLO (and budget), and how many it tried.

    Screens the grid in `modes` on ORACLE_SEARCH_S simulated seconds, refines the ORACLE_REFINE
    best over the full mode space of `space` (when given), then runs the ORACLE_FINALISTS best
    for the whole scenario and keeps the best of those."""
    device = device or calibrate().device
    score = _scorer(scenario, bench, device, ORACLE_SEARCH_S)
    screened: dict[StaticConfig, Merit] = {}
    grid = bench.oracle
    delays: list[float | None] = [*grid.max_queue_delay_ms] if grid.max_queue_delay_ms else [None]
    workers: list[int | None] = [*grid.num_workers] if grid.num_workers else [None]
    for b, gate, delay, n, mode in product(grid.max_batch_size, grid.gate_policy, delays, workers, modes):
        config = StaticConfig(b, gate, mode, num_workers=n, max_queue_delay_ms=delay)
        screened[config] = score(config)
    if space is not None:
        ranked = sorted(screened, key=lambda c: screened[c], reverse=True)
        starts = [c for c in ranked if space.coords(c) is not None][:ORACLE_REFINE]
        for start in starts:
            # the local search moves batch, gate and mode; the start's other knobs stay
            def keep(c: StaticConfig, start: StaticConfig = start) -> StaticConfig:
                return replace(c, num_workers=start.num_workers, max_queue_delay_ms=start.max_queue_delay_ms)

            local = refine(
                space, start, lambda c: screened[keep(c)] if keep(c) in screened else score(keep(c))
            )
            screened.update({keep(c): m for c, m in local.profiled})
    finalists = sorted(screened, key=lambda c: screened[c], reverse=True)[:ORACLE_FINALISTS]
    best: tuple[Merit, BenchRow] | None = None
    for config in finalists:
        candidate = _full_row("oracle", scenario, bench, device, config, config.describe())
        if best is None or candidate[0] > best[0]:
            best = candidate
    assert best is not None
    return best[1], len(screened)


def search_rows(
    scenario: SimScenario, bench: BenchConfig, device: DeviceModel, space: Space, start: StaticConfig
) -> list[BenchRow]:
    """The gradient-style and random searches, SEARCH_BUDGET profiles each, as bench rows."""
    score = _scorer(scenario, bench, device, SEARCH_PROFILE_S)
    rows = []
    searches: list[tuple[str, SearchResult]] = [
        ("gradient-search", gradient_search(space, start, score, SEARCH_BUDGET, SEARCH_SEED)),
        ("random-search", random_search(space, score, SEARCH_BUDGET, SEARCH_SEED)),
    ]
    for name, found in searches:
        assert found.best is not None
        _, row = _full_row(
            name, scenario, bench, device, found.best, f"best of {found.profiles}: {found.best.describe()}"
        )
        rows.append(replace(row, configs_profiled=found.profiles))
    return rows


def scenario_rows(
    scenario: SimScenario, bench: BenchConfig, controllers: Sequence[str], cal: Calibration
) -> list[BenchRow]:
    """Every row of one simulated scenario: the controllers, the reference rows, the two searches
    and the oracle, each with its limit ratio and oracle ratio."""
    board = mode_space(scenario.board)
    rules = sim_power_rules(scenario, cal.device)
    target = bench.slo_attainment_target
    rows: list[BenchRow] = []
    for name in controllers:
        policy = sim_policy(name, scenario, board, rules)
        run = run_policy(scenario, policy, device=cal.device, power_rules=rules)
        rows.append(_row(name, run, target, f"at the end: {_knobs_at_end(run)}"))
    alone: BenchRow | None = None
    if scenario.training:
        # alone in the most capable mode the run may switch to, so no row's mode can beat it
        fastest = next(m for m in rules.order if m not in rules.needs_reboot)
        only = replace(scenario, inference_model=None)
        knobs = replace(only.initial_knobs(), power_mode=fastest)
        alone = _row(TRAINING_ALONE, sim_static(only, knobs, device=cal.device), target)
        rows.append(alone)
    if scenario.inference_model is not None:
        rows.append(
            _row(INFERENCE_ALONE, sim_static(replace(scenario, training=()), device=cal.device), target)
        )
    start = start_config(scenario, board)
    batches = sorted({*bench.oracle.max_batch_size, start.max_batch_size})
    gates = sorted({*bench.oracle.gate_policy, start.gate_policy}, key=("off", "yield").index)
    space = Space(batches, gates, mode_table(board, rules))
    rows += search_rows(scenario, bench, cal.device, space, start)
    oracle, tried = oracle_search(scenario, bench, oracle_modes(board), device=cal.device, space=space)
    oracle = replace(oracle, configs_profiled=tried, detail=f"best static: {oracle.detail}")
    rows.append(oracle)
    return with_ratios(rows, alone, oracle)


def run_sim_bench(
    config: ExperimentConfig,
    out: Path,
    scenario_name: str,
    *,
    controllers: list[str] | None = None,
    power_budget_w: float | None = None,
) -> dict[str, Any]:
    """Every controller, the two searches and the oracle on the simulated board; writes
    D/bench.json, bench.md, calibration.txt and the plots. `power_budget_w` sets a whole-board
    budget that every row must keep (the controllers see it in their Observations)."""
    bench = config.bench or BenchConfig()
    scenario = bench_scenario(config)
    if power_budget_w is not None:
        scenario = replace(scenario, power_budget_w=power_budget_w)
    cal = calibrate()
    rows = scenario_rows(scenario, bench, controllers or bench.controllers, cal)
    result: dict[str, Any] = {
        "scenario": scenario_name,
        "platform": "sim",
        "slo_attainment_target": bench.slo_attainment_target,
        "run_duration_s": scenario.duration_s,
        "slo_ms": scenario.slo_ms,
        "power_budget_w": scenario.power_budget_w,
        "oracle_grid_size": bench.oracle.size(),
        "rows": [row_json(r) for r in rows],
        "oracle_grid": [],
        "notes": NOTES,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench.json", result)
    table = calibration_table(cal)
    (out / "calibration.txt").write_text(table + "\n", encoding="utf-8")
    (out / "bench.md").write_text(
        bench_markdown(result) + "\n" + NOTES + "\n\n## Simulator calibration\n\n```\n" + table + "\n```\n",
        encoding="utf-8",
    )
    plot_bench(result, out)
    return result


NOTES = (
    f"The oracle (the simulator's optimum) screens every batch size and gate of the bench grid in 355 "
    f"modes (the named ones and a coarse DVFS grid) on {ORACLE_SEARCH_S:g} simulated s, refines the "
    f"{ORACLE_REFINE} best by a local search over the full mode space, and runs the "
    f"{ORACLE_FINALISTS} best for the whole scenario. gradient-search (a coordinate hill-climb from "
    f"the scenario's configuration) and random-search profile {SEARCH_BUDGET} configurations each "
    f"({SEARCH_PROFILE_S:g} simulated s, offline) over the full mode space, and their rows run the "
    f"best found for the whole scenario. adaptive profiles online: its row includes its search."
)

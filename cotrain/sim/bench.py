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

import numpy as np

from cotrain.bench import (
    INFERENCE_ALONE,
    TRAINING_ALONE,
    BenchRow,
    bench_markdown,
    median_row,
    plot_bench,
    row_json,
    with_ratios,
)
from cotrain.config import BenchConfig, ExperimentConfig
from cotrain.records import write_json_atomic
from cotrain.sim.calibration import Calibration, calibrate, calibration_table
from cotrain.sim.draws import draw_scenarios
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
    always: Sequence[StaticConfig] = (),
) -> tuple[BenchRow, int]:
    """The best static configuration meeting the SLO (and budget), and how many it tried.

    Screens the grid in `modes` on ORACLE_SEARCH_S simulated seconds, refines the ORACLE_REFINE
    best over the full mode space of `space` (when given), then runs the ORACLE_FINALISTS best
    for the whole scenario, and every configuration of `always` (the scenario's own), and keeps
    the best of those. Why `always`: the screen sees only the first ORACLE_SEARCH_S of the
    scenario, which misjudges a configuration when the load changes later (a rate step, bursts,
    a trace); a static configuration some row ran for the whole scenario must not beat the
    oracle that claims to be the best static one."""
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
    finalists += [c for c in always if c not in finalists]
    best: tuple[Merit, BenchRow] | None = None
    for config in finalists:
        candidate = _full_row("oracle", scenario, bench, device, config, config.describe())
        if best is None or candidate[0] > best[0]:
            best = candidate
    assert best is not None
    return best[1], len(set(screened) | set(always))


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
    oracle, tried = oracle_search(
        scenario, bench, oracle_modes(board), device=cal.device, space=space, always=[start]
    )
    oracle = replace(oracle, configs_profiled=tried, detail=f"best static: {oracle.detail}")
    rows.append(oracle)
    return with_ratios(rows, alone, oracle)


def _merged_rows(
    scenario: SimScenario, bench: BenchConfig, controllers: Sequence[str], cal: Calibration, repeats: int
) -> list[BenchRow]:
    """The scenario's rows; with `repeats` K, run under K arrival and noise seeds and merged into
    medians (the simulator is deterministic for one seed, so a repeat is a new draw of the
    randomness, as a rerun on a device would be)."""
    if repeats == 1:
        return scenario_rows(scenario, bench, controllers, cal)
    by_name: dict[str, list[BenchRow]] = {}
    for r in range(repeats):
        for row in scenario_rows(replace(scenario, seed=scenario.seed + r), bench, controllers, cal):
            by_name.setdefault(row.controller, []).append(row)
    merged = [median_row(rows, bench.slo_attainment_target) for rows in by_name.values()]
    named = {r.controller: r for r in merged}
    return with_ratios(merged, named.get(TRAINING_ALONE), named.get("oracle"))


def _write(out: Path, result: dict[str, Any], markdown: str, cal: Calibration) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench.json", result)
    table = calibration_table(cal)
    (out / "calibration.txt").write_text(table + "\n", encoding="utf-8")
    (out / "bench.md").write_text(
        markdown + "\n" + NOTES + "\n\n## Simulator calibration\n\n```\n" + table + "\n```\n",
        encoding="utf-8",
    )


def run_sim_bench(
    config: ExperimentConfig,
    out: Path,
    scenario_name: str,
    *,
    controllers: list[str] | None = None,
    power_budget_w: float | None = None,
    repeats: int = 1,
) -> dict[str, Any]:
    """Every controller, the two searches and the oracle on the simulated board; writes
    D/bench.json, bench.md, calibration.txt and the plots. `power_budget_w` sets a whole-board
    budget that every row must keep (the controllers see it in their Observations)."""
    bench = config.bench or BenchConfig()
    scenario = bench_scenario(config)
    if power_budget_w is not None:
        scenario = replace(scenario, power_budget_w=power_budget_w)
    cal = calibrate()
    rows = _merged_rows(scenario, bench, controllers or bench.controllers, cal, repeats)
    result: dict[str, Any] = {
        "scenario": scenario_name,
        "platform": "sim",
        "slo_attainment_target": bench.slo_attainment_target,
        "run_duration_s": scenario.duration_s,
        "slo_ms": scenario.slo_ms,
        "power_budget_w": scenario.power_budget_w,
        "repeats": repeats,
        "oracle_grid_size": bench.oracle.size(),
        "rows": [row_json(r) for r in rows],
        "oracle_grid": [],
        "notes": NOTES,
    }
    _write(out, result, bench_markdown(result), cal)
    plot_bench(result, out)
    return result


SUMMARY_EXCLUDES = (TRAINING_ALONE, INFERENCE_ALONE, "oracle")


def within_budget(row: dict[str, Any], budget_w: float | None) -> bool:
    return budget_w is None or row.get("power_w") is None or float(row["power_w"]) <= budget_w


def judged_ratio(row: dict[str, Any], oracle: dict[str, Any], budget_w: float | None) -> float | None:
    """A row's oracle ratio as the summary counts it: 0 when it missed an SLO or went over a
    power budget that the oracle kept (breaking either is not a way to train faster); None where
    the scenario gives no ratio (no static configuration meets its SLO within its budget, or the
    oracle trains nothing)."""
    if not oracle["meets_slo"] or not within_budget(oracle, budget_w) or row["oracle_ratio"] is None:
        return None
    kept = row["meets_slo"] and within_budget(row, budget_w)
    return float(row["oracle_ratio"]) if kept else 0.0


def scenarios_summary(scenarios: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per controller over every drawn scenario: the median and the worst of its judged oracle
    ratios (`judged_ratio`), its lowest SLO attainment, in how many it met the SLO and in how many
    it went over the power budget."""
    by_controller: dict[str, list[tuple[dict[str, Any], float | None, float | None]]] = {}
    for scenario in scenarios:
        oracle = next(r for r in scenario["rows"] if r["controller"] == "oracle")
        budget_w = scenario.get("power_budget_w")
        for row in scenario["rows"]:
            if row["controller"] not in SUMMARY_EXCLUDES:
                judged = judged_ratio(row, oracle, budget_w)
                by_controller.setdefault(row["controller"], []).append((row, judged, budget_w))
    summary = {}
    for name, entries in by_controller.items():
        rows = [r for r, _, _ in entries]
        ratios = [j for _, j, _ in entries if j is not None]
        over_budget = sum(1 for r, _, budget_w in entries if not within_budget(r, budget_w))
        limits = [r["limit_ratio"] for r in rows if r["limit_ratio"] is not None]
        attainments = [r["slo_attainment"] for r in rows if r["slo_attainment"] is not None]
        summary[name] = {
            "median_oracle_ratio": round(float(np.median(ratios)), 4) if ratios else None,
            "worst_oracle_ratio": round(min(ratios), 4) if ratios else None,
            "min_slo_attainment": round(min(attainments), 6) if attainments else None,
            "median_limit_ratio": round(float(np.median(limits)), 4) if limits else None,
            "scenarios_meeting_slo": sum(1 for r in rows if r["meets_slo"]),
            "scenarios_over_budget": over_budget,
            "scenarios": len(rows),
            "scenarios_with_ratio": len(ratios),
        }
    return summary


def run_sim_scenarios(
    config: ExperimentConfig,
    out: Path,
    scenario_name: str,
    n: int,
    seed: int,
    *,
    controllers: list[str] | None = None,
    traces_dir: Path | None = None,
    repeats: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every controller over `n` scenarios drawn around the config's (cotrain/sim/draws.py), each
    with its own oracle; writes D/bench.json (`scenarios`, `summary`), bench.md and the
    calibration."""
    bench = config.bench or BenchConfig()
    base = bench_scenario(config)
    cal = calibrate()
    names = controllers or bench.controllers
    scenarios = []
    for draw in draw_scenarios(base, n, seed, traces_dir):
        if progress:
            progress(f"[{draw.index + 1}/{n}] {draw.describe()}")
        rows = _merged_rows(draw.scenario, bench, names, cal, repeats)
        s = draw.scenario
        scenarios.append(
            {
                "index": draw.index,
                "description": draw.describe(),
                "process": draw.process,
                "trace": draw.trace,
                "rate_per_s": round(draw.rate_per_s, 3),
                "slo_ms": round(s.slo_ms, 3),
                "inference_model": s.inference_model,
                "training_models": [j.model for j in s.training],
                "power_budget_w": None if s.power_budget_w is None else round(s.power_budget_w, 3),
                "seed": s.seed,
                "rows": [row_json(r) for r in rows],
            }
        )
    result: dict[str, Any] = {
        "scenario": scenario_name,
        "platform": "sim",
        "scenarios_drawn": n,
        "seed": seed,
        "repeats": repeats,
        "slo_attainment_target": bench.slo_attainment_target,
        "run_duration_s": base.duration_s,
        "oracle_grid_size": bench.oracle.size(),
        "scenarios": scenarios,
        "summary": scenarios_summary(scenarios),
        "notes": NOTES + " " + DRAW_NOTES,
    }
    _write(out, result, scenarios_markdown(result), cal)
    return result


def scenarios_markdown(result: dict[str, Any]) -> str:
    """The summary table, then each scenario's oracle ratio per controller."""

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    summary = result["summary"]
    lines = [
        f"# cotrain bench: {result['scenario']} over {result['scenarios_drawn']} drawn scenarios "
        f"(seed {result['seed']}, simulated AGX Orin)",
        "",
        f"Each scenario ran {result['run_duration_s']:g} simulated s; a row meets the SLO at attainment "
        f">= {result['slo_attainment_target']:g}. Oracle ratio: training samples/s over the scenario's "
        "oracle; in the summary a row that missed an SLO or a power budget the oracle kept counts 0, "
        "and scenarios where no static configuration meets the SLO within the budget (or the oracle "
        "trains nothing) give no ratio. Limit ratio: over training alone in the time inference "
        "leaves.",
        "",
        "| controller | median oracle ratio | worst oracle ratio | min SLO attainment "
        "| median limit ratio | scenarios meeting SLO | over budget | scenarios with a ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {fmt(s['median_oracle_ratio'], '.3f')} | {fmt(s['worst_oracle_ratio'], '.3f')} "
            f"| {fmt(s['min_slo_attainment'], '.3f')} | {fmt(s['median_limit_ratio'], '.3f')} "
            f"| {s['scenarios_meeting_slo']}/{s['scenarios']} | {s['scenarios_over_budget']} "
            f"| {s['scenarios_with_ratio']} |"
        )
    names = list(summary)
    lines += ["", "Oracle ratio per scenario (`*`: missed the SLO, `+`: over the power budget):", ""]
    lines += ["| scenario | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for sc in result["scenarios"]:
        rows = {r["controller"]: r for r in sc["rows"]}
        cells = []
        for name in names:
            r = rows.get(name)
            marks = "" if r is None or r["meets_slo"] else "*"
            if r is not None and not within_budget(r, sc.get("power_budget_w")):
                marks += "+"
            cells.append("-" if r is None else fmt(r["oracle_ratio"], ".3f") + marks)
        lines.append(f"| {sc['index']}: {sc['description']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


DRAW_NOTES = (
    "Scenarios are drawn by cotrain/sim/draws.py: arrival process (constant, Poisson, bursty, a rate "
    "step, or a trace of the traces directory), rate and SLO each x[1/2, 2] log-uniform around the "
    "scenario's, inference and training models from the catalogue, and no budget or 25-45 W."
)


NOTES = (
    f"The oracle (the simulator's optimum) screens every batch size and gate of the bench grid in 355 "
    f"modes (the named ones and a coarse DVFS grid) on {ORACLE_SEARCH_S:g} simulated s, refines the "
    f"{ORACLE_REFINE} best by a local search over the full mode space, and runs the "
    f"{ORACLE_FINALISTS} best for the whole scenario. gradient-search (a coordinate hill-climb from "
    f"the scenario's configuration) and random-search profile {SEARCH_BUDGET} configurations each "
    f"({SEARCH_PROFILE_S:g} simulated s, offline) over the full mode space, and their rows run the "
    f"best found for the whole scenario. adaptive profiles online: its row includes its search."
)

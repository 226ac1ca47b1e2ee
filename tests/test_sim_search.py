"""The power-mode search on the simulated Orin: `adaptive` against an exhaustive oracle on a small
mode subset, the model-free search baselines, and a rate step, all in simulated time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cotrain.config import load_config
from cotrain.controllers.adaptive import AdaptivePolicy
from cotrain.controllers.modesearch import ModeInfo
from cotrain.sim.bench import bench_scenario
from cotrain.sim.calibration import calibrate
from cotrain.sim.modes import mode_space
from cotrain.sim.policies import mode_table
from cotrain.sim.ratestep import rate_step_scenario, run_rate_step
from cotrain.sim.runner import run_policy, sim_power_rules
from cotrain.sim.scenario import SimScenario
from cotrain.sim.search import (
    Merit,
    Space,
    StaticConfig,
    evaluate,
    gradient_search,
    merit,
    random_search,
    refine,
)
from tests.conftest import REPO

SCREEN_S = 20.0  # simulated seconds per static evaluation in these tests


@pytest.fixture(scope="module")
def scenario() -> SimScenario:
    bench = bench_scenario(load_config(REPO / "experiments" / "bench-orin-sim.yaml"))
    assert bench.mode == "MODE_50W", "the bench starts where every DVFS mode is a live switch away"
    return replace(bench, duration_s=60.0)


@pytest.fixture(scope="module")
def subset(scenario: SimScenario) -> tuple[ModeInfo, ...]:
    """33 modes: every GPU step, three CPU steps, all cores, EMC at its top (plus MODE_50W)."""
    table = mode_table(mode_space(scenario.board), sim_power_rules(scenario, calibrate().device))
    return tuple(
        m for m in table if m.cores == 12 and m.emc_mhz == 3199 and m.cpu_mhz in (729.6, 1497.6, 2201.6)
    )


@pytest.mark.parametrize("budget_w", [None, 35.0])
def test_adaptive_lands_within_3pct_of_the_exhaustive_optimum_with_at_most_10_profiles(
    scenario: SimScenario, subset: tuple[ModeInfo, ...], budget_w: float | None
) -> None:
    device = calibrate().device
    scenario = replace(scenario, power_budget_w=budget_w)
    oracle: tuple[Merit, StaticConfig] | None = None
    for m in subset:
        for b in (16, 32, 64):
            config = StaticConfig(b, "off", m.name)
            score = merit(evaluate(scenario, config, SCREEN_S, device), 0.99, budget_w)
            if oracle is None or score > oracle[0]:
                oracle = (score, config)
    assert oracle is not None and oracle[0][0] == 1.0, "some mode of the subset meets the SLO"
    run = run_policy(
        scenario, AdaptivePolicy(modes=subset), device=device, power_rules=sim_power_rules(scenario, device)
    )
    assert run.configs_profiled <= 10
    held = run.trace[-1]
    assert held.max_batch_size is not None and held.power_mode is not None
    found = StaticConfig(held.max_batch_size, held.training[0][4], held.power_mode)
    score = merit(evaluate(scenario, found, SCREEN_S, device), 0.99, budget_w)
    assert score[0] == 1.0, f"{found} meets the SLO and the budget"
    assert score[1] >= 0.97 * oracle[0][1], (found, oracle)


def _toy_space() -> Space:
    modes = [
        ModeInfo(f"c{n}-cpu{c:g}-gpu{g:g}-emc{e:g}", n, c, g, e)
        for n in (4, 8, 12)
        for c in (700.0, 1400.0, 2200.0)
        for g in (300.0, 600.0, 900.0, 1300.0)
        for e in (2000.0, 3200.0)
    ]
    return Space([8, 16, 32, 64], ["off", "yield"], modes)


def _toy_score(c: StaticConfig) -> Merit:
    """A smooth landscape with one peak: b=32, gate off, GPU 900, the rest at the top."""
    n, cpu, gpu, emc = _toy_space().names[c.mode]
    value = 100 - abs(c.max_batch_size - 32) / 4 - abs(gpu - 900) / 50 + cpu / 1000 + emc / 1000 + n / 10
    return (1.0, value - (30 if c.gate_policy == "yield" else 0), 0.0)


def test_gradient_and_random_search_spend_exactly_their_budget_and_are_deterministic() -> None:
    space = _toy_space()
    start = StaticConfig(16, "off", "c8-cpu700-gpu300-emc2000")
    calls: list[StaticConfig] = []

    def score(c: StaticConfig) -> Merit:
        calls.append(c)
        return _toy_score(c)

    grad = gradient_search(space, start, score, 15, seed=1)
    assert grad.profiles == len(calls) == 15 and len(set(calls)) == 15
    assert grad.profiled[0][0] == start and grad.best_merit is not None
    assert grad.best_merit > _toy_score(start), "it climbs"
    assert gradient_search(space, start, _toy_score, 15, seed=1) == grad
    calls.clear()
    rand = random_search(space, score, 15, seed=1)
    assert rand.profiles == len(calls) == 15 and len(set(calls)) == 15
    assert random_search(space, _toy_score, 15, seed=1) == rand
    assert random_search(space, _toy_score, 15, seed=2) != rand
    assert all(space.coords(c) is not None for c, _ in grad.profiled + rand.profiled)


def test_refine_climbs_to_a_local_optimum_of_the_full_grid() -> None:
    space = _toy_space()
    local = refine(space, StaticConfig(8, "yield", "c4-cpu700-gpu300-emc2000"), _toy_score)
    assert local.best == StaticConfig(32, "off", "c12-cpu2200-gpu900-emc3200")


def test_a_rate_step_x2_re_converges_within_5_simulated_seconds() -> None:
    scenario = rate_step_scenario(50.0, 100.0, step_at_s=30.0, duration_s=50.0)
    report, result = run_rate_step(scenario, 30.0)
    assert report.rate_before_per_s == 50.0 and report.rate_after_per_s == 100.0
    assert report.reconverge_s is not None and report.reconverge_s <= 5.0, report
    assert report.after_slo_attainment is not None and report.after_slo_attainment >= 0.99
    assert report.transient_slo_attainment is None or 0.0 <= report.transient_slo_attainment <= 1.0
    assert report.training_after_per_s > 0
    assert result.configs_profiled <= 14, "the initial search and one re-plan"

"""Real controllers driven through the simulator in simulated time."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from typing import Any

import pytest
import yaml

from cotrain.config import load_config, parse_config
from cotrain.control import Action, InferenceChange, Observation
from cotrain.controllers.static import StaticPolicy
from cotrain.sim.calibration import calibrate
from cotrain.sim.engine import ArrivalSpec
from cotrain.sim.runner import run_policy, sim_power_rules, sim_static
from cotrain.sim.scenario import SimScenario, scenario_from_config
from tests.conftest import REPO, TINY

SCENARIO = SimScenario(
    arrivals=ArrivalSpec.poisson(100.0),
    max_batch_size=16,
    max_queue_delay_ms=200.0,
    slo_ms=500.0,
    admission="drop_late",
    queue_capacity=1024,
    duration_s=20.0,
    control_period_s=0.5,
)


@pytest.fixture(scope="module", autouse=True)
def _calibrated() -> None:
    calibrate()


class BatchAt5s:
    """Sets max_batch_size to 64 once the run is 5 s old."""

    name = "batch-at-5s"

    def initial_state(self) -> bool:
        return False

    def decide(self, obs: Observation, state: bool) -> tuple[Action, bool]:
        if not state and obs.time_s >= 5.0:
            return Action(inference=InferenceChange(max_batch_size=64), reason="t >= 5 s"), True
        return Action(), state


class Scripted:
    """Applies one action at the first window; records what it observed."""

    name = "scripted"

    def __init__(self, action: Action) -> None:
        self.action = action
        self.seen: list[Observation] = []

    def initial_state(self) -> int:
        return 0

    def decide(self, obs: Observation, state: int) -> tuple[Action, int]:
        self.seen.append(obs)
        return (self.action if state == 0 else Action()), state + 1


def test_static_policy_runs_in_simulated_time() -> None:
    result = run_policy(SCENARIO, StaticPolicy())
    assert result.policy == "static" and result.configs_profiled == 1
    assert len(result.trace) == 40  # 20 s / 0.5 s
    assert result.trace[-1].t_s == pytest.approx(20.0)
    assert result.arrived == result.served + result.shed
    assert 0.9 < result.slo_attainment <= 1.0
    assert result.training_samples_per_s > 0 and result.power_w > 10
    assert {row.max_batch_size for row in result.trace} == {16}


def test_a_policy_change_at_5s_shows_in_the_trace() -> None:
    result = run_policy(SCENARIO, BatchAt5s())
    before = [r.max_batch_size for r in result.trace if r.t_s <= 5.0]
    after = [r.max_batch_size for r in result.trace if r.t_s > 5.0]
    assert set(before) == {16} and set(after) == {64}
    assert result.configs_profiled == 2
    assert result.configs[1].inference is not None and result.configs[1].inference.max_batch_size == 64
    # the engine really batches differently afterwards (200 ms of Poisson arrivals: ~20 requests)
    early = [r.mean_batch_size or 0.0 for r in result.trace if r.t_s <= 5.0]
    late = [r.mean_batch_size or 0.0 for r in result.trace if r.t_s > 6.0]
    assert max(early) <= 16 and sum(late) / len(late) > 17


def test_observations_are_built_like_the_runtime_builds_them() -> None:
    policy = Scripted(Action())
    run_policy(replace(SCENARIO, duration_s=3.0), policy)
    obs = policy.seen[0]
    assert obs.time_s == pytest.approx(0.5) and obs.window_s == pytest.approx(0.5)
    assert obs.inference is not None and obs.inference.arrived > 0 and obs.inference.slo_ms == 500.0
    assert obs.power_mode == "MAXN" and obs.knobs.power_mode == "MAXN" and obs.cpu_count == 12
    assert obs.power_w is not None and obs.power_w > 10 and obs.gpu_util_percent is not None
    assert set(obs.training) == {"train"} and obs.training["train"].steps > 0


def test_bounds_clamp_a_policys_knobs_and_power_modes_switch() -> None:
    action = Action(inference=InferenceChange(max_batch_size=10**6), power_mode="MODE_15W")
    result = run_policy(SCENARIO, Scripted(action))
    assert {r.max_batch_size for r in result.trace[1:]} == {SCENARIO.queue_capacity}
    assert {r.power_mode for r in result.trace[1:]} == {"MODE_15W"}
    assert result.trace[-1].power_w < result.trace[0].power_w
    unknown = run_policy(SCENARIO, Scripted(Action(power_mode="MODE_99W")))
    assert {r.power_mode for r in unknown.trace} == {"MAXN"}


def test_the_runtimes_power_mode_guard_refuses_reboot_modes() -> None:
    rules = sim_power_rules(SCENARIO, calibrate().device)
    assert rules.order[0] == "MAXN" and "MODE_15W" in rules.needs_reboot
    assert "MODE_50W" not in rules.needs_reboot
    refused = Scripted(Action(power_mode="MODE_15W"))
    result = run_policy(replace(SCENARIO, duration_s=3.0), refused, power_rules=rules)
    assert {r.power_mode for r in result.trace} == {"MAXN"}
    allowed = run_policy(
        replace(SCENARIO, duration_s=3.0), Scripted(Action(power_mode="50W")), power_rules=rules
    )
    assert allowed.trace[-1].power_mode == "MODE_50W"


def test_a_custom_mode_by_name() -> None:
    name = "c6-cpu1497.6-gpu918-emc2133"
    result = run_policy(replace(SCENARIO, duration_s=4.0), Scripted(Action(power_mode=name)))
    assert result.trace[-1].power_mode == name


def test_ten_simulated_minutes_take_seconds() -> None:
    started = time.perf_counter()
    result = run_policy(replace(SCENARIO, duration_s=600.0, control_period_s=1.0), StaticPolicy())
    wall = time.perf_counter() - started
    assert result.arrived > 55_000 and len(result.trace) == 600
    assert wall < 5.0, wall


def test_sim_static_is_fast_enough_for_search() -> None:
    scenario = replace(SCENARIO, duration_s=60.0)
    sim_static(scenario)
    started = time.perf_counter()
    for _ in range(5):
        sim_static(scenario)
    assert (time.perf_counter() - started) / 5 < 0.25


def test_scenario_from_config_maps_an_experiment() -> None:
    data: dict[str, Any] = {**TINY, "platform": {"kind": "host", "power_mode": "MODE_50W"}}
    scenario = scenario_from_config(parse_config(data))
    assert scenario.inference_model == "mobilenet_v3_small" and scenario.image_size == 32
    assert scenario.arrivals == ArrivalSpec.poisson(30.0) and scenario.seed == 3
    assert scenario.max_batch_size == 4 and scenario.slo_ms == 500 and scenario.mode == "MODE_50W"
    assert [(j.name, j.batch_size) for j in scenario.training] == [("cl", 8)]
    result = sim_static(scenario)
    assert result.arrived == result.served + result.shed > 0
    quickstart = scenario_from_config(load_config(REPO / "experiments" / "quickstart.yaml"))
    assert quickstart.mode == "MODE_30W"  # no mode configured: the board's default


def test_a_trace_is_replayed_request_for_request(tmp_path: Any) -> None:
    """The simulator takes a trace's arrivals from the real service's `arrival_offsets_s`: the
    same requests at the same offsets, looped and scaled as a real run would replay them."""
    from cotrain.workloads.inference.arrivals import arrival_offsets_s

    trace = tmp_path / "arrivals.csv"
    offsets = [0.0, 0.01, 0.011, 0.5, 0.52, 0.9, 2.0, 2.001, 2.002, 3.5]
    trace.write_text("arrival_s\n" + "".join(f"{100.0 + t}\n" for t in offsets), encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(TINY))
    data["duration_s"] = 12.0
    data["workloads"]["inference"]["arrivals"] = {
        "process": "trace",
        "path": str(trace),
        "loop": True,
        "time_scale": 0.5,
    }
    config = parse_config(data)
    scenario = scenario_from_config(config)
    assert scenario.arrivals.process == "replay"
    result = sim_static(scenario)
    real = config.workloads.inference_services()[0].config.arrivals
    assert real is not None
    expected = [t for t in itertools.takewhile(lambda t: t < 12.0, arrival_offsets_s(real))]
    assert len(expected) > 3 * len(offsets), "looped: more requests than one pass of the trace"
    assert result.arrivals_s.tolist() == pytest.approx(expected)
    assert result.arrived == len(expected) == result.served + result.shed

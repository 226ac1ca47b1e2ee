"""One construction of the wrapped controller for the runtime and the simulator."""

from __future__ import annotations

from dataclasses import replace

import yaml

from cotrain.config import parse_config, parse_controller
from cotrain.control import Action, InferenceChange, Observation
from cotrain.controllers.adaptive import AdaptivePolicy
from cotrain.controllers.capabilities import Capabilities, assemble_policy, wrap_policy
from cotrain.controllers.modesearch import ModeInfo
from cotrain.controllers.wrappers import Bounded, CanonicalModeNames, PowerModeGuard, PowerModeRules
from cotrain.platform.base import PowerModeInfo
from cotrain.runtime import run_capabilities
from cotrain.sim.calibration import calibrate
from cotrain.sim.modes import mode_space
from cotrain.sim.policies import mode_table, sim_capabilities
from cotrain.sim.runner import sim_power_rules
from cotrain.sim.scenario import SimScenario
from tests.conftest import TINY

FAST = ModeInfo("FAST", 4, 2000.0, 1300.0, 3200.0)
SLOW = ModeInfo("SLOW", 2, 1000.0, 600.0, 2000.0)


def test_adaptive_is_built_with_the_modes_the_guard_allows_on_both_sides() -> None:
    rules = PowerModeRules(order=("FAST", "SLOW"), needs_reboot=frozenset({"SLOW"}))
    caps = Capabilities(cpus=(0, 1), queue_capacity=64, jobs=frozenset({"train"}), modes=(FAST, SLOW))
    policy = assemble_policy(parse_controller({"name": "adaptive"}), replace(caps, power_rules=rules))
    assert isinstance(policy, PowerModeGuard)
    inner = policy.policy
    assert isinstance(inner, Bounded) and isinstance(inner.policy, AdaptivePolicy)
    assert set(inner.policy.table.index) == {"FAST"}, "a mode that needs a reboot is not searched"

    scenario = SimScenario(duration_s=10.0)
    space = mode_space(scenario.board)
    sim_rules = sim_power_rules(scenario, calibrate().device)
    sim = assemble_policy(
        parse_controller({"name": "adaptive"}), sim_capabilities(scenario, space, sim_rules)
    )
    assert isinstance(sim, PowerModeGuard) and isinstance(sim.policy, CanonicalModeNames)
    built = sim.policy.policy
    assert isinstance(built, Bounded) and isinstance(built.policy, AdaptivePolicy)
    assert built.policy.table.modes == mode_table(space, sim_rules)


def test_the_runtime_reads_ids_clocks_and_bounds_from_the_platform() -> None:
    config = parse_config(yaml.safe_load(yaml.safe_dump(TINY)))
    modes = (
        PowerModeInfo(0, "MAXN", 12, cpu_mhz=2201.6, gpu_mhz=1300.5, emc_mhz=3199.0),
        PowerModeInfo(2, "MODE_30W", 8, cpu_mhz=1728.0, gpu_mhz=612.0, emc_mhz=3199.0),
    )
    caps = run_capabilities(config, (0, 1), modes)
    assert caps.mode_names_by_id == {"0": "MAXN", "2": "MODE_30W"}
    assert [m.name for m in caps.modes] == ["MAXN", "MODE_30W"]
    bounds = caps.knob_bounds()
    assert bounds.threads == (1, 2) and bounds.num_workers == (0, 4)
    assert bounds.power_modes == {"MAXN", "MODE_30W"}
    no_clocks = run_capabilities(config, (0, 1), (PowerModeInfo(0, "host", 2),))
    assert no_clocks.modes == (), "a mode without clocks: nothing to search"


class Greedy:
    name = "greedy"

    def initial_state(self) -> None:
        return None

    def decide(self, obs: Observation, state: None) -> tuple[Action, None]:
        return Action(inference=InferenceChange(max_batch_size=10_000), power_mode="50W"), None


def test_a_supplied_policy_gets_the_same_wrappers() -> None:
    scenario = SimScenario(duration_s=10.0, queue_capacity=32)
    space = mode_space(scenario.board)
    wrapped = wrap_policy(Greedy(), sim_capabilities(scenario, space))
    from tests.test_control import obs

    action, _ = wrapped.decide(obs(0.0), wrapped.initial_state())
    assert action.inference is not None and action.inference.max_batch_size == 32
    assert action.power_mode == "MODE_50W", "an alias becomes the board's name"

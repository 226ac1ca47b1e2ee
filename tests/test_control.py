"""The control language and the policies: pure, deterministic, bounded."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from cotrain.config import parse_config
from cotrain.control import (
    Action,
    InferenceChange,
    InferenceKnobs,
    Knobs,
    Observation,
    TrainingChange,
    TrainingKnobs,
)
from cotrain.controllers.contract import PolicyContractError, check_policy
from cotrain.controllers.registry import build_policy, registered_policies
from cotrain.controllers.schedule import ScheduledAction, SchedulePolicy
from cotrain.controllers.wrappers import KnobBounds, PowerModeGuard, PowerModeRules, bound_action
from cotrain.runtime import initial_knobs, knob_bounds
from tests.conftest import TINY

KNOBS = Knobs(
    inference=InferenceKnobs(max_batch_size=4, max_queue_delay_ms=10.0, threads=1, cpus=None),
    training={"cl": TrainingKnobs(threads=1, cpus=None, num_workers=0, paused=False)},
)
BOUNDS = KnobBounds(
    max_batch_size=(1, 64),
    max_queue_delay_ms=(0.0, 1000.0),
    threads=(1, 2),
    num_workers=(0, 4),
    cpus=(0, 1),
    jobs=frozenset({"cl"}),
)


def obs(t: float) -> Observation:
    return Observation(
        time_s=t, window_s=0.5, knobs=KNOBS, inference=None, training={}, cpu_util_percent=None, cpu_count=2
    )


def test_knobs_apply_changes_only_what_the_action_names() -> None:
    action = Action(
        inference=InferenceChange(max_batch_size=16), training={"cl": TrainingChange(paused=True)}
    )
    after = KNOBS.apply(action)
    assert after.inference == InferenceKnobs(16, 10.0, 1, None)
    assert after.training["cl"] == TrainingKnobs(1, None, 0, True)
    assert KNOBS.inference is not None and KNOBS.inference.max_batch_size == 4  # original untouched


def test_action_record_holds_only_changes() -> None:
    action = Action(inference=InferenceChange(cpus=(1,)), training={"cl": TrainingChange()}, reason="r")
    assert action.to_record() == {"inference": {"cpus": [1]}}
    assert Action().is_empty() and not action.is_empty()


def test_bounds_clamp_and_explain() -> None:
    action = Action(
        inference=InferenceChange(max_batch_size=1000, threads=0, cpus=(0, 7)),
        training={"cl": TrainingChange(num_workers=99), "ghost": TrainingChange(paused=True)},
        reason="greedy",
    )
    bounded = bound_action(action, BOUNDS)
    assert bounded.inference == InferenceChange(max_batch_size=64, threads=1, cpus=None)
    assert set(bounded.training) == {"cl"} and bounded.training["cl"].num_workers == 4
    notes = " | ".join(bounded.notes)
    for note in ("max_batch_size 1000 clamped to 64", "cpus [0, 7] dropped", "unknown training job 'ghost'"):
        assert note in notes
    assert bounded.reason == "greedy"


def test_schedule_applies_due_steps_in_order_and_only_once() -> None:
    policy = SchedulePolicy(
        [
            ScheduledAction(2.0, Action(inference=InferenceChange(max_batch_size=8))),
            ScheduledAction(1.0, Action(inference=InferenceChange(max_batch_size=2, max_queue_delay_ms=5))),
        ]
    )
    state = policy.initial_state()
    action, state = policy.decide(obs(0.5), state)
    assert action.is_empty()
    action, state = policy.decide(obs(2.5), state)  # a late tick: both steps are due, later wins
    assert action.inference == InferenceChange(max_batch_size=8, max_queue_delay_ms=5)
    action, state = policy.decide(obs(3.0), state)
    assert action.is_empty()


def test_default_threads_are_a_fair_share_of_the_cores() -> None:
    config = parse_config(yaml.safe_load(yaml.safe_dump(TINY)))
    knobs = initial_knobs(config, cpu_count=2)
    assert knobs.inference is not None and knobs.inference.threads == 1
    assert knobs.training["cl"].threads == 1
    assert initial_knobs(config, cpu_count=8).training["cl"].threads == 4


def schedule_config() -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["controller"] = {
        "name": "schedule",
        "steps": [
            {"at_s": 0.5, "set": {"inference": {"max_batch_size": 500, "cpus": [0, 1, 2, 3]}}},
            {"at_s": 1.0, "set": {"training": {"cl": {"paused": True, "num_workers": 50}}}},
        ],
    }
    return data


LADDER = ("resnet50/fp32@64", "resnet18/fp32@64", "resnet18/int8@64")
PROFILE = {  # (variant, batch) -> p50 ms: heavier variants are slower
    **{(LADDER[0], b): 40.0 * b for b in (1, 2, 4, 8)},
    **{(LADDER[1], b): 12.0 * b for b in (1, 2, 4, 8)},
    **{(LADDER[2], b): 3.0 * b for b in (1, 2, 4, 8)},
}


def inference_obs(t: float, rate: float, p99: float | None, variant: str = LADDER[0]) -> Observation:
    from dataclasses import replace

    from cotrain.control import InferenceWindow, VariantInfo

    window = InferenceWindow(
        arrived=int(rate / 2),
        served=int(rate / 2),
        failed=0,
        shed=0,
        queue_depth=0,
        arrival_rate_per_s=rate,
        latency_p50_ms=p99,
        latency_p95_ms=p99,
        latency_p99_ms=p99,
        slo_ms=150.0,
        slo_attainment=1.0,
        mean_batch_size=2.0,
        batch_exec_p50_ms=10.0,
        batch_exec_max_ms=20.0,
    )
    assert KNOBS.inference is not None
    knobs = replace(KNOBS, inference=replace(KNOBS.inference, max_batch_size=8, variant=variant))
    return replace(
        obs(t),
        knobs=knobs,
        inference=window,
        variants=tuple(VariantInfo(v, 0.7, "imagenet-metadata") for v in LADDER),
        profile_ms=PROFILE,
    )


@pytest.mark.parametrize("name", registered_policies())
def test_every_registered_policy_keeps_the_contract(name: str) -> None:
    data = schedule_config() if name == "schedule" else yaml.safe_load(yaml.safe_dump(TINY))
    data["controller"]["name"] = name
    if name != "schedule":
        data["controller"].pop("steps", None)
    if name == "ladder":
        data["workloads"]["inference"]["variants"] = list(LADDER)
    config = parse_config(data)
    policy = build_policy(config.controller)
    observations = [obs(t / 4) for t in range(12)]
    observations += [
        inference_obs(3 + t, rate, p99) for t, (rate, p99) in enumerate([(5, 50), (80, 400), (5, 20)])
    ]
    check_policy(policy, observations, knob_bounds(config, (0, 1)))


def test_ladder_steps_down_under_load_and_back_up_after_calm_windows() -> None:
    from cotrain.controllers.ladder import LadderPolicy, choose

    assert choose(LADDER, 5, 150, PROFILE, 8, 0.7) == LADDER[0], "light load: the most accurate fits"
    assert choose(LADDER, 60, 150, PROFILE, 8, 0.7) == LADDER[1]
    assert choose(LADDER, 1000, 150, PROFILE, 8, 0.7) == LADDER[2], "nothing fits: the lightest"
    policy = LadderPolicy(headroom=0.7, up_after_windows=2)
    action, state = policy.decide(inference_obs(1, 60, 80), policy.initial_state())
    assert action.inference is not None and action.inference.variant == LADDER[1]
    action, state = policy.decide(inference_obs(2, 5, 20, LADDER[1]), state)
    assert action.is_empty() and state == 1, "one calm window is not enough"
    action, state = policy.decide(inference_obs(3, 5, 20, LADDER[1]), state)
    assert action.inference is not None and action.inference.variant == LADDER[0]
    action, _ = policy.decide(inference_obs(4, 5, 400, LADDER[1]), 0)
    assert action.inference is not None and action.inference.variant == LADDER[2], "a broken SLO steps down"


def test_the_contract_checker_catches_a_nondeterministic_policy() -> None:
    class Flaky:
        name = "flaky"
        calls = 0

        def initial_state(self) -> None:
            return None

        def decide(self, o: Observation, state: None) -> tuple[Action, None]:
            Flaky.calls += 1
            return Action(inference=InferenceChange(max_batch_size=Flaky.calls)), None

    with pytest.raises(PolicyContractError, match="not deterministic"):
        check_policy(Flaky(), [obs(0.0)], BOUNDS)


# --- the power-mode guard ------------------------------------------------------------------------


class WantsMode:
    """A policy that always asks for one mode."""

    name = "wants"

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def initial_state(self) -> None:
        return None

    def decide(self, o: Observation, state: None) -> tuple[Action, None]:
        return Action(power_mode=self.mode, reason="want"), None


def mode_obs(t: float, current: str, power_w: float | None = None) -> Observation:
    from dataclasses import replace

    return replace(obs(t), knobs=replace(KNOBS, power_mode=current), power_w=power_w)


RULES = PowerModeRules(
    order=("MAXN", "MODE_50W", "MODE_30W", "MODE_15W"), needs_reboot=frozenset({"MODE_30W"})
)


def replace_rules(**changes: Any) -> PowerModeRules:
    from dataclasses import replace

    return replace(RULES, **changes)


@pytest.mark.parametrize(
    ("rules", "mode", "current", "power_w", "note"),
    [
        (RULES, "TURBO", "MAXN", None, "does not exist"),
        (
            replace_rules(allowed=frozenset({"MAXN"})),
            "MODE_50W",
            "MAXN",
            None,
            "not in the policy's allowed modes",
        ),
        (RULES, "MODE_30W", "MAXN", None, "needs a reboot"),
        (replace_rules(power_budget_w=30.0), "MAXN", "MODE_50W", 35.0, "over the 30 W budget"),
    ],
)
def test_power_mode_guard_refuses_with_a_note(
    rules: PowerModeRules, mode: str, current: str, power_w: float | None, note: str
) -> None:
    guard = PowerModeGuard(WantsMode(mode), rules)
    action, _ = guard.decide(mode_obs(10.0, current, power_w), guard.initial_state())
    assert action.power_mode is None
    assert note in " ".join(action.notes)


def test_power_mode_guard_allows_stepping_down_over_budget_and_enforces_dwell() -> None:
    guard = PowerModeGuard(WantsMode("MODE_50W"), replace_rules(power_budget_w=30.0, min_dwell_s=5.0))
    state = guard.initial_state()
    action, state = guard.decide(mode_obs(1.0, "MAXN", power_w=40.0), state)
    assert action.power_mode == "MODE_50W"
    guard.policy = WantsMode("MAXN")
    action, state = guard.decide(mode_obs(3.0, "MODE_50W", power_w=10.0), state)
    assert action.power_mode is None and "dwell" in action.notes[0]
    action, state = guard.decide(mode_obs(6.5, "MODE_50W", power_w=10.0), state)
    assert action.power_mode == "MAXN"


def test_ladder_never_acts_twice_on_one_window_and_never_steps_up_while_the_slo_is_broken() -> None:
    from dataclasses import replace

    from cotrain.controllers.ladder import LadderPolicy

    policy = LadderPolicy(headroom=0.7, up_after_windows=1)
    stale = replace(inference_obs(1, 60, 400), inference_fresh=False)
    assert policy.decide(stale, 0) == (Action(), 0)
    on_lightest = inference_obs(2, 5, 400, LADDER[-1])  # light load, but p99 is over the SLO
    action, state = policy.decide(on_lightest, 3)
    assert action.is_empty() and state == 0

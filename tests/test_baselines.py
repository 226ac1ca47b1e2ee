"""The baseline policies (naive, sequential, aimd), driven with hand-built observations."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotrain.cli import main
from cotrain.config import parse_config
from cotrain.control import (
    Action,
    InferenceChange,
    InferenceKnobs,
    InferenceWindow,
    Knobs,
    Observation,
    TrainingChange,
    TrainingKnobs,
)
from cotrain.controllers.aimd import AimdPolicy, next_batch_size
from cotrain.controllers.contract import check_policy
from cotrain.controllers.naive import NaivePolicy
from cotrain.controllers.registry import build_policy, registered_policies
from cotrain.controllers.sequential import SequentialPolicy
from cotrain.runtime import knob_bounds
from tests.conftest import TINY

BASELINES = ("naive", "sequential", "aimd")
SLO_MS = 100.0


def training_knobs(**changes: Any) -> TrainingKnobs:
    return replace(TrainingKnobs(threads=1, cpus=None, num_workers=0, paused=False), **changes)


def knobs(batch: int = 4, **jobs: TrainingKnobs) -> Knobs:
    return Knobs(
        inference=InferenceKnobs(max_batch_size=batch, max_queue_delay_ms=10.0, threads=1, cpus=None),
        training=jobs,
    )


def window(p99_ms: float | None, served: int = 20, shed: int = 0) -> InferenceWindow:
    return InferenceWindow(
        arrived=served + shed,
        served=served,
        failed=0,
        shed=shed,
        queue_depth=0,
        arrival_rate_per_s=2.0 * (served + shed),
        latency_p50_ms=p99_ms,
        latency_p95_ms=p99_ms,
        latency_p99_ms=p99_ms,
        slo_ms=SLO_MS,
        slo_attainment=None if p99_ms is None else 1.0,
        mean_batch_size=None if p99_ms is None else 2.0,
        batch_exec_p50_ms=None,
        batch_exec_max_ms=None,
    )


def observation(
    t: float, k: Knobs, inference: InferenceWindow | None = None, fresh: bool = True
) -> Observation:
    return Observation(
        time_s=t,
        window_s=0.5,
        knobs=k,
        inference=inference,
        training={},
        cpu_util_percent=None,
        cpu_count=2,
        inference_fresh=fresh,
    )


# --- naive ---------------------------------------------------------------------------------------


def test_naive_turns_every_gate_off_once_and_pauses_nothing() -> None:
    policy = NaivePolicy()
    k = knobs(
        a=training_knobs(gate_policy="yield", gate_max_wait_ms=50.0),
        b=training_knobs(gate_policy="off"),
        c=training_knobs(gate_policy="yield", paused=True),
    )
    action, state = policy.decide(observation(0.0, k), policy.initial_state())
    off = TrainingChange(gate_policy="off")
    assert dict(action.training) == {"a": off, "c": off}
    assert all(c.paused is None for c in action.training.values()), "naive neither pauses nor unpauses"
    assert "gate off" in action.reason and "a, c" in action.reason
    after = k.apply(action)
    assert after.training["a"] == training_knobs(gate_policy="off", gate_max_wait_ms=None)
    assert after.training["c"].paused
    for t in (1.0, 2.0):  # afterwards: nothing, even if the knobs say a gate is on again
        action, state = policy.decide(observation(t, k), state)
        assert action.is_empty()


def test_naive_without_gated_jobs_does_nothing() -> None:
    policy = NaivePolicy()
    action, state = policy.decide(observation(0.0, knobs(cl=training_knobs())), policy.initial_state())
    assert action.is_empty() and state


# --- sequential ----------------------------------------------------------------------------------


def test_sequential_yields_without_a_bound_and_unpauses() -> None:
    policy = SequentialPolicy()
    k = knobs(
        bounded=training_knobs(gate_policy="yield", gate_max_wait_ms=30.0),
        free=training_knobs(gate_policy="off"),
        paused=training_knobs(gate_policy="yield", paused=True),
    )
    action, state = policy.decide(observation(0.0, k), policy.initial_state())
    assert set(action.training) == {"bounded", "free", "paused"}
    assert action.training["paused"] == TrainingChange(paused=False)
    after = k.apply(action)
    wanted = training_knobs(gate_policy="yield", gate_max_wait_ms=None)
    assert all(after.training[job] == wanted for job in after.training)
    record = action.to_record()["training"]["bounded"]
    assert record == {"gate_policy": "yield", "gate_max_wait_ms": None}, "the bound is removed, not kept"
    action, state = policy.decide(observation(1.0, after), state)
    assert action.is_empty(), "holds once the knobs are as wanted"
    drifted = replace(after, training={**after.training, "free": training_knobs(gate_max_wait_ms=5.0)})
    action, _ = policy.decide(observation(2.0, drifted), state)
    assert dict(action.training) == {"free": TrainingChange(gate_policy="yield")}
    assert drifted.apply(action).training["free"] == wanted


def test_a_gate_change_without_a_bound_clears_the_configured_bound() -> None:
    """The control language: gate_policy and gate_max_wait_ms are one setting."""
    k = knobs(cl=training_knobs(gate_policy="yield", gate_max_wait_ms=30.0))
    assert k.apply(Action(training={"cl": TrainingChange(gate_policy="yield")})).training["cl"] == (
        training_knobs(gate_policy="yield")
    )
    paused = k.apply(Action(training={"cl": TrainingChange(paused=True)}))
    assert paused.training["cl"].gate_max_wait_ms == 30.0, "other changes leave the bound alone"
    assert TrainingChange(paused=True).changes() == {"paused": True}


# --- aimd ----------------------------------------------------------------------------------------


def test_aimd_step_rule() -> None:
    assert next_batch_size(4, over=False, additive_step=2, decrease_factor=0.9) == 6
    assert next_batch_size(5, over=True, additive_step=1, decrease_factor=0.9) == 4, "always at least 1 down"
    assert next_batch_size(40, over=True, additive_step=1, decrease_factor=0.9) == 36, "10 % down"
    assert next_batch_size(1, over=True, additive_step=1, decrease_factor=0.9) == 1, "never below 1"
    assert next_batch_size(3, over=True, additive_step=1, decrease_factor=0.1) == 1


def test_aimd_grows_under_the_slo_and_cuts_over_it() -> None:
    policy = AimdPolicy(additive_step=1, decrease_factor=0.9, headroom=0.8)
    state = policy.initial_state()
    action, state = policy.decide(observation(0.0, knobs(batch=10), window(p99_ms=80.0)), state)
    assert action.inference == InferenceChange(max_batch_size=11), "at exactly headroom x SLO: grow"
    assert "increase" in action.reason and not action.training
    action, state = policy.decide(observation(1.0, knobs(batch=20), window(p99_ms=81.0)), state)
    assert action.inference == InferenceChange(max_batch_size=18)
    assert "decrease" in action.reason and "p99 81.0 ms > 80 ms" in action.reason
    action, state = policy.decide(observation(2.0, knobs(batch=1), window(p99_ms=500.0)), state)
    assert action.is_empty(), "nothing below 1"


def test_aimd_ignores_stale_and_empty_windows_and_shedding_alone() -> None:
    policy = AimdPolicy()
    state = policy.initial_state()
    for obs in (
        observation(0.0, knobs(), window(p99_ms=500.0), fresh=False),
        observation(0.0, knobs(), window(p99_ms=None, served=0)),
        observation(0.0, knobs(), None),
        observation(0.0, replace(knobs(), inference=None), window(p99_ms=500.0)),
    ):
        action, state = policy.decide(obs, state)
        assert action.is_empty()
    action, _ = policy.decide(observation(0.0, knobs(batch=4), window(p99_ms=10.0, shed=5)), state)
    assert action.inference == InferenceChange(max_batch_size=5), "shedding is a throughput signal"


def test_aimd_converges_below_the_largest_batch_the_slo_allows() -> None:
    """A plant where p99 = 10 ms per request in the batch: the SLO of 100 ms allows 10."""
    policy = AimdPolicy()
    k, state, seen = knobs(batch=1), policy.initial_state(), []
    for t in range(40):
        batch = k.inference.max_batch_size if k.inference else 0
        seen.append(batch)
        action, state = policy.decide(observation(t, k, window(p99_ms=10.0 * batch)), state)
        k = k.apply(action)
    assert max(seen) == 11 and min(seen[20:]) == 9, "saw-tooth between 9 and 11 once settled"


# --- registry, contract, config ------------------------------------------------------------------


def config_data(name: str) -> dict[str, Any]:
    data = copy.deepcopy(TINY)
    data["controller"] = {"name": name}
    data["workloads"]["training"][0]["interleave"] = {"policy": "yield", "max_wait_ms": 20}
    return data


def contract_observations(k: Knobs) -> list[Observation]:
    observations = [observation(t / 4, k) for t in range(4)]
    observations += [
        observation(1 + t, k, window(p99, served), fresh)
        for t, (p99, served, fresh) in enumerate(
            [(50.0, 10, True), (400.0, 10, True), (400.0, 10, False), (None, 0, True), (20.0, 5, True)]
        )
    ]
    return observations


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_is_registered_keeps_the_contract_and_is_deterministic(name: str) -> None:
    assert name in registered_policies()
    config = parse_config(config_data(name))
    policy = build_policy(config.controller)
    assert policy.name == name
    k = knobs(batch=64, cl=training_knobs(gate_policy="yield", gate_max_wait_ms=20.0, paused=True))
    observations = contract_observations(k)
    check_policy(policy, observations, knob_bounds(config, (0, 1)))
    runs = []
    for _ in range(2):
        fresh = build_policy(config.controller)
        state, actions = fresh.initial_state(), []
        for obs in observations:
            action, state = fresh.decide(obs, state)
            actions.append(action)
        runs.append(actions)
    assert runs[0] == runs[1]


def test_aimd_config_reaches_the_policy() -> None:
    data = config_data("aimd")
    data["controller"].update(additive_step=3, decrease_factor=0.5, headroom=0.9)
    policy = build_policy(parse_config(data).controller)
    assert isinstance(policy, AimdPolicy)
    assert (policy.additive_step, policy.decrease_factor, policy.headroom) == (3, 0.5, 0.9)


@pytest.mark.parametrize("name", BASELINES)
def test_cotrain_validate_accepts_each_baseline(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config_data(name)))
    assert main(["validate", str(path)]) == 0
    assert f"controller {name}" in capsys.readouterr().out

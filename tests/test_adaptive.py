"""The adaptive co-scheduler against a deterministic plant: a device model written in the test.

The plant follows the CCGrid'23 batch model with a clear optimum, so the test can say what the
policy should find: e(b) = 5 + 4b ms; a batch of b at rate λ has worst latency (b-1)/λ + e(b),
inflated 1.6x when training ignores the gate (time-slicing); training runs at 100 samples/s with
the gate off, and with `yield` loses the fraction of time inference is busy.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cotrain.control import (
    Action,
    InferenceKnobs,
    InferenceWindow,
    Knobs,
    Observation,
    TrainingKnobs,
    TrainingWindow,
)
from cotrain.controllers.adaptive import (
    AdaptivePolicy,
    AdaptiveState,
    fit_exec_ms,
    leaves_a_gap,
    plan,
    predicted_worst_ms,
)
from cotrain.controllers.contract import check_policy
from cotrain.controllers.modesearch import ModeInfo, ModeSample, ModeTable, fit_mode_model
from cotrain.controllers.wrappers import Bounded, KnobBounds

SLO_MS = 150.0
BOUNDS = KnobBounds(
    max_batch_size=(1, 64),
    max_queue_delay_ms=(0.0, 1000.0),
    threads=(1, 2),
    num_workers=(0, 4),
    cpus=(0, 1),
    jobs=frozenset({"cl"}),
)


def exec_ms(b: int) -> float:
    return 5 + 4 * b


def plant(knobs: Knobs, rate: float) -> tuple[float | None, float]:
    """(p99 ms or None if unstable, training samples/s) for these knobs at this rate."""
    assert knobs.inference is not None
    b = knobs.inference.max_batch_size
    gate = knobs.training["cl"].gate_policy
    e = exec_ms(b) * (1.6 if gate == "off" else 1.0)
    if e > b / rate * 1000:
        return None, 40.0
    p99 = (b - 1) / rate * 1000 + e
    busy = rate * exec_ms(b) / b / 1000
    return p99, 100.0 if gate == "off" else 100.0 * (1 - busy) * 0.9


def observe(t: float, knobs: Knobs, rate: float) -> Observation:
    p99, samples_per_s = plant(knobs, rate)
    assert knobs.inference is not None
    b = knobs.inference.max_batch_size
    slow = p99 is None
    window = InferenceWindow(
        arrived=int(rate / 2),
        served=int(rate / 2),
        failed=0,
        shed=0,
        queue_depth=50 if slow else 0,
        arrival_rate_per_s=rate,
        latency_p50_ms=p99 or 5000.0,
        latency_p95_ms=p99 or 5000.0,
        latency_p99_ms=p99 or 5000.0,
        slo_ms=SLO_MS,
        slo_attainment=0.0 if slow or (p99 or 0) > SLO_MS else 1.0,
        mean_batch_size=float(b),
        batch_exec_p50_ms=exec_ms(b),
        batch_exec_max_ms=exec_ms(b),
    )
    training = {"cl": TrainingWindow(10, int(samples_per_s / 2), samples_per_s, 100, 1.0, False)}
    return Observation(
        time_s=t,
        window_s=0.5,
        knobs=knobs,
        inference=window,
        training=training,
        cpu_util_percent=None,
        cpu_count=2,
    )


START = Knobs(
    inference=InferenceKnobs(max_batch_size=4, max_queue_delay_ms=10.0, threads=1, cpus=None),
    training={"cl": TrainingKnobs(threads=1, cpus=None, num_workers=0, paused=False, gate_policy="yield")},
)


def drive(
    policy: AdaptivePolicy, rates: list[float], start: Knobs = START
) -> tuple[Knobs, AdaptiveState, list[Action], list[tuple[float | None, float]]]:
    bounded = Bounded(policy, BOUNDS)
    knobs, state = start, policy.initial_state()
    actions, seen = [], []
    for i, rate in enumerate(rates):
        obs = observe(i * 0.5, knobs, rate)
        seen.append(plant(knobs, rate))
        action, state = bounded.decide(obs, state)
        if not action.is_empty():
            actions.append(action)
            knobs = knobs.apply(action)
    return knobs, state, actions, seen


def distinct_configs(actions: list[Action]) -> int:
    return len({(a.inference, tuple(sorted(a.training.items()))) for a in actions if a.inference})


def test_the_model_fits_and_predicts_the_seed_stability_rule() -> None:
    alpha, beta = fit_exec_ms({2: exec_ms(2), 8: exec_ms(8)})
    assert (round(alpha, 6), round(beta, 6)) == (5.0, 4.0)
    assert predicted_worst_ms(8, 20.0, alpha, beta) == 7 / 20 * 1000 + exec_ms(8)
    assert predicted_worst_ms(1, 500.0, alpha, beta) is None  # e(1) = 9 ms > 2 ms to fill: unstable
    one = fit_exec_ms({4: 21.0})  # a single point splits into a fixed and a per-item part
    assert one[0] + 4 * one[1] == 21.0


def test_the_plan_keeps_only_feasible_candidates_largest_batches_first() -> None:
    queue = plan(20.0, SLO_MS, 1.0, {2: exec_ms(2), 8: exec_ms(8)}, 64, False, 10)
    assert queue, "something fits"
    for c in queue:
        worst = predicted_worst_ms(c.max_batch_size, 20.0, 5.0, 4.0)
        assert worst is not None and worst <= SLO_MS
    sizes = [c.max_batch_size for c in queue if c.gate_policy == "off"]
    assert sizes == sorted(sizes, reverse=True)
    assert len(plan(20.0, SLO_MS, 1.0, {2: 13.0}, 64, False, 2)) == 2  # the budget bounds it


def test_it_profiles_at_most_its_budget_then_holds_the_best_that_met_the_slo() -> None:
    policy = AdaptivePolicy(max_profiles=6, profile_windows=2)
    knobs, state, actions, _ = drive(policy, [20.0] * 80)
    assert state.phase == "hold"
    assert state.profiles_used <= 6 and distinct_configs(actions) <= 6
    assert actions[-1].reason.startswith("hold: best of")
    held = state.current
    assert held is not None
    p99, samples = plant(knobs, 20.0)
    assert p99 is not None and p99 <= SLO_MS, "the held configuration meets the SLO"
    best_measured = max(m.training_samples_per_s for m in state.measured.values() if not m.broke_slo)
    assert state.measured[held].training_samples_per_s == best_measured
    assert samples >= plant(START, 20.0)[1], "no worse for training than where it started"


def test_a_rate_step_re_plans_and_the_slo_is_held_again() -> None:
    policy = AdaptivePolicy(max_profiles=6, profile_windows=2, replan_rate_change=0.3)
    rates = [20.0] * 60 + [60.0] * 60
    knobs, state, actions, seen = drive(policy, rates)
    assert any(a.reason.startswith("re-plan: rate 20.0 -> ") for a in actions)
    assert state.phase == "hold" and state.plan_rate_per_s > 40.0  # the smoothed rate, on its way to 60
    p99, _ = plant(knobs, 60.0)
    assert p99 is not None and p99 <= SLO_MS
    assert all(p is not None and p <= SLO_MS for p, _ in seen[-10:]), "settled within the SLO"


def test_yield_is_planned_only_where_it_leaves_training_a_gap() -> None:
    points = {2: exec_ms(2), 8: exec_ms(8)}
    # full batches on a timer: the next request always waits when a batch ends; the gate never drops
    assert not leaves_a_gap(8, 7 / 60 * 1000, 60.0, 5.0, 4.0)
    assert leaves_a_gap(1, 0.0, 20.0, 5.0, 4.0)  # 9 ms batches, a request every 50 ms
    queue = plan(60.0, SLO_MS, 0.8, points, 64, False, 10, delay_ms=1000.0)
    yielding = [c for c in queue if c.gate_policy == "yield"]
    assert any(c.gate_policy == "off" for c in queue), "gate off is feasible"
    assert yielding and all(
        leaves_a_gap(c.max_batch_size, c.max_queue_delay_ms, 60.0, 5.0, 4.0) for c in yielding
    ), "yield only at small batches, where the gate drops between them"
    assert max(c.max_batch_size for c in yielding) < max(c.max_batch_size for c in queue)
    # at 400 req/s nothing is stable with the gate off; alone (a third of the time) inference
    # keeps up, with no gap for training: yield is still planned, since only it holds the SLO
    only_yield = plan(400.0, SLO_MS, 0.8, points, 64, False, 10, delay_ms=1000.0, yield_exec_factor=1 / 3)
    assert only_yield and all(c.gate_policy == "yield" for c in only_yield)
    assert not leaves_a_gap(
        only_yield[0].max_batch_size, only_yield[0].max_queue_delay_ms, 400.0, 5 / 3, 4 / 3
    )


# the CPU bench's shape: full batches (a delay that never binds first), the gate off, b=2
START_FULL = Knobs(
    inference=InferenceKnobs(max_batch_size=2, max_queue_delay_ms=1000.0, threads=1, cpus=None),
    training={"cl": TrainingKnobs(threads=1, cpus=None, num_workers=0, paused=False, gate_policy="off")},
)


def test_the_search_stops_once_nothing_left_is_predicted_to_beat_what_held() -> None:
    policy = AdaptivePolicy(max_profiles=10, profile_windows=2)
    knobs, state, actions, _ = drive(policy, [60.0] * 40, start=START_FULL)
    assert state.phase == "hold"
    # the probe at b=2, then b=4, which the refitted e(b) says is the largest batch within the SLO
    assert state.profiles_used == 2, [a.reason for a in actions]
    assert knobs.inference is not None and knobs.inference.max_batch_size == 4
    assert all(a.training["cl"].gate_policy != "yield" for a in actions if a.training)
    p99, _ = plant(knobs, 60.0)
    assert p99 is not None and p99 <= SLO_MS


def test_two_broken_windows_in_hold_fall_back() -> None:
    policy = AdaptivePolicy(max_profiles=4, profile_windows=1)
    knobs, state, _, _ = drive(policy, [20.0] * 40)
    assert state.phase == "hold"
    broken = replace(
        observe(100.0, knobs, 20.0),
        inference=replace(observe(100.0, knobs, 20.0).inference, latency_p99_ms=400.0),
    )  # type: ignore[type-var]
    action, state2 = policy.decide(broken, state)
    assert action.is_empty() and state2.violations == 1
    action, state3 = policy.decide(broken, state2)
    assert "fall back" in action.reason and state3.current is not None
    assert state3.measured[state.current].broke_slo  # type: ignore[index]


def test_stale_windows_are_never_acted_on() -> None:
    policy = AdaptivePolicy()
    stale = replace(observe(0.0, START, 20.0), inference_fresh=False)
    action, state = policy.decide(stale, policy.initial_state())
    assert action.is_empty() and state == policy.initial_state()


# --- the power-mode search ------------------------------------------------------------------------

MODES = tuple(
    ModeInfo(f"g{gpu:g}-c{cpu:g}", 12, cpu, gpu, 3199.0)
    for gpu in (306.0, 612.0, 918.0, 1300.5)
    for cpu in (729.6, 1497.6, 2201.6)
)


def test_the_mode_model_recovers_a_linear_time_and_power_law() -> None:
    table = ModeTable(MODES)
    truth_time = np.array([0.002, 0.004, 0.0, 0.001])  # s/sample: fixed, GPU, EMC, CPU shares
    truth_power = np.array([10.0, 25.0, 1.0, 3.0, 0.0])
    samples = {}
    for i, m in enumerate(MODES):
        s = float(table.time_x[i] @ truth_time)
        p = float(table.power_x[i] @ truth_power)
        samples[m.name] = ModeSample(seconds=10.0, samples=10.0 / s, steps=100, busy_s=0.0, energy_j=10 * p)
    model = fit_mode_model(table, samples, MODES[0].name)
    assert np.allclose(model.solo_s_per_sample(table), table.time_x @ truth_time, rtol=0.02)
    assert np.allclose(model.power_w(table), table.power_x @ truth_power, rtol=0.02)
    assert (model.time_theta >= 0).all() and (model.power_theta >= 0).all()
    top = table.index["g1300.5-c2201.6"]
    assert table.dominating("g918-c1497.6")[top] and not table.dominating("g1300.5-c2201.6")[0]


def mode_obs(
    t: float, knobs: Knobs, rate: float, power_w: float, budget_w: float | None = None
) -> Observation:
    """The test plant's window, on a board with power modes: faster GPU clocks shorten e(b)."""
    obs = observe(t, knobs, rate)
    gpu = next(m.gpu_mhz for m in MODES if m.name == knobs.power_mode)
    assert obs.inference is not None
    inference = replace(obs.inference, batch_exec_p50_ms=obs.inference.batch_exec_p50_ms * 1300.5 / gpu)  # type: ignore[operator]
    training = {"cl": replace(obs.training["cl"], steps=40)}
    return replace(
        obs,
        inference=inference,
        training=training,
        power_w=power_w,
        power_budget_w=budget_w,
        power_mode=knobs.power_mode,
    )


# the model learns with the gate off (training time-sliced beside inference); b=2 meets the SLO
START_OFF = Knobs(
    inference=InferenceKnobs(max_batch_size=2, max_queue_delay_ms=10.0, threads=1, cpus=None),
    training={"cl": TrainingKnobs(threads=1, cpus=None, num_workers=0, paused=False, gate_policy="off")},
    power_mode="g612-c1497.6",
)


def test_adaptive_with_a_mode_table_keeps_the_contract() -> None:
    other = replace(START_OFF, power_mode="g1300.5-c2201.6")
    observations = [mode_obs(t / 2, START_OFF, 20.0, 20.0, 30.0) for t in range(10)]
    observations += [mode_obs(5 + t / 2, other, 20.0, 32.0, 30.0) for t in range(6)]
    observations += [mode_obs(9 + t / 2, other, 60.0, 28.0, 30.0) for t in range(6)]
    bounds = replace(BOUNDS, power_modes=frozenset(m.name for m in MODES))
    policy = AdaptivePolicy(max_profiles=6, profile_windows=1, modes=MODES)
    check_policy(policy, observations, bounds)
    state, modes_asked = policy.initial_state(), set()
    for obs in observations:
        action, state = policy.decide(obs, state)
        modes_asked.add(action.power_mode)
    assert modes_asked - {None}, "the observations do drive the mode search"


def test_it_searches_power_modes_only_when_they_come_with_clocks() -> None:
    host = replace(START, power_mode="host-2cores")  # a host's emulated mode: no clocks
    for policy in (AdaptivePolicy(max_profiles=6, profile_windows=1), AdaptivePolicy(6, 1, modes=MODES)):
        state = policy.initial_state()
        for i in range(40):
            action, state = policy.decide(mode_obs_host(i / 2, host), state)
            assert action.power_mode is None
    assert state.phase == "hold"


def mode_obs_host(t: float, knobs: Knobs) -> Observation:
    return replace(observe(t, knobs, 20.0), power_mode=knobs.power_mode)


def test_it_moves_to_the_mode_the_model_picks_and_waits_out_a_held_back_switch() -> None:
    policy = AdaptivePolicy(max_profiles=8, profile_windows=1, modes=MODES)
    knobs = START_OFF
    state = policy.initial_state()
    action = Action()
    for i in range(6):
        action, state = policy.decide(mode_obs(i / 2, knobs, 20.0, 20.0), state)
        if action.power_mode is not None:
            break
    assert action.power_mode == "g1300.5-c2201.6", "no budget: the fastest mode dominates"
    assert action.reason.startswith("profile 2/8:") and "model:" in action.reason
    # the guard held the switch back (dwell time): the policy measures nothing and asks again
    again, state = policy.decide(mode_obs(3.0, knobs, 20.0, 20.0), state)
    assert again.power_mode == "g1300.5-c2201.6" and "waiting for power mode" in again.reason
    assert state.windows_here == 0 and state.mode_wait == 1


def test_a_rate_jump_re_plans_within_two_windows() -> None:
    policy = AdaptivePolicy(max_profiles=6, profile_windows=2, replan_rate_change=0.3)
    rates = [20.0] * 60 + [40.0] * 4
    bounded = Bounded(policy, BOUNDS)
    knobs, state = START, policy.initial_state()
    reasons = []
    for i, rate in enumerate(rates):
        action, state = bounded.decide(replace(observe(i * 0.5, knobs, rate)), state)
        knobs = knobs.apply(action)
        reasons.append(action.reason)
    assert reasons[-3].startswith("re-plan: rate 20.0 -> 40.0"), reasons[-4:]

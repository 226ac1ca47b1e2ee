"""The discrete-event engine: arrivals, batching, accounting, time-slicing and the gate."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cotrain.sim.calibration import calibrate
from cotrain.sim.engine import PENDING, SERVED, SHED, ArrivalSpec, arrival_times_s
from cotrain.sim.model import cpu_share
from cotrain.sim.modes import mode_space
from cotrain.sim.runner import build_engine, sim_static
from cotrain.sim.scenario import SimScenario, SimTrainingJob

BASE = SimScenario(
    arrivals=ArrivalSpec.poisson(50.0),
    max_batch_size=8,
    max_queue_delay_ms=20.0,
    slo_ms=200.0,
    admission="drop_late",
    queue_capacity=256,
    duration_s=30.0,
)


@pytest.fixture(scope="module", autouse=True)
def _calibrated() -> None:
    calibrate()  # once per module: the fits read the fixture files


def test_arrivals_constant_poisson_and_schedule() -> None:
    const = arrival_times_s(ArrivalSpec.constant(100.0), 1.0, seed=0)
    assert len(const) == 100 and np.allclose(np.diff(const), 0.01)
    poisson = arrival_times_s(ArrivalSpec.poisson(100.0), 100.0, seed=1)
    assert 9_500 < len(poisson) < 10_500 and np.all(np.diff(poisson) > 0) and poisson[-1] < 100.0
    assert np.array_equal(poisson, arrival_times_s(ArrivalSpec.poisson(100.0), 100.0, seed=1))
    steps = ArrivalSpec("poisson", ((0.0, 10.0), (50.0, 200.0)))
    t = arrival_times_s(steps, 100.0, seed=2)
    assert 300 < np.count_nonzero(t < 50) < 700 and 9_000 < np.count_nonzero(t >= 50) < 11_000
    with pytest.raises(ValueError):
        ArrivalSpec("poisson", ((1.0, 10.0),))


def test_same_seed_same_run_and_another_seed_another_run() -> None:
    device = calibrate().device
    runs = []
    for seed in (3, 3, 4):
        engine = build_engine(replace(BASE, seed=seed), device)
        engine.run_until(BASE.duration_s)
        runs.append((engine.arrivals.copy(), engine.done_s.copy(), engine.jobs[0].total_steps))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1], equal_nan=True)
    assert runs[0][2] == runs[1][2]
    assert not np.array_equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize(
    "scenario",
    [
        BASE,
        replace(BASE, arrivals=ArrivalSpec.poisson(800.0)),  # overload, drop-late
        replace(BASE, arrivals=ArrivalSpec.poisson(800.0), admission="queue_full", queue_capacity=64),
        replace(BASE, arrivals=ArrivalSpec("poisson", ((0.0, 20.0), (10.0, 300.0), (20.0, 20.0)))),
    ],
    ids=["light", "overload-drop-late", "overload-queue-full", "schedule"],
)
def test_every_request_gets_exactly_one_outcome(scenario: SimScenario) -> None:
    engine = build_engine(scenario, calibrate().device)
    engine.run_until(scenario.duration_s)
    engine.finish(scenario.drain_s)
    assert np.all(engine.status != PENDING)
    assert np.count_nonzero(engine.status == SERVED) + np.count_nonzero(engine.status == SHED) == len(
        engine.arrivals
    )
    assert np.all(engine.done_s >= engine.arrivals)
    result = sim_static(scenario)
    assert result.arrived == result.served + result.shed == len(engine.arrivals)


def test_overload_sheds_and_drop_late_bounds_latency_of_the_served() -> None:
    drop = sim_static(replace(BASE, arrivals=ArrivalSpec.poisson(800.0)))
    keep = sim_static(replace(BASE, arrivals=ArrivalSpec.poisson(800.0), admission="queue_full"))
    assert drop.shed > 0 and keep.shed > 0
    assert drop.latency_ms_max is not None and keep.latency_ms_max is not None
    assert drop.latency_ms_max < keep.latency_ms_max


def test_batcher_dispatches_single_requests_without_delay_and_full_batches_with_it() -> None:
    device = calibrate().device
    light = replace(BASE, arrivals=ArrivalSpec.constant(5.0), max_queue_delay_ms=0.0)
    engine = build_engine(light, device)
    engine.run_until(10.0)
    assert set(engine.take_window().batch_sizes) == {1}
    full = replace(BASE, arrivals=ArrivalSpec.constant(100.0), max_queue_delay_ms=60_000.0, max_batch_size=16)
    engine = build_engine(full, device)
    engine.run_until(10.0)
    assert set(engine.take_window().batch_sizes) == {16}


def test_time_slicing_inflates_inference_and_training_slows_it() -> None:
    alone = sim_static(replace(BASE, training=()))
    shared = sim_static(BASE)
    assert alone.latency_ms_p50 is not None and shared.latency_ms_p50 is not None
    assert shared.latency_ms_p50 > 1.3 * alone.latency_ms_p50
    train_alone = sim_static(replace(BASE, inference_model=None))
    assert shared.training_samples_per_s < train_alone.training_samples_per_s


def test_the_yield_gate_trades_training_for_inference_latency() -> None:
    off = sim_static(BASE)
    gated = sim_static(replace(BASE, training=(SimTrainingJob(gate_policy="yield"),)))
    assert gated.latency_ms_p99 is not None and off.latency_ms_p99 is not None
    assert gated.latency_ms_p99 < off.latency_ms_p99
    assert gated.training_samples_per_s < off.training_samples_per_s


def test_too_few_dataloader_workers_stall_training() -> None:
    workers = sim_static(replace(BASE, inference_model=None))
    none = sim_static(replace(BASE, inference_model=None, training=(SimTrainingJob(num_workers=0),)))
    assert none.training_samples_per_s < 0.9 * workers.training_samples_per_s


def test_a_smaller_power_mode_is_slower_and_draws_less() -> None:
    maxn = sim_static(replace(BASE, inference_model=None))
    low = sim_static(replace(BASE, inference_model=None, mode="MODE_15W"))
    assert low.training_samples_per_s < maxn.training_samples_per_s / 3
    assert low.power_w < maxn.power_w / 2


def test_one_online_core_shared_by_seven_processes_is_slower_than_twelve() -> None:
    """Inference, a training job and its five loader workers: seven processes. With one online
    core they share it; at the same clocks with twelve, each has a core of its own."""
    scenario = replace(BASE, training=(SimTrainingJob(num_workers=5),), mode="MAXN")
    maxn = mode_space(scenario.board).resolve("MAXN")
    one_core = replace(maxn, cores=1)
    twelve = sim_static(scenario, replace(scenario.initial_knobs(), power_mode=maxn.name))
    single = sim_static(scenario, replace(scenario.initial_knobs(), power_mode=one_core.name))
    assert single.training_samples_per_s < 0.8 * twelve.training_samples_per_s
    assert single.latency_ms_p50 is not None and twelve.latency_ms_p50 is not None
    assert single.latency_ms_p50 > twelve.latency_ms_p50
    assert cpu_share(1, 7) == pytest.approx(1 / 7) and cpu_share(12, 7) == 1.0


def test_too_few_loader_workers_make_training_wait_for_data() -> None:
    """Data loading on the CPU must keep up with the GPU step: with no worker the main process
    loads each batch before its step; at the board's lowest CPU clock one worker cannot keep up
    either; enough workers hide it. The wait reaches the controller as `data_wait_fraction`."""
    from cotrain.control import Action
    from cotrain.sim.runner import run_policy
    from tests.test_sim_runner import Scripted

    space = mode_space(BASE.board)
    maxn = space.resolve("MAXN")
    slow_cpu = min(
        (
            m
            for m in space.modes
            if (m.cores, m.gpu_mhz, m.emc_mhz) == (maxn.cores, maxn.gpu_mhz, maxn.emc_mhz)
        ),
        key=lambda m: m.cpu_mhz,
    )
    waits = {}
    rates = {}
    for workers in (0, 1, 8):
        job = SimTrainingJob(num_workers=workers)
        scenario = replace(BASE, training=(job,), duration_s=10.0, mode=slow_cpu.name)
        seen = Scripted(Action())
        result = run_policy(scenario, seen)
        waits[workers] = np.mean([o.training["train"].data_wait_fraction for o in seen.seen[2:]])
        rates[workers] = result.training_samples_per_s
    assert waits[0] > 0.2 and waits[1] > 0.1, waits
    assert waits[8] < 0.05, waits
    assert rates[8] > 2 * rates[1] and rates[1] > rates[0], rates

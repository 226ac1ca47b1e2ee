"""Running a real controller against the simulator, in simulated time.

The loop is the runtime's (cotrain/runtime.py), with the device replaced by the engine: every
`period_s` of simulated time the window's records become the same `InferenceStats` and
`TrainingStats` messages the workers send, `build_observation` turns them into an Observation,
the policy (wrapped by `wrap_policy` from the board's `sim_capabilities`, as the runtime wraps
it from the platform's) decides, and the knob changes are applied to the engine. No wall-clock
time passes, so a 10-minute scenario takes seconds.

`sim_static` evaluates one fixed configuration without a controller loop: it is what an oracle
grid search or an exhaustive search over the mode space calls thousands of times.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from cotrain.control import Knobs, Observation
from cotrain.controllers.base import Policy
from cotrain.controllers.capabilities import wrap_policy
from cotrain.controllers.wrappers import PowerModeRules
from cotrain.messages import InferenceStats, TrainingStats
from cotrain.observe import build_observation
from cotrain.platform.base import TelemetrySample
from cotrain.sim.calibration import calibrate
from cotrain.sim.engine import (
    SERVED,
    SHED,
    Engine,
    FloatArray,
    InferenceSetup,
    TrainingSetup,
    WindowStats,
    arrival_times_s,
)
from cotrain.sim.model import DeviceModel
from cotrain.sim.modes import SimMode, mode_space
from cotrain.sim.policies import sim_capabilities
from cotrain.sim.scenario import SimScenario, SimTrainingJob, scenario_from_config

__all__ = [
    "SimResult",
    "SimScenario",
    "SimTrainingJob",
    "TraceRow",
    "build_engine",
    "run_policy",
    "scenario_from_config",
    "sim_power_rules",
    "sim_static",
]


@dataclass(frozen=True)
class TraceRow:
    """One control window: what was observed and the knobs in force during it."""

    t_s: float  # end of the window
    arrival_rate_per_s: float
    latency_p99_ms: float | None
    slo_attainment: float | None
    queue_depth: int
    mean_batch_size: float | None
    training_samples_per_s: float
    power_w: float
    max_batch_size: int | None
    max_queue_delay_ms: float | None
    power_mode: str | None
    training: tuple[tuple[str, int, int, bool, str], ...]  # (job, batch_size, workers, paused, gate)


@dataclass(frozen=True)
class SimResult:
    scenario: SimScenario
    policy: str
    arrived: int
    served: int
    shed: int
    slo_attainment: float  # served within the SLO / arrived
    latency_ms_p50: float | None  # of served requests
    latency_ms_p99: float | None
    latency_ms_max: float | None
    training_samples_per_s: float  # all jobs, over the scenario's duration
    training_steps_per_s: Mapping[str, float]
    power_w: float  # mean over the scenario's duration
    energy_j: float
    trace: tuple[TraceRow, ...]
    configs: tuple[Knobs, ...]  # distinct knob settings applied, in order of first use
    wall_s: float
    # the share of the duration inference's batches need the device for, alone (solo times)
    inference_busy: float | None = None
    # per request, in arrival order: when it arrived and its latency (NaN: shed, never served)
    arrivals_s: FloatArray = field(default_factory=lambda: np.zeros(0), compare=False, repr=False)
    latencies_ms: FloatArray = field(default_factory=lambda: np.zeros(0), compare=False, repr=False)

    @property
    def configs_profiled(self) -> int:
        return len(self.configs)


def sim_power_rules(
    scenario: SimScenario, device: DeviceModel, *, min_dwell_s: float = 0.0
) -> PowerModeRules:
    """The runtime's power-mode guard rules on the simulated board: modes ordered from fastest to
    slowest (by the calibrated time factor), the scenario's power budget, and every mode whose
    GPU TPC gating differs from the starting mode's marked as needing a reboot (as on a Jetson)."""
    space = mode_space(scenario.board)
    start = space.resolve(scenario.mode)
    ordered = sorted(space.modes, key=lambda m: (device.mix.factor(m), -m.cores, -m.cpu_mhz))
    names = [space.label(m) for m in ordered]
    reboot = frozenset(n for n, m in zip(names, ordered, strict=True) if m.gpu_tpcs != start.gpu_tpcs)
    return PowerModeRules(
        order=tuple(names),
        needs_reboot=reboot,
        min_dwell_s=min_dwell_s,
        power_budget_w=scenario.power_budget_w,
    )


def build_engine(scenario: SimScenario, device: DeviceModel, knobs: Knobs | None = None) -> Engine:
    """An engine at t = 0 for `scenario`, with `knobs` (default: the scenario's own)."""
    space = mode_space(scenario.board)
    knobs = knobs or scenario.initial_knobs()
    mode = space.resolve(knobs.power_mode or scenario.mode)
    inference = None
    arrivals = np.zeros(0)
    if scenario.inference_model is not None:
        inference = InferenceSetup(
            speed=device.inference_speed(scenario.inference_model, scenario.image_size),
            slo_ms=scenario.slo_ms,
            queue_capacity=scenario.queue_capacity,
            admission=scenario.admission,
            late_ms=scenario.late_ms,
        )
        arrivals = arrival_times_s(scenario.arrivals, scenario.duration_s, scenario.seed)
    training = [
        TrainingSetup(j.name, device.training_speed(j.model, j.image_size), start_s=j.start_s)
        for j in scenario.training
    ]
    return Engine(
        device, mode, knobs, arrivals_s=arrivals, inference=inference, training=training, seed=scenario.seed
    )


def _observation(
    w: WindowStats, knobs: Knobs, scenario: SimScenario, mode: SimMode, label: str
) -> Observation:
    """The Observation the runtime would build from this window: the same stats messages the
    workers send and a telemetry sample of the simulated board."""
    end_ns = round(w.end_s * 1e9)
    inference_stats = None
    if scenario.inference_model is not None:
        inference_stats = [
            InferenceStats(
                window_end_ns=end_ns,
                arrived=w.arrived,
                served=w.served,
                failed=0,
                shed=w.shed,
                queue_depth=w.queue_depth,
                latencies_ms=w.latencies_ms.tolist(),
                batch_sizes=list(w.batch_sizes),
                batch_exec_ms=list(w.batch_exec_ms),
                window_s=w.window_s,
            )
        ]
    training_stats = {
        job: [
            TrainingStats(
                window_end_ns=end_ns,
                steps=w.train_steps[job],
                samples=w.train_samples[job],
                total_steps=w.train_total_steps[job],
                last_loss=None,
                paused=w.train_paused[job],
                data_wait_ms=w.train_data_wait_s.get(job, 0.0) * 1000.0,
            )
        ]
        for job in w.train_steps
    }
    sample = TelemetrySample(
        cpu_util_percent=min(100.0, 100.0 * w.cpu_busy_cores / mode.cores),
        per_cpu_util_percent=None,
        memory_used_mb=None,
        power_w=w.power_w,
        gpu_util_percent=100.0 * w.gpu_busy,
        power_mode=label,
        source="sim",
    )
    return build_observation(
        time_s=w.end_s,
        window_s=w.window_s,
        knobs=knobs,
        inference_stats=inference_stats,
        slo_ms=scenario.slo_ms if scenario.inference_model is not None else None,
        training_stats=training_stats,
        sample=sample,
        cpu_count=mode.cores,
        power_budget_w=scenario.power_budget_w,
    )


def _row(obs: Observation, w: WindowStats) -> TraceRow:
    inf = obs.inference
    k = obs.knobs
    return TraceRow(
        t_s=obs.time_s,
        arrival_rate_per_s=inf.arrival_rate_per_s if inf else 0.0,
        latency_p99_ms=inf.latency_p99_ms if inf else None,
        slo_attainment=inf.slo_attainment if inf else None,
        queue_depth=inf.queue_depth if inf else 0,
        mean_batch_size=inf.mean_batch_size if inf else None,
        training_samples_per_s=sum(t.samples_per_s for t in obs.training.values()),
        power_w=w.power_w,
        max_batch_size=k.inference.max_batch_size if k.inference else None,
        max_queue_delay_ms=k.inference.max_queue_delay_ms if k.inference else None,
        power_mode=k.power_mode,
        training=tuple(
            (job, t.batch_size, t.num_workers, t.paused, t.gate_policy)
            for job, t in sorted(k.training.items())
        ),
    )


def _result(
    scenario: SimScenario,
    policy: str,
    engine: Engine,
    windows: list[WindowStats],
    trace: list[TraceRow],
    configs: list[Knobs],
    started: float,
) -> SimResult:
    arrived = len(engine.arrivals)
    served_mask = engine.status == SERVED
    latencies_ms = (engine.done_s[served_mask] - engine.arrivals[served_mask]) * 1000.0
    within = int(np.count_nonzero(latencies_ms <= scenario.slo_ms))
    timed = [w for w in windows if w.end_s <= scenario.duration_s + 1e-9]
    energy = sum(w.power_w * w.window_s for w in timed)
    span = sum(w.window_s for w in timed) or scenario.duration_s
    steps = {j: sum(w.train_steps[j] for w in timed) / scenario.duration_s for j in _job_names(engine)}
    samples = sum(sum(w.train_samples.values()) for w in timed)

    def q(p: float) -> float | None:
        return float(np.percentile(latencies_ms, p)) if len(latencies_ms) else None

    return SimResult(
        scenario=scenario,
        policy=policy,
        arrived=arrived,
        served=int(served_mask.sum()),
        shed=int(np.count_nonzero(engine.status == SHED)),
        slo_attainment=within / arrived if arrived else 1.0,
        latency_ms_p50=q(50),
        latency_ms_p99=q(99),
        latency_ms_max=float(latencies_ms.max()) if len(latencies_ms) else None,
        training_samples_per_s=samples / scenario.duration_s,
        training_steps_per_s=steps,
        power_w=energy / span,
        energy_j=energy,
        trace=tuple(trace),
        configs=tuple(configs),
        wall_s=time.perf_counter() - started,
        inference_busy=min(1.0, sum(sum(w.batch_solo_ms) for w in timed) / 1000.0 / scenario.duration_s)
        if scenario.inference_model is not None
        else None,
        arrivals_s=engine.arrivals.copy(),
        latencies_ms=np.where(served_mask, (engine.done_s - engine.arrivals) * 1000.0, np.nan),
    )


def _job_names(engine: Engine) -> list[str]:
    return [j.name for j in engine.jobs]


def run_policy(
    scenario: SimScenario,
    policy: Policy,
    *,
    device: DeviceModel | None = None,
    period_s: float | None = None,
    power_rules: PowerModeRules | None = None,
) -> SimResult:
    """Drive `policy` (bounded like the runtime bounds it) through `scenario` in simulated time.

    With `power_rules` (e.g. `sim_power_rules`) the policy is also wrapped in the runtime's
    `PowerModeGuard` (dwell time, budget, reboot modes); without, any mode of the space goes."""
    started = time.perf_counter()
    device = device or calibrate().device
    space = mode_space(scenario.board)
    mode = space.resolve(scenario.mode)
    knobs = replace(scenario.initial_knobs(), power_mode=space.label(mode))
    engine = build_engine(scenario, device, knobs)
    bounded = wrap_policy(policy, sim_capabilities(scenario, space, power_rules))
    state = bounded.initial_state()
    period = period_s or scenario.control_period_s
    windows: list[WindowStats] = []
    trace: list[TraceRow] = []
    configs = [knobs]
    t = 0.0
    while t < scenario.duration_s - 1e-9:
        t = min(scenario.duration_s, t + period)
        engine.run_until(t)
        w = engine.take_window()
        windows.append(w)
        obs = _observation(w, knobs, scenario, mode, space.label(mode))
        trace.append(_row(obs, w))
        if t >= scenario.duration_s - 1e-9:
            break
        action, state = bounded.decide(obs, state)
        if action.is_empty():
            continue
        if action.power_mode is not None:
            mode = space.resolve(action.power_mode)
        knobs = replace(knobs.apply(action), power_mode=space.label(mode))
        engine.set_knobs(knobs, mode)
        if knobs not in configs:
            configs.append(knobs)
    engine.finish(scenario.drain_s)
    windows.append(engine.take_window())
    return _result(scenario, bounded.name, engine, windows, trace, configs, started)


def sim_static(
    scenario: SimScenario, knobs: Knobs | None = None, *, device: DeviceModel | None = None
) -> SimResult:
    """One fixed configuration (default: the scenario's), straight through: no control loop."""
    started = time.perf_counter()
    device = device or calibrate().device
    space = mode_space(scenario.board)
    knobs = knobs or scenario.initial_knobs()
    mode = space.resolve(knobs.power_mode or scenario.mode)
    knobs = replace(knobs, power_mode=space.label(mode))
    engine = build_engine(scenario, device, knobs)
    engine.run_until(scenario.duration_s)
    w = engine.take_window()
    obs = _observation(w, knobs, scenario, mode, space.label(mode))
    engine.finish(scenario.drain_s)
    windows = [w, engine.take_window()]
    return _result(scenario, "static", engine, windows, [_row(obs, w)], [knobs], started)

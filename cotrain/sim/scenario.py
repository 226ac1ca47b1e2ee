"""What to simulate: a small frozen `SimScenario`, and mapping an experiment config onto it.

Why a separate, smaller description than `ExperimentConfig`: the simulator needs only what
changes the device's timing (models, arrivals, batching, training jobs, the mode), and oracle or
exhaustive searches build thousands of scenarios, which must be cheap and hashable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

from cotrain.config import (
    BurstyArrivalsConfig,
    ConstantArrivalsConfig,
    ExperimentConfig,
    PoissonArrivalsConfig,
    RateScheduleArrivalsConfig,
    TraceArrivalsConfig,
)
from cotrain.control import InferenceKnobs, Knobs, TrainingKnobs
from cotrain.sim.engine import ArrivalSpec
from cotrain.sim.model import REFERENCE_IMAGE_SIZE, canonical_model
from cotrain.sim.modes import DEFAULT_BOARD, mode_space


@dataclass(frozen=True)
class SimTrainingJob:
    name: str = "train"
    model: str = "mobilenet_v3_large"
    batch_size: int = 16
    num_workers: int = 4
    image_size: int = REFERENCE_IMAGE_SIZE
    gate_policy: Literal["off", "yield"] = "off"
    gate_max_wait_ms: float | None = None
    paused: bool = False
    duty_cycle: float = 1.0
    start_s: float = 0.0


@dataclass(frozen=True)
class SimScenario:
    """A simulated run. Defaults are CCGrid'23's setup at inference batch 16."""

    name: str = "scenario"
    inference_model: str | None = "resnet50"  # None: training only
    image_size: int = REFERENCE_IMAGE_SIZE
    arrivals: ArrivalSpec = field(default_factory=lambda: ArrivalSpec.constant(100.0))
    slo_ms: float = 500.0
    max_batch_size: int = 16
    max_queue_delay_ms: float = 60_000.0
    queue_capacity: int = 100_000
    admission: Literal["drop_late", "queue_full"] = "queue_full"
    late_ms: float | None = None
    training: tuple[SimTrainingJob, ...] = (SimTrainingJob(),)
    duration_s: float = 60.0
    seed: int = 0
    mode: str = "MAXN"  # a SimMode name or a named nvpmodel mode of `board`
    board: str = DEFAULT_BOARD
    control_period_s: float = 1.0
    drain_s: float = 5.0
    power_budget_w: float | None = None

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.control_period_s <= 0:
            raise ValueError("duration_s and control_period_s must be > 0")
        if self.queue_capacity < 1 or self.max_batch_size < 1:
            raise ValueError("queue_capacity and max_batch_size must be >= 1")
        names = [j.name for j in self.training]
        if len(set(names)) != len(names):
            raise ValueError(f"training job names must be unique: {names}")

    def initial_knobs(self) -> Knobs:
        """The knob settings the run starts with, as the runtime's `initial_knobs` builds them."""
        cores = mode_space(self.board).resolve(self.mode).cores
        share = max(1, cores // max(1, len(self.training) + (1 if self.inference_model else 0)))
        inference = None
        if self.inference_model is not None:
            inference = InferenceKnobs(
                max_batch_size=self.max_batch_size,
                max_queue_delay_ms=self.max_queue_delay_ms,
                threads=share,
                cpus=None,
            )
        training = {
            j.name: TrainingKnobs(
                threads=share,
                cpus=None,
                num_workers=j.num_workers,
                paused=j.paused,
                batch_size=j.batch_size,
                duty_cycle=j.duty_cycle,
                gate_policy=j.gate_policy,
                gate_max_wait_ms=j.gate_max_wait_ms,
            )
            for j in self.training
        }
        return Knobs(inference=inference, training=MappingProxyType(training), power_mode=self.mode)


def _arrivals(config: ExperimentConfig) -> ArrivalSpec:
    primary = config.workloads.primary_inference()
    assert primary is not None
    a = primary.config.arrivals
    if isinstance(a, ConstantArrivalsConfig):
        return ArrivalSpec.constant(a.rate_per_s)
    if isinstance(a, PoissonArrivalsConfig):
        return ArrivalSpec.poisson(a.rate_per_s)
    if isinstance(a, RateScheduleArrivalsConfig):
        return ArrivalSpec(
            "poisson" if a.poisson else "constant", tuple((s.at_s, s.rate_per_s) for s in a.steps)
        )
    if isinstance(a, TraceArrivalsConfig):
        return ArrivalSpec.replay(a, _duration_s(config))
    if isinstance(a, BurstyArrivalsConfig):
        period = a.on_s + a.off_s
        steps: list[tuple[float, float]] = []
        for k in range(math.ceil(_duration_s(config) / period)):
            steps += [(k * period, a.on_rate_per_s), (k * period + a.on_s, a.off_rate_per_s)]
        return ArrivalSpec("poisson", tuple(steps))
    if a is None:
        raise ValueError("the simulator generates its own requests: give the service `arrivals`")
    raise ValueError(
        f"arrival process {a.process!r} is not simulated (constant, poisson, schedule, bursty, trace are)"
    )


def _duration_s(config: ExperimentConfig) -> float:
    if config.duration_s is None:
        raise ValueError("the simulator needs duration_s: a simulated run has an end")
    return config.duration_s


def _seed(config: ExperimentConfig) -> int:
    primary = config.workloads.primary_inference()
    arrivals = primary.config.arrivals if primary else None
    return int(getattr(arrivals, "seed", config.seed))


def _mode(config: ExperimentConfig, board: str) -> str:
    """The configured power mode (name or id) on the board; unset: the board's default mode."""
    space = mode_space(board)
    wanted = config.platform.power_mode
    if wanted is None:
        return space.default_name
    if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.isdecimal()):
        from cotrain.power_modes.boards import load_board

        return load_board(board).mode(int(wanted)).name
    space.resolve(wanted)  # raises with the known names
    return wanted


def scenario_from_config(config: ExperimentConfig, *, board: str = DEFAULT_BOARD) -> SimScenario:
    """The simulated counterpart of an experiment config, where one exists.

    Mapped: the primary inference service (model, image size, arrivals, SLO, batching, queue,
    admission), every training job (model, batch size, workers, gate, paused, duty cycle), the
    duration, the power mode and the controller's period. Not simulated (ignored): threads and
    CPU placement, model instances, variant precision (a variant counts as its architecture),
    further inference services, federated/continual specifics (they train like plain SGD).
    A trace is replayed through the real service's arrival offsets. Raises ValueError for
    unknown models."""
    training = tuple(
        SimTrainingJob(
            name=j.name,
            model=canonical_model(j.model.name),
            batch_size=j.batch_size,
            num_workers=j.num_workers,
            image_size=j.dataset.image_size,
            gate_policy=j.interleave.policy,
            gate_max_wait_ms=j.interleave.max_wait_ms,
            paused=j.paused,
            duty_cycle=j.duty_cycle,
        )
        for j in config.workloads.training
    )
    scenario = SimScenario(
        name=config.name,
        inference_model=None,
        training=training,
        duration_s=_duration_s(config),
        seed=_seed(config),
        mode=_mode(config, board),
        board=board,
        control_period_s=config.controller.period_s,
    )
    primary = config.workloads.primary_inference()
    if primary is None:
        return scenario
    i = primary.config
    return replace(
        scenario,
        inference_model=canonical_model(i.variants[0] if i.variants else i.model.name),
        image_size=i.dataset.image_size,
        arrivals=_arrivals(config),
        slo_ms=i.slo_ms,
        max_batch_size=i.batching.max_batch_size,
        max_queue_delay_ms=i.batching.max_queue_delay_ms,
        queue_capacity=i.queue_capacity,
        admission=i.admission.policy,
        late_ms=i.admission.late_ms,
        drain_s=i.drain_timeout_s,
    )

"""The control language: what a controller sees (`Observation`) and what it may change (`Action`).

Both are frozen dataclasses, so a policy cannot mutate what it was given and every decision can
be logged as plain data. Units are in the field names. An `Action` holds only *changes*: a field
left as None means "leave this knob as it is".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any


def _frozen_map(items: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(items or {}))


# --- knob settings (the current state of every knob) ---------------------------------------------


@dataclass(frozen=True)
class InferenceKnobs:
    max_batch_size: int
    max_queue_delay_ms: float
    threads: int
    cpus: tuple[int, ...] | None  # None: unpinned
    variant: str | None = None  # None: the single configured model
    instances: int = 1  # concurrent model executions sharing the queue


@dataclass(frozen=True)
class TrainingKnobs:
    threads: int
    cpus: tuple[int, ...] | None
    num_workers: int
    paused: bool
    batch_size: int = 32
    duty_cycle: float = 1.0
    gate_policy: str = "off"  # "off" | "yield"
    gate_max_wait_ms: float | None = None  # with "yield"; None: wait as long as inference is busy


@dataclass(frozen=True)
class Knobs:
    inference: InferenceKnobs | None
    training: Mapping[str, TrainingKnobs] = field(default_factory=_frozen_map)
    power_mode: str | None = None  # None: the platform has no modes, or it was never read

    def apply(self, action: Action) -> Knobs:
        """The knob settings after `action` (which is assumed already bounded)."""
        inference = self.inference
        if inference is not None and action.inference is not None:
            inference = replace(inference, **action.inference.changes())
        training = dict(self.training)
        for job, change in action.training.items():
            if job in training:
                training[job] = replace(training[job], **change.changes())
        power_mode = action.power_mode if action.power_mode is not None else self.power_mode
        return Knobs(inference=inference, training=_frozen_map(training), power_mode=power_mode)


# --- changes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceChange:
    variant: str | None = None
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    threads: int | None = None
    cpus: tuple[int, ...] | None = None
    instances: int | None = None

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class TrainingChange:
    threads: int | None = None
    cpus: tuple[int, ...] | None = None
    num_workers: int | None = None
    paused: bool | None = None
    batch_size: int | None = None
    duty_cycle: float | None = None
    gate_policy: str | None = None
    gate_max_wait_ms: float | None = None  # applies together with gate_policy

    def changes(self) -> dict[str, Any]:
        """The knobs this change sets. The gate's policy and its wait bound are one setting: with
        `gate_policy` given, a None `gate_max_wait_ms` means "no bound" and is kept, so applying
        the change clears a previously configured bound (as the worker's SetInterleave does)."""
        changes = {k: v for k, v in asdict(self).items() if v is not None}
        if self.gate_policy is not None:
            changes["gate_max_wait_ms"] = self.gate_max_wait_ms
        return changes


@dataclass(frozen=True)
class Action:
    """Optional knob changes plus the reason, which goes into decisions.jsonl."""

    inference: InferenceChange | None = None
    training: Mapping[str, TrainingChange] = field(default_factory=_frozen_map)
    power_mode: str | None = None  # a mode name of the platform
    reason: str = ""
    notes: tuple[str, ...] = ()  # what the safety wrappers changed or refused, and why

    def is_empty(self) -> bool:
        inference_empty = self.inference is None or not self.inference.changes()
        training_empty = all(not c.changes() for c in self.training.values())
        return inference_empty and training_empty and self.power_mode is None

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form: only the knobs that change."""
        record: dict[str, Any] = {}
        if self.inference is not None and self.inference.changes():
            record["inference"] = _jsonable(self.inference.changes())
        training = {job: _jsonable(c.changes()) for job, c in self.training.items() if c.changes()}
        if training:
            record["training"] = training
        if self.power_mode is not None:
            record["power_mode"] = self.power_mode
        return record


def _jsonable(changes: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}


NO_ACTION = Action()


# --- observation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceWindow:
    """Aggregates of the inference service over one control window."""

    arrived: int
    served: int
    failed: int
    shed: int
    queue_depth: int
    arrival_rate_per_s: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    slo_ms: float
    slo_attainment: float | None  # served within SLO / finished in window; None when nothing finished
    mean_batch_size: float | None
    batch_exec_p50_ms: float | None
    batch_exec_max_ms: float | None


@dataclass(frozen=True)
class TrainingWindow:
    """Aggregates of one training job over one control window."""

    steps: int
    samples: int
    samples_per_s: float
    total_steps: int
    last_loss: float | None
    paused: bool
    # the share of the window the job waited for data (loader workers too few or too slow)
    data_wait_fraction: float = 0.0


@dataclass(frozen=True)
class Observation:
    """Everything a policy may look at. Time is data here: policies never read a clock."""

    time_s: float  # seconds since the run started
    window_s: float
    knobs: Knobs
    inference: InferenceWindow | None
    training: Mapping[str, TrainingWindow]
    cpu_util_percent: float | None
    cpu_count: int
    power_w: float | None = None
    power_budget_w: float | None = None
    temperature_c: float | None = None
    gpu_util_percent: float | None = None
    power_mode: str | None = None  # as the platform reports it
    inference_fresh: bool = True  # False: no new inference stats arrived since the last tick
    variants: tuple[VariantInfo, ...] = ()  # the ladder, heaviest first
    # (variant, batch) -> p50 ms; read-only, as every field of an Observation
    profile_ms: Mapping[tuple[str, int], float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class VariantInfo:
    name: str
    accuracy: float | None
    accuracy_source: str  # "measured" | "imagenet-metadata" | "unknown"

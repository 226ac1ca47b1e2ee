"""Typed messages between the runtime and its workload processes.

Dataclasses over a multiprocessing Pipe, dispatched by type (never dicts decoded in if-chains).
Only small window aggregates travel to the runtime; per-request and per-step records go straight
to files written by the process that owns them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn

# --- runtime -> worker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Begin work; `t0_ns` is the run's time zero on the shared monotonic clock.

    A restarted inference process gets `first_request_id`: the requests before it were served or
    accounted for by the runtime (recovery.py), so the load generator resumes there.
    """

    t0_ns: int
    first_request_id: int = 0


@dataclass(frozen=True)
class Stop:
    reason: str = "run finished"


@dataclass(frozen=True)
class SetBatching:
    max_batch_size: int
    max_queue_delay_ms: float


@dataclass(frozen=True)
class SetVariant:
    """Serve this variant of the ladder: prepared off the serving path, swapped between batches."""

    variant: str


@dataclass(frozen=True)
class SetThreads:
    threads: int


@dataclass(frozen=True)
class SetInstances:
    """Concurrent model executions sharing the inference queue (Triton's instance count)."""

    instances: int


@dataclass(frozen=True)
class SetNumWorkers:
    num_workers: int


@dataclass(frozen=True)
class SetPaused:
    paused: bool


@dataclass(frozen=True)
class SetBatchSize:
    batch_size: int


@dataclass(frozen=True)
class SetDutyCycle:
    duty_cycle: float


@dataclass(frozen=True)
class SetInterleave:
    policy: str  # "off" | "yield"
    max_wait_ms: float | None


@dataclass(frozen=True)
class LoadModel:
    """Prepare the weights at `path` off the serving path, then swap them in between batches."""

    path: str
    version: int
    source: str  # the job that trained them


def unhandled(message: NoReturn) -> NoReturn:
    """The end of an exhaustive dispatch over `Command`: mypy rejects a call here unless every
    member of the union has its own case, so a new command cannot be forgotten by a worker."""
    raise AssertionError(f"no case for {message!r}")


Command = (
    LoadModel
    | Start
    | Stop
    | SetBatching
    | SetVariant
    | SetThreads
    | SetInstances
    | SetNumWorkers
    | SetPaused
    | SetBatchSize
    | SetDutyCycle
    | SetInterleave
)


# --- worker -> runtime ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    pid: int
    detail: str = ""


@dataclass(frozen=True)
class Applied:
    """A knob change took effect inside the worker at `at_ns` (its next safe boundary)."""

    knob: str
    value: object
    at_ns: int


@dataclass(frozen=True)
class InferenceStats:
    """One stats window of the inference service."""

    window_end_ns: int
    arrived: int
    served: int
    failed: int
    shed: int
    queue_depth: int
    latencies_ms: list[float] = field(default_factory=list)  # of requests served in the window
    batch_sizes: list[int] = field(default_factory=list)
    batch_exec_ms: list[float] = field(default_factory=list)
    window_s: float = 0.0  # how long this stats window lasted (the rate is arrived / window_s)


@dataclass(frozen=True)
class TrainingStats:
    window_end_ns: int
    steps: int
    samples: int
    total_steps: int
    last_loss: float | None
    paused: bool
    data_wait_ms: float = 0.0  # of the window, spent waiting for the next minibatch's data


@dataclass(frozen=True)
class ModelReady:
    """A training job saved a better model (atomically) at `path`."""

    path: str
    version: int
    accuracy: float


@dataclass(frozen=True)
class ModelSwapped:
    """The inference service now serves `version`; `prepare_ms` was spent off the serving path."""

    version: int
    prepare_ms: float
    at_ns: int


@dataclass(frozen=True)
class Finished:
    detail: str = ""


@dataclass(frozen=True)
class WorkerFailed:
    """The worker hit an error it cannot recover from; it exits after sending this."""

    error: str
    traceback: str = ""


@dataclass(frozen=True)
class CommandRefused:
    """A command this kind of worker has no handler for reached it. The runtime routed it wrongly;
    the worker says so instead of ignoring it, and the runtime records it."""

    command: str
    at_ns: int


Report = (
    Ready
    | Applied
    | InferenceStats
    | TrainingStats
    | ModelReady
    | ModelSwapped
    | Finished
    | WorkerFailed
    | CommandRefused
)

"""The discrete-event engine: a simulated clock, arrivals, a dynamic batcher, GPU time-slicing.

What it models, and why each piece is there:
- arrivals (constant or Poisson, with a rate schedule) from a seeded numpy generator, so runs
  are reproducible;
- a Triton-style dynamic batcher with the project's semantics (workloads/inference/batcher.py):
  dispatch at `max_batch_size` waiting requests or when the oldest has waited
  `max_queue_delay_ms`; a bounded queue that sheds arrivals when full; optional drop-late
  admission (a request already past `late_ms` at dispatch is shed, not run);
- one inference instance and any number of training jobs sharing the GPU. Without MPS the GPU
  time-slices between processes that both have work: each runs at its share of solo speed
  (model.Contention), which inflates both and, with the per-batch spread, gives jitter;
- the interleaving gate (cotrain/gate.py): inference is "busy" while a request waits or a batch
  runs; a training job with gate policy `yield` checks it before each minibatch and waits until
  it is lowered (or `gate_max_wait_ms` passes). A minibatch already running is not preempted;
- training minibatches back to back; the dataloader's workers prepare batches on CPU cores in
  parallel (prefetching 2 per worker, as PyTorch does), so too few workers stall the GPU step.
  With 0 workers the main process loads each batch before its step. Time spent waiting for data
  is counted per job (`WindowStats.train_data_wait_s`);
- CPU contention: every process with work at the current knobs (the inference process, each
  running training job's main process and its loader workers) wants a core; when they
  outnumber the online cores, each gets an even share (`model.cpu_share`), which slows
  host-side launch work, the CPU part of each step and data loading alike. Threads inside a
  process are not modelled (a process counts as one core's demand).

Work is fluid between events: each running job has a remaining fraction of its solo duration at
the current mode and progresses at its share of the GPU. Events are arrivals that complete a
batch, queue-delay timeouts, completions, waits ending, and the horizon. Arrivals are not events
of their own (they are admitted in bulk when the clock passes them), which keeps a 10-minute run
at 100 requests/s to about one event per batch and per training step.

Every arrived request ends with exactly one outcome: served or shed (queue full, late, or still
waiting when the run stops).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from cotrain.config import ArrivalsConfig
from cotrain.control import Knobs
from cotrain.sim.model import DeviceModel, InferenceSpeed, TrainingSpeed, cpu_share
from cotrain.sim.modes import SimMode
from cotrain.workloads.inference.arrivals import arrival_offsets_s

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PENDING, SERVED, SHED = 0, 1, 2
PREFETCH_PER_WORKER = 2  # PyTorch DataLoader's default prefetch_factor
_EPS = 1e-9
_NOISE_CHUNK = 4096


# --- arrivals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrivalSpec:
    """Arrivals: constant (evenly spaced) or Poisson, at piecewise-constant rates, or `replay`:
    exactly the offsets the real service's `arrival_offsets_s` generates for `source` (a trace
    file, or any configured process), so a simulated run sees the requests a real run would.

    `steps` lists (at_s, rate_per_s), the first at 0 s; a rate holds until the next step (for a
    replay, one step at the source's mean rate, which only `rate_at` reads)."""

    process: Literal["constant", "poisson", "replay"] = "poisson"
    steps: tuple[tuple[float, float], ...] = ((0.0, 100.0),)
    source: ArrivalsConfig | None = None

    def __post_init__(self) -> None:
        times = [at for at, _ in self.steps]
        if not self.steps or times[0] != 0.0 or times != sorted(set(times)):
            raise ValueError("steps must start at 0 s and have strictly increasing times")
        if any(rate < 0 for _, rate in self.steps):
            raise ValueError("rates must be >= 0")
        if (self.process == "replay") != (self.source is not None):
            raise ValueError("a replay, and only a replay, has a source")

    @classmethod
    def constant(cls, rate_per_s: float) -> ArrivalSpec:
        return cls("constant", ((0.0, rate_per_s),))

    @classmethod
    def poisson(cls, rate_per_s: float) -> ArrivalSpec:
        return cls("poisson", ((0.0, rate_per_s),))

    @classmethod
    def replay(cls, source: ArrivalsConfig, duration_s: float) -> ArrivalSpec:
        times = _replayed_s(source, duration_s)
        return cls("replay", ((0.0, len(times) / duration_s if duration_s > 0 else 0.0),), source)

    def rate_at(self, t_s: float) -> float:
        rate = self.steps[0][1]
        for at, r in self.steps:
            if at <= t_s:
                rate = r
        return rate


def _replayed_s(source: ArrivalsConfig, duration_s: float) -> FloatArray:
    offsets = arrival_offsets_s(source)
    return np.fromiter(itertools.takewhile(lambda t: t < duration_s, offsets), dtype=float)


def arrival_times_s(spec: ArrivalSpec, duration_s: float, seed: int) -> FloatArray:
    """Sorted arrival times in [0, duration_s). Poisson gaps are drawn in bulk per step; at a
    rate change the pending gap is dropped (the process is memoryless), as in arrivals.py. A
    replay takes the real service's offsets (its own seed, not `seed`)."""
    if spec.source is not None:
        return _replayed_s(spec.source, duration_s)
    rng = np.random.default_rng(seed)
    pieces: list[FloatArray] = []
    bounds = [*(at for at, _ in spec.steps), math.inf]
    for (start, rate), end in zip(spec.steps, bounds[1:], strict=True):
        stop = min(end, duration_s)
        if rate <= 0 or start >= stop:
            continue
        if spec.process == "constant":
            n = math.ceil((stop - start) * rate)
            times = start + np.arange(n, dtype=float) / rate
        else:
            chunks: list[FloatArray] = []
            t = start
            while t < stop:
                n = max(16, int((stop - t) * rate * 1.1) + 16)
                gaps = rng.exponential(1.0 / rate, size=n)
                times_chunk = t + np.cumsum(gaps)
                chunks.append(times_chunk)
                t = float(times_chunk[-1])
            times = np.concatenate(chunks)
        pieces.append(times[times < stop])
    return np.concatenate(pieces) if pieces else np.zeros(0)


# --- what the engine runs -------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceSetup:
    speed: InferenceSpeed
    slo_ms: float
    queue_capacity: int = 1024
    admission: Literal["drop_late", "queue_full"] = "drop_late"
    late_ms: float | None = None  # drop-late threshold; None: the SLO


@dataclass(frozen=True)
class TrainingSetup:
    name: str
    speed: TrainingSpeed
    start_s: float = 0.0  # when the job starts (CCGrid'23: ~2 s after inference)


@dataclass(frozen=True)
class WindowStats:
    """What happened since the last `take_window`: the raw material of InferenceStats and
    TrainingStats, plus the device's utilisation and power."""

    start_s: float
    end_s: float
    arrived: int
    served: int
    shed: int
    queue_depth: int
    latencies_ms: FloatArray
    batch_sizes: tuple[int, ...]
    batch_exec_ms: tuple[float, ...]
    train_steps: Mapping[str, int]
    train_samples: Mapping[str, int]
    train_total_steps: Mapping[str, int]
    train_paused: Mapping[str, bool]
    gpu_busy: float  # fraction of the window with any work on the GPU
    gpu_activity: float  # mean of sum(rate x intensity) over the window
    cpu_busy_cores: float
    power_w: float
    rails_w: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))
    train_data_wait_s: Mapping[str, float] = field(default_factory=dict)  # waiting for data
    # each batch's execution time had it had the device to itself (the inference's own demand)
    batch_solo_ms: tuple[float, ...] = ()
    cpu_share: float = 1.0  # of a core, for each process wanting one, at the window's end

    @property
    def window_s(self) -> float:
        return self.end_s - self.start_s


# --- the engine ------------------------------------------------------------------------------------


class _Phase:
    START = "start"  # before the job's start time
    PAUSED = "paused"
    GATE = "gate"  # waiting for the interleaving gate
    DATA = "data"  # waiting for a batch from the workers
    LOAD = "load"  # loading in the main process (0 workers)
    RUN = "run"  # a minibatch on the GPU
    SLEEP = "sleep"  # duty-cycle pause after a step


class _Job:
    """The mutable state of one training job inside the engine."""

    def __init__(self, setup: TrainingSetup) -> None:
        self.name = setup.name
        self.speed = setup.speed
        self.start_s = setup.start_s
        self.batch_size = 32
        self.num_workers = 0
        self.paused = False
        self.gate_policy = "off"
        self.gate_max_wait_s: float | None = None
        self.duty_cycle = 1.0
        self.phase = _Phase.START
        self.phase_end = setup.start_s
        self.frac_left = 0.0
        self.dur_s = 0.0
        self.noise = 1.0
        self.step_batch = 0
        self.step_started = 0.0
        self.tokens = 0.0
        self.token_rate = 0.0  # batches/s the workers produce
        self.token_cap = 0.0
        self.parallel = 0.0  # cores the loader workers get, together
        self.total_steps = 0
        self.w_steps = 0
        self.w_samples = 0
        self.w_data_wait_s = 0.0


class Engine:
    """One simulated device. Drive it with `set_knobs`, `run_until` and `take_window`."""

    def __init__(
        self,
        device: DeviceModel,
        mode: SimMode,
        knobs: Knobs,
        *,
        arrivals_s: FloatArray,
        inference: InferenceSetup | None,
        training: Sequence[TrainingSetup] = (),
        seed: int = 0,
    ) -> None:
        self.device = device
        self.mode = mode
        self.t = 0.0
        self.inference = inference
        self.arrivals = np.asarray(arrivals_s, dtype=float) if inference else np.zeros(0)
        self._arr: list[float] = self.arrivals.tolist()
        n = len(self._arr)
        self.done_s = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int8)
        self._qbuf = np.zeros(n, dtype=np.int64)
        self._qh = 0
        self._qt = 0
        self._next_arr = 0
        self._max_batch = 1
        self._delay_s = 0.0
        self._late_s = math.inf
        if inference is not None:
            late_ms = inference.late_ms if inference.late_ms is not None else inference.slo_ms
            self._late_s = late_ms / 1000.0 if inference.admission == "drop_late" else math.inf
        self._inf_busy = False
        self._inf_frac = 0.0
        self._inf_dur = 0.0
        self._inf_noise = 1.0
        self._inf_members: IntArray = np.zeros(0, dtype=np.int64)
        self._inf_start = 0.0
        self._inf_intensity = 1.0
        self.jobs = [_Job(s) for s in training]
        self._cpu_share = 1.0
        self._rng = np.random.default_rng([seed, 1])
        self._noise: list[float] = []
        self._reset_window()
        self.set_knobs(knobs, mode)

    # --- knobs ---------------------------------------------------------------------------------

    def set_knobs(self, knobs: Knobs, mode: SimMode) -> None:
        """Apply knob settings now. Batching changes affect the next dispatch, a training batch
        size the next step; a mode change rescales the work in flight to the new speed."""
        old_mode, old_share = self.mode, self._cpu_share
        self.mode = mode
        if knobs.inference is not None:
            capacity = self.inference.queue_capacity if self.inference else 1
            self._max_batch = max(1, min(knobs.inference.max_batch_size, capacity))
            self._delay_s = knobs.inference.max_queue_delay_ms / 1000.0
        for job in self.jobs:
            k = knobs.training.get(job.name)
            if k is not None:
                job.batch_size = k.batch_size
                job.num_workers = k.num_workers
                job.paused = k.paused
                job.gate_policy = k.gate_policy
                job.gate_max_wait_s = None if k.gate_max_wait_ms is None else k.gate_max_wait_ms / 1000.0
                job.duty_cycle = k.duty_cycle
        self._cpu_share = cpu_share(mode.cores, self._runnable())
        share = self._cpu_share
        speed_changed = mode != old_mode or share != old_share
        if self._inf_busy and speed_changed and self.inference is not None:
            n = len(self._inf_members)
            self._inf_dur = self.inference.speed.batch_s(n, mode, self.device.mix, share) * self._inf_noise
        for job in self.jobs:
            if job.phase == _Phase.RUN and speed_changed:
                job.dur_s = job.speed.step_s(job.step_batch, mode, self.device.mix, share) * job.noise
            if job.phase == _Phase.LOAD and speed_changed:
                ratio = job.speed.load_s(1, mode, share) / job.speed.load_s(1, old_mode, old_share)
                job.phase_end = self.t + (job.phase_end - self.t) * ratio
            self._set_loader(job)
            if job.phase == _Phase.PAUSED and not job.paused:
                self._boundary(job)
            elif job.paused and job.phase in (_Phase.GATE, _Phase.DATA, _Phase.SLEEP):
                job.phase = _Phase.PAUSED
            elif job.phase == _Phase.GATE and job.gate_policy != "yield":
                self._after_gate(job)
            elif job.phase == _Phase.DATA:
                job.phase_end = self._data_ready_at(job)

    def _runnable(self) -> int:
        """Processes that want a core at these knobs: inference, and each running job's main
        process with its loader workers."""
        running = [j for j in self.jobs if not j.paused]
        return (1 if self.inference is not None else 0) + sum(1 + j.num_workers for j in running)

    def _set_loader(self, job: _Job) -> None:
        job.parallel = job.num_workers * self._cpu_share if job.num_workers > 0 else 0.0
        load_s = job.speed.load_s(job.batch_size, self.mode)
        job.token_rate = job.parallel / load_s if job.parallel and load_s > 0 else 0.0
        job.token_cap = float(PREFETCH_PER_WORKER * job.num_workers)
        job.tokens = min(job.tokens, job.token_cap)

    # --- noise ---------------------------------------------------------------------------------

    def _draw_noise(self) -> float:
        """A mean-one log-normal factor on an execution time."""
        if not self._noise:
            sigma = self.device.contention.exec_cv
            z = self._rng.standard_normal(_NOISE_CHUNK)
            self._noise = np.exp(sigma * z - sigma * sigma / 2.0).tolist()
        return float(self._noise.pop())

    # --- inference -------------------------------------------------------------------------------

    def _queue_len(self) -> int:
        return self._qt - self._qh

    def inference_busy(self) -> bool:
        """The gate's signal: a request is waiting or a batch is running."""
        return self._inf_busy or self._qt > self._qh

    def _admit(self, t: float) -> None:
        """Admit every arrival up to `t`; those that find the queue full are shed on arrival."""
        end = bisect.bisect_right(self._arr, t, lo=self._next_arr)
        start = self._next_arr
        if end <= start:
            return
        cap = self.inference.queue_capacity if self.inference else 0
        room = max(0, cap - self._queue_len())
        k = min(room, end - start)
        if k:
            self._qbuf[self._qt : self._qt + k] = np.arange(start, start + k)
            self._qt += k
        if end - start > k:
            self.status[start + k : end] = SHED
            self.done_s[start + k : end] = self.arrivals[start + k : end]
            self._w_shed += end - start - k
        self._w_arrived += end - start
        self._next_arr = end

    def _ready_at(self) -> float:
        """When the batcher will next dispatch, if the instance stays idle."""
        qlen = self._queue_len()
        if qlen >= self._max_batch:
            return self.t
        need = self._max_batch - qlen  # arrivals still to come for a full batch
        full_idx = self._next_arr + need - 1
        full_t = self._arr[full_idx] if full_idx < len(self._arr) else math.inf
        if qlen:
            oldest = self._arr[int(self._qbuf[self._qh])]
        elif self._next_arr < len(self._arr):
            oldest = self._arr[self._next_arr]
        else:
            return math.inf
        return min(full_t, oldest + self._delay_s)

    def _dispatch(self) -> None:
        """Start a batch if one is ready (after shedding late requests, like the service)."""
        assert self.inference is not None
        while not self._inf_busy and self._qt > self._qh and self._ready_at() <= self.t + _EPS:
            n = min(self._max_batch, self._queue_len())
            members = self._qbuf[self._qh : self._qh + n].copy()
            self._qh += n
            if math.isfinite(self._late_s):
                waited = self.t - self.arrivals[members]
                late = waited > self._late_s
                if late.any():
                    self.status[members[late]] = SHED
                    self.done_s[members[late]] = self.t
                    self._w_shed += int(late.sum())
                    members = members[~late]
            if len(members) == 0:
                continue
            speed = self.inference.speed
            self._inf_busy = True
            self._inf_members = members
            self._inf_start = self.t
            self._inf_noise = self._draw_noise()
            self._inf_dur = (
                speed.batch_s(len(members), self.mode, self.device.mix, self._cpu_share) * self._inf_noise
            )
            self._inf_frac = 1.0
            self._inf_intensity = speed.intensity(len(members))

    def _complete_batch(self) -> None:
        members = self._inf_members
        self.status[members] = SERVED
        self.done_s[members] = self.t
        self._w_latencies.append((self.t - self.arrivals[members]) * 1000.0)
        self._w_served += len(members)
        self._w_batch_sizes.append(len(members))
        self._w_batch_exec_ms.append((self.t - self._inf_start) * 1000.0)
        self._w_batch_solo_ms.append(self._inf_dur * 1000.0)
        self._inf_busy = False
        self._inf_members = np.zeros(0, dtype=np.int64)

    # --- training --------------------------------------------------------------------------------

    def _boundary(self, job: _Job) -> None:
        """A minibatch boundary: pause, wait to start, check the gate, then get data."""
        if job.paused:
            job.phase = _Phase.PAUSED
        elif self.t < job.start_s - _EPS:
            job.phase, job.phase_end = _Phase.START, job.start_s
        elif job.gate_policy == "yield" and self.inference_busy():
            wait = math.inf if job.gate_max_wait_s is None else job.gate_max_wait_s
            job.phase, job.phase_end = _Phase.GATE, self.t + wait
        else:
            self._after_gate(job)

    def _after_gate(self, job: _Job) -> None:
        if job.num_workers <= 0:
            job.phase = _Phase.LOAD
            job.phase_end = self.t + job.speed.load_s(job.batch_size, self.mode, self._cpu_share)
        elif job.tokens >= 1.0 - _EPS:
            job.tokens = max(0.0, job.tokens - 1.0)
            self._start_step(job)
        else:
            job.phase = _Phase.DATA
            job.phase_end = self._data_ready_at(job)

    def _data_ready_at(self, job: _Job) -> float:
        if job.token_rate <= 0:
            return math.inf
        return self.t + max(0.0, 1.0 - job.tokens) / job.token_rate

    def _start_step(self, job: _Job) -> None:
        job.phase = _Phase.RUN
        job.step_batch = job.batch_size
        job.step_started = self.t
        job.noise = self._draw_noise()
        job.dur_s = job.speed.step_s(job.batch_size, self.mode, self.device.mix, self._cpu_share) * job.noise
        job.frac_left = 1.0

    def _complete_step(self, job: _Job) -> None:
        job.total_steps += 1
        job.w_steps += 1
        job.w_samples += job.step_batch
        if job.duty_cycle < 1.0:
            elapsed = self.t - job.step_started
            job.phase = _Phase.SLEEP
            job.phase_end = self.t + elapsed * (1.0 - job.duty_cycle) / job.duty_cycle
        else:
            self._boundary(job)

    def _release_gate(self) -> None:
        """The gate is lowered (nothing waits, nothing runs): jobs waiting on it go."""
        if not self.inference_busy():
            for job in self.jobs:
                if job.phase == _Phase.GATE:
                    self._after_gate(job)

    def _timed_phase_over(self, job: _Job) -> None:
        if job.phase == _Phase.START or job.phase == _Phase.SLEEP:
            self._boundary(job)
        elif job.phase == _Phase.GATE:
            self._after_gate(job)  # waited long enough: go regardless of the gate
        elif job.phase == _Phase.LOAD:
            self._start_step(job)
        elif job.phase == _Phase.DATA:
            job.tokens = max(0.0, job.tokens - 1.0)
            self._start_step(job)

    # --- the clock -------------------------------------------------------------------------------

    def _rates(self) -> tuple[float, float]:
        running = sum(1 for j in self.jobs if j.phase == _Phase.RUN)
        return self.device.contention.shares(self._inf_busy, running)

    def _advance(self, dt: float, inf_rate: float, train_rate: float) -> None:
        """Progress everything by dt and integrate the window's utilisation."""
        activity = 0.0
        cpu = 0.0
        gpu_on = False
        if self._inf_busy:
            self._inf_frac -= inf_rate * dt / self._inf_dur
            activity += inf_rate * self._inf_intensity
            cpu += 1.0
            gpu_on = True
        for job in self.jobs:
            if job.phase == _Phase.RUN:
                job.frac_left -= train_rate * dt / job.dur_s
                activity += train_rate
                cpu += 1.0
                gpu_on = True
            elif job.phase == _Phase.LOAD:
                cpu += 1.0
            if job.phase in (_Phase.LOAD, _Phase.DATA):
                job.w_data_wait_s += dt
            if job.token_rate > 0 and job.tokens < job.token_cap:
                # the workers are busy only until the prefetch buffer is full
                filling_s = min(dt, (job.token_cap - job.tokens) / job.token_rate)
                job.tokens = min(job.token_cap, job.tokens + job.token_rate * dt)
                self._w_cpu += job.parallel * filling_s
        self._w_activity += activity * dt
        self._w_cpu += cpu * dt
        if gpu_on:
            self._w_gpu_busy += dt

    def _next_event(self, t_end: float, inf_rate: float, train_rate: float) -> float:
        t_next = t_end
        if self._inf_busy and inf_rate > 0:
            t_next = min(t_next, self.t + max(0.0, self._inf_frac) * self._inf_dur / inf_rate)
        elif self.inference is not None and not self._inf_busy:
            t_next = min(t_next, max(self.t, self._ready_at()))
        for job in self.jobs:
            if job.phase == _Phase.RUN:
                if train_rate > 0:
                    t_next = min(t_next, self.t + max(0.0, job.frac_left) * job.dur_s / train_rate)
            elif job.phase in (_Phase.START, _Phase.GATE, _Phase.LOAD, _Phase.DATA, _Phase.SLEEP):
                t_next = min(t_next, max(self.t, job.phase_end))
        return t_next

    def run_until(self, t_end: float, *, stop_when_idle: bool = False) -> None:
        """Advance the simulated clock to `t_end`, processing every event on the way."""
        while True:
            if self.inference is not None:
                self._admit(self.t)
                self._dispatch()
            self._release_gate()
            if stop_when_idle and not self.inference_busy() and self._next_arr >= len(self._arr):
                return
            inf_rate, train_rate = self._rates()
            t_next = self._next_event(t_end, inf_rate, train_rate)
            if t_next > self.t:
                self._advance(t_next - self.t, inf_rate, train_rate)
                self.t = t_next
            progressed = self._process_due()
            if self.t >= t_end and not progressed:
                if self.inference is not None:
                    self._admit(self.t)
                    self._dispatch()
                return

    def _process_due(self) -> bool:
        """Complete whatever is due now. True if anything happened."""
        happened = False
        if self._inf_busy and self._inf_frac <= _EPS:
            self._complete_batch()
            happened = True
            if self.inference is not None:
                self._admit(self.t)
                self._dispatch()
            self._release_gate()
        for job in self.jobs:
            if job.phase == _Phase.RUN and job.frac_left <= _EPS:
                self._complete_step(job)
                happened = True
            elif job.phase in (_Phase.START, _Phase.GATE, _Phase.LOAD, _Phase.DATA, _Phase.SLEEP) and (
                job.phase_end <= self.t + _EPS
            ):
                self._timed_phase_over(job)
                happened = True
        return happened

    # --- stopping and reading out ------------------------------------------------------------------

    def finish(self, drain_s: float) -> None:
        """Stop: training stops, the queue drains for up to `drain_s`, the rest is shed."""
        for job in self.jobs:
            job.paused = True
            if job.phase != _Phase.RUN:
                job.phase = _Phase.PAUSED
        if self.inference is None:
            return
        self.run_until(self.t + drain_s, stop_when_idle=True)
        left = self._qbuf[self._qh : self._qt]
        if self._inf_busy:
            left = np.concatenate([left, self._inf_members])
            self._inf_busy = False
        self._qh = self._qt
        self.status[left] = SHED
        self.done_s[left] = self.t
        self._w_shed += len(left)

    def _reset_window(self) -> None:
        self._w_start = self.t
        self._w_arrived = 0
        self._w_served = 0
        self._w_shed = 0
        self._w_latencies: list[FloatArray] = []
        self._w_batch_sizes: list[int] = []
        self._w_batch_exec_ms: list[float] = []
        self._w_batch_solo_ms: list[float] = []
        self._w_activity = 0.0
        self._w_cpu = 0.0
        self._w_gpu_busy = 0.0
        for job in getattr(self, "jobs", []):
            job.w_steps = 0
            job.w_samples = 0
            job.w_data_wait_s = 0.0

    def take_window(self) -> WindowStats:
        """Statistics since the last call (or the start), then start a new window."""
        span = max(self.t - self._w_start, 1e-12)
        activity = self._w_activity / span
        cpu_busy = min(self._w_cpu / span, float(self.mode.cores))
        rails = self.device.power.rails_w(self.mode, activity, cpu_busy, self.device.mix)
        lat = np.concatenate(self._w_latencies) if self._w_latencies else np.zeros(0)
        stats = WindowStats(
            start_s=self._w_start,
            end_s=self.t,
            arrived=self._w_arrived,
            served=self._w_served,
            shed=self._w_shed,
            queue_depth=self._queue_len(),
            latencies_ms=lat,
            batch_sizes=tuple(self._w_batch_sizes),
            batch_exec_ms=tuple(self._w_batch_exec_ms),
            train_steps={j.name: j.w_steps for j in self.jobs},
            train_samples={j.name: j.w_samples for j in self.jobs},
            train_total_steps={j.name: j.total_steps for j in self.jobs},
            train_paused={j.name: j.phase == _Phase.PAUSED for j in self.jobs},
            gpu_busy=self._w_gpu_busy / span,
            gpu_activity=activity,
            cpu_busy_cores=cpu_busy,
            power_w=float(sum(rails)),
            rails_w=rails,
            train_data_wait_s={j.name: j.w_data_wait_s for j in self.jobs},
            batch_solo_ms=tuple(self._w_batch_solo_ms),
            cpu_share=self._cpu_share,
        )
        self._reset_window()
        return stats

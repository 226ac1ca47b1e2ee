"""The performance and power model of the simulated Orin: how fast and how hungry each mode is.

Time. A DNN step's time at a mode is its time at MAXN (the reference, where the published points
were measured) times a mode factor. The factor splits the reference time into shares that scale
with one clock each, a roofline-style additive mix:

    t(m) / t(MAXN) = fixed + gpu * (G_ref / G(m)) + mem * (E_ref / E(m)) + cpu * (C_ref / C(m))

with G = GPU MHz x active TPCs, E = EMC MHz and C = CPU MHz (the framework's host thread is one
thread, so online cores do not speed it up). The shares are fitted to the real training runs in
four nvpmodel modes (calibration.py). On top of that:
- an inference batch of b images costs `launch_ms + b * per_sample_ms` at MAXN: the per-batch
  launch overhead (host-side framework and kernel launches, scaled by CPU MHz only) is what makes
  small batches inefficient, and why batch 1 and 4 cannot keep up with 100 img/s in CCGrid'23;
- a training minibatch costs `step_ms` at its reference batch size, a `fixed_fraction` of which
  does not grow with the batch size;
- the dataloader prepares each minibatch on CPU workers in parallel with the GPU step; its CPU
  time scales with CPU MHz, and only as many workers run at once as there are free cores.

Contention. Jetson has no MPS: two processes with GPU work are time-sliced. While both run, the
inference process gets `inference_share` of the GPU and training the rest, and only `efficiency`
of the GPU time is useful work (context switches). The interleaving gate avoids that by letting
only one of them on the GPU (engine.py).

Power. Per rail, static plus dynamic terms, dynamic ~ f * V(f)^2 with V linear in f:
- VDD_GPU_SOC: base + TPC leakage ~ TPCs * V^2 + activity * TPCs * f * V^2;
- VDD_CPU_CV: online cores * V^2 + busy cores * f * V^2;
- VIN_SYS_5V0 (DRAM and the rest): base + activity * work rate (memory traffic per second is
  proportional to how fast the DNN runs, i.e. 1 / the time factor).
`activity` is the GPU load times the workload's intensity (1 for training by definition).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cotrain.queueing import MS_PER_S, fill_ms, is_stable
from cotrain.sim.modes import SimMode

# The reference mode: AGX Orin MAXN (12 cores, 2201.6 / 1300.5 / 3199 MHz, 8 TPCs).
REF_MODE = SimMode(cores=12, cpu_mhz=2201.6, gpu_mhz=1300.5, emc_mhz=3199.0, gpu_tpcs=8)

# GFLOPs per 224x224 image, from torchvision's weights metadata (`meta["_ops"]`, read offline).
# Models other than the calibrated pair scale by FLOPs relative to them (see `inference_speed`).
MODEL_GFLOPS: Mapping[str, float] = MappingProxyType(
    {
        "alexnet": 0.714,
        "convnext_tiny": 4.456,
        "densenet121": 2.834,
        "efficientnet_b0": 0.386,
        "efficientnet_b1": 0.687,
        "googlenet": 1.498,
        "inception_v3": 5.713,
        "mnasnet1_0": 0.314,
        "mobilenet_v2": 0.301,
        "mobilenet_v3_large": 0.217,
        "mobilenet_v3_small": 0.057,
        "regnet_y_400mf": 0.402,
        "resnet18": 1.814,
        "resnet34": 3.664,
        "resnet50": 4.089,
        "resnet101": 7.801,
        "resnet152": 11.514,
        "resnext50_32x4d": 4.23,
        "shufflenet_v2_x1_0": 0.145,
        "squeezenet1_1": 0.349,
        "vgg16": 15.47,
        "vgg19": 19.632,
        "vit_b_16": 17.564,
        "wide_resnet50_2": 11.398,
    }
)
MODEL_ALIASES: Mapping[str, str] = MappingProxyType({"mobilenet_v3": "mobilenet_v3_large"})
REFERENCE_IMAGE_SIZE = 224


def canonical_model(name: str) -> str:
    """The catalogue name of a model (`mobilenet_v3` is CCGrid'23's MobileNetV3, the large one)."""
    base = name.split("/", 1)[0]  # a variant name such as `resnet18/int8@64`
    resolved = MODEL_ALIASES.get(base, base)
    if resolved not in MODEL_GFLOPS:
        raise KeyError(f"no speed model for {name!r}; known: {', '.join(sorted(MODEL_GFLOPS))}")
    return resolved


def relative_voltage(f_mhz: float, f_max_mhz: float, v0: float) -> float:
    """V(f) / V(f_max), linear in f from `v0` at 0 MHz: a DVFS table approximated by a line."""
    return v0 + (1.0 - v0) * f_mhz / f_max_mhz


# --- time --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedMix:
    """Shares of a DNN step's MAXN time that scale with 1/GPU, 1/EMC and 1/CPU clock."""

    gpu: float
    mem: float
    cpu: float

    @property
    def fixed(self) -> float:
        return 1.0 - self.gpu - self.mem - self.cpu

    def factor(self, mode: SimMode, cpu_share: float = 1.0) -> float:
        """t(mode) / t(MAXN), with the process's host thread getting `cpu_share` of a core."""
        ref = REF_MODE
        gpu = (ref.gpu_mhz * ref.gpu_tpcs) / (mode.gpu_mhz * mode.gpu_tpcs)
        return (
            self.fixed
            + self.gpu * gpu
            + self.mem * ref.emc_mhz / mode.emc_mhz
            + self.cpu * ref.cpu_mhz / mode.cpu_mhz / cpu_share
        )


def cpu_factor(mode: SimMode, cpu_share: float = 1.0) -> float:
    """Time of host-side (one-thread) work at `mode` relative to MAXN, for a thread that gets
    `cpu_share` of a core."""
    return REF_MODE.cpu_mhz / mode.cpu_mhz / cpu_share


def cpu_share(cores: int, runnable: float) -> float:
    """The fraction of a core each runnable process gets: Linux's scheduler shares the online
    cores out evenly once more processes want a core than there are. Why it matters: a mode with
    one online core is cheap in power, and without this its seven processes (inference, training,
    five loader workers) would run as if each had a core of its own."""
    if runnable <= cores or runnable <= 0:
        return 1.0
    return cores / runnable


@dataclass(frozen=True)
class InferenceSpeed:
    """An inference model's batch cost at MAXN, alone on the device."""

    model: str
    launch_ms: float  # per batch: host-side launch and framework overhead
    per_sample_ms: float  # per image: GPU work

    def batch_s(self, batch: int, mode: SimMode, mix: SpeedMix, cpu_share: float = 1.0) -> float:
        """Solo execution time of one batch of `batch` images at `mode` (the GPU to itself; the
        host thread at `cpu_share` of a core)."""
        launch = self.launch_ms * cpu_factor(mode, cpu_share)
        return (launch + batch * self.per_sample_ms * mix.factor(mode, cpu_share)) / 1000.0

    def intensity(self, batch: int) -> float:
        """GPU activity of a batch (0..1): the share of its time spent in dense per-image work.
        Why: the launch overhead leaves the GPU mostly idle, so small batches draw less power."""
        dense = batch * self.per_sample_ms
        return dense / (self.launch_ms + dense)


@dataclass(frozen=True)
class TrainingSpeed:
    """A training job's minibatch cost at MAXN, alone, and its dataloader's CPU cost."""

    model: str
    step_ms: float  # one minibatch of `ref_batch` samples, GPU step only
    ref_batch: int
    fixed_fraction: float  # of step_ms that does not grow with the batch size
    loader_ms_per_sample: float  # dataloader CPU time per sample on one core at MAXN's CPU clock

    def step_s(self, batch: int, mode: SimMode, mix: SpeedMix, cpu_share: float = 1.0) -> float:
        scale = self.fixed_fraction + (1.0 - self.fixed_fraction) * batch / self.ref_batch
        return self.step_ms * scale * mix.factor(mode, cpu_share) / 1000.0

    def load_s(self, batch: int, mode: SimMode, cpu_share: float = 1.0) -> float:
        """Time one worker (or the main process) needs to prepare one minibatch."""
        return self.loader_ms_per_sample * batch * cpu_factor(mode, cpu_share) / 1000.0


@dataclass(frozen=True)
class Contention:
    """Native GPU time-slicing between processes (no MPS on Jetson)."""

    inference_share: float  # of the GPU, while inference and training both have work
    efficiency: float  # useful fraction of GPU time while more than one process is time-sliced
    exec_cv: float  # log-normal sigma of an execution time around its model value

    def shares(self, inference: bool, training_jobs: int) -> tuple[float, float]:
        """(inference rate, rate of each training job) as fractions of solo speed."""
        if training_jobs == 0:
            return (1.0, 0.0) if inference else (0.0, 0.0)
        if not inference:
            if training_jobs == 1:
                return 0.0, 1.0
            return 0.0, self.efficiency / training_jobs
        # weights: inference s/(1-s) against 1 per training job, so one job gets exactly 1 - s
        w_inf = self.inference_share / (1.0 - self.inference_share)
        total = w_inf + training_jobs
        return self.efficiency * w_inf / total, self.efficiency / total


# --- power -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerModel:
    """Per-rail power (W) of the AGX Orin, fitted to the orin-telemetry rails."""

    gpu_base_w: float
    gpu_leak_w: float  # at 8 TPCs and V(max)
    gpu_dyn_w: float  # at activity 1, 8 TPCs, 1300.5 MHz
    gpu_v0: float
    cpu_base_w: float  # 12 cores online at V(max)
    cpu_dyn_w: float  # per busy core at 2201.6 MHz
    cpu_v0: float
    sys_base_w: float
    sys_dyn_w: float  # at activity 1 and MAXN's work rate

    def rails_w(
        self,
        mode: SimMode,
        gpu_activity: float,
        cpu_busy_cores: float,
        mix: SpeedMix,
        cpu_mhz: float | None = None,
    ) -> tuple[float, float, float]:
        """(VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0) in W. `cpu_mhz` is the clock the CPUs really
        ran at (telemetry reports it; in the simulator it is the mode's)."""
        ref = REF_MODE
        tpcs = mode.gpu_tpcs / ref.gpu_tpcs
        vg = relative_voltage(mode.gpu_mhz, ref.gpu_mhz, self.gpu_v0)
        gpu = (
            self.gpu_base_w
            + self.gpu_leak_w * tpcs * vg**2
            + self.gpu_dyn_w * gpu_activity * tpcs * (mode.gpu_mhz / ref.gpu_mhz) * vg**2
        )
        f_cpu = mode.cpu_mhz if cpu_mhz is None else cpu_mhz
        vc = relative_voltage(f_cpu, ref.cpu_mhz, self.cpu_v0)
        cpu = (
            self.cpu_base_w * (mode.cores / ref.cores) * vc**2
            + self.cpu_dyn_w * cpu_busy_cores * (f_cpu / ref.cpu_mhz) * vc**2
        )
        sys = self.sys_base_w + self.sys_dyn_w * gpu_activity / mix.factor(mode)
        return gpu, cpu, sys

    def total_w(self, mode: SimMode, gpu_activity: float, cpu_busy_cores: float, mix: SpeedMix) -> float:
        return float(sum(self.rails_w(mode, gpu_activity, cpu_busy_cores, mix)))


# --- the device ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceModel:
    """Everything the engine needs to know about the device and the two calibrated workloads."""

    mix: SpeedMix
    contention: Contention
    power: PowerModel
    inference: InferenceSpeed  # ResNet50, from CCGrid'23 Fig. 1
    training: TrainingSpeed  # MobileNetV3, from CCGrid'23 Fig. 1
    notes: tuple[str, ...] = field(default=())

    def inference_speed(self, model: str, image_size: int = REFERENCE_IMAGE_SIZE) -> InferenceSpeed:
        """A model's batch cost, scaled from the calibrated one by FLOPs (launch overhead kept).

        A shortcut: FLOPs ignore how well a model uses the GPU (depthwise convolutions run far
        below peak), so models far from ResNet50 are rough."""
        ratio = _flops(model, image_size) / _flops(self.inference.model, REFERENCE_IMAGE_SIZE)
        return InferenceSpeed(
            model=canonical_model(model),
            launch_ms=self.inference.launch_ms,
            per_sample_ms=self.inference.per_sample_ms * ratio,
        )

    def training_speed(self, model: str, image_size: int = REFERENCE_IMAGE_SIZE) -> TrainingSpeed:
        """A model's minibatch cost, scaled from the calibrated one by FLOPs (the per-step fixed
        part and the dataloader cost kept, the latter scaled by pixels)."""
        base = self.training
        ratio = _flops(model, image_size) / _flops(base.model, REFERENCE_IMAGE_SIZE)
        fixed_ms = base.step_ms * base.fixed_fraction
        dense_ms = base.step_ms * (1.0 - base.fixed_fraction) * ratio
        pixels = (image_size / REFERENCE_IMAGE_SIZE) ** 2
        return TrainingSpeed(
            model=canonical_model(model),
            step_ms=fixed_ms + dense_ms,
            ref_batch=base.ref_batch,
            fixed_fraction=fixed_ms / (fixed_ms + dense_ms),
            loader_ms_per_sample=base.loader_ms_per_sample * pixels,
        )


def _flops(model: str, image_size: int) -> float:
    return MODEL_GFLOPS[canonical_model(model)] * (image_size / REFERENCE_IMAGE_SIZE) ** 2


# --- the analytic steady state (what calibration fits; the engine reproduces it) ----------------


@dataclass(frozen=True)
class SteadyState:
    """Constant arrivals at `rate_per_s`, batches of `batch` dispatched when full, training back
    to back beside it under native time-slicing."""

    exec_s: float  # mean execution time of one batch, under contention if training runs
    stable: bool  # exec_s <= batch / rate: the queue does not grow
    peak_latency_s: float  # accumulation of the first image + the largest execution time
    train_steps_per_s: float


def expected_max_factor(cv: float, n: int) -> float:
    """Largest of n log-normal(0, cv) factors, roughly: 1 + cv * sqrt(2 ln n)."""
    return 1.0 + cv * math.sqrt(2.0 * math.log(max(n, 2)))


def steady_state(
    device: DeviceModel,
    *,
    batch: int,
    rate_per_s: float,
    mode: SimMode = REF_MODE,
    train_batch: int | None = None,
    training: bool = True,
    duration_s: float = 600.0,
) -> SteadyState:
    """Closed-form mean behaviour of CCGrid'23's setup (Fig. 1).

    While a batch runs beside training, inference runs at its time-slice rate; training runs at
    its own rate then, and at full speed in the gaps while the next batch accumulates. That is
    why a larger batch (longer gaps) lets training go faster."""
    c = device.contention
    solo_s = device.inference.batch_s(batch, mode, device.mix)
    inf_rate, train_rate = c.shares(True, 1 if training else 0)
    exec_s = solo_s / inf_rate
    busy = min(1.0, rate_per_s * exec_s / batch)
    n_batches = max(1, int(duration_s * rate_per_s / batch))
    peak = fill_ms(batch, rate_per_s) / MS_PER_S + exec_s * expected_max_factor(c.exec_cv, n_batches)
    steps = 0.0
    if training:
        tb = train_batch or device.training.ref_batch
        step_s = device.training.step_s(tb, mode, device.mix)
        steps = ((1.0 - busy) + busy * train_rate) / step_s
    return SteadyState(
        exec_s=exec_s,
        stable=is_stable(exec_s * MS_PER_S, batch, rate_per_s),
        peak_latency_s=peak,
        train_steps_per_s=steps,
    )

"""The power-mode model `adaptive` plans with: training speed and board power as functions of the clocks.

Why a model: an AGX Orin offers about 15,000 reboot-free modes (online cores x CPU x GPU x EMC
frequency), and profiling one costs seconds of a live run, so `adaptive` can afford a handful.
What it knows of a mode is what a real Jetson tells about it: the online cores and the clock caps
(`ModeInfo`). From its profiles it fits two small linear models, then profiles next where they
predict the most training within the power budget and the SLO: a model-based sequential search
(after PowerTrain and Fulcrum, docs/references.md). Nothing here reads a simulator.

Time. Each share of a DNN step scales with one clock (roofline-style), so the solo seconds per
training sample in mode m are linear in the inverse clocks:

    s(m) = a0 + a_gpu * G*/G(m) + a_emc * E*/E(m) + a_cpu * C*/C(m)       (* = the top offered)

with a >= 0, so a faster clock never makes a step slower. An inference batch (`ExecModel`) has
a host-side launch part, bound by the CPU clock, and a per-image part that scales like s:
e(b, m) = launch * C*/C(m) + per_item * b * s(m)/s(top), fitted to every batch time measured in
any mode. Beside inference, native time-slicing gives training `TRAINING_SHARE` of the GPU while
a batch runs, so (CCGrid'23's reasoning)

    T(m, b) = ((1 - u) + u * TRAINING_SHARE) / s(m),   u = λ e(b, m) / b  (inference's busy share).

A profile's measured rate is turned into s(m) by inverting that, so profiles at different batch
sizes and rates all inform one fit. A mode and batch are feasible when u <= MAX_BUSY_SHARE and
the p99 wait for a batch to fill (Poisson arrivals, capped by the queue delay) plus e(b, m) fits
the SLO with the policy's headroom.

Power. Dynamic power goes as f V(f)^2 with V rising linearly with f (`VOLTAGE_AT_ZERO`), static
power as V^2 per online core, and the memory rail with the EMC clock:

    P(m) = p0 + p_gpu (G/G*) v_G^2 + p_cores (n/n*) v_C^2 + p_cpu (C/C*) v_C^2 + p_emc E/E*.

Both fits are ridge regressions on relative error, pulled toward a prior shaped by the first
profile (`TIME_PRIOR_SHARES`, `POWER_PRIOR_SHARES`), with non-negative coefficients. One profile
thus gives a usable, rough model; each further profile sharpens it where the search is looking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cotrain.queueing import fill_ms

FloatArray = npt.NDArray[np.float64]

# Priors: generic for a DNN on a Jetson-class SoC, not fitted to any device. The shares of a step's
# time at the top clocks that are fixed, GPU-, memory- and CPU-bound:
TIME_PRIOR_SHARES = (0.25, 0.5, 0.15, 0.10)
# Shares of the first profile's board power: static, GPU dynamic, CPU static, CPU dynamic, memory.
POWER_PRIOR_SHARES = (0.35, 0.45, 0.03, 0.07, 0.10)
PRIOR_STRENGTH = 0.05  # ridge weight of the prior, against relative errors of the data
VOLTAGE_AT_ZERO = 0.6  # V(f) / V(f_max) extrapolated to 0 MHz: a DVFS table as a line
TRAINING_SHARE = 0.5  # of the GPU, for training while an inference batch runs beside it (no MPS)
INFERENCE_SHARE = 0.5  # ... and for inference: a batch alone takes this share of its time beside training
# CCGrid'23's stability rule e(b) <= b/λ holds for evenly spaced arrivals; random ones queue up long
# before the device is saturated, so the search keeps inference's busy share u = λ e(b)/b below this.
MAX_BUSY_SHARE = 0.9
WAIT_Z = 2.33  # standard deviations: a batch's fill time at its p99, for Poisson arrivals


@dataclass(frozen=True)
class ModeInfo:
    """One power mode as the platform describes it: a name and what it turns on, at which clocks."""

    name: str
    cores: int
    cpu_mhz: float
    gpu_mhz: float
    emc_mhz: float
    gpu_tpcs: int = 1  # active GPU TPCs; only ratios between modes matter


@dataclass(frozen=True)
class ModeSample:
    """What the profiles measured in one mode (gate off), as totals: the model's data.

    Totals, not means of per-window rates: a window's rate is counted in whole training steps,
    and the mean of 1/rate over a few windows is biased."""

    seconds: float = 0.0
    samples: float = 0.0  # training samples
    steps: int = 0  # training steps: the time fit weighs a mode by them (±1 step of noise)
    busy_s: float = 0.0  # Σ u·window: time inference's batches held the GPU
    energy_j: float = 0.0

    def add(
        self, window_s: float, samples: float, steps: int, busy_share: float, power_w: float
    ) -> ModeSample:
        return ModeSample(
            self.seconds + window_s,
            self.samples + samples,
            self.steps + steps,
            self.busy_s + busy_share * window_s,
            self.energy_j + power_w * window_s,
        )

    @property
    def solo_s_per_sample(self) -> float:
        """Training's seconds per sample alone: T = ((1 − u) + u·TRAINING_SHARE) / s, inverted."""
        u = self.busy_s / self.seconds if self.seconds > 0 else 0.0
        rate = self.samples / self.seconds if self.seconds > 0 else 0.0
        return ((1.0 - u) + u * TRAINING_SHARE) / max(rate, 1e-9)

    @property
    def power_w(self) -> float:
        return self.energy_j / self.seconds if self.seconds > 0 else 0.0


class ModeTable:
    """The offered modes as feature matrices, built once per policy (not part of its state)."""

    def __init__(self, modes: Sequence[ModeInfo]) -> None:
        self.modes = tuple(modes)
        self.index: Mapping[str, int] = {m.name: i for i, m in enumerate(self.modes)}
        cores = np.array([m.cores for m in self.modes], dtype=float)
        cpu = np.array([m.cpu_mhz for m in self.modes], dtype=float)
        gpu = np.array([m.gpu_mhz * m.gpu_tpcs for m in self.modes], dtype=float)
        emc = np.array([m.emc_mhz for m in self.modes], dtype=float)
        self.cores = cores
        self.clocks = np.stack([cores, cpu, gpu, emc], axis=1) if self.modes else np.zeros((0, 4))
        if not self.modes:
            self.time_x = np.zeros((0, 4))
            self.power_x = np.zeros((0, 5))
            return
        top = self.clocks.max(axis=0)
        self.time_x = np.stack([np.ones_like(cpu), top[2] / gpu, top[3] / emc, top[1] / cpu], axis=1)
        vg = VOLTAGE_AT_ZERO + (1 - VOLTAGE_AT_ZERO) * gpu / top[2]
        vc = VOLTAGE_AT_ZERO + (1 - VOLTAGE_AT_ZERO) * cpu / top[1]
        self.power_x = np.stack(
            [
                np.ones_like(cpu),
                gpu / top[2] * vg**2,
                cores / top[0] * vc**2,
                cpu / top[1] * vc**2,
                emc / top[3],
            ],
            axis=1,
        )

    def __len__(self) -> int:
        return len(self.modes)

    def dominating(self, name: str) -> npt.NDArray[np.bool_]:
        """Modes at least as high as `name` on every clock and core count (so at least as hungry)."""
        i = self.index[name]
        return np.asarray(np.all(self.clocks >= self.clocks[i], axis=1))


def fit_ridge(
    x: FloatArray,
    y: FloatArray,
    prior: FloatArray,
    strength: float = PRIOR_STRENGTH,
    weights: FloatArray | None = None,
) -> FloatArray:
    """Non-negative θ minimising Σ w_i (x_i·θ / y_i − 1)² + strength Σ_j (c_j (θ_j − prior_j))².

    Relative errors, so a 30 W point and a 15 W point count alike; the weights (mean 1) say how
    much each point is worth; c_j makes the prior term dimensionless (the feature's typical size
    over the data's). Negative coefficients are pinned at zero and the rest refitted (a small
    active set), so the model stays monotone in each clock."""
    w = np.ones(len(y)) if weights is None else weights / max(float(np.mean(weights)), 1e-12)
    rows = x / y[:, None] * np.sqrt(w)[:, None]
    ones = np.sqrt(w)
    scale = np.maximum(np.abs(x).mean(axis=0), 1e-12) / max(float(np.mean(y)), 1e-12)
    free = np.ones(x.shape[1], dtype=bool)
    theta = prior.copy()
    for _ in range(x.shape[1]):
        reg = strength * np.diag(scale**2)
        a = rows[:, free].T @ rows[:, free] + reg[np.ix_(free, free)]
        rhs = rows[:, free].T @ ones + reg[np.ix_(free, free)] @ prior[free]
        theta = np.zeros(x.shape[1])
        theta[free] = np.linalg.solve(a, rhs)
        if (theta >= 0).all():
            break
        free &= theta > 0
    return np.maximum(theta, 0.0)


def prior_theta(features: FloatArray, value: float, shares: Sequence[float]) -> FloatArray:
    """Coefficients that split `value`, measured where the features are `features`, by `shares`."""
    return np.array([s * value / max(f, 1e-12) for s, f in zip(shares, features, strict=True)])


@dataclass(frozen=True)
class ModeModel:
    """The fitted time and power coefficients, and the mode the prior was anchored on."""

    time_theta: FloatArray
    power_theta: FloatArray

    def solo_s_per_sample(self, table: ModeTable) -> FloatArray:
        return np.asarray(table.time_x @ self.time_theta)

    def power_w(self, table: ModeTable) -> FloatArray:
        return np.asarray(table.power_x @ self.power_theta)


def fit_mode_model(table: ModeTable, samples: Mapping[str, ModeSample], anchor: str) -> ModeModel:
    """Fit both models to the profiled modes; the priors are anchored on mode `anchor`'s sample."""
    a = table.index[anchor]
    shares = np.array(TIME_PRIOR_SHARES)  # at the top clocks, where every time feature is 1
    time_prior = shares * samples[anchor].solo_s_per_sample / float(table.time_x[a] @ shares)
    power_prior = prior_theta(table.power_x[a], samples[anchor].power_w, POWER_PRIOR_SHARES)
    timed = sorted(n for n, v in samples.items() if n in table.index and v.steps > 0)
    powered = sorted(n for n, v in samples.items() if n in table.index and v.energy_j > 0)
    time_theta, power_theta = time_prior, power_prior
    if timed:
        idx = [table.index[n] for n in timed]
        y = np.array([samples[n].solo_s_per_sample for n in timed])
        w = np.array([float(samples[n].steps) for n in timed])
        time_theta = fit_ridge(table.time_x[idx], y, time_prior, weights=w)
    if powered:
        idx = [table.index[n] for n in powered]
        y = np.array([samples[n].power_w for n in powered])
        w = np.array([samples[n].seconds for n in powered])
        power_theta = fit_ridge(table.power_x[idx], y, power_prior, weights=w)
    return ModeModel(time_theta=time_theta, power_theta=power_theta)


@dataclass(frozen=True)
class ModePick:
    """The model's best (mode, batch) for training under the SLO and the power budget."""

    mode: str
    max_batch_size: int
    max_queue_delay_ms: float
    training_samples_per_s: float  # predicted
    power_w: float  # predicted
    worst_latency_ms: float  # predicted


@dataclass(frozen=True)
class ExecModel:
    """An inference batch's time (under contention, as measured) in any mode:

        e(b, m) = launch_ms * C*/C(m) + per_item_ms * b * s(m)/s(top)

    The per-batch part is host-side (framework and kernel launches: one CPU thread, so the CPU
    clock sets it); the per-image part is DNN work, which scales like the time model."""

    launch_ms: float
    per_item_ms: float

    def ms(self, table: ModeTable, model: ModeModel, batch: int) -> FloatArray:
        """e(batch, m) for every mode of the table."""
        return np.asarray(
            self.launch_ms * table.time_x[:, 3] + self.per_item_ms * batch * relative_time(table, model)
        )


def relative_time(table: ModeTable, model: ModeModel) -> FloatArray:
    """s(m) / s(top): a mode's DNN time relative to the top clocks (where every feature is 1)."""
    return np.asarray(model.solo_s_per_sample(table) / max(float(model.time_theta.sum()), 1e-12))


def fit_exec(
    table: ModeTable, model: ModeModel, exec_points: Mapping[tuple[str, int], float], prior_fixed_share: float
) -> ExecModel:
    """Least squares for (launch, per item) over every measured batch time, in every mode. A single
    point (or points of one batch size in one mode) cannot split the two: a prior gives the fixed
    part `prior_fixed_share` of it, as the policy does for its one-mode model."""
    rel = relative_time(table, model)
    rows, ys = [], []
    for (mode, b), e in sorted(exec_points.items()):
        if mode in table.index:
            i = table.index[mode]
            rows.append((float(table.time_x[i, 3]), b * float(rel[i])))
            ys.append(e)
    if not rows:
        return ExecModel(0.0, 0.0)
    x, y = np.array(rows), np.array(ys)
    # the prior, from the first point: a weak pull that matters only where the data are silent
    c0, d0 = x[0]
    prior = np.array([prior_fixed_share * y[0] / c0, (1 - prior_fixed_share) * y[0] / d0])
    theta = fit_ridge(x, y, prior, strength=PRIOR_STRENGTH)
    return ExecModel(float(theta[0]), float(theta[1]))


def batch_wait_ms(b: int, rate_per_s: float, delay_ms: float) -> float:
    """How long the first request of a batch of b waits, at worst (p99), for random arrivals:
    the other b−1 arrive in a Gamma(b−1, λ) time, about its mean + WAIT_Z standard deviations
    (evenly spaced arrivals take just the mean: this is the safe side), capped by the delay."""
    if rate_per_s <= 0 or b <= 1:
        return 0.0
    n = b - 1
    return min(delay_ms, (n + WAIT_Z * math.sqrt(n)) / rate_per_s * 1000.0)


def _delay_for(b: int, rate_per_s: float, base_delay_ms: float) -> float:
    mean_fill_ms = fill_ms(b, rate_per_s)
    return base_delay_ms if base_delay_ms >= mean_fill_ms else round(mean_fill_ms, 1)


def best_mode(
    table: ModeTable,
    model: ModeModel,
    exec_model: ExecModel,
    *,
    rate_per_s: float,
    slo_ms: float,
    headroom: float,
    sizes: Sequence[int],
    base_delay_ms: float,
    budget_w: float | None,
    budget_margin: float,
    allowed: npt.NDArray[np.bool_],
    prefer: str | None = None,
) -> ModePick | None:
    """The mode and batch size the model predicts best for training, or None if none is feasible.

    Feasible: the mode is `allowed`, some batch b is stable (λ e(b)/b <= MAX_BUSY_SHARE) with worst
    latency `batch_wait_ms` + e(b) within `headroom` x SLO, and the predicted power is within the
    budget less `budget_margin`. Ties (within 0.1 %) go to the mode `prefer` (the one in force: a
    switch costs a dwell), then to the lower predicted power, then to the mode listed first;
    between batch sizes, to the larger (it leaves longer gaps for training).
    The queue delay is the configured one if a batch of b forms within it on average, else the
    mean time it takes to form."""
    if not len(table):
        return None
    s = model.solo_s_per_sample(table)
    power = model.power_w(table)
    ok_mode = allowed.copy()
    if budget_w is not None:
        ok_mode &= power <= budget_w * (1.0 - budget_margin)
    best_t = np.full(len(table), -np.inf)
    best_b = np.zeros(len(table), dtype=int)
    best_worst = np.zeros(len(table))
    for b in sorted(sizes, reverse=True):
        e = exec_model.ms(table, model, b)
        if rate_per_s > 0:
            u = np.minimum(1.0, rate_per_s * e / b / 1000.0)
            stable = u <= MAX_BUSY_SHARE
        else:
            stable, u = np.ones(len(table), dtype=bool), np.zeros(len(table))
        worst = batch_wait_ms(b, rate_per_s, _delay_for(b, rate_per_s, base_delay_ms)) + e
        t = ((1.0 - u) + u * TRAINING_SHARE) / s
        good = ok_mode & stable & (worst <= headroom * slo_ms) & (t > best_t * (1 + 1e-9))
        best_t = np.where(good, t, best_t)
        best_b = np.where(good, b, best_b)
        best_worst = np.where(good, worst, best_worst)
    if not np.isfinite(best_t).any():
        return None
    top = float(best_t.max())
    tied = np.flatnonzero(best_t >= top * 0.999)
    i = int(tied[np.argmin(power[tied])])
    if prefer is not None and prefer in table.index and table.index[prefer] in set(tied.tolist()):
        i = table.index[prefer]
    b = int(best_b[i])
    delay = _delay_for(b, rate_per_s, base_delay_ms)
    return ModePick(
        mode=table.modes[i].name,
        max_batch_size=b,
        max_queue_delay_ms=delay,
        training_samples_per_s=float(best_t[i]),
        power_w=float(power[i]),
        worst_latency_ms=float(best_worst[i]),
    )


def predicted_rate(
    table: ModeTable, model: ModeModel, exec_model: ExecModel, mode: str, batch: int, rate_per_s: float
) -> float:
    """The model's training samples/s for `batch` in `mode` (gate off) at `rate_per_s`."""
    i = table.index[mode]
    e = float(exec_model.ms(table, model, batch)[i])
    u = min(1.0, rate_per_s * e / batch / 1000.0) if rate_per_s > 0 else 0.0
    return ((1.0 - u) + u * TRAINING_SHARE) / float(model.solo_s_per_sample(table)[i])


def busy_share(exec_ms: float, batch: float, rate_per_s: float) -> float:
    """u = λ e(b) / b: the share of time inference's batches hold the GPU (at most 1)."""
    return min(1.0, rate_per_s * exec_ms / max(batch, 1.0) / 1000.0) if rate_per_s > 0 else 0.0

"""`adaptive`: cotrain's co-scheduler. Plan with a model, profile a few candidates, hold the SLO.

The problem (CCGrid'23 and Fulcrum, docs/references.md): choose the knobs so inference meets its
latency SLO while training runs as fast as it can, within the power budget. Exhaustive profiling
is too slow on a live device (every configuration costs seconds of measurement), so the policy
works in phases:

1. **Probe.** Measure the configuration as given for `profile_windows` windows: the arrival rate
   λ, the batch execution time at the current batch size, the training rate and the power.
2. **Plan and profile.** Build candidates over the joint knobs (inference batch size and queue
   delay, the interleaving gate policy of every training job, dataloader workers when they are
   starving training, and the power mode when the platform lists its modes with their clocks)
   and keep only those the CCGrid'23 batch model predicts feasible: a batch of b is stable iff
   e(b) <= b/λ, and its worst latency is about (b-1)/λ + e(b), which must fit within `headroom`
   x SLO. e(b) = α + β·b is fitted from the batches seen so far (a prior splits a single
   observation into 30 % fixed and 70 % per-item cost). At most `max_profiles` configurations
   are profiled in all, counting the probe; a candidate whose window breaks the SLO is abandoned
   at once, so a bad guess costs one window.
   - Without mode information (a host, or modes without clocks) the feasible candidates are
     ordered by what they are expected to leave for training (gate off before yield, larger
     batches first: CCGrid'23 measured that larger inference batches leave longer idle gaps for
     training). The search is sequential: after every profile e(b) is refitted (the probe's one
     batch size leans on the prior; a second pins α and β), the plan is redrawn, and the next
     candidate is the top one still predicted to beat the best that held the SLO (a larger
     batch, `_worth_profiling`). When none is, it holds: windows spent profiling configurations
     the model already ranks behind are training the run itself loses. A `yield` point is
     planned only if the gate would ever drop there (`leaves_a_gap`) while some gate-off point
     is feasible: with full batches a request always waits, and `yield` would starve training.
   - With modes (`modes`, e.g. a Jetson's nvpmodel/DVFS table) the search is sequential and
     model-based (controllers/modesearch.py): after every profile the time and power models are
     refitted and the (mode, batch) they predict best within the SLO and the power budget is
     profiled next, until the prediction is already measured or gains less than `MIN_GAIN`; the
     last `BATCH_STAGE_PROFILES` are kept for the batch and gate plan in the chosen mode.
3. **Hold.** Apply the best candidate measured to meet the SLO (and the budget), with the
   highest training rate. If p99 breaks the SLO two windows running, fall back to the next safer
   measured candidate. If λ moves by more than `replan_rate_change` from the rate the plan was
   made for, plan again: at once when two windows in a row moved the same way by more than
   Poisson noise explains (`RATE_JUMP_Z`), else after `RATE_MOVED_WINDOWS` windows of the
   smoothed rate. A re-plan starts from the model's best pick for the new rate, so a rate step
   re-converges in a few windows.

Every decision carries its reason, which the runtime writes to `decisions.jsonl`. Pure: no clock,
no I/O; everything it knows is in the Observation, the mode table it was built with, and its own
(immutable) state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from cotrain.control import Action, InferenceChange, InferenceWindow, Knobs, Observation, TrainingChange
from cotrain.controllers.modesearch import (
    INFERENCE_SHARE,
    ExecModel,
    ModeInfo,
    ModeModel,
    ModePick,
    ModeSample,
    ModeTable,
    best_mode,
    busy_share,
    fit_exec,
    fit_mode_model,
    predicted_rate,
)
from cotrain.queueing import batch_interval_ms, fill_ms, formed_batch, worst_latency_ms

Phase = Literal["probe", "profile", "hold"]
RATE_EWMA_WEIGHT = 0.3  # of the newest window
RATE_MOVED_WINDOWS = 3  # a shift of the smoothed rate must last this many windows before it re-plans
RATE_JUMP_WINDOWS = 2  # ... or this many raw windows beyond the threshold, the same way, and
RATE_JUMP_Z = 4.0  # together this many Poisson standard deviations from the planned rate
PRIOR_FIXED_SHARE = 0.3  # of one observed batch time, when only one batch size has been seen
MIN_SERVED_TO_JUDGE = 5  # a window with fewer served requests says too little about p99
MIN_GAIN = 0.01  # the mode search stops when its next pick is predicted to gain less than this
BATCH_STAGE_PROFILES = 2  # profiles the mode search leaves for the batch/gate plan in its mode
BUDGET_MARGIN = 0.01  # plan for predicted power <= (1 - margin) x budget
# A trust region: one step of the search goes no lower than this times the lowest clock (CPU, GPU,
# EMC) profiled so far. The models extrapolate badly far below their data (a slow CPU clock that
# training shrugs off can cripple inference's launch overhead), so the search walks down and checks.
TRUST_CLOCK_RATIO = 0.65
MODE_WAIT_WINDOWS = 90  # windows to wait for a held-back mode switch (dwell) before giving up on it
# A window's training rate is counted in whole steps (±1 step in a handful per window), so a mode
# profile lasts until this many steps were measured (±5 %): modes differ by a few percent.
MIN_PROFILE_STEPS = 20
MAX_PROFILE_WINDOWS = 12  # ... or this many windows, if training makes few steps (paused, yielding)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WINDOW_ATTAINMENT = 0.99  # a window with fewer requests within the SLO broke it (shed ones count)


@dataclass(frozen=True, order=True)
class Candidate:
    """One point of the joint knob space the policy may choose."""

    max_batch_size: int
    max_queue_delay_ms: float
    gate_policy: str  # for every training job: "off" | "yield"
    num_workers: int | None = None  # None: leave as is
    power_mode: str | None = None  # None: leave as is (or the platform has no modes to search)

    def describe(self) -> str:
        workers = "" if self.num_workers is None else f", workers {self.num_workers}"
        mode = "" if self.power_mode is None else f", mode {self.power_mode}"
        delay = f"{self.max_queue_delay_ms:.0f} ms"
        return f"b={self.max_batch_size}, delay {delay}, gate {self.gate_policy}{workers}{mode}"


@dataclass(frozen=True)
class Measured:
    windows: int = 0
    worst_p99_ms: float = 0.0
    training_samples_per_s: float = 0.0  # mean over the windows that count
    broke_slo: bool = False
    power_w: float = 0.0  # mean over the windows that count (0: not measured)
    over_budget: bool = False  # the mean power exceeded the power budget
    steps: int = 0  # training steps in the windows that count
    arrival_rate_per_s: float = 0.0  # mean over the windows that count


@dataclass(frozen=True)
class AdaptiveState:
    phase: Phase = "probe"
    queue: tuple[Candidate, ...] = ()  # left to profile
    current: Candidate | None = None
    windows_here: int = 0
    measured: Mapping[Candidate, Measured] = field(default_factory=dict)
    exec_points: Mapping[int, float] = field(default_factory=dict)  # batch size -> exec ms (latest)
    profiles_used: int = 0
    plan_rate_per_s: float = 0.0
    violations: int = 0
    rate_ewma_per_s: float = 0.0  # the arrival rate, smoothed: one window's count is noisy
    rate_moved_windows: int = 0  # consecutive windows the smoothed rate sat beyond the threshold
    base_delay_ms: float = 10.0  # the queue delay as configured: one of the delays each plan tries
    jump_rates: tuple[float, ...] = ()  # raw rates of the latest windows beyond the threshold
    # the mode search (only with a mode table):
    mode_exec: Mapping[tuple[str, int], float] = field(default_factory=dict)  # (mode, batch) -> ms
    mode_samples: Mapping[str, ModeSample] = field(default_factory=dict)
    anchor_mode: str | None = None  # the first mode sampled: the models' priors are shaped on it
    mode_wait: int = 0  # windows spent waiting for the current candidate's mode to take effect
    replanning: bool = False  # a re-plan after a rate shift: short, and no batch stage


def fit_exec_ms(points: Mapping[int, float]) -> tuple[float, float]:
    """(α, β) with e(b) = α + β·b from the observed (batch size, exec ms) points."""
    if not points:
        return 0.0, 0.0
    if len(points) == 1:
        ((b, e),) = points.items()
        return PRIOR_FIXED_SHARE * e, (1 - PRIOR_FIXED_SHARE) * e / b
    xs, ys = list(points), list(points.values())
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var_x = sum((x - mean_x) ** 2 for x in xs)
    beta = max(0.0, sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var_x)
    alpha = max(0.0, mean_y - beta * mean_x)
    return alpha, beta


def predicted_worst_ms(b: int, rate_per_s: float, alpha: float, beta: float) -> float | None:
    """(b-1)/λ + e(b) if a batch of b is stable at λ (e(b) <= b/λ), else None."""
    return worst_latency_ms(b, rate_per_s, alpha + beta * b)


def operating_point(
    b: int, delay_ms: float, rate_per_s: float, alpha: float, beta: float
) -> tuple[int, float | None]:
    """(expected batch size, worst latency ms or None if unstable) for a batch cap and queue delay.

    The batcher dispatches at b requests or when the oldest has waited the delay, so the batches
    that form hold about min(b, 1 + λ·delay) requests: the delay, not the cap, often sets them.
    """
    if rate_per_s <= 0:
        return 1, alpha + beta
    b_eff = formed_batch(b, delay_ms, rate_per_s)
    wait_ms = min(delay_ms, fill_ms(b, rate_per_s))
    return b_eff, worst_latency_ms(b_eff, rate_per_s, alpha + beta * b_eff, wait_ms=wait_ms)


def leaves_a_gap(b: int, delay_ms: float, rate_per_s: float, alpha: float, beta: float) -> bool:
    """Whether training under gate `yield` would ever get to start a step at this operating point.

    The gate is up from a batch's first arrival until the batch has run (the wait, then e(b)),
    and a cycle lasts b_eff/λ. If the first fills the second, the next request is always already
    waiting when a batch ends, the gate never drops, and a yielding trainer never steps: full
    batches dispatched on a timer (CCGrid'23's setting) leave `yield` nothing to give training.
    """
    if rate_per_s <= 0:
        return True
    b_eff, worst = operating_point(b, delay_ms, rate_per_s, alpha, beta)
    return worst is not None and worst < batch_interval_ms(b_eff, rate_per_s)


def plan(
    rate_per_s: float,
    slo_ms: float,
    headroom: float,
    exec_points: Mapping[int, float],
    max_batch_bound: int,
    starving_for_data: bool,
    budget: int,
    delay_ms: float = 10.0,
    yield_exec_factor: float = 1.0,
) -> tuple[Candidate, ...]:
    """Feasible candidates, the most promising for training first, at most `budget` of them.

    Each batch cap is tried with the configured queue delay and with the delay that lets a full
    batch form. Bigger batches come first: per request they cost the shared device less, which is
    what training gets back. Both gate policies are tried for the two most promising points, but
    while some point is feasible with the gate off, a `yield` point is only tried if it leaves
    training a gap to step in (`leaves_a_gap`): otherwise it starves training to protect an SLO
    that the gate-off point already meets. `yield_exec_factor` scales the batch time under `yield`
    (inference alone on the device) from the measured one (beside training); 1 judges both gates
    alike."""
    alpha, beta = fit_exec_ms(exec_points)
    sizes = sorted({b for b in BATCH_SIZES if b <= max_batch_bound})

    def ranked(factor: float, need_gap: bool = False) -> list[tuple[int, float]]:
        points: dict[tuple[int, float], int] = {}
        for b in sizes:
            for delay in {round(delay_ms, 1), round(fill_ms(b, rate_per_s), 1)}:
                b_eff, worst = operating_point(b, delay, rate_per_s, alpha * factor, beta * factor)
                if worst is None or worst > headroom * slo_ms:
                    continue
                if need_gap and not leaves_a_gap(b, delay, rate_per_s, alpha * factor, beta * factor):
                    continue
                points[(b, delay)] = b_eff
        # Ties on the batch that forms go to the smaller cap: it does not rely on the delay timer.
        return sorted(points, key=lambda bd: (points[bd], -bd[0], -bd[1]), reverse=True)[:2]

    off = ranked(1.0)
    by_gate = {"off": off, "yield": ranked(yield_exec_factor, need_gap=bool(off))}
    if not by_gate["off"] and not by_gate["yield"]:  # nothing predicted to fit: the safest known
        by_gate = {"off": [(sizes[0], 0.0)], "yield": [(sizes[0], 0.0)]}
    workers = (1,) if starving_for_data else (None,)
    candidates: list[Candidate] = []
    for i in range(2):
        for gate in ("off", "yield"):
            if i < len(by_gate[gate]):
                b, d = by_gate[gate][i]
                candidates += [Candidate(b, d, gate, w) for w in workers]
    return tuple(candidates[:budget])


def window_broke_slo(inf: InferenceWindow) -> bool:
    """This window missed the SLO: p99 over it, requests missed (shed or late: the window's
    attainment under WINDOW_ATTAINMENT), or a queue longer than can drain within the SLO."""
    if inf.latency_p99_ms is not None and inf.latency_p99_ms > inf.slo_ms:
        return True
    if inf.slo_attainment is not None and inf.slo_attainment < WINDOW_ATTAINMENT:
        return True
    return inf.queue_depth > max(1.0, inf.arrival_rate_per_s * inf.slo_ms / 1000.0)


def describe_window(inf: InferenceWindow) -> str:
    p99 = "-" if inf.latency_p99_ms is None else f"{inf.latency_p99_ms:.0f} ms"
    attainment = "-" if inf.slo_attainment is None else f"{inf.slo_attainment:.2f}"
    return f"p99 {p99}, attainment {attainment}, queue {inf.queue_depth}"


class AdaptivePolicy:
    name = "adaptive"

    def __init__(
        self,
        max_profiles: int = 10,
        profile_windows: int = 2,
        headroom: float = 0.8,
        replan_rate_change: float = 0.3,
        max_batch_bound: int = 64,
        modes: Sequence[ModeInfo] = (),
    ) -> None:
        self.max_profiles = max_profiles
        self.profile_windows = profile_windows
        self.headroom = headroom
        self.replan_rate_change = replan_rate_change
        self.max_batch_bound = max_batch_bound
        self.table = ModeTable(modes)  # empty: no power-mode search (e.g. a host's modes)

    def initial_state(self) -> AdaptiveState:
        return AdaptiveState()

    # --- helpers ---------------------------------------------------------------------------------

    def _as_candidate(self, knobs: Knobs) -> Candidate:
        assert knobs.inference is not None
        gates = {t.gate_policy for t in knobs.training.values()}
        mode = knobs.power_mode if knobs.power_mode in self.table.index else None
        return Candidate(
            knobs.inference.max_batch_size,
            knobs.inference.max_queue_delay_ms,
            gates.pop() if len(gates) == 1 else "off",
            power_mode=mode,
        )

    @staticmethod
    def _action(obs: Observation, c: Candidate, reason: str) -> Action:
        training = {
            job: TrainingChange(gate_policy=c.gate_policy, num_workers=c.num_workers) for job in obs.training
        }
        inference = InferenceChange(max_batch_size=c.max_batch_size, max_queue_delay_ms=c.max_queue_delay_ms)
        return Action(inference=inference, training=training, power_mode=c.power_mode, reason=reason)

    @staticmethod
    def _training_rate(obs: Observation) -> float:
        return sum(t.samples_per_s for t in obs.training.values())

    @staticmethod
    def _starving_for_data(obs: Observation) -> bool:
        """Training steps that spend most of their time waiting for data want a loader worker."""
        return any(t.num_workers == 0 for t in obs.knobs.training.values()) and obs.cpu_count > 2

    def _searching_modes(self, obs: Observation) -> bool:
        """Power modes are searched when the platform listed them with their clocks and the run is
        in one of them (a host's emulated modes, or none, leave the search off)."""
        return len(self.table) > 0 and obs.knobs.power_mode in self.table.index

    def _record(self, state: AdaptiveState, obs: Observation) -> AdaptiveState:
        """Fold this window into the measurement of the current candidate and the model's points."""
        inf = obs.inference
        assert inf is not None and state.current is not None
        exec_points = dict(state.exec_points)
        batch = round(inf.mean_batch_size) if inf.mean_batch_size else 0
        if inf.batch_exec_p50_ms is not None and batch:
            exec_points[max(1, batch)] = inf.batch_exec_p50_ms
        if state.windows_here == 0:  # the first window after a change mixes both configurations
            return replace(state, windows_here=1, exec_points=exec_points)
        old = state.measured.get(state.current, Measured())
        p99 = inf.latency_p99_ms or 0.0
        broke = window_broke_slo(inf)
        n = old.windows + 1
        rate = (old.training_samples_per_s * old.windows + self._training_rate(obs)) / n
        power = (old.power_w * old.windows + (obs.power_w or 0.0)) / n
        over = obs.power_budget_w is not None and obs.power_w is not None and power > obs.power_budget_w
        measured = dict(state.measured)
        steps = old.steps + sum(t.steps for t in obs.training.values())
        measured[state.current] = Measured(
            n,
            max(old.worst_p99_ms, p99),
            rate,
            old.broke_slo or broke,
            power,
            over,
            steps,
            (old.arrival_rate_per_s * old.windows + inf.arrival_rate_per_s) / n,
        )
        state = replace(
            state, windows_here=state.windows_here + 1, measured=measured, exec_points=exec_points
        )
        return self._record_mode(state, obs, batch)

    def _record_mode(self, state: AdaptiveState, obs: Observation, batch: int) -> AdaptiveState:
        """The mode model's data: this window's batch time and, with the gate off (training
        time-sliced beside inference, as the model assumes), its solo training time and power."""
        inf = obs.inference
        mode = obs.knobs.power_mode
        if inf is None or mode is None or mode not in self.table.index:
            return state
        gates = {t.gate_policy for t in obs.knobs.training.values()}
        paused = any(t.paused for t in obs.knobs.training.values())
        if gates != {"off"} or paused or inf.batch_exec_p50_ms is None or not batch:
            return state
        mode_exec = {**state.mode_exec, (mode, batch): inf.batch_exec_p50_ms}
        u = busy_share(inf.batch_exec_p50_ms, batch, inf.arrival_rate_per_s)
        steps = sum(t.steps for t in obs.training.values())
        samples = sum(t.samples for t in obs.training.values())
        old = state.mode_samples.get(mode, ModeSample())
        sample = old.add(obs.window_s, samples, steps, u, obs.power_w or 0.0)
        return replace(
            state,
            mode_exec=mode_exec,
            mode_samples={**state.mode_samples, mode: sample},
            anchor_mode=state.anchor_mode or mode,
        )

    def _best(self, state: AdaptiveState) -> Candidate | None:
        good = [
            (m.training_samples_per_s, c)
            for c, m in state.measured.items()
            if not m.broke_slo and not m.over_budget
        ]
        return max(good)[1] if good else None

    # --- the policy --------------------------------------------------------------------------------

    def decide(self, obs: Observation, state: AdaptiveState) -> tuple[Action, AdaptiveState]:
        inf, knobs = obs.inference, obs.knobs.inference
        if inf is None or knobs is None or not obs.inference_fresh:
            return Action(), state
        if state.current is None:
            state = replace(
                state,
                current=self._as_candidate(obs.knobs),
                profiles_used=1,
                base_delay_ms=knobs.max_queue_delay_ms,
            )
        ewma = RATE_EWMA_WEIGHT * inf.arrival_rate_per_s + (1 - RATE_EWMA_WEIGHT) * (
            state.rate_ewma_per_s or inf.arrival_rate_per_s
        )
        state = replace(state, rate_ewma_per_s=ewma)
        if inf.served < MIN_SERVED_TO_JUDGE and inf.arrived > 0 and inf.queue_depth == 0:
            return Action(), state  # too few requests this window to judge a p99
        assert state.current is not None
        wanted = state.current.power_mode
        if wanted is not None and obs.knobs.power_mode != wanted:
            return self._wait_for_mode(obs, state, wanted)
        state = self._record(state, obs)
        assert state.current is not None
        here = state.measured.get(state.current)

        if state.phase in ("probe", "profile"):
            searching = self._searching_modes(obs)
            enough = state.windows_here > self.profile_windows and (
                not searching
                or here is None
                or here.steps >= MIN_PROFILE_STEPS
                or state.windows_here > MAX_PROFILE_WINDOWS
            )
            done_here = enough or (here is not None and (here.broke_slo or here.over_budget))
            if not done_here:
                return Action(), state
            if state.phase == "probe":
                # the probe's mean rate: over all its windows, steadier than the smoothed one
                rate = here.arrival_rate_per_s if here is not None and here.windows else ewma
                state = replace(
                    state,
                    phase="profile",
                    plan_rate_per_s=rate,
                    queue=() if searching else self._plan(obs, state, rate, inf.slo_ms),
                )
            if searching:
                return self._search_step(obs, state)
            return self._next_profile_or_hold(obs, state)

        # hold: keep the SLO, re-plan when the load moved
        broke = window_broke_slo(inf)
        violations = state.violations + 1 if broke else 0
        state = replace(state, violations=violations)
        new_rate, state = self._rate_shift(obs, state, ewma)
        if new_rate is not None:
            return self._replan(obs, state, new_rate)
        if violations >= 2:
            measured = dict(state.measured)
            current = state.current
            assert current is not None
            measured[current] = replace(measured.get(current, Measured()), broke_slo=True)
            state = replace(state, measured=measured, violations=0)
            fallback = self._best(state) or self._safest(obs, inf.arrival_rate_per_s, inf.slo_ms, state)
            state = replace(state, current=fallback, windows_here=0, mode_wait=0)
            return self._action(
                obs,
                fallback,
                f"hold: {describe_window(inf)} missed the SLO twice; fall back to {fallback.describe()}",
            ), state
        return Action(), state

    def _wait_for_mode(
        self, obs: Observation, state: AdaptiveState, wanted: str
    ) -> tuple[Action, AdaptiveState]:
        """The candidate's power mode is not in force yet: ask again, measuring nothing, and give
        the candidate up after MODE_WAIT_WINDOWS. The guard holds a switch back for its dwell
        time, and refuses any step up while the board is over its power budget: then go back to
        the best configuration measured under the budget first, and resume from there."""
        current = state.current
        assert current is not None
        best = self._best(state)
        budget = obs.power_budget_w
        over = budget is not None and obs.power_w is not None and obs.power_w > budget
        if over and best is not None and best.power_mode != wanted and best.power_mode is not None:
            state = replace(state, queue=(current, *state.queue), current=best, windows_here=0, mode_wait=0)
            reason = f"over the {budget:g} W budget: back to {best.describe()} before trying {wanted}"
            return self._action(obs, best, reason), state
        if state.mode_wait < MODE_WAIT_WINDOWS:
            state = replace(state, mode_wait=state.mode_wait + 1, windows_here=0)
            return self._action(obs, current, f"waiting for power mode {wanted} to take effect"), state
        measured = {**state.measured, current: Measured(broke_slo=True)}
        here = self._as_candidate(obs.knobs)
        state = replace(state, measured=measured, current=here, windows_here=0, mode_wait=0)
        if state.phase == "hold":
            state = replace(state, phase="profile")
        action, state = self._search_step(obs, state)
        return replace(action, reason=f"power mode {wanted} never took effect; " + action.reason), state

    def _rate_shift(
        self, obs: Observation, state: AdaptiveState, ewma: float
    ) -> tuple[float | None, AdaptiveState]:
        """The rate to re-plan for if the load has moved from the plan's rate, else None."""
        inf = obs.inference
        assert inf is not None
        plan_rate = max(state.plan_rate_per_s, 1e-9)
        raw = inf.arrival_rate_per_s
        moved = abs(ewma - plan_rate) / plan_rate > self.replan_rate_change
        state = replace(state, rate_moved_windows=state.rate_moved_windows + 1 if moved else 0)
        jumps: tuple[float, ...] = ()
        if abs(raw - plan_rate) / plan_rate > self.replan_rate_change:
            same_way = all((r > plan_rate) == (raw > plan_rate) for r in state.jump_rates)
            jumps = (*state.jump_rates, raw) if same_way else (raw,)
        state = replace(state, jump_rates=jumps[-RATE_JUMP_WINDOWS:])
        if len(jumps) >= RATE_JUMP_WINDOWS:
            recent = jumps[-RATE_JUMP_WINDOWS:]
            expected = plan_rate * obs.window_s * len(recent)
            counted = sum(recent) * obs.window_s
            if abs(counted - expected) > RATE_JUMP_Z * math.sqrt(max(expected, 1.0)):
                return sum(recent) / len(recent), state
        if state.rate_moved_windows >= RATE_MOVED_WINDOWS:
            return ewma, state
        return None, state

    def _replan(self, obs: Observation, state: AdaptiveState, rate: float) -> tuple[Action, AdaptiveState]:
        """Plan again for `rate`. A re-plan gets a third of the budget: the load has moved, so the
        SLO comes first and the model's best picks for the new rate are tried straight away."""
        inf = obs.inference
        assert inf is not None
        old_rate = state.plan_rate_per_s
        share = max(1, self.max_profiles // 3)
        fresh = replace(
            state,
            phase="profile",
            plan_rate_per_s=rate,
            rate_ewma_per_s=rate,
            measured={},
            violations=0,
            rate_moved_windows=0,
            jump_rates=(),
            replanning=True,
            queue=(),
        )
        if self._searching_modes(obs):
            action, fresh = self._search_step(obs, replace(fresh, profiles_used=self.max_profiles - share))
        else:
            fresh = replace(
                fresh,
                profiles_used=self.max_profiles - share,
                queue=self._plan(obs, replace(fresh, profiles_used=0), rate, inf.slo_ms)[:share],
            )
            action, fresh = self._next_profile_or_hold(obs, fresh)
        why = f"re-plan: rate {old_rate:.1f} -> {rate:.1f} req/s; "
        return replace(action, reason=why + action.reason), fresh

    def _plan(
        self, obs: Observation, state: AdaptiveState, rate: float, slo_ms: float
    ) -> tuple[Candidate, ...]:
        budget = max(0, self.max_profiles - state.profiles_used)
        queue = plan(
            rate,
            slo_ms,
            self.headroom,
            state.exec_points,
            self.max_batch_bound,
            self._starving_for_data(obs),
            budget,
            state.base_delay_ms,
        )
        return tuple(c for c in queue if c not in state.measured)

    def _safest(self, obs: Observation, rate: float, slo_ms: float, state: AdaptiveState) -> Candidate:
        """Yield the gate and take the batch size the model likes best when nothing measured held."""
        mode = state.current.power_mode if state.current is not None else None
        points = self._exec_points_in(state, mode) if mode is not None else state.exec_points
        options = plan(
            rate, slo_ms, self.headroom, points, self.max_batch_bound, False, 6, state.base_delay_ms
        )
        yielding = [c for c in options if c.gate_policy == "yield"]
        return replace((yielding or list(options))[0], power_mode=mode)

    # --- the mode search ---------------------------------------------------------------------------

    def _models(self, state: AdaptiveState) -> tuple[ModeModel, ExecModel] | None:
        """The time/power model and the batch-time model, fitted to everything profiled."""
        if state.anchor_mode is None or not state.mode_exec:
            return None
        model = fit_mode_model(self.table, state.mode_samples, state.anchor_mode)
        return model, fit_exec(self.table, model, state.mode_exec, PRIOR_FIXED_SHARE)

    def _yield_exec_factor(self, state: AdaptiveState) -> float:
        """Batch time under `yield` over the measured one: the mode model's points are measured
        with the gate off (time-sliced), so alone inference runs INFERENCE_SHARE of that long."""
        return INFERENCE_SHARE if self._models(state) is not None else 1.0

    def _exec_points_in(self, state: AdaptiveState, mode: str) -> dict[int, float]:
        """Batch size -> exec ms in `mode`: measured there, else predicted by the batch-time model."""
        models = self._models(state)
        if models is None or mode not in self.table.index:
            return dict(state.exec_points)
        model, exec_model = models
        i = self.table.index[mode]
        sizes = {b for (_, b) in state.mode_exec}
        points = {b: float(exec_model.ms(self.table, model, b)[i]) for b in sizes}
        points.update({b: e for (m, b), e in state.mode_exec.items() if m == mode})
        return points

    def _allowed_modes(self, obs: Observation, state: AdaptiveState) -> npt.NDArray[np.bool_]:
        """Where the next pick may be: enough cores, inside the trust region, and not as hungry
        as a mode already measured over the power budget."""
        table = self.table
        # inference, each training process and its loader workers each want a core: fewer
        # online cores starve the loader, which the time model does not see
        workers = max((t.num_workers for t in obs.knobs.training.values()), default=0)
        min_cores = min(1 + len(obs.knobs.training) + workers, float(table.cores.max()))
        allowed = np.asarray(table.cores >= min_cores)
        seen = [table.index[m] for m in state.mode_samples if m in table.index]
        if seen:
            lowest = table.clocks[seen].min(axis=0)
            allowed &= np.all(table.clocks[:, 1:] >= TRUST_CLOCK_RATIO * lowest[1:], axis=1)
        for c, m in state.measured.items():
            if m.over_budget and c.power_mode is not None and c.power_mode in table.index:
                allowed &= ~table.dominating(c.power_mode)
        return allowed

    def _model_pick(self, obs: Observation, state: AdaptiveState) -> tuple[ModePick, float] | None:
        """The model's best (mode, batch) at the plan's rate, and its prediction for the best
        configuration measured so far (its measured rate if the model cannot say); None without
        a model."""
        inf = obs.inference
        models = self._models(state)
        if inf is None or models is None:
            return None
        model, exec_model = models
        pick = best_mode(
            self.table,
            model,
            exec_model,
            rate_per_s=state.plan_rate_per_s,
            slo_ms=inf.slo_ms,
            headroom=self.headroom,
            sizes=[b for b in BATCH_SIZES if b <= self.max_batch_bound],
            base_delay_ms=state.base_delay_ms,
            budget_w=obs.power_budget_w if obs.power_w is not None else None,
            budget_margin=BUDGET_MARGIN,
            allowed=self._allowed_modes(obs, state),
            prefer=obs.knobs.power_mode,
        )
        if pick is None:
            return None
        best = self._best(state)
        baseline = 0.0
        if best is not None and best.gate_policy == "off" and best.power_mode in self.table.index:
            assert best.power_mode is not None
            baseline = predicted_rate(
                self.table, model, exec_model, best.power_mode, best.max_batch_size, state.plan_rate_per_s
            )
        elif best is not None:
            baseline = state.measured[best].training_samples_per_s
        return pick, baseline

    def _search_step(self, obs: Observation, state: AdaptiveState) -> tuple[Action, AdaptiveState]:
        """One step of the mode search: profile the model's next pick, or the batch/gate plan in
        the chosen mode, or hold the best measured configuration."""
        inf = obs.inference
        assert inf is not None
        if state.queue:  # a candidate put off to get under the power budget first: its turn now
            nxt, rest = state.queue[0], state.queue[1:]
            state = replace(state, queue=rest, current=nxt, windows_here=0, mode_wait=0)
            return self._action(obs, nxt, f"resume profile: {nxt.describe()}"), state
        here = state.measured.get(state.current) if state.current is not None else None
        if state.replanning and here is not None and here.windows and here.arrival_rate_per_s > 0:
            # a fast re-plan took the rate from two windows; the profile measured it again
            state = replace(
                state, plan_rate_per_s=here.arrival_rate_per_s, rate_ewma_per_s=here.arrival_rate_per_s
            )
        left = self.max_profiles - state.profiles_used
        reserve = 0 if state.replanning else BATCH_STAGE_PROFILES
        picked = self._model_pick(obs, state)
        best = self._best(state)
        if picked is not None and left > reserve:
            pick, baseline = picked
            workers = 1 if self._starving_for_data(obs) else None
            c = Candidate(pick.max_batch_size, pick.max_queue_delay_ms, "off", workers, pick.mode)
            gain = pick.training_samples_per_s / baseline - 1 if baseline > 0 else math.inf
            if c not in state.measured and gain > MIN_GAIN:
                why = (
                    f"model: {pick.training_samples_per_s:.1f} samples/s, {pick.power_w:.1f} W, "
                    f"worst {pick.worst_latency_ms:.0f} ms"
                )
                return self._profile(obs, state, c, why)
        if left > 0 and (not state.replanning or best is None):
            mode = (
                best.power_mode if best is not None else (state.current.power_mode if state.current else None)
            )
            points = self._exec_points_in(state, mode) if mode is not None else dict(state.exec_points)
            options = plan(
                state.plan_rate_per_s,
                inf.slo_ms,
                self.headroom,
                points,
                self.max_batch_bound,
                self._starving_for_data(obs),
                left,
                state.base_delay_ms,
                self._yield_exec_factor(state) if mode is not None else 1.0,
            )
            queue = [replace(c, power_mode=mode) for c in options]
            if best is not None and best.gate_policy == "off" and best.power_mode == mode:
                # The gate only protects the SLO: with it off training still runs while a batch
                # does (at its time-slice share), with `yield` it waits. Here the SLO already held.
                queue = [c for c in queue if c.gate_policy == "off"]
            queue = [c for c in queue if c not in state.measured]
            if queue:
                return self._profile(obs, state, queue[0], f"batch plan in mode {mode}")
        return self._hold(obs, state)

    # --- profiling and holding -----------------------------------------------------------------------

    def _profile(
        self, obs: Observation, state: AdaptiveState, c: Candidate, why: str
    ) -> tuple[Action, AdaptiveState]:
        state = replace(state, current=c, windows_here=0, mode_wait=0, profiles_used=state.profiles_used + 1)
        rate = state.plan_rate_per_s
        reason = (
            f"profile {state.profiles_used}/{self.max_profiles}: {c.describe()} at {rate:.1f} req/s ({why})"
        )
        return self._action(obs, c, reason), state

    def _worth_profiling(self, state: AdaptiveState, options: Sequence[Candidate]) -> tuple[Candidate, ...]:
        """The planned candidates that could still beat the best one measured to meet the SLO.

        The model ranks candidates by the batch that forms (b_eff): with the gate off, a larger
        one costs the shared device less per request, which is what training gets back. So once
        a gate-off candidate has held the SLO, only a larger b_eff can leave training more; the
        same point behind `yield` only adds waiting. Profiling stops there, rather than spending
        windows (at worse configurations, a cost the run's own training pays) on what the model
        already says is behind. With a yielding best, the gate-off version of its batch is still
        worth a look, and so is any change of dataloader workers."""
        best = self._best(state)
        fresh = [c for c in options if c not in state.measured]
        if best is None:
            return tuple(fresh)
        alpha, beta = fit_exec_ms(state.exec_points)
        rate = state.plan_rate_per_s

        def b_eff(c: Candidate) -> int:
            return operating_point(c.max_batch_size, c.max_queue_delay_ms, rate, alpha, beta)[0]

        floor = b_eff(best)
        return tuple(
            c
            for c in fresh
            if b_eff(c) > floor
            or (b_eff(c) == floor and c.gate_policy == "off" and best.gate_policy != "off")
            or (b_eff(c) >= floor and c.num_workers != best.num_workers)
        )

    def _next_profile_or_hold(self, obs: Observation, state: AdaptiveState) -> tuple[Action, AdaptiveState]:
        """Profile the next candidate or hold. The plan is redrawn first: the profile just taken
        added a batch size to the e(b) fit (one point leans on a prior; two pin α and β), so the
        candidates the model now ranks first, and those still worth a profile, may have changed."""
        inf = obs.inference
        if inf is not None and state.plan_rate_per_s > 0:
            options = self._plan(obs, state, state.plan_rate_per_s, inf.slo_ms)
            state = replace(state, queue=self._worth_profiling(state, options))
        budget_left = self.max_profiles - state.profiles_used
        if state.queue and budget_left > 0:
            nxt, rest = state.queue[0], state.queue[1:]
            state = replace(
                state, queue=rest, current=nxt, windows_here=0, profiles_used=state.profiles_used + 1
            )
            rate = state.plan_rate_per_s
            reason = (
                f"profile {state.profiles_used}/{self.max_profiles}: {nxt.describe()} at {rate:.1f} req/s"
            )
            return self._action(obs, nxt, reason), state
        return self._hold(obs, state)

    def _hold(self, obs: Observation, state: AdaptiveState) -> tuple[Action, AdaptiveState]:
        best = self._best(state)
        if best is None:
            best = self._safest(
                obs, state.plan_rate_per_s, obs.inference.slo_ms if obs.inference else 0, state
            )
        m = state.measured.get(best)
        state = replace(state, phase="hold", current=best, windows_here=0, violations=0, replanning=False)
        detail = (
            f"{m.training_samples_per_s:.1f} samples/s, worst p99 {m.worst_p99_ms:.0f} ms"
            + (f", {m.power_w:.1f} W" if m.power_w else "")
            if m is not None
            else "nothing measured held the SLO"
        )
        return self._action(
            obs, best, f"hold: best of {state.profiles_used} profiled: {best.describe()} ({detail})"
        ), state

"""`adaptive`: cotrain's co-scheduler. Plan with a model, profile a few candidates, hold the SLO.

The problem (seed CCGrid'23, Fulcrum): choose the knobs so inference meets its latency SLO while
training runs as fast as it can. Exhaustive profiling is too slow on a live device (every
configuration costs seconds of measurement), so the policy works in three phases:

1. **Probe.** Measure the configuration as given for `profile_windows` windows: the arrival rate
   λ, the batch execution time at the current batch size, and the training rate.
2. **Plan and profile.** Build candidates over the joint knobs (inference batch size and queue
   delay, the interleaving gate policy of every training job, dataloader workers when they are
   starving training) and keep only those the seed's model predicts feasible: a batch of b is
   stable iff e(b) <= b/λ, and its worst latency is about (b-1)/λ + e(b), which must fit within
   `headroom` x SLO. e(b) = α + β·b is fitted from the batches seen so far (a prior splits a single
   observation into 30 % fixed and 70 % per-item cost). The feasible candidates are ordered by
   what they are expected to leave for training (gate off before yield, larger batches first:
   the seed measured that larger inference batches leave longer idle gaps for training) and
   profiled in that order, at most `max_profiles` in all, counting the probe. A candidate whose
   window breaks the SLO is abandoned at once, so a bad guess costs one window.
3. **Hold.** Apply the best candidate measured to meet the SLO (highest training rate). If p99
   breaks the SLO two windows running, fall back to the next safer measured candidate; if λ moves
   by more than `replan_rate_change` from the rate the plan was made for, plan again.

Every decision carries its reason, which the runtime writes to `decisions.jsonl`. Pure: no clock,
no I/O; everything it knows is in the Observation and its own (immutable) state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from cotrain.control import Action, InferenceChange, Knobs, Observation, TrainingChange

Phase = Literal["probe", "profile", "hold"]
RATE_EWMA_WEIGHT = 0.3  # of the newest window
RATE_MOVED_WINDOWS = 3  # a shift must last this many windows before it re-plans
PRIOR_FIXED_SHARE = 0.3  # of one observed batch time, when only one batch size has been seen
MIN_SERVED_TO_JUDGE = 5  # a window with fewer served requests says too little about p99


@dataclass(frozen=True, order=True)
class Candidate:
    """One point of the joint knob space the policy may choose."""

    max_batch_size: int
    max_queue_delay_ms: float
    gate_policy: str  # for every training job: "off" | "yield"
    num_workers: int | None = None  # None: leave as is

    def describe(self) -> str:
        workers = "" if self.num_workers is None else f", workers {self.num_workers}"
        delay = f"{self.max_queue_delay_ms:.0f} ms"
        return f"b={self.max_batch_size}, delay {delay}, gate {self.gate_policy}{workers}"


@dataclass(frozen=True)
class Measured:
    windows: int = 0
    worst_p99_ms: float = 0.0
    training_samples_per_s: float = 0.0  # mean over the windows that count
    broke_slo: bool = False


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
    exec_ms = alpha + beta * b
    if rate_per_s <= 0:
        return exec_ms
    fill_ms = b / rate_per_s * 1000
    if exec_ms > fill_ms:
        return None
    return (b - 1) / rate_per_s * 1000 + exec_ms


def operating_point(
    b: int, delay_ms: float, rate_per_s: float, alpha: float, beta: float
) -> tuple[int, float | None]:
    """(expected batch size, worst latency ms or None if unstable) for a batch cap and queue delay.

    The batcher dispatches at b requests or when the oldest has waited the delay, so the batches
    that form hold about min(b, 1 + λ·delay) requests: the delay, not the cap, often sets them.
    """
    if rate_per_s <= 0:
        return 1, alpha + beta
    b_eff = max(1, min(b, 1 + int(rate_per_s * delay_ms / 1000)))
    if alpha + beta * b_eff > b_eff / rate_per_s * 1000:
        return b_eff, None
    wait_ms = min(delay_ms, (b - 1) / rate_per_s * 1000)
    return b_eff, wait_ms + alpha + beta * b_eff


def plan(
    rate_per_s: float,
    slo_ms: float,
    headroom: float,
    exec_points: Mapping[int, float],
    max_batch_bound: int,
    starving_for_data: bool,
    budget: int,
    delay_ms: float = 10.0,
) -> tuple[Candidate, ...]:
    """Feasible candidates, the most promising for training first, at most `budget` of them.

    Each batch cap is tried with the configured queue delay and with the delay that lets a full
    batch form. Bigger batches come first: per request they cost the shared device less, which is
    what training gets back. Both gate policies are tried for the two most promising points."""
    alpha, beta = fit_exec_ms(exec_points)
    sizes = sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= max_batch_bound})
    points: dict[tuple[int, float], int] = {}
    for b in sizes:
        fill_ms = (b - 1) / rate_per_s * 1000 if rate_per_s > 0 else 0.0
        for delay in {round(delay_ms, 1), round(fill_ms, 1)}:
            b_eff, worst = operating_point(b, delay, rate_per_s, alpha, beta)
            if worst is not None and worst <= headroom * slo_ms:
                points[(b, delay)] = b_eff
    if not points:  # nothing predicted to fit: the safest thing the model knows
        points = {(sizes[0], 0.0): 1}
    # Ties on the batch that forms go to the smaller cap: it does not rely on the delay timer.
    ranked = sorted(points, key=lambda bd: (points[bd], -bd[0], -bd[1]), reverse=True)[:2]
    workers = (1,) if starving_for_data else (None,)
    candidates = [Candidate(b, d, gate, w) for b, d in ranked for gate in ("off", "yield") for w in workers]
    return tuple(candidates[:budget])


class AdaptivePolicy:
    name = "adaptive"

    def __init__(
        self,
        max_profiles: int = 10,
        profile_windows: int = 2,
        headroom: float = 0.8,
        replan_rate_change: float = 0.3,
        max_batch_bound: int = 64,
    ) -> None:
        self.max_profiles = max_profiles
        self.profile_windows = profile_windows
        self.headroom = headroom
        self.replan_rate_change = replan_rate_change
        self.max_batch_bound = max_batch_bound

    def initial_state(self) -> AdaptiveState:
        return AdaptiveState()

    # --- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _as_candidate(knobs: Knobs) -> Candidate:
        assert knobs.inference is not None
        gates = {t.gate_policy for t in knobs.training.values()}
        return Candidate(
            knobs.inference.max_batch_size,
            knobs.inference.max_queue_delay_ms,
            gates.pop() if len(gates) == 1 else "off",
        )

    @staticmethod
    def _action(obs: Observation, c: Candidate, reason: str) -> Action:
        training = {
            job: TrainingChange(gate_policy=c.gate_policy, num_workers=c.num_workers) for job in obs.training
        }
        inference = InferenceChange(max_batch_size=c.max_batch_size, max_queue_delay_ms=c.max_queue_delay_ms)
        return Action(inference=inference, training=training, reason=reason)

    @staticmethod
    def _training_rate(obs: Observation) -> float:
        return sum(t.samples_per_s for t in obs.training.values())

    @staticmethod
    def _starving_for_data(obs: Observation) -> bool:
        """Training steps that spend most of their time waiting for data want a loader worker."""
        return any(t.num_workers == 0 for t in obs.knobs.training.values()) and obs.cpu_count > 2

    def _record(self, state: AdaptiveState, obs: Observation) -> AdaptiveState:
        """Fold this window into the measurement of the current candidate and the e(b) points."""
        inf = obs.inference
        assert inf is not None and state.current is not None
        exec_points = dict(state.exec_points)
        if inf.batch_exec_p50_ms is not None and inf.mean_batch_size:
            exec_points[max(1, round(inf.mean_batch_size))] = inf.batch_exec_p50_ms
        if state.windows_here == 0:  # the first window after a change mixes both configurations
            return replace(state, windows_here=1, exec_points=exec_points)
        old = state.measured.get(state.current, Measured())
        p99 = inf.latency_p99_ms or 0.0
        broke = inf.latency_p99_ms is not None and inf.latency_p99_ms > inf.slo_ms
        n = old.windows + 1
        rate = (old.training_samples_per_s * old.windows + self._training_rate(obs)) / n
        measured = dict(state.measured)
        measured[state.current] = Measured(n, max(old.worst_p99_ms, p99), rate, old.broke_slo or broke)
        return replace(state, windows_here=state.windows_here + 1, measured=measured, exec_points=exec_points)

    def _best(self, state: AdaptiveState) -> Candidate | None:
        good = [(m.training_samples_per_s, c) for c, m in state.measured.items() if not m.broke_slo]
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
        state = self._record(state, obs)
        assert state.current is not None
        here = state.measured.get(state.current)

        if state.phase in ("probe", "profile"):
            done_here = state.windows_here > self.profile_windows or (here is not None and here.broke_slo)
            if not done_here:
                return Action(), state
            if state.phase == "probe":
                state = replace(
                    state,
                    phase="profile",
                    plan_rate_per_s=ewma,
                    queue=self._plan(obs, state, ewma, inf.slo_ms),
                )
            return self._next_profile_or_hold(obs, state)

        # hold: keep the SLO, re-plan when the load moved
        broke = inf.latency_p99_ms is not None and inf.latency_p99_ms > inf.slo_ms
        violations = state.violations + 1 if broke else 0
        state = replace(state, violations=violations)
        moved = abs(ewma - state.plan_rate_per_s) / max(state.plan_rate_per_s, 1e-9) > self.replan_rate_change
        state = replace(state, rate_moved_windows=state.rate_moved_windows + 1 if moved else 0)
        if state.rate_moved_windows >= RATE_MOVED_WINDOWS:
            fresh = replace(
                state, phase="profile", plan_rate_per_s=ewma, measured={}, violations=0, rate_moved_windows=0
            )
            # A re-plan gets a third of the budget: the load has moved, so the SLO comes first and
            # the model's safest-for-training picks are tried straight away.
            fresh = replace(
                fresh,
                profiles_used=self.max_profiles - max(1, self.max_profiles // 3),
                queue=self._plan(obs, replace(fresh, profiles_used=0), ewma, inf.slo_ms)[
                    : max(1, self.max_profiles // 3)
                ],
            )
            action, fresh = self._next_profile_or_hold(obs, fresh)
            why = f"re-plan: rate {state.plan_rate_per_s:.1f} -> {ewma:.1f} req/s; "
            return replace(action, reason=why + action.reason), fresh
        if violations >= 2:
            measured = dict(state.measured)
            current = state.current
            assert current is not None
            measured[current] = replace(measured.get(current, Measured()), broke_slo=True)
            state = replace(state, measured=measured, violations=0)
            fallback = self._best(state) or self._safest(obs, inf.arrival_rate_per_s, inf.slo_ms, state)
            state = replace(state, current=fallback, windows_here=0)
            return self._action(
                obs,
                fallback,
                f"hold: p99 {inf.latency_p99_ms:.0f} ms > SLO twice; fall back to {fallback.describe()}",
            ), state
        return Action(), state

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
        options = plan(
            rate,
            slo_ms,
            self.headroom,
            state.exec_points,
            self.max_batch_bound,
            False,
            6,
            state.base_delay_ms,
        )
        yielding = [c for c in options if c.gate_policy == "yield"]
        return (yielding or list(options))[0]

    def _next_profile_or_hold(self, obs: Observation, state: AdaptiveState) -> tuple[Action, AdaptiveState]:
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
        best = self._best(state)
        if best is None:
            best = self._safest(
                obs, state.plan_rate_per_s, obs.inference.slo_ms if obs.inference else 0, state
            )
        m = state.measured.get(best)
        state = replace(state, phase="hold", current=best, windows_here=0, violations=0)
        detail = (
            f"{m.training_samples_per_s:.1f} samples/s, worst p99 {m.worst_p99_ms:.0f} ms"
            if m is not None
            else "nothing measured held the SLO"
        )
        return self._action(
            obs, best, f"hold: best of {state.profiles_used} profiled: {best.describe()} ({detail})"
        ), state

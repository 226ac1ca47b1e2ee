"""CCGrid'23 Fig. 1 on real processes: the rules that read a fixed-batch run's records into
a row (is its queue stable? what peak latency, what training rate?), the median over repeated
runs, the paper's findings, and the choice of the arrival rate λ from measured capacities.

Pure functions of records, so that they are tested without a run and type-checked with the core;
experiments/ccgrid23_fig1.py runs the sweep and draws the figure, and cotrain/sim/ccgrid23.py
holds the same experiment on the simulated Orin.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from cotrain.queueing import batch_interval_ms

FIXED_BATCH_DELAY_MS = 60_000.0  # the largest the config allows: a batch waits until it is full
SETTLE_S = 2.0  # warm-up (first calls of the model) left out of the latency trend
STOPPED_REASON = "stopped before dispatch"  # what the service records for requests still queued at stop
MIN_CALIBRATION_BATCHES = 5  # fewer batches in the steady span than this measure nothing
MIN_CAPACITY_GAIN = 1.15  # c(4)/c(1) at or below this leaves no margin on either side of λ


# --- a run's config and its row -------------------------------------------------------------------


def fixed_batch_config(base: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """`base` with a fixed inference batch of `batch`: the batcher waits for a full batch (the
    paper's setup), the queue cannot shed, and nothing is drained at stop, so the backlog at stop
    is what is left of the queue."""
    data = copy.deepcopy(dict(base))
    service = data["workloads"]["inference"]
    service["batching"] = {"max_batch_size": batch, "max_queue_delay_ms": FIXED_BATCH_DELAY_MS}
    service["queue_capacity"] = max(int(service.get("queue_capacity", 0)), 100_000)
    service["admission"] = {"policy": "queue_full"}
    service["drain_timeout_s"] = 0
    return data


def queue_stable(batch: int, backlog: int, rate_per_s: float) -> bool:
    """The rule of cotrain/sim/ccgrid23.py's `is_stable`, at any arrival rate: a stable batcher
    never holds much more than two batches plus one second of arrivals; an unstable one ends with
    a backlog that grew all run long."""
    return backlog <= 2 * batch + int(rate_per_s)


def latency_rising(trend_ms_per_s: float | None, span_s: float, batch: int, rate_per_s: float) -> bool:
    """A stable queue's latency saw-tooths between e(b) and b/λ + e(b) with no trend, so a line
    fitted to it drifts by well under one tooth (b/λ) over the run; a queue falling behind drifts by
    more, even while its backlog is still small (near the edge, where e(b) ≈ b/λ). The 100 ms
    floor keeps scheduling noise at small b from counting."""
    if trend_ms_per_s is None:
        return False
    return trend_ms_per_s * span_s > max(batch_interval_ms(batch, rate_per_s), 100.0)


def latency_trend_ms_per_s(arrivals_s: Sequence[float], latencies_ms: Sequence[float]) -> float | None:
    """Least-squares slope of latency against arrival time. About 0 when the queue is stable (the
    sawtooth averages out); about (1 - b / (λ e(b))) x 1000 ms/s when it grows without bound."""
    if len(arrivals_s) < 3 or max(arrivals_s) - min(arrivals_s) <= 0:
        return None
    slope = np.polyfit(np.asarray(arrivals_s, dtype=float), np.asarray(latencies_ms, dtype=float), 1)[0]
    return float(slope)


@dataclass(frozen=True)
class RealRow:
    batch: int
    rate_per_s: float
    arrived: int
    served: int
    backlog_at_stop: int  # requests still queued when the run stopped
    oldest_wait_at_stop_ms: float | None  # how long the oldest of them had waited
    latency_ms_p50: float | None  # of served requests
    latency_ms_p99: float | None
    latency_ms_max: float | None
    peak_latency_ms: float | None  # max of served latency and oldest wait at stop: a lower bound if unstable
    latency_trend_ms_per_s: float | None
    train_samples_per_s: float
    train_steps_per_s: float
    stable: bool
    run_wall_s: float = 0.0
    run_dir: str = ""

    @property
    def accumulation_ms(self) -> float:
        """b/λ: how long a full batch takes to arrive."""
        return 1000.0 * self.batch / self.rate_per_s

    @property
    def implied_exec_ms(self) -> float | None:
        """Peak latency minus b/λ: the execution time e(b) the first request of a batch also waits."""
        if self.peak_latency_ms is None:
            return None
        return self.peak_latency_ms - self.accumulation_ms


def real_row(
    batch: int,
    rate_per_s: float,
    requests: Iterable[Mapping[str, str]],
    training: Mapping[str, Mapping[str, Any]],
    stop_s: float,
    *,
    run_wall_s: float = 0.0,
    run_dir: str = "",
) -> RealRow:
    """One row from a run's records: requests.csv rows, summary.json's `training`, and the run's
    stop time on the records' monotonic clock (events.jsonl `run_stopped`)."""
    requests = list(requests)
    served = [r for r in requests if r["outcome"] == "served"]
    backlog = [r for r in requests if r["outcome"] == "shed" and r.get("reason") == STOPPED_REASON]
    lat = [float(r["latency_ms"]) for r in served]
    start_s = min((float(r["arrival_s"]) for r in requests), default=0.0)
    steady = [(float(r["arrival_s"]), float(r["latency_ms"])) for r in served]
    steady = [(a, v) for a, v in steady if a >= start_s + SETTLE_S]
    trend = latency_trend_ms_per_s([a for a, _ in steady], [v for _, v in steady])
    span_s = (max(a for a, _ in steady) - min(a for a, _ in steady)) if steady else 0.0
    oldest = min((float(r["arrival_s"]) for r in backlog), default=None)
    oldest_ms = None if oldest is None else max(0.0, (stop_s - oldest) * 1000.0)
    peaks = [v for v in (max(lat, default=None), oldest_ms) if v is not None]

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 3) if lat else None

    return RealRow(
        batch=batch,
        rate_per_s=rate_per_s,
        arrived=len(requests),
        served=len(served),
        backlog_at_stop=len(backlog),
        oldest_wait_at_stop_ms=None if oldest_ms is None else round(oldest_ms, 3),
        latency_ms_p50=pct(50),
        latency_ms_p99=pct(99),
        latency_ms_max=round(max(lat), 3) if lat else None,
        peak_latency_ms=round(max(peaks), 3) if peaks else None,
        latency_trend_ms_per_s=trend,
        train_samples_per_s=round(sum(float(t.get("samples_per_s") or 0.0) for t in training.values()), 3),
        train_steps_per_s=round(sum(float(t.get("steps_per_s") or 0.0) for t in training.values()), 3),
        stable=queue_stable(batch, len(backlog), rate_per_s)
        and not latency_rising(trend, span_s, batch, rate_per_s),
        run_wall_s=round(run_wall_s, 1),
        run_dir=run_dir,
    )


# --- the rate λ -----------------------------------------------------------------------------------


class CalibrationError(Exception):
    """The calibration could not choose λ: a run too short to measure, a service that never
    saturated, or capacities with no unstable-then-stable regime between them."""


def with_rate(base: Mapping[str, Any], rate_per_s: float) -> dict[str, Any]:
    """`base` with a constant arrival rate of `rate_per_s`: the one knob the calibration and the
    chosen λ change, so that every run of a sweep shares the rest of the config."""
    data = copy.deepcopy(dict(base))
    data["workloads"]["inference"]["arrivals"]["rate_per_s"] = rate_per_s
    return data


def service_capacity_per_s(requests: Iterable[Mapping[str, str]], settle_s: float = SETTLE_S) -> float:
    """Requests/s a saturated service serves: the served requests of the batches that started
    `settle_s` or later after the first arrival, divided by the span from the first of those
    batches' start to the last one's end.

    Served over span, not the median over batches of b/(end - start): a queue stays bounded only
    if it is drained as fast as it fills over the long run, and the long-run drain rate is served
    over elapsed time. It counts what the median leaves out: the slow batches (the training's
    step landing mid-batch; the per-batch times skew right) and the gaps between batches (taking
    the next batch off the queue, writing its records). On this machine the two agree within 2 %
    (38.7 vs 39.2 req/s at b=1, 140.3 vs 142.8 at b=4: gaps of 0.1 ms), so robustness to a stall
    buys little, and a stall the median would drop slows the sweep's runs just the same. Valid
    only if the queue never emptied in the span (check the backlog at stop): otherwise the span
    also holds idle waits for arrivals and this reads the arrival rate."""
    rows = list(requests)
    if not rows:
        raise CalibrationError("no requests recorded")
    settled_s = min(float(r["arrival_s"]) for r in rows) + settle_s
    served = [r for r in rows if r["outcome"] == "served" and float(r["start_s"]) >= settled_s]
    batches = {(r["start_s"], r["end_s"]) for r in served}
    if len(batches) < MIN_CALIBRATION_BATCHES:
        raise CalibrationError(
            f"only {len(batches)} batches started after the first {settle_s:g} s "
            f"(at least {MIN_CALIBRATION_BATCHES} are needed to measure a capacity)"
        )
    span_s = max(float(r["end_s"]) for r in served) - min(float(r["start_s"]) for r in served)
    return len(served) / span_s


def choose_rate_per_s(capacity_b1_per_s: float, capacity_b4_per_s: float) -> float:
    """λ midway between the shared core's capacities at b = 1 and b = 4, rounded to 0.1 req/s:
    b = 1 then falls behind and b = 4 keeps up, each by the same margin, half the gap: the most a
    single λ can give both against the run-to-run noise (about ±30 %) and the error of one short
    calibration run. A gap of 15 % or less leaves 7 % or less on each side, well inside that noise,
    so no rate reliably shows the regime and this raises rather than pick one."""
    c1, c4 = capacity_b1_per_s, capacity_b4_per_s
    if c1 <= 0 or c4 <= 0:
        raise CalibrationError(f"capacities must be positive: b=1 {c1:.1f} req/s, b=4 {c4:.1f} req/s")
    if c4 / c1 <= MIN_CAPACITY_GAIN:  # the ratio, not c1 x 1.15: that reads 114.99... for c1 = 100
        raise CalibrationError(
            f"no unstable-then-stable regime on this machine: the measured capacities are {c1:.1f} req/s "
            f"at b=1 and {c4:.1f} req/s at b=4, and b=4 must serve more than {MIN_CAPACITY_GAIN:.2f}x "
            "b=1 for a rate between them to make b=1 unstable and b=4 stable by a margin"
        )
    return round(c1 + 0.5 * (c4 - c1), 1)


@dataclass(frozen=True)
class CalibrationRun:
    """One saturated run at a fixed batch size, read back: what it measured and whether it can
    be trusted (the service must have been saturated all along)."""

    batch: int
    rate_per_s: float  # the arrival rate, far above the capacity
    arrived: int
    backlog_at_stop: int
    capacity_per_s: float
    run_wall_s: float
    run_dir: str

    @property
    def saturated(self) -> bool:
        """A backlog beyond what a stable queue holds (queue_stable's rule): the queue grew all run,
        so it never emptied and the service never waited for an arrival."""
        return not queue_stable(self.batch, self.backlog_at_stop, self.rate_per_s)


@dataclass(frozen=True)
class RateChoice:
    """The sweep's λ and how it was chosen, for fig1.json, the printed output and the plot."""

    rate_per_s: float
    mode: str  # "auto" or "fixed"
    calibration: tuple[CalibrationRun, ...] = ()  # auto only, in the order they ran

    @property
    def capacity_per_s(self) -> dict[int, float]:
        """Capacity per batch size: the median over its calibration runs (one per repeat; a retry
        that saturated replaces the run that did not)."""
        batches = dict.fromkeys(c.batch for c in self.calibration)
        return {
            b: statistics.median(c.capacity_per_s for c in self.calibration if c.batch == b) for b in batches
        }

    def describe(self) -> str:
        if self.mode == "fixed":
            return f"λ = {self.rate_per_s:g} req/s, fixed (--rate {self.rate_per_s:g})"
        c = self.capacity_per_s
        runs = len(self.calibration) // max(1, len(c))
        of = f" (medians of {runs} runs each)" if runs > 1 else ""
        return (
            f"λ = {self.rate_per_s:g} req/s, auto: midway between the measured b=1 and b=4 capacities "
            f"{c[1]:.1f} and {c[4]:.1f} req/s{of}"
        )

    def json(self) -> dict[str, Any]:
        """fig1.json's `real.rate_choice`. Read by others: extend, never rename."""
        data: dict[str, Any] = {"mode": self.mode}
        if self.mode == "auto":
            data["capacity_per_s"] = {str(b): round(v, 3) for b, v in self.capacity_per_s.items()}
        data["calibration_runs"] = [c.run_dir for c in self.calibration]
        data["description"] = self.describe()
        if self.calibration:
            data["calibration"] = [asdict(c) | {"saturated": c.saturated} for c in self.calibration]
            data["capacity_method"] = (
                f"served requests / (last end - first start) over the batches started {SETTLE_S:g} s "
                "or later after the first arrival, in a run at a fixed batch size saturated with "
                "arrivals far above the capacity"
            )
        return data


# --- repeats and their medians --------------------------------------------------------------------


def run_order(batches: Sequence[int], repeats: int) -> list[tuple[int, int]]:
    """(batch, repeat k from 1) in the order the sweep runs them: every batch size once, then all
    again, and so on. Interleaved, slow drift of the shared machine (another job starting, the CPU
    warming) lands on every batch size alike; run in blocks, it would land on whichever batch size
    was running then and bend the curve."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, not {repeats}")
    return [(b, k) for k in range(1, repeats + 1) for b in batches]


def _median(values: Sequence[float | None]) -> float | None:
    """Median of the values that are not None (a run may serve nothing, or leave nothing queued);
    None if every one is None. An even count averages the middle two, like statistics.median; a
    count stays an int when its median is whole (always, for an odd number of runs)."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    mid = statistics.median(known)
    if all(isinstance(v, int) for v in known) and float(mid).is_integer():
        return int(mid)
    return round(float(mid), 3)


def majority_stable(rows: Sequence[RealRow]) -> bool:
    """Stable only if more than half of the runs were: a tie (1 of 2) counts as unstable, because a
    batch size whose queue holds only some of the time is not one to deploy."""
    return 2 * sum(r.stable for r in rows) > len(rows)


def median_row(rows: Sequence[RealRow]) -> RealRow:
    """One row for a batch size from its repeats: every numeric field is the median over the runs
    (ignoring None), `stable` is the majority vote, and `run_dir` is empty (each run keeps its own).
    Percentiles are medians of each run's percentile, not a percentile over the pooled requests:
    pooling would let one slow run's tail decide the row, which is what the median is there to stop."""
    if not rows:
        raise ValueError("no runs to combine")
    batches = {r.batch for r in rows}
    if len(batches) != 1:
        raise ValueError(f"runs of different batch sizes cannot be combined: {sorted(batches)}")
    values: dict[str, Any] = {}
    for f in fields(RealRow):
        if f.name == "batch":
            values[f.name] = rows[0].batch
        elif f.name == "stable":
            values[f.name] = majority_stable(rows)
        elif f.name == "run_dir":
            values[f.name] = ""
        else:
            values[f.name] = _median([getattr(r, f.name) for r in rows])
    return RealRow(**values)


def min_max(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """(min, max) of the values that are not None; (None, None) if there are none."""
    known = [v for v in values if v is not None]
    return (min(known), max(known)) if known else (None, None)


@dataclass(frozen=True)
class RepeatedRow:
    """A batch size's N runs and their median row. The median is what the figure and the findings
    use; the runs stay so that the run-to-run spread can be shown beside it."""

    median: RealRow
    runs: tuple[RealRow, ...]  # in repeat order: runs[k - 1] is repeat k

    @property
    def batch(self) -> int:
        return self.median.batch

    @property
    def repeats(self) -> int:
        return len(self.runs)

    @property
    def stable_repeats(self) -> int:
        return sum(r.stable for r in self.runs)

    @property
    def peak_latency_ms_spread(self) -> tuple[float | None, float | None]:
        return min_max(r.peak_latency_ms for r in self.runs)

    @property
    def train_samples_per_s_spread(self) -> tuple[float | None, float | None]:
        return min_max(r.train_samples_per_s for r in self.runs)


def combine_repeats(runs: Sequence[RealRow]) -> RepeatedRow:
    """A batch size's runs (in repeat order) with their median row."""
    return RepeatedRow(median=median_row(runs), runs=tuple(runs))


def _row_json(row: RealRow) -> dict[str, Any]:
    return asdict(row) | {"accumulation_ms": row.accumulation_ms, "implied_exec_ms": row.implied_exec_ms}


def real_json(
    rows: Sequence[RepeatedRow],
    setup: str,
    config: str,
    rate_per_s: float,
    duration_s: float,
    rate_choice: RateChoice | None = None,
) -> dict[str, Any]:
    """fig1.json's `real` section. Its keys are read by others: extend, never rename. `rows` holds
    the median rows (the old single-run keys, plus the repeat count, how many runs were stable and
    the min/max of peak latency and training throughput); `runs` holds every run, in the order
    they ran, each with its repeat number; `rate_choice` says how `rate_per_s` was chosen (fixed
    at `rate_per_s` if not given)."""
    if rate_choice is None:
        rate_choice = RateChoice(rate_per_s=rate_per_s, mode="fixed")
    repeats = max((r.repeats for r in rows), default=0)
    by_batch = {r.batch: r for r in rows}
    median_rows = []
    for r in rows:
        peak_min, peak_max = r.peak_latency_ms_spread
        train_min, train_max = r.train_samples_per_s_spread
        median_rows.append(
            _row_json(r.median)
            | {
                "repeats": r.repeats,
                "stable_repeats": r.stable_repeats,
                "peak_latency_ms_min": peak_min,
                "peak_latency_ms_max": peak_max,
                "train_samples_per_s_min": train_min,
                "train_samples_per_s_max": train_max,
            }
        )
    return {
        "setup": setup,
        "config": config,
        "rate_per_s": rate_per_s,
        "duration_s": duration_s,
        "repeats": repeats,
        "rows": median_rows,
        "runs": [
            _row_json(by_batch[b].runs[k - 1]) | {"repeat": k}
            for b, k in run_order(list(by_batch), repeats)
            if k <= by_batch[b].repeats
        ],
        "findings": real_findings([r.median for r in rows]),
        "rate_choice": rate_choice.json(),
    }


def real_findings(rows: Sequence[RealRow]) -> dict[str, bool]:
    """The paper's findings, checked on the real rows (latency and training over stable rows only,
    as the paper does: it sets unstable batch sizes aside)."""
    ordered = sorted(rows, key=lambda r: r.batch)
    stable = [r for r in ordered if r.stable]
    peaks = [r.peak_latency_ms or 0.0 for r in stable]
    trains = [r.train_samples_per_s for r in stable]
    return {
        f"batch {ordered[0].batch} unstable": bool(ordered) and not ordered[0].stable,
        f"batch {ordered[-1].batch} stable": bool(ordered) and ordered[-1].stable,
        "peak latency rises with batch size (stable batches)": all(
            a < b for a, b in itertools.pairwise(peaks)
        ),
        "training throughput rises with batch size (stable batches)": all(
            a < b for a, b in itertools.pairwise(trains)
        ),
    }


# --- the table ------------------------------------------------------------------------------------


def format_or_dash(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def wrap_title(title: str, width: int = 130) -> str:
    """The title with each `; `-clause on its own line: with the repeats it no longer fits one line
    of the 140-column console or of the figure, and a break between clauses reads better than
    one mid-phrase."""
    return "\n".join(textwrap.fill(part, width) for part in title.split("; "))


def _range(lo: float | None, hi: float | None, spec: str) -> str:
    return "-" if lo is None or hi is None else f"{format(lo, spec)}–{format(hi, spec)}"


def real_table(rows: Sequence[RepeatedRow], title: str) -> str:
    """The real sweep as plain text: one row per batch size (medians over its runs, with how many
    runs were stable and the min–max spread of peak latency and training), then whether each
    finding holds on the medians."""
    repeats = max((r.repeats for r in rows), default=0)
    head = (
        f"{'batch':>5} {'stable':>8} {'backlog':>7} {'p50 ms':>8} {'p99 ms':>8} {'peak ms':>8} "
        f"{'peak min–max':>13} {'b/λ ms':>7} {'peak-b/λ':>8} {'trend ms/s':>10} {'train smp/s':>11} "
        f"{'min–max':>11} {'steps/s':>7}"
    )
    lines = [
        wrap_title(title),
        f"each value: median of {repeats} runs per batch size (interleaved); min–max: their spread",
        head,
    ]
    for rr in sorted(rows, key=lambda r: r.batch):
        r = rr.median
        stable = f"{'yes' if r.stable else 'NO'} {rr.stable_repeats}/{rr.repeats}"
        lines.append(
            f"{r.batch:>5} {stable:>8} {r.backlog_at_stop:>7g} "
            f"{format_or_dash(r.latency_ms_p50, '.0f'):>8} {format_or_dash(r.latency_ms_p99, '.0f'):>8} "
            f"{format_or_dash(r.peak_latency_ms, '.0f'):>8} {_range(*rr.peak_latency_ms_spread, '.0f'):>13} "
            f"{r.accumulation_ms:>7.0f} {format_or_dash(r.implied_exec_ms, '.0f'):>8} "
            f"{format_or_dash(r.latency_trend_ms_per_s, '.0f'):>10} {r.train_samples_per_s:>11.1f} "
            f"{_range(*rr.train_samples_per_s_spread, '.1f'):>11} {r.train_steps_per_s:>7.2f}"
        )
    lines += [
        "",
        "stable (per run): backlog at stop <= 2b + λ x 1 s, and latency's fitted trend x run <= max(b/λ,",
        "100 ms); a batch size is stable if a majority of its runs were (k/N: runs that were stable).",
        "p50/p99 are of served requests; peak = max(served, oldest still queued at stop), so for an",
        "unstable batch size it is a lower bound that grows with the run's length.",
        "",
    ]
    findings = real_findings([r.median for r in rows])
    lines += [f"{'holds' if ok else 'FAILS'} (on the medians): {name}" for name, ok in findings.items()]
    return "\n".join(lines)

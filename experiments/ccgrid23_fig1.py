"""Seed CCGrid'23 Fig. 1, regenerated: inference latency and training throughput vs the inference batch size.

The paper (../shared/seeds/concurrent-training-inference-edge-ccgrid23.txt) co-runs ResNet50
inference at 100 img/s, each batch dispatched only when full, beside MobileNetV3 training on an
AGX Orin, and finds: small batches are unstable (a batch of b takes longer to execute than b
images take to arrive, e(b) > b/λ, so the queue and the latency grow without bound); larger
batches are stable with a peak latency of about b/λ + e(b), rising with b; and training runs
faster as b grows, because larger batches leave longer idle gaps.

Two platforms, one command:
- real: this machine's real processes. `cotrain run` (experiments/ccgrid23-fig1.yaml, scaled down
  to a 2-core CPU: resnet18 at 64 px, 30 req/s, beside mobilenet_v3_small training on the same
  core) once per fixed batch size. Each run is one sample (expect about ±30 % run-to-run noise
  on this shared machine, ../shared/ANCHORS.md).
- sim: the paper's own setup on the simulated Orin (cotrain/sim/ccgrid23.py), printed with the
  simulator's error on held-out calibration points, because the simulator stands in for a Jetson.

    .venv/bin/python experiments/ccgrid23_fig1.py [--platform real|sim|both] [--out DIR] [--duration S]

Writes DIR/fig1.json, DIR/fig1-real.png and/or DIR/fig1-sim.png (and DIR/calibration-sim.txt),
and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from cotrain.bench import BenchError, run_with_cli
from cotrain.records import read_csv_rows, read_jsonl
from cotrain.sim.calibration import (
    CCGRID23_DURATION_S,
    CCGRID23_RATE_PER_S,
    Calibration,
    calibrate,
    calibration_table,
    mape,
)
from cotrain.sim.ccgrid23 import BATCHES, Ccgrid23Row, ccgrid23_table, findings_hold, reproduce_ccgrid23

REPO = Path(__file__).resolve().parent.parent
BASE_YAML = REPO / "experiments" / "ccgrid23-fig1.yaml"
REAL_BATCHES = (1, 2, 4, 8, 16)
FIXED_BATCH_DELAY_MS = 60_000.0  # the largest the config allows: a batch waits until it is full
SETTLE_S = 2.0  # warm-up (first calls of the model) left out of the latency trend
STOPPED_REASON = "stopped before dispatch"  # what the service records for requests still queued at stop


# --- real: config and rows ------------------------------------------------------------------------


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
    return trend_ms_per_s * span_s > max(1000.0 * batch / rate_per_s, 100.0)


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


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def real_table(rows: Sequence[RealRow], title: str) -> str:
    """The real sweep as plain text: one row per batch size, then whether each finding holds."""
    head = (
        f"{'batch':>5} {'stable':>6} {'backlog':>7} {'p50 ms':>8} {'p99 ms':>8} {'peak ms':>8} "
        f"{'b/λ ms':>7} {'peak-b/λ':>8} {'trend ms/s':>10} {'train smp/s':>11} {'steps/s':>7}"
    )
    lines = [title, head]
    for r in sorted(rows, key=lambda r: r.batch):
        lines.append(
            f"{r.batch:>5} {('yes' if r.stable else 'NO'):>6} {r.backlog_at_stop:>7} "
            f"{_num(r.latency_ms_p50, '.0f'):>8} {_num(r.latency_ms_p99, '.0f'):>8} "
            f"{_num(r.peak_latency_ms, '.0f'):>8} {r.accumulation_ms:>7.0f} "
            f"{_num(r.implied_exec_ms, '.0f'):>8} "
            f"{_num(r.latency_trend_ms_per_s, '.0f'):>10} {r.train_samples_per_s:>11.1f} "
            f"{r.train_steps_per_s:>7.2f}"
        )
    lines += [
        "",
        "stable: backlog at stop <= 2b + λ x 1 s, and latency's fitted trend x run <= max(b/λ, 100 ms).",
        "p50/p99 are of served requests; peak = max(served, oldest still queued at stop), so for an",
        "unstable batch size it is a lower bound that grows with the run's length.",
        "",
    ]
    lines += [f"{'holds' if ok else 'FAILS'}: {name}" for name, ok in real_findings(rows).items()]
    return "\n".join(lines)


def run_real(
    base: Mapping[str, Any], out: Path, duration_s: float, batches: Sequence[int], bar: Progress
) -> list[RealRow]:
    """One `cotrain run` per batch size, in its own process tree (cotrain/bench.py's runner)."""
    rate = float(base["workloads"]["inference"]["arrivals"]["rate_per_s"])
    task = bar.add_task("real", total=len(batches))
    rows = []
    for b in batches:
        bar.update(task, description=f"real: batch {b}, {duration_s:g} s run")
        run_dir = out / "runs" / f"b{b}"
        started = time.perf_counter()
        run_with_cli(fixed_batch_config(base, b), run_dir, duration_s)
        wall_s = time.perf_counter() - started
        stop_s = next(
            float(e["t_mono_s"]) for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "run_stopped"
        )
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        row = real_row(
            b,
            rate,
            read_csv_rows(run_dir / "requests.csv"),
            summary.get("training") or {},
            stop_s,
            run_wall_s=wall_s,
            run_dir=str(run_dir),
        )
        rows.append(row)
        bar.console.print(
            f"  batch {b}: {'stable' if row.stable else 'UNSTABLE'}, backlog {row.backlog_at_stop}, "
            f"peak {_num(row.peak_latency_ms, '.0f')} ms, training {row.train_samples_per_s:.1f} samples/s "
            f"({wall_s:.0f} s)"
        )
        bar.advance(task)
    return rows


# --- sim: the paper's setup on the simulated Orin -------------------------------------------------


def held_out_fig1(cal: Calibration) -> list[dict[str, Any]]:
    """The calibration points of Fig. 1 each predicted by a fit that did not see it."""
    return [asdict(p) | {"error": p.error} for p in cal.held_out_time if p.source == "CCGrid'23 Fig. 1"]


def held_out_text(cal: Calibration) -> str:
    """The simulator's error on held-out points, to print beside its results."""
    fig1 = [p for p in cal.held_out_time if p.source == "CCGrid'23 Fig. 1"]
    lines = [
        "Simulator calibration, held-out points (each predicted by a fit that did not see it):",
        f"  time MAPE {cal.time_mape:.1%} over {len(cal.held_out_time)} points "
        f"(CCGrid'23 Fig. 1 leave-one-out: {mape(fig1):.1%})",
        f"  {'point':44s} {'paper':>8s} {'sim':>8s} {'error':>8s}",
    ]
    lines += [
        f"  {p.name:44s} {p.measured:>8.3g} {p.predicted:>8.3g} {p.error:>+8.1%}  {p.unit}" for p in fig1
    ]
    return "\n".join(lines)


def sim_json(rows: Sequence[Ccgrid23Row], cal: Calibration, duration_s: float) -> dict[str, Any]:
    return {
        "setup": "ResNet50 @ 100 img/s beside MobileNetV3 training, simulated AGX Orin MAXN",
        "rate_per_s": CCGRID23_RATE_PER_S,
        "duration_s": duration_s,
        "rows": [asdict(r) | {"peak_error": r.peak_error, "train_error": r.train_error} for r in rows],
        "findings": findings_hold(tuple(rows)),
        "calibration": {
            "time_mape_held_out": cal.time_mape,
            "fig1_mape_leave_one_out": mape([p for p in cal.held_out_time if p.source == "CCGrid'23 Fig. 1"]),
            "held_out_fig1": held_out_fig1(cal),
        },
    }


# --- plots ----------------------------------------------------------------------------------------


def _axes(batches: Sequence[int]) -> tuple[Any, Any, Any]:
    """Two panels over a log-2 batch axis, ticked at the swept batch sizes as plain numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(batches))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(min(batches) / 1.5, max(batches) * 1.5)
        ax.set_xlabel("inference batch size b (requests, fixed: dispatched when full)")
        ax.grid(True, which="both", alpha=0.3)
    return fig, left, right


def _mark_unstable(ax: Any, xs: Sequence[int], ys: Sequence[float], label: str = "unstable") -> None:
    """Red rings on the batch sizes whose queue grew without bound."""
    if xs:
        ax.scatter(xs, ys, s=180, facecolors="none", edgecolors="tab:red", linewidths=1.5, zorder=5)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(
                label, (x, y), textcoords="offset points", xytext=(12, 4), color="tab:red", fontsize=8
            )


def plot_real(rows: Sequence[RealRow], title: str, path: Path) -> Path:
    """Left: peak and p99 latency vs b (log-log) with b/λ; right: training samples/s vs b."""
    rows = sorted(rows, key=lambda r: r.batch)
    b = [r.batch for r in rows]
    fig, left, right = _axes(b)
    left.set_yscale("log")
    left.plot(b, [r.peak_latency_ms or np.nan for r in rows], "o-", label="peak latency (max)")
    left.plot(b, [r.latency_ms_p99 or np.nan for r in rows], "s--", label="p99 latency (served)")
    left.plot(b, [r.accumulation_ms for r in rows], ":", color="grey", label="b/λ (time to fill a batch)")
    bad = [r for r in rows if not r.stable]
    _mark_unstable(
        left, [r.batch for r in bad], [r.peak_latency_ms or np.nan for r in bad], "unstable (still growing)"
    )
    left.set_ylim(top=left.get_ylim()[1] * 3)  # room for the labels of the unstable points
    left.set_ylabel("inference latency per request (ms, log)")
    left.set_title("latency vs batch size (no SLO: stability is the test)")
    left.legend(fontsize=8)
    right.plot(b, [r.train_samples_per_s for r in rows], "o-", color="tab:green", label="training")
    _mark_unstable(right, [r.batch for r in bad], [r.train_samples_per_s for r in bad])
    right.set_ylabel("training throughput (samples/s)")
    right.set_title("training throughput vs batch size")
    right.set_ylim(0, 1.15 * max((r.train_samples_per_s for r in rows), default=1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_sim(rows: Sequence[Ccgrid23Row], fig1_mape: float, path: Path) -> Path:
    """The same two panels for the simulated Orin, with the paper's published points beside."""
    rows = sorted(rows, key=lambda r: r.batch)
    b = [r.batch for r in rows]
    fig, left, right = _axes(b)
    left.set_yscale("log")
    left.plot(b, [r.peak_latency_s or np.nan for r in rows], "o-", label="simulated peak latency")
    pub = [r for r in rows if r.published_peak_s is not None]
    left.plot(
        [r.batch for r in pub], [r.published_peak_s for r in pub], "ks", mfc="none", ms=9, label="paper"
    )
    left.plot(b, [r.batch / CCGRID23_RATE_PER_S for r in rows], ":", color="grey", label="b/λ (time to fill)")
    bad = [r for r in rows if not r.stable]
    _mark_unstable(
        left, [r.batch for r in bad], [r.peak_latency_s or np.nan for r in bad], "unstable (still growing)"
    )
    left.set_ylim(top=left.get_ylim()[1] * 3)  # room for the labels of the unstable points
    left.set_ylabel("peak inference latency (s, log)")
    left.set_title("latency vs batch size (no SLO: stability is the test)")
    left.legend(fontsize=8)
    right.plot(b, [r.train_batches_per_s for r in rows], "o-", color="tab:green", label="simulated")
    pub_t = [r for r in rows if r.published_train_per_s is not None]
    right.plot(
        [r.batch for r in pub_t],
        [r.published_train_per_s for r in pub_t],
        "ks",
        mfc="none",
        ms=9,
        label="paper",
    )
    _mark_unstable(right, [r.batch for r in bad], [r.train_batches_per_s for r in bad])
    right.set_ylabel("training throughput (batches/s)")
    right.set_title(f"training vs batch size (Fig. 1 held-out MAPE {fig1_mape:.1%})")
    tops = [r.train_batches_per_s for r in rows] + [r.published_train_per_s or 0.0 for r in rows]
    right.set_ylim(0, 1.15 * max(tops))
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        "simulated AGX Orin MAXN: ResNet50 @ 100 img/s beside MobileNetV3 training (seed CCGrid'23 Fig. 1)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# --- the command ----------------------------------------------------------------------------------


def _progress() -> Progress:
    """The sweep's bar, on stderr; rich draws nothing there when stderr is not a terminal."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def real_title(base: Mapping[str, Any], duration_s: float) -> str:
    inf = base["workloads"]["inference"]
    train = base["workloads"]["training"][0]
    size = inf["dataset"]["image_size"]
    return (
        f"this CPU, real processes on one shared core: {inf['model']['name']} @ {size} px, "
        f"{inf['arrivals']['rate_per_s']:g} req/s, beside {train['model']['name']} training "
        f"(batch {train['batch_size']}); one {duration_s:g} s run per batch size"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--platform", choices=("real", "sim", "both"), default="both")
    parser.add_argument("--out", default=str(REPO / "runs" / "ccgrid23-fig1"), metavar="DIR")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each real run (default 20)")
    parser.add_argument(
        "--sim-duration", type=float, default=CCGRID23_DURATION_S, help="simulated seconds per batch size"
    )
    parser.add_argument("--config", default=str(BASE_YAML), help="base YAML of the real sweep")
    parser.add_argument(
        "--batches",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=list(REAL_BATCHES),
        help="real sweep's batch sizes, comma-separated",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=140)
    command = "python experiments/ccgrid23_fig1.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result: dict[str, Any] = {
        "command": command.strip(),
        "date": datetime.date.today().isoformat(),
    }
    written: list[Path] = []
    with _progress() as bar:
        if args.platform in ("sim", "both"):
            task = bar.add_task("sim: calibrating", total=2)
            cal = calibrate()
            bar.update(task, advance=1, description=f"sim: simulating {len(BATCHES)} batch sizes")
            sim_rows = reproduce_ccgrid23(cal.device, duration_s=args.sim_duration)
            bar.advance(task)
            result["sim"] = sim_json(sim_rows, cal, args.sim_duration)
            (out / "calibration-sim.txt").write_text(calibration_table(cal) + "\n", encoding="utf-8")
            written.append(out / "calibration-sim.txt")
            fig1_mape = result["sim"]["calibration"]["fig1_mape_leave_one_out"]
            written.append(plot_sim(sim_rows, fig1_mape, out / "fig1-sim.png"))
        if args.platform in ("real", "both"):
            base = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
            try:
                real_rows = run_real(base, out, args.duration, args.batches, bar)
            except BenchError as exc:
                bar.stop()
                print(f"error: {exc}", file=sys.stderr)
                return 1
            title = real_title(base, args.duration)
            result["real"] = {
                "setup": title,
                "config": str(args.config),
                "rate_per_s": float(base["workloads"]["inference"]["arrivals"]["rate_per_s"]),
                "duration_s": args.duration,
                "rows": [
                    asdict(r) | {"accumulation_ms": r.accumulation_ms, "implied_exec_ms": r.implied_exec_ms}
                    for r in real_rows
                ],
                "findings": real_findings(real_rows),
            }
            written.append(plot_real(real_rows, title, out / "fig1-real.png"))
    (out / "fig1.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    written.insert(0, out / "fig1.json")
    if "sim" in result:
        console.print(ccgrid23_table(sim_rows), markup=False, highlight=False)
        console.print(
            "(err above is in sample: the calibration fitted these points; held-out errors follow)\n",
            markup=False,
            highlight=False,
        )
        console.print(held_out_text(cal), markup=False, highlight=False)
        console.print(f"(full calibration report: {out / 'calibration-sim.txt'})\n", markup=False)
    if "real" in result:
        console.print(real_table(real_rows, result["real"]["setup"]), markup=False, highlight=False)
    console.print(f"\nwritten in {out}: {', '.join(p.name for p in written)}", markup=False, highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

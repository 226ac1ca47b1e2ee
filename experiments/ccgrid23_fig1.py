"""CCGrid'23 Fig. 1, regenerated: inference latency and training throughput vs the inference batch size.

The paper (Prashanthi S.K. et al., CCGridW 2023; docs/references.md) co-runs ResNet50
inference at 100 img/s, each batch dispatched only when full, beside MobileNetV3 training on an
AGX Orin, and finds: small batches are unstable (a batch of b takes longer to execute than b
images take to arrive, e(b) > b/λ, so the queue and the latency grow without bound); larger
batches are stable with a peak latency of about b/λ + e(b), rising with b; and training runs
faster as b grows, because larger batches leave longer idle gaps.

Two platforms, one command:
- real: this machine's real processes. `cotrain run` (experiments/ccgrid23-fig1.yaml, scaled down
  to a 2-core CPU: resnet18 at 64 px at a constant rate λ, beside mobilenet_v3_small training on
  the same core) N times per fixed batch size (--repeats, default 3). One run is one sample, and
  this shared machine moves by tens of percent from run to run (docs/benchmarks.md), so the figure is
  the median of the N runs, with their min–max spread beside it. The runs are interleaved (every
  batch size once, then all again, ...) so that slow drift of the machine lands on every batch
  size alike rather than on whichever one ran during it. A batch size counts as stable only if a
  majority of its runs were.
- sim: the paper's own setup on the simulated Orin (cotrain/sim/ccgrid23.py), printed with the
  simulator's error on held-out calibration points, because the simulator stands in for a Jetson.

The rate λ (--rate auto|R, default auto). The finding needs λ where small batches cannot keep up
and larger ones can, and where that is depends on how fast the machine is (two 2-core x86_64
VMs of the same type measured 3-4x apart on 2026-12-01, docs/benchmarks.md). So `auto` first measures the
shared core's service capacity c(b) = b/e(b) at b = 1 and b = 4 (the median of K short saturated
runs each, interleaved, --calibration-repeats K, default 3: DIR/runs/calibrate-b1 and -b4, then
calibrate-b1-r2, ...) and runs the sweep at λ = c(1) + (c(4) - c(1))/2, midway: b = 1 unstable
and b = 4 stable, each by the same margin. If c(4) is not more than 15 % above c(1) the
regime does not exist on this machine and the command stops (exit 1). `--rate R` runs at R
req/s with no calibration; `--rate 30` is the rate in experiments/ccgrid23-fig1.yaml.

    .venv/bin/python experiments/ccgrid23_fig1.py [--platform real|sim|both] [--out DIR] [--duration S]
        [--repeats N] [--batches 1,2,4,8,16] [--rate auto|R] [--calibration-repeats K]

Writes DIR/fig1.json, DIR/fig1-real.png and/or DIR/fig1-sim.png (and DIR/calibration-sim.txt),
and prints the tables. The real runs land in DIR/runs/b{b}-r{k} (k = 1..N); fig1.json's `real`
keeps the median rows in `rows`, every run in `runs` and how λ was chosen in `rate_choice`. The
real sweep takes about N x 3.5 min, plus about K x 40 s for `auto`'s calibration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
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
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from cotrain.bench import BenchError, run_with_cli
from cotrain.ccgrid23_real import (
    STOPPED_REASON,
    CalibrationError,
    CalibrationRun,
    RateChoice,
    RealRow,
    RepeatedRow,
    choose_rate_per_s,
    combine_repeats,
    fixed_batch_config,
    format_or_dash,
    min_max,
    real_json,
    real_row,
    real_table,
    run_order,
    service_capacity_per_s,
    with_rate,
    wrap_title,
)
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
DEFAULT_REPEATS = 3  # the project's rule: a figure is a median over repeated runs
CALIBRATION_BATCHES = (1, 4)  # λ goes between these two capacities: b=1 unstable, b=4 stable
# Far above both capacities (measured: 20 and 36 req/s on one VM, 39 and 140 on another).
CALIBRATION_RATE_PER_S = 400.0
CALIBRATION_DURATION_S = 10.0  # 8 s of steady service after SETTLE_S; about 17 s of wall per run
DEFAULT_CALIBRATION_REPEATS = 3  # λ from one run per batch size moved with that run's noise


# --- real: calibrating λ --------------------------------------------------------------------------


def calibration_run_dir(out: Path, batch: int, repeat: int = 1) -> Path:
    """The first repeat keeps the name it had before there were repeats (fig1.json lists it)."""
    return out / "runs" / (f"calibrate-b{batch}" if repeat == 1 else f"calibrate-b{batch}-r{repeat}")


def measure_capacity(
    base: Mapping[str, Any], batch: int, rate_per_s: float, run_dir: Path, duration_s: float
) -> CalibrationRun:
    """One short `cotrain run` at a fixed batch size with arrivals at `rate_per_s`, the rest of
    the config as the sweep's, read back into its capacity and backlog."""
    started = time.perf_counter()
    run_with_cli(fixed_batch_config(with_rate(base, rate_per_s), batch), run_dir, duration_s)
    wall_s = time.perf_counter() - started
    requests = read_csv_rows(run_dir / "requests.csv")
    backlog = sum(r["outcome"] == "shed" and r.get("reason") == STOPPED_REASON for r in requests)
    return CalibrationRun(
        batch=batch,
        rate_per_s=rate_per_s,
        arrived=len(requests),
        backlog_at_stop=backlog,
        capacity_per_s=service_capacity_per_s(requests),
        run_wall_s=round(wall_s, 1),
        run_dir=str(run_dir),
    )


def calibrate_rate(
    base: Mapping[str, Any],
    out: Path,
    bar: Progress,
    task: TaskID,
    duration_s: float = CALIBRATION_DURATION_S,
    repeats: int = 1,
) -> RateChoice:
    """λ for this machine today: the capacity at b = 1 and b = 4, each the median of `repeats`
    saturated runs, interleaved like the sweep (run_order), then choose_rate_per_s. A run that
    did not saturate is retried once at twice the rate, and later repeats of that batch size
    start at the rate that saturated."""
    runs: list[CalibrationRun] = []
    rates = dict.fromkeys(CALIBRATION_BATCHES, CALIBRATION_RATE_PER_S)
    for b, k in run_order(CALIBRATION_BATCHES, repeats):
        rate = rates[b]
        for attempt in (1, 2):
            bar.update(
                task,
                description=f"calibrating: batch {b}, run {k}/{repeats} at {rate:g} req/s, {duration_s:g} s",
            )
            run = measure_capacity(base, b, rate, calibration_run_dir(out, b, k), duration_s)
            bar.advance(task)
            bar.console.print(
                f"  calibration batch {b} run {k}/{repeats} at {rate:g} req/s: "
                f"capacity {run.capacity_per_s:.1f} req/s, "
                f"backlog {run.backlog_at_stop} of {run.arrived} at stop "
                f"({'saturated' if run.saturated else 'NOT saturated'}) ({run.run_wall_s:.0f} s)",
                soft_wrap=True,
            )
            if run.saturated:
                break
            if attempt == 1:
                bar.console.print(
                    f"  not saturated: retrying batch {b} at {2 * rate:g} req/s", soft_wrap=True
                )
                rate *= 2
                bar.update(task, total=(_task_total(bar, task) or 0) + 1)
        else:
            raise CalibrationError(
                f"batch {b} did not saturate even at {rate:g} req/s (backlog {run.backlog_at_stop} at stop): "
                "its capacity is not measurable this way; use --rate R"
            )
        rates[b] = rate
        runs.append(run)
    chosen = RateChoice(rate_per_s=0.0, mode="auto", calibration=tuple(runs))
    capacity = chosen.capacity_per_s
    return replace(chosen, rate_per_s=choose_rate_per_s(capacity[1], capacity[4]))


def _task_total(bar: Progress, task: TaskID) -> float | None:
    return next(t.total for t in bar.tasks if t.id == task)


# --- real: the sweep, repeated --------------------------------------------------------------------


def run_dir_for(out: Path, batch: int, repeat: int) -> Path:
    """Where repeat `repeat` (from 1) of batch size `batch` runs; always suffixed, even for one
    repeat, so that the layout does not depend on --repeats."""
    return out / "runs" / f"b{batch}-r{repeat}"


def measure_run(base: Mapping[str, Any], batch: int, run_dir: Path, duration_s: float) -> RealRow:
    """One `cotrain run` at a fixed batch size, in its own process tree (cotrain/bench.py's
    runner), read back into a row."""
    rate = float(base["workloads"]["inference"]["arrivals"]["rate_per_s"])
    started = time.perf_counter()
    run_with_cli(fixed_batch_config(base, batch), run_dir, duration_s)
    wall_s = time.perf_counter() - started
    stop_s = next(
        float(e["t_mono_s"]) for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "run_stopped"
    )
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return real_row(
        batch,
        rate,
        read_csv_rows(run_dir / "requests.csv"),
        summary.get("training") or {},
        stop_s,
        run_wall_s=wall_s,
        run_dir=str(run_dir),
    )


def run_real(
    base: Mapping[str, Any],
    out: Path,
    duration_s: float,
    batches: Sequence[int],
    repeats: int,
    bar: Progress,
    task: TaskID | None = None,
) -> list[RepeatedRow]:
    """`repeats` runs per batch size, interleaved (see run_order), combined into one median row
    per batch size, in the order of `batches`. Each run advances `task` (a new one if None), so
    that one bar can cover the calibration before the sweep too."""
    order = run_order(batches, repeats)
    if task is None:
        task = bar.add_task("real", total=len(order))
    runs: dict[int, list[RealRow]] = {b: [] for b in batches}
    for b, k in order:
        bar.update(task, description=f"real: batch {b}, run {k}/{repeats}, {duration_s:g} s")
        row = measure_run(base, b, run_dir_for(out, b, k), duration_s)
        runs[b].append(row)
        bar.console.print(
            f"  batch {b} run {k}/{repeats}: {'stable' if row.stable else 'UNSTABLE'}, "
            f"backlog {row.backlog_at_stop}, peak {format_or_dash(row.peak_latency_ms, '.0f')} ms, "
            f"training {row.train_samples_per_s:.1f} samples/s ({row.run_wall_s:.0f} s)",
            soft_wrap=True,  # one line per run, even on a narrow or non-terminal stderr
        )
        bar.advance(task)
    return [combine_repeats(runs[b]) for b in batches]


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


def _mark_unstable(
    ax: Any,
    xs: Sequence[int],
    ys: Sequence[float],
    label: str | Sequence[str] = "unstable",
    color: str = "tab:red",
) -> None:
    """Rings on the batch sizes whose queue grew without bound (red), or, with another color, on
    those whose runs disagreed. `label` is one text for all, or one per point."""
    if xs:
        labels = [label] * len(xs) if isinstance(label, str) else list(label)
        ax.scatter(xs, ys, s=180, facecolors="none", edgecolors=color, linewidths=1.5, zorder=5)
        for x, y, text in zip(xs, ys, labels, strict=True):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(12, 4), color=color, fontsize=8)


def _errorbar(ax: Any, xs: Sequence[int], rows: Sequence[RepeatedRow], field: str, **style: Any) -> None:
    """Median points of `field` joined by a line, with bars from the lowest to the highest run."""
    med = np.array([_nan(getattr(r.median, field)) for r in rows])
    lo = np.array([_nan(min_max(getattr(x, field) for x in r.runs)[0]) for r in rows])
    hi = np.array([_nan(min_max(getattr(x, field) for x in r.runs)[1]) for r in rows])
    yerr = np.vstack([np.clip(med - lo, 0, None), np.clip(hi - med, 0, None)])
    ax.errorbar(xs, med, yerr=np.nan_to_num(yerr), capsize=4, elinewidth=1.2, **style)


def _nan(x: float | None) -> float:
    return np.nan if x is None else float(x)


def plot_real(rows: Sequence[RepeatedRow], title: str, path: Path) -> Path:
    """Left: peak and p99 latency vs b (log-log) with b/λ; right: training samples/s vs b. Points
    are medians over the runs; bars span the lowest to the highest run, so that a gap between two
    batch sizes can be told apart from run-to-run noise."""
    rows = sorted(rows, key=lambda r: r.batch)
    n = max((r.repeats for r in rows), default=0)
    b = [r.batch for r in rows]
    med = [r.median for r in rows]
    fig, left, right = _axes(b)
    left.set_yscale("log")
    _errorbar(left, b, rows, "peak_latency_ms", fmt="o-", label="peak latency (max)")
    left.plot(b, [_nan(r.latency_ms_p99) for r in med], "s--", label="p99 latency (served)")
    left.plot(b, [r.accumulation_ms for r in med], ":", color="grey", label="b/λ (time to fill a batch)")
    bad = [r for r in rows if not r.median.stable]
    mixed = [r for r in rows if r.median.stable and r.stable_repeats < r.repeats]

    def votes(rs: Sequence[RepeatedRow], what: str) -> list[str]:
        return [f"{what}{r.stable_repeats}/{r.repeats} runs stable" for r in rs]

    _mark_unstable(
        left,
        [r.batch for r in bad],
        [_nan(r.median.peak_latency_ms) for r in bad],
        votes(bad, "unstable (still growing)\n"),
    )
    _mark_unstable(
        left,
        [r.batch for r in mixed],
        [_nan(r.median.peak_latency_ms) for r in mixed],
        votes(mixed, "stable: "),
        color="tab:orange",
    )
    left.set_ylim(top=left.get_ylim()[1] * 3)  # room for the labels of the unstable points
    left.set_ylabel("inference latency per request (ms, log)")
    left.set_title("latency vs batch size (no SLO: stability is the test)")
    legend_title = f"median of {n} runs; bars: min–max"
    left.legend(fontsize=8, title=legend_title, title_fontsize=8)
    _errorbar(right, b, rows, "train_samples_per_s", fmt="o-", color="tab:green", label="training")
    _mark_unstable(right, [r.batch for r in bad], [r.median.train_samples_per_s for r in bad])
    _mark_unstable(
        right, [r.batch for r in mixed], [r.median.train_samples_per_s for r in mixed], "", "tab:orange"
    )
    right.set_ylabel("training throughput (samples/s)")
    right.set_title("training throughput vs batch size")
    tops = [x.train_samples_per_s for r in rows for x in r.runs]
    right.set_ylim(0, 1.15 * max(tops, default=1.0))
    right.legend(fontsize=8, loc="lower right", title=legend_title, title_fontsize=8)
    fig.suptitle(wrap_title(title), fontsize=10)
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
        "simulated AGX Orin MAXN: ResNet50 @ 100 img/s beside MobileNetV3 training (CCGrid'23 Fig. 1)",
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


def real_title(base: Mapping[str, Any], duration_s: float, repeats: int, rate_choice: RateChoice) -> str:
    """The figure's title and the table's first line: the setup, then the rate and how it was
    chosen (with `auto` the rate differs from machine to machine, so a figure must say why it
    has the rate it has), then the repeats."""
    inf = base["workloads"]["inference"]
    train = base["workloads"]["training"][0]
    size = inf["dataset"]["image_size"]
    return (
        f"this CPU, real processes on one shared core: {inf['model']['name']} @ {size} px "
        f"beside {train['model']['name']} training (batch {train['batch_size']}); "
        f"{rate_choice.describe()}; median of {repeats} runs of {duration_s:g} s per batch size"
    )


def _rate_arg(text: str) -> float | None:
    """argparse type for --rate: None for `auto` (calibrate), else a positive rate in req/s."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'auto' or a rate in req/s, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _positive_int(text: str) -> int:
    """argparse type for --repeats and --calibration-repeats: a median needs at least one run."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


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
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        default=DEFAULT_REPEATS,
        metavar="N",
        help=f"real runs per batch size, interleaved; the figure is their median (default {DEFAULT_REPEATS})",
    )
    parser.add_argument(
        "--rate",
        type=_rate_arg,
        default=None,
        metavar="auto|R",
        help="real sweep's arrival rate: auto (default) calibrates it midway between the measured b=1 and "
        "b=4 capacities (about 2 min more); R fixes it at R req/s (e.g. 30, the YAML's rate)",
    )
    parser.add_argument(
        "--calibration-repeats",
        type=_positive_int,
        default=DEFAULT_CALIBRATION_REPEATS,
        metavar="K",
        help="with --rate auto: saturated runs per calibration batch size, interleaved; each capacity is "
        f"their median (default {DEFAULT_CALIBRATION_REPEATS})",
    )
    args = parser.parse_args(argv)
    if len(set(args.batches)) != len(args.batches):
        parser.error("--batches: each batch size once (use --repeats to run one several times)")
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
            sweep = len(run_order(args.batches, args.repeats))
            calibrating = len(CALIBRATION_BATCHES) * args.calibration_repeats if args.rate is None else 0
            task = bar.add_task("real", total=calibrating + sweep)
            try:
                if args.rate is None:
                    choice = calibrate_rate(base, out, bar, task, repeats=args.calibration_repeats)
                else:
                    choice = RateChoice(rate_per_s=args.rate, mode="fixed")
                bar.console.print(f"rate: {choice.describe()}", soft_wrap=True, markup=False)
                base = with_rate(base, choice.rate_per_s)
                real_rows = run_real(base, out, args.duration, args.batches, args.repeats, bar, task)
            except (BenchError, CalibrationError) as exc:
                bar.stop()
                print(f"error: {exc}", file=sys.stderr)
                return 1
            title = real_title(base, args.duration, args.repeats, choice)
            result["real"] = real_json(
                real_rows, title, str(args.config), choice.rate_per_s, args.duration, choice
            )
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

"""`cotrain report RUN_DIR [RUN_DIR ...] --out D`: report.md and PNG plots from run directories.

Everything comes from the record files (through `cotrain.runread`, so a crashed or still-running
run is reported too): per-request latency over time against the SLO (the sawtooth figure of
CCGrid'23, docs/references.md), the latency CDF of every service, the offered load and the queue, training
throughput over time, a timeline of the knobs the controller turned, and platform utilisation
and power where the telemetry has them. With several runs, report.md opens with a side-by-side
table.

Plots use matplotlib's object API on the Agg canvas (no pyplot state, no display), so the report
can run in a thread or a headless CI job. Each plot is a `*_figure` function that returns the
Figure, with its legends and colours open to inspection, and a `plot_*` that saves it. A legend
lists only series that were drawn, and goes below the panels where it would hide data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cotrain.dashboard import describe_action, notable_events
from cotrain.runread import (
    FloatArray,
    KnobValue,
    RequestColumns,
    RunRecords,
    event_time_s,
    knob_timeline,
    latency_bins,
    latency_window,
    queue_depths,
    read_run,
    train_rate_bins,
)

DPI = 120
SLO_STYLE: dict[str, Any] = {"color": "tab:red", "linestyle": "--", "linewidth": 1.6}
MAX_DECISIONS_LISTED = 12
MAX_EVENTS_LISTED = 20


@dataclass(frozen=True)
class Headline:
    """The figures the comparison table shows for one run."""

    label: str
    name: str
    controller: str
    status: str
    duration_s: float | None
    slo_ms: float | None
    attainment: float | None
    p50_ms: float | None
    p99_ms: float | None
    served_per_s: float | None
    samples_per_s: dict[str, float] = field(default_factory=dict)
    source: str = "summary.json"


def headline(label: str, records: RunRecords) -> Headline:
    """From summary.json when the run wrote one, else recomputed from the records."""
    summary = records.summary
    config = records.config or {}
    controller = str((config.get("controller") or {}).get("name") or "-")
    if summary and isinstance(summary.get("run"), dict):
        run = summary["run"]
        inference = summary.get("inference") or {}
        latency = inference.get("latency_ms") or {}
        return Headline(
            label=label,
            name=str(run.get("name") or records.name),
            controller=str(run.get("controller") or controller),
            status=str(run.get("status") or records.status),
            duration_s=_opt(run.get("duration_s")),
            slo_ms=_opt(inference.get("slo_ms")),
            attainment=_opt(inference.get("slo_attainment")),
            p50_ms=_opt(latency.get("p50")),
            p99_ms=_opt(latency.get("p99")),
            served_per_s=_opt(inference.get("throughput_per_s")),
            samples_per_s={
                job: float(t.get("samples_per_s") or 0.0)
                for job, t in (summary.get("training") or {}).items()
                if isinstance(t, dict)
            },
        )
    end_s = records.last_record_s()
    primary = records.primary()
    t0 = records.t0_mono_s
    window = None
    if primary is not None and t0 is not None:
        window = latency_window(records.columns(primary.name), t0, primary.slo_ms, -math.inf, math.inf)
    rates = {}
    if t0 is not None and end_s > 0:
        for job, rows in records.training.items():
            rates[job] = sum(r.samples for r in rows if 0 <= r.t_s - t0 <= end_s) / end_s
    return Headline(
        label=label,
        name=records.name,
        controller=controller,
        status=records.status,
        duration_s=end_s if t0 is not None else None,
        slo_ms=primary.slo_ms if primary else None,
        attainment=window.attainment if window else None,
        p50_ms=window.p50_ms if window else None,
        p99_ms=window.p99_ms if window else None,
        served_per_s=window.served / end_s if window and end_s > 0 else None,
        samples_per_s=rates,
        source="recomputed from the records",
    )


def _opt(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# --- plots -----------------------------------------------------------------------------------------


def _figure(rows: int = 1, height_in: float = 3.6) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(9, height_in), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path)
    return path


def _legend_below(fig: Figure, axes: Sequence[Axes], ncols: int = 3) -> None:
    """One legend below the panels, each label once: a legend inside an axes hides the very
    steps and points it explains. Nothing at all when no series was drawn."""
    handles: list[Any] = []
    labels: list[str] = []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small", frameon=False)


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="gray")


def _duration_s(records: RunRecords) -> float:
    return max(1e-3, records.last_record_s())


def plot_latency(records: RunRecords, label: str, path: Path) -> Path:
    return _save(latency_figure(records, label), path)


def latency_figure(records: RunRecords, label: str) -> Figure:
    """Every request's latency at its arrival, the p99 of each time bin, and the SLO line.

    One panel per inference service. This is the figure in which CCGrid'23 showed the
    sawtooth that small batches under training interference make.
    """
    services = sorted(records.services(), key=lambda s: -s.priority)
    fig, axes = _figure(rows=max(1, len(services)), height_in=1.0 + 3.2 * max(1, len(services)))
    fig.suptitle(f"{label}: per-request latency")
    t0 = records.t0_mono_s
    duration = _duration_s(records)
    axes[-1].set_xlabel("time since run start (s)")
    axes[-1].set_xlim(0, duration)
    if not services or t0 is None:
        axes[0].set_ylabel("latency (ms)")
        _no_data(axes[0], "no inference requests recorded")
    for ax, service in zip(axes, services, strict=False):
        if len(services) > 1:
            ax.set_title(f"{service.name} (priority {service.priority})", loc="left", fontsize="medium")
        ax.set_ylabel("latency (ms)")
        ax.grid(alpha=0.3)
        if t0 is None or not records.requests.get(service.name):
            _no_data(ax, "no requests recorded")
            continue
        _latency_panel(ax, records.columns(service.name), t0, service.slo_ms, duration)
    _legend_below(fig, axes)
    return fig


def _latency_panel(ax: Axes, requests: RequestColumns, t0: float, slo: float, duration: float) -> None:
    served = requests.served & ~np.isnan(requests.latency_ms)
    t = requests.arrival_s[served] - t0
    latency = requests.latency_ms[served]
    within = latency <= slo
    for chosen, size, color, alpha, label in (
        (within, 5, "tab:blue", 0.6, "served within the SLO"),
        (~within, 7, "tab:orange", 0.8, "served over the SLO"),
    ):
        if chosen.any():  # an empty series would still put its entry in the legend
            ax.scatter(t[chosen], latency[chosen], s=size, color=color, alpha=alpha, label=label)
    bin_s = max(1.0, math.ceil(duration / 150))
    bins = latency_bins(requests, t0, slo, 0.0, duration, bin_s, by_arrival=True)
    if any(b.p99_ms is not None for b in bins):
        p99 = [np.nan if b.p99_ms is None else b.p99_ms for b in bins]
        edges = [bins[0].from_s] + [b.to_s for b in bins]
        ax.stairs(
            p99, edges, baseline=None, color="black", linewidth=1.0, label=f"p99 per {bin_s:g} s of arrivals"
        )
    lost = requests.arrival_s[~requests.served] - t0
    if lost.size:
        ax.plot(
            lost,
            np.ones_like(lost),
            "x",
            color="tab:red",
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label=f"failed or shed ({lost.size}), at the top edge",
        )
    ax.axhline(slo, **SLO_STYLE, label=f"SLO {slo:g} ms")
    if latency.size and latency.max() > 5 * slo:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, max(slo * 1.25, float(latency.max()) * 1.05 if latency.size else slo))


@dataclass(frozen=True)
class CdfCurve:
    """One service's served latencies, sorted, each with the fraction of *arrived* requests served
    within it (so failed and shed requests keep the curve below 1)."""

    label: str
    slo_ms: float
    latency_ms: FloatArray
    fraction: FloatArray

    @property
    def attainment(self) -> float:
        within = self.fraction[self.latency_ms <= self.slo_ms]
        return float(within[-1]) if within.size else 0.0


def cdf_curves(runs: Sequence[tuple[str, RunRecords]]) -> list[CdfCurve]:
    """Every run's every service that served something, the highest priority first in each run.

    Every service, not just the controller's: a low-priority service starved by a higher one
    shows as a curve that stays low.
    """
    curves = []
    for label, records in runs:
        services = sorted(records.services(), key=lambda s: -s.priority)
        for service in services:
            if not records.requests.get(service.name):
                continue
            requests = records.columns(service.name)
            latency = np.sort(requests.latency_ms[requests.served & ~np.isnan(requests.latency_ms)])
            if latency.size == 0:
                continue
            name = label if len(services) == 1 else f"{label}: {service.name} (SLO {service.slo_ms:g} ms)"
            fraction = np.arange(1, latency.size + 1) / len(requests)
            curves.append(CdfCurve(name, service.slo_ms, latency, fraction))
    return curves


def plot_latency_cdf(runs: Sequence[tuple[str, RunRecords]], path: Path) -> Path:
    return _save(latency_cdf_figure(runs), path)


def latency_cdf_figure(runs: Sequence[tuple[str, RunRecords]]) -> Figure:
    """The served-latency CDF of each run's each service, with a vertical line at each distinct SLO."""
    fig, (ax,) = _figure(height_in=4.0)
    ax.set_title("latency CDF (failed and shed requests never reach the top)")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of arrived requests\nserved within that latency")
    curves = cdf_curves(runs)
    for curve in curves:
        ax.step(
            curve.latency_ms,
            curve.fraction,
            where="post",
            label=f"{curve.label}, {curve.attainment:.1%} within SLO",
        )
    slos = sorted({c.slo_ms for c in curves})
    for slo in slos:
        ax.axvline(slo, **SLO_STYLE, label=f"SLO {slo:g} ms")
    if curves:
        tails = [float(np.percentile(c.latency_ms, 99.5)) for c in curves]
        ax.set_xlim(0, max(max(slos) * 1.3, max(tails) * 1.05))
        ax.legend(loc="lower right", fontsize="small")
    else:
        _no_data(ax, "no inference requests recorded")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    return fig


LOAD_COLOURS = {  # one colour per series of load.png, none shared
    "arrived": "tab:gray",
    "served": "tab:blue",
    "failed or shed": "tab:red",
    "reported rate": "black",
    "queue rebuilt": "tab:orange",
    "queue reported": "tab:purple",
}


def plot_load(records: RunRecords, label: str, path: Path) -> Path:
    return _save(load_figure(records, label), path)


def load_figure(records: RunRecords, label: str) -> Figure:
    """The controller's service: requests/s arriving, served and lost per time bin, and its queue.

    The queue depth the service reported at each control period (telemetry.csv) is drawn over
    the depth rebuilt at every arrival from requests.csv, which older runs have alone.
    """
    fig, (rates, queue) = _figure(rows=2, height_in=5.6)
    primary = records.primary()
    t0 = records.t0_mono_s
    duration = _duration_s(records)
    fig.suptitle(f"{label}: offered load and queue" + (f" ({primary.name})" if primary else ""))
    rates.set_ylabel("requests/s")
    queue.set_ylabel("requests waiting")
    queue.set_xlabel("time since run start (s)")
    for ax in (rates, queue):
        ax.grid(alpha=0.3)
        ax.set_xlim(0, duration)
    if primary is None or t0 is None or not records.requests.get(primary.name):
        _no_data(rates, "no inference requests recorded")
        _no_data(queue, "no inference requests recorded")
        return fig
    requests = records.columns(primary.name)
    bin_s = max(1.0, math.ceil(duration / 100))
    edges = np.arange(0.0, duration + 1e-9, bin_s)  # whole bins only: a partial one reads as a drop
    lost = ~requests.served
    for name, at in (
        ("arrived", requests.arrival_s),
        ("served", requests.done_s[requests.served]),
        ("failed or shed", requests.done_s[lost]),
    ):
        if not at.size:
            continue
        counts, _ = np.histogram(at - t0, bins=edges)
        rates.stairs(
            counts / bin_s, edges, baseline=None, color=LOAD_COLOURS[name], label=f"{name}, per {bin_s:g} s"
        )
    own = records.reported_queue(primary.name)
    reported = [(q.t_s, q.arrival_rate_per_s) for q in own if q.arrival_rate_per_s is not None]
    if reported:
        xs, ys = zip(*reported, strict=True)
        rates.plot(
            xs,
            ys,
            ".",
            color=LOAD_COLOURS["reported rate"],
            markersize=3,
            label="arrival rate the service reported, per control period",
        )
    rates.set_ylim(bottom=0)
    times, depths = queue_depths(requests, t0)
    if times.size and edges.size > 1:
        # the most per bin, not a step per arrival: at 150 req/s that is a solid smear
        index = np.searchsorted(edges, times, side="right") - 1
        inside = (index >= 0) & (index < edges.size - 1)
        most = np.full(edges.size - 1, np.nan)
        np.fmax.at(most, index[inside], depths[inside].astype(float))
        if np.isfinite(most).any():
            label = f"queue, most per {bin_s:g} s (rebuilt)"
            queue.stairs(most, edges, baseline=None, color=LOAD_COLOURS["queue rebuilt"], label=label)
    depths_reported = [(q.t_s, q.queue_depth) for q in own if q.queue_depth is not None]
    if depths_reported:
        xs, ys = zip(*depths_reported, strict=True)
        queue.plot(
            xs,
            ys,
            "o",
            color=LOAD_COLOURS["queue reported"],
            markersize=3,
            label="queue, reported by the service",
        )
    if not times.size and not depths_reported:
        _no_data(queue, "no request reached a batch")
    else:
        highest = max([0, *depths.tolist(), *(d for _, d in depths_reported)])
        queue.set_ylim(0, highest * 1.05 + 1)
    _legend_below(fig, (rates, queue))
    return fig


def plot_training(records: RunRecords, label: str, path: Path) -> Path:
    return _save(training_figure(records, label), path)


def training_figure(records: RunRecords, label: str) -> Figure:
    """Samples/s of each job per time bin; model deployments as dotted vertical lines."""
    fig, (ax,) = _figure()
    ax.set_title(f"{label}: training throughput")
    ax.set_xlabel("time since run start (s)")
    ax.set_ylabel("samples/s")
    t0 = records.t0_mono_s
    duration = _duration_s(records)
    bin_s = max(1.0, math.ceil(duration / 120))
    drawn = False
    if t0 is not None:
        for job, rows in records.training.items():
            if not rows:
                continue
            ends, rates = train_rate_bins(rows, t0, 0.0, duration, bin_s)
            if not ends:
                continue
            mean = sum(r.samples for r in rows if 0 <= r.t_s - t0 <= duration) / duration
            stairs = ax.stairs(rates, [0.0, *ends], baseline=None, label=f"{job}, per {bin_s:g} s")
            ax.axhline(mean, color=stairs.get_edgecolor(), linestyle=":", label=f"{job}, run mean {mean:.1f}")
            drawn = True
    published = [e for e in records.events if e.get("event") == "model_published"]
    times = [at for at in (event_time_s(e, t0) for e in published) if at is not None]
    for i, at in enumerate(times):
        ax.axvline(
            at, color="tab:green", linestyle="-.", alpha=0.6, label="model published" if i == 0 else None
        )
    if not drawn:
        _no_data(ax, "no training steps recorded")
    else:
        _legend_below(fig, [ax], ncols=4)
        ax.set_ylim(bottom=0)
    ax.set_xlim(0, duration)
    ax.grid(alpha=0.3)
    return fig


KNOB_LABELS: dict[str, tuple[str, str]] = {  # knob -> (what it is, the y axis unit)
    "max_batch_size": ("max batch size", "requests"),
    "max_queue_delay_ms": ("max queue delay", "ms"),
    "variant": ("variant", ""),
    "threads": ("threads", "threads"),
    "instances": ("model instances", "instances"),
    "num_workers": ("dataloader workers", "workers"),
    "batch_size": ("batch size", "samples"),
    "duty_cycle": ("duty cycle", "fraction"),
    "gate_policy": ("interleaving gate", ""),
    "gate_max_wait_ms": ("gate max wait", "ms"),
    "paused": ("paused", ""),
    "cpus": ("CPUs", ""),
}
ALWAYS_SHOWN = ("max_batch_size", "num_workers")


@dataclass(frozen=True)
class KnobPanel:
    title: str
    unit: str
    steps: list[tuple[float, KnobValue]]


def knob_panels(records: RunRecords) -> list[KnobPanel]:
    """The knobs worth a panel: batch size and workers always, the variant and power mode whenever
    known, any other knob only if it changed during the run."""
    panels: list[KnobPanel] = []
    for key, steps in knob_timeline(records.decisions).items():
        owner, knob = key.split(".", 1)
        known = any(v is not None for _, v in steps)
        if knob in ALWAYS_SHOWN or (knob == "variant" and known) or (len(steps) > 1 and known):
            who = "inference" if owner == "inference" else f"train:{owner}"
            what, unit = KNOB_LABELS.get(knob, (knob, ""))
            panels.append(KnobPanel(f"{who} {what}", unit, steps))
    modes: list[tuple[float, KnobValue]] = []
    for sample in records.telemetry:
        if sample.power_mode and (not modes or modes[-1][1] != sample.power_mode):
            modes.append((sample.t_s, sample.power_mode))
    if modes:
        panels.append(KnobPanel("power mode (from telemetry)", "", modes))
    return panels


def plot_knobs(records: RunRecords, label: str, path: Path) -> Path:
    return _save(knobs_figure(records, label), path)


def knobs_figure(records: RunRecords, label: str) -> Figure:
    """Step plots of the knobs over the run, from decisions.jsonl (power mode from telemetry).

    The legend goes below the panels: inside the batch-size panel it covered the very line it
    explains."""
    from matplotlib.ticker import MaxNLocator

    panels = knob_panels(records)
    fig, axes = _figure(rows=max(1, len(panels)), height_in=1.0 + 1.5 * max(1, len(panels)))
    fig.suptitle(f"{label}: knob timeline ({len(records.decisions)} controller decisions)")
    duration = _duration_s(records)
    if not panels:
        _no_data(axes[0], "no decisions recorded")
    primary = records.primary()
    t0 = records.t0_mono_s
    for ax, panel in zip(axes, panels, strict=False):
        xs = [t for t, _ in panel.steps] + [duration]
        values = [v for _, v in panel.steps]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            ys = [float(v) for v in values if isinstance(v, int | float)]
            ax.step(xs, [*ys, ys[-1]], where="post", color="tab:purple", label="knob setting")
            low, high = min(ys), max(ys)
            if panel.title == "inference max batch size" and primary is not None and t0 is not None:
                # what the batcher really formed under that ceiling
                bin_s = max(1.0, math.ceil(duration / 150))
                columns = records.columns(primary.name)
                bins = latency_bins(columns, t0, primary.slo_ms, 0.0, duration, bin_s, by_arrival=True)
                means = [np.nan if b.mean_batch is None else b.mean_batch for b in bins]
                if any(b.mean_batch is not None for b in bins):
                    edges = [bins[0].from_s] + [b.to_s for b in bins]
                    ax.stairs(
                        means,
                        edges,
                        baseline=None,
                        color="tab:gray",
                        label=f"mean batch served, per {bin_s:g} s",
                    )
                    low = min([low, *(m for m in means if not math.isnan(m))])
            span = high - low
            ax.set_ylim(low - max(0.5, 0.1 * span), high + max(0.5, 0.1 * span))
            if all(isinstance(v, int) for v in values):  # whole numbers: no 0.25-worker ticks
                if int(high) - int(low) <= 6:
                    ax.set_yticks(range(math.floor(low), int(high) + 1))
                else:
                    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            names = [str(v) for v in values]
            levels = sorted(set(names), key=names.index)
            ys_cat = [levels.index(n) for n in names]
            ax.step(xs, [*ys_cat, ys_cat[-1]], where="post", color="tab:purple", label="knob setting")
            ax.set_yticks(range(len(levels)), levels, fontsize="small")
            ax.set_ylim(-0.5, len(levels) - 0.5)
        ax.set_title(panel.title, loc="left", fontsize="small")
        ax.set_ylabel(panel.unit)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time since run start (s)")
    axes[-1].set_xlim(0, duration)
    _legend_below(fig, axes)
    return fig


def plot_platform(records: RunRecords, label: str, path: Path) -> Path:
    return _save(platform_figure(records, label), path)


def platform_figure(records: RunRecords, label: str) -> Figure:
    """CPU and GPU utilisation (%), and power (W) and temperature (°C) where the platform gives them."""
    telemetry = records.telemetry
    t = [s.t_s for s in telemetry]
    series = {
        "power": [s.power_w for s in telemetry],
        "temperature": [s.temperature_c for s in telemetry],
    }
    extra = [name for name, values in series.items() if any(v is not None for v in values)]
    fig, axes = _figure(rows=1 + len(extra), height_in=2.6 + 1.6 * len(extra))
    util = axes[0]
    source = telemetry[0].source if telemetry else "-"
    missing = [name for name in ("power", "temperature") if name not in extra]
    note = f"; {' and '.join(missing)} not measured ({source})" if missing and telemetry else ""
    util.set_title(f"{label}: platform telemetry{note}")
    util.set_ylabel("utilisation (%)")
    if not telemetry:
        _no_data(util, "no telemetry recorded")
    else:
        for name, values, color in (
            ("CPU", [s.cpu_util_percent for s in telemetry], "tab:blue"),
            ("GPU", [s.gpu_util_percent for s in telemetry], "tab:green"),
        ):
            if any(v is not None for v in values):
                util.plot(t, [np.nan if v is None else v for v in values], color=color, label=name)
        util.set_ylim(0, 105)
        if util.get_legend_handles_labels()[0]:
            util.legend(loc="lower right", fontsize="small")
        else:
            _no_data(util, f"no utilisation measured ({source})")
    units = {"power": ("power (W)", "tab:red"), "temperature": ("temperature (°C)", "tab:brown")}
    for ax, name in zip(axes[1:], extra, strict=True):
        ylabel, color = units[name]
        ax.plot(t, [np.nan if v is None else v for v in series[name]], color=color)
        ax.set_ylabel(ylabel)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time since run start (s)")
    axes[-1].set_xlim(0, _duration_s(records))
    return fig


# --- markdown ----------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def comparison_table(heads: Sequence[Headline]) -> str:
    jobs = sorted({job for h in heads for job in h.samples_per_s})
    columns = [
        "run",
        "controller",
        "status",
        "duration (s)",
        "SLO (ms)",
        "SLO attainment",
        "p50 (ms)",
        "p99 (ms)",
        "served/s",
        *[f"train:{j} samples/s" for j in jobs],
        "figures from",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for h in heads:
        cells = [
            h.label,
            h.controller,
            h.status,
            _fmt(h.duration_s, ".1f"),
            _fmt(h.slo_ms, "g"),
            _fmt(h.attainment, ".1%"),
            _fmt(h.p50_ms, ".1f"),
            _fmt(h.p99_ms, ".1f"),
            _fmt(h.served_per_s, ".1f"),
            *[_fmt(h.samples_per_s.get(j), ".1f") for j in jobs],
            h.source,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def platform_note(records: RunRecords) -> str:
    """One sentence on power and temperature: measured figures, or which platform could not."""
    telemetry = records.telemetry
    if not telemetry:
        return "No platform telemetry was recorded."
    parts = []
    for what, unit, values in (
        ("power", "W", [s.power_w for s in telemetry]),
        ("temperature", "°C", [s.temperature_c for s in telemetry]),
        ("CPU utilisation", "%", [s.cpu_util_percent for s in telemetry]),
        ("GPU utilisation", "%", [s.gpu_util_percent for s in telemetry]),
    ):
        known = [v for v in values if v is not None]
        if known:
            parts.append(f"{what} mean {np.mean(known):.1f} {unit}, max {max(known):.1f} {unit}")
        else:
            parts.append(f"{what} not measured")
    modes = sorted({s.power_mode for s in telemetry if s.power_mode})
    mode = f"power mode {', '.join(modes)}" if modes else "no power mode"
    return f"Platform ({telemetry[0].source}, {len(telemetry)} samples, {mode}): " + "; ".join(parts) + "."


def _run_section(label: str, records: RunRecords, head: Headline, images: Sequence[Path]) -> str:
    out = [f"## {label}", ""]
    out.append(
        f"`{records.path}`: run `{head.name}`, controller `{head.controller}`, status **{head.status}**, "
        f"{_fmt(head.duration_s, '.1f', ' s')} measured. Figures from {head.source}."
    )
    out.append("")
    out.append(comparison_table([head]))
    out.append("")
    out.append(platform_note(records))
    out.append("")
    for image in images:
        out.append(f"![{image.stem}]({image.name})")
        out.append("")
    decisions = [d for d in records.decisions if d.action or d.notes]
    out.append(
        f"### Controller decisions ({len(records.decisions)} recorded, {len(decisions)} changed knobs)"
    )
    out.append("")
    if decisions:
        shown = decisions[-MAX_DECISIONS_LISTED:]
        if len(decisions) > len(shown):
            out.append(f"The last {len(shown)}:")
            out.append("")
        out.append("| t (s) | change | reason |")
        out.append("|---|---|---|")
        for d in shown:
            reason = d.reason + "".join(f" [{n}]" for n in d.notes)
            out.append(f"| {d.t_s:.1f} | {describe_action(d.action) or '-'} | {_md(reason)} |")
    else:
        out.append("The knobs stayed as configured.")
    out.append("")
    notable = notable_events(records.events, records.t0_mono_s)
    out.append(f"### Events ({len(notable)}; knob acknowledgements left out)")
    out.append("")
    for e in notable[-MAX_EVENTS_LISTED:]:
        when = "load" if e.loading else _fmt(e.t_s, ".1f", " s")  # run seconds, as the plots
        out.append(f"- {when}: `{e.name}` {_md(e.text)}")
    out.append("")
    return "\n".join(out)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- the command -------------------------------------------------------------------------------------


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Short, unique labels: the directory name, with its parent's when two share a name."""
    names = [p.resolve().name or str(p) for p in paths]
    labels = []
    for path, name in zip(paths, names, strict=True):
        label = name if names.count(name) == 1 else f"{path.resolve().parent.name}-{name}"
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


PLOTS: tuple[tuple[str, Callable[[RunRecords, str, Path], Path]], ...] = (
    ("latency", plot_latency),
    ("load", plot_load),
    ("training", plot_training),
    ("knobs", plot_knobs),
    ("platform", plot_platform),
)


def write_report(paths: Sequence[Path], out: Path, *, show_progress: bool = True) -> list[Path]:
    """Write out/report.md and the PNGs; returns every file written, report.md first."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out.mkdir(parents=True, exist_ok=True)
    labels = run_labels(paths)
    several = len(paths) > 1
    total = 1 + len(paths) * (1 + len(PLOTS))
    written: list[Path] = []
    runs: list[tuple[str, RunRecords]] = []
    sections: list[str] = []
    heads: list[Headline] = []
    with Progress(
        TextColumn("[bold]report[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show_progress,
        transient=True,
    ) as progress:
        task = progress.add_task("reading", total=total)
        for label, path in zip(labels, paths, strict=True):
            progress.update(task, description=f"{label}: reading the records")
            records = read_run(path)
            progress.advance(task)
            runs.append((label, records))
            head = headline(label, records)
            heads.append(head)
            images = []
            for name, plot in PLOTS:
                progress.update(task, description=f"{label}: {name} plot")
                images.append(
                    plot(records, label, out / (f"{label}-{name}.png" if several else f"{name}.png"))
                )
                progress.advance(task)
            written += images
            sections.append(_run_section(label, records, head, images))
        progress.update(task, description="latency CDF")
        cdf = plot_latency_cdf(runs, out / "latency-cdf.png")
        progress.advance(task)
        written.append(cdf)
    command = " ".join(["cotrain report", *(str(p) for p in paths), "--out", str(out)])
    parts = ["# cotrain report", "", f"Written by `{command}` from the run directories' record files.", ""]
    if several:
        parts += ["## Comparison", "", comparison_table(heads), ""]
    parts += [f"![latency CDF]({cdf.name})", ""]
    parts += sections
    report = out / "report.md"
    report.write_text("\n".join(parts), encoding="utf-8")
    return [report, *written]

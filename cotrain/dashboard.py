"""The live terminal dashboard: `cotrain watch RUN_DIR` and `cotrain run CONFIG --dashboard`.

jtop already shows a Jetson's CPU, GPU, power and modes; this shows what jtop cannot: the SLO,
the queue, the batch policy and variant, training progress, and why the controller did what it
did. It only reads the run directory (`cotrain.runread`), so it attaches to a headless run,
replays a finished one, and never runs inside a workload process.

Three layers, so each can be tested alone:
- `build_frame(records, ...) -> Frame`: a pure function of what was read. No clock, no I/O.
- `render_frame(frame, width, height) -> Group`: lines of rich Text that fit exactly.
- `watch(...)`: the loop that reads, builds and redraws at a bounded rate, and quits on `q`.

Beside the records, the loop samples the workers' CPU and memory with psutil (`WorkerSampler`),
from the pids in processes.json, while the run is live; that is the one thing not read from the
run directory, and it is passed to `build_frame` as data.
"""

from __future__ import annotations

import math
import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import psutil
from rich.console import Console, Group
from rich.text import Text

from cotrain.runread import (
    Decision,
    JobSpec,
    LatencyWindow,
    QueueReport,
    RequestColumns,
    RequestRow,
    RunReader,
    RunRecords,
    TelemetryRow,
    event_time_s,
    event_wall_s,
    latency_bins,
    latency_window,
    pid_alive,
    queue_depths,
    train_rate,
)

DEFAULT_WINDOW_S = 5.0
DEFAULT_REFRESH_S = 1.0
MIN_REFRESH_S = 0.2  # the dashboard shares the cores with the workloads: never redraw faster
DEFAULT_ATTAINMENT_TARGET = 0.99  # a window "met the SLO" at or above this (bench's default too)
QUIT_KEYS = frozenset("qQ")
WATCH_QUIT_HINT = "q: quit watch"
RUN_QUIT_HINT = "q: close dashboard (the run continues; Ctrl-C stops the run)"
CREATE_TIME_SLACK_S = 2.0  # psutil's create_time rests on the boot time, which /proc gives in whole s
CHART_LABEL_W = 7
NOISY_EVENTS = frozenset({"knob_applied", "worker_spawned", "placed"})
BAD_EVENTS = frozenset({"worker_failed", "worker_killed", "run_failed"})
WARN_EVENTS = frozenset({"power_mode_refused", "stop_requested"})
GOOD_EVENTS = frozenset(
    {"model_published", "model_swapped", "power_mode_set", "run_started", "ladder_loaded"}
)
SKIP_FIELDS = frozenset({"event", "t_s", "t_mono_s", "wall", "traceback", "platform", "knobs", "path"})
BLOCKS = " ▁▂▃▄▅▆▇█"
KNOB_ABBREV = {
    "max_batch_size": "batch",
    "max_queue_delay_ms": "delay_ms",
    "num_workers": "workers",
    "batch_size": "bs",
    "gate_policy": "gate",
    "gate_max_wait_ms": "gate_wait_ms",
    "duty_cycle": "duty",
}


# --- the frame's data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceView:
    name: str
    priority: int
    slo_ms: float
    recent: LatencyWindow  # the last `window_s`
    total: LatencyWindow  # the run so far
    chart: Sequence[LatencyWindow]  # one bar each
    chart_bin_s: float
    queue_max: int | None  # most requests waiting in the window, recorded or rebuilt from requests
    queue_mean: float | None  # rebuilt from requests.csv (see runread.queue_depths)
    queue_now: int | None  # as the service last reported it (telemetry.csv or its queue.csv)
    arrival_per_s: float | None  # offered load over the window, as the service reported it
    max_batch_size: int | None
    max_queue_delay_ms: float | None
    variant: str | None
    model_version: int | None
    threads: int | None
    instances: int | None
    swaps: int


@dataclass(frozen=True)
class JobView:
    name: str
    kind: str
    recent_samples_per_s: float
    run_samples_per_s: float
    steps: int
    last_loss: float | None
    knobs: Mapping[str, Any]
    progress: str  # rounds, windows, deployments: whatever the job kind has


@dataclass(frozen=True)
class PlatformView:
    source: str
    power_mode: str | None
    cpu_util_percent: float | None
    gpu_util_percent: float | None
    gpu_freq_mhz: float | None
    power_w: float | None
    temperature_c: float | None
    memory_used_mb: float | None


@dataclass(frozen=True)
class EventView:
    t_s: float | None  # since t0, negative while the models loaded; None if t0 is not known yet
    name: str
    text: str
    severity: str  # bad | warn | good | info
    loading: bool = False  # written before t0, while t0 is not known yet: shown as "load"


@dataclass(frozen=True)
class WorkerUsage:
    """One workload process as the dashboard's own process sampled it (psutil).

    `cpu_percent` covers the process and its children (a training job's DataLoader workers), as
    `top` counts it: 100 is one core. None: not measurable (the first sample has nothing to
    compare with; a process gone, not readable, or a pid since reused by another process)."""

    name: str
    pid: int
    cpu_percent: float | None
    rss_mb: float | None
    children: int = 0


@dataclass(frozen=True)
class Frame:
    run_name: str
    path: str
    status: str  # loading | running | completed | failed | interrupted | stale
    controller: str
    platform_kind: str
    now_s: float
    duration_s: float | None
    window_s: float
    services: Sequence[ServiceView]  # the controller's (primary) service first
    jobs: Sequence[JobView]
    platform: PlatformView | None
    decisions: Sequence[Decision]
    events: Sequence[EventView]
    workers: Sequence[WorkerUsage] = ()  # empty for a finished or replayed run
    attainment_target: float = DEFAULT_ATTAINMENT_TARGET

    @property
    def live(self) -> bool:
        return self.status in ("loading", "running")


def build_frame(
    records: RunRecords,
    *,
    now_s: float | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    chart_bars: int = 60,
    runtime_alive: bool | None = None,
    workers: Sequence[WorkerUsage] = (),
) -> Frame:
    """What the dashboard shows, from the records alone.

    `now_s` (seconds since t0) defaults to the latest record; a replay passes earlier times and
    sees only what had been written by then. `runtime_alive=False` marks a run that never wrote
    `run_stopped` because its runtime died. A live run's chart shows the last `chart_bars`
    seconds; a finished run's chart squeezes the whole run into `chart_bars` bars. `workers`:
    the workload processes as sampled now (`WorkerSampler`), shown only while the run is live.
    """
    config = records.config or {}
    t0 = records.t0_mono_s
    last_s = records.last_record_s()
    now = last_s if now_s is None else min(now_s, last_s)
    # A replay sees only what had been written by `now_s`; otherwise everything counts, including
    # the requests drained and the events written after run_stopped.
    until = math.inf if now_s is None else now
    status = records.status
    if now_s is not None and now < last_s and records.stop_s is not None:
        status = "running"  # a replay before the end
    if status in ("loading", "running") and runtime_alive is False:
        status = "stale"
    finished = status not in ("loading", "running")
    services: list[ServiceView] = []
    primary = records.primary()
    primary_name = primary.name if primary is not None else None
    ordered = sorted(records.services(), key=lambda s: s.name != primary_name)
    decisions = [d for d in records.decisions if d.t_s <= until]
    knobs = decisions[-1].knobs if decisions else {}
    events = [e for e in records.events if _at_or_before(event_time_s(e, t0), until)]
    telemetry = [t for t in records.telemetry if t.t_s <= until]
    for spec in ordered:
        rows = records.requests.get(spec.name, [])
        columns = records.columns(spec.name)
        last = rows[-1] if rows else None
        if t0 is not None and until < math.inf:
            visible = columns.done_s - t0 <= until
            columns = columns.select(visible)
            shown = np.flatnonzero(visible)
            last = rows[int(shown[-1])] if shown.size else None
        services.append(
            _service_view(
                spec.name,
                spec.priority,
                spec.slo_ms,
                columns,
                last,
                t0,
                now,
                window_s,
                chart_bars,
                finished,
                knobs.get("inference") if spec.name == primary_name else None,
                spec.max_batch_size,
                spec.max_queue_delay_ms,
                sum(1 for e in events if e.get("event") == "model_swapped" and _worker_is(e, spec.name)),
                reported=[q for q in records.reported_queue(spec.name) if q.t_s <= until],
            )
        )
    jobs = [
        _job_view(job, records, t0, now, until, window_s, knobs.get("training", {}).get(job.name, {}), events)
        for job in records.jobs()
    ]
    return Frame(
        run_name=records.name,
        path=str(records.path),
        status=status,
        controller=str((config.get("controller") or {}).get("name") or "-"),
        platform_kind=str((config.get("platform") or {}).get("kind") or "-"),
        now_s=now,
        duration_s=_float(config.get("duration_s")),
        window_s=window_s,
        services=services,
        jobs=jobs,
        platform=_platform_view(telemetry[-1]) if telemetry else None,
        decisions=decisions,
        events=notable_events(events, t0),
        workers=list(workers) if not finished else [],
        attainment_target=_attainment_target(config),
    )


def _attainment_target(config: Mapping[str, Any]) -> float:
    """The bench's `slo_attainment_target` when the config has one: the same notion of a met SLO."""
    bench = config.get("bench")
    target = _float(bench.get("slo_attainment_target")) if isinstance(bench, dict) else None
    return target if target is not None and 0 < target <= 1 else DEFAULT_ATTAINMENT_TARGET


def notable_events(events: Sequence[Mapping[str, Any]], t0_mono_s: float | None) -> list[EventView]:
    """The events worth a line: all but the per-knob acknowledgements and spawn/placement chatter."""
    return [_event_view(e, t0_mono_s) for e in events if e.get("event") not in NOISY_EVENTS]


def _at_or_before(t_s: float | None, until: float) -> bool:
    return t_s is None or t_s <= until


def _worker_is(event: Mapping[str, Any], service: str) -> bool:
    worker = str(event.get("worker", ""))
    return worker in (service, f"inference:{service}")


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _service_view(
    name: str,
    priority: int,
    slo_ms: float,
    requests: RequestColumns,
    last: RequestRow | None,
    t0: float | None,
    now: float,
    window_s: float,
    chart_bars: int,
    finished: bool,
    knobs: Mapping[str, Any] | None,
    config_batch: int | None,
    config_delay_ms: float | None,
    swaps: int,
    *,
    reported: Sequence[QueueReport] = (),
) -> ServiceView:
    """`reported`: the service's own queue depth and arrival rate, tick by tick, so far."""
    start = max(0.0, now - window_s)
    if t0 is None:
        empty = latency_window(RequestColumns.from_rows([]), 0.0, slo_ms, start, now)
        recent = total = empty
        chart: list[LatencyWindow] = []
        bin_s = 1.0
        queue_max: int | None = None
        queue_mean: float | None = None
    else:
        recent = latency_window(requests, t0, slo_ms, start, now + 1e-9)
        total = latency_window(requests, t0, slo_ms, -math.inf, math.inf)
        if finished:
            bin_s = max(1.0, math.ceil(now / max(1, chart_bars)))
            chart = latency_bins(requests, t0, slo_ms, 0.0, now, bin_s)
        else:
            bin_s = 1.0
            first = max(0.0, math.floor(now) - chart_bars + 1)
            chart = latency_bins(requests, t0, slo_ms, first, math.floor(now) + 1.0, bin_s)
        times, depths = queue_depths(requests.select(requests.done_s - t0 >= start), t0)
        in_window = depths[times >= start]
        queue_max = int(in_window.max()) if in_window.size else None
        queue_mean = float(in_window.mean()) if in_window.size else None
    reported_depths = [(t.t_s, t.queue_depth) for t in reported if t.queue_depth is not None]
    queue_now = reported_depths[-1][1] if reported_depths else None
    # a request still queued has no row in requests.csv yet: the service's own count covers it
    depths_in_window = [depth for t_s, depth in reported_depths if t_s >= start]
    if depths_in_window:
        queue_max = max(queue_max or 0, *depths_in_window)
    rates = [t.arrival_rate_per_s for t in reported if t.t_s >= start and t.arrival_rate_per_s is not None]
    knobs = knobs or {}
    return ServiceView(
        name=name,
        priority=priority,
        slo_ms=slo_ms,
        recent=recent,
        total=total,
        chart=chart,
        chart_bin_s=bin_s,
        queue_max=queue_max,
        queue_mean=queue_mean,
        queue_now=queue_now,
        arrival_per_s=sum(rates) / len(rates) if rates else None,
        max_batch_size=knobs.get("max_batch_size", config_batch),
        max_queue_delay_ms=knobs.get("max_queue_delay_ms", config_delay_ms),
        variant=knobs.get("variant") or (last.variant if last is not None and last.variant else None),
        model_version=last.model_version if last is not None else None,
        threads=knobs.get("threads"),
        instances=knobs.get("instances"),
        swaps=swaps,
    )


def _job_view(
    job: JobSpec,
    records: RunRecords,
    t0: float | None,
    now: float,
    until: float,
    window_s: float,
    knobs: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
) -> JobView:
    rows = records.training.get(job.name, [])
    if t0 is not None and until < math.inf:
        rows = [r for r in rows if r.t_s - t0 <= until]
    recent = run_rate = 0.0
    if t0 is not None and now > 0:
        # [t, now] inclusive of a step ending exactly at the stop, as the summary counts it
        recent = train_rate(rows, t0, max(0.0, now - window_s), now + 1e-9)
        run_rate = train_rate(rows, t0, 0.0, now + 1e-9)
    steps = len({r.step for r in rows})
    worker = f"train:{job.name}"
    published = [e for e in events if e.get("event") == "model_published" and e.get("worker") == worker]
    parts: list[str] = []
    if job.kind == "continual":
        windows = records.continual.get(job.name, [])
        deployed = sum(1 for w in windows if w.get("deployed") in ("1", "True", "true"))
        parts.append(f"windows {len(windows)}, deployed {deployed}")
    if job.kind == "federated":
        rounds = len(records.federated.get(job.name, []))
        parts.append(f"round {rounds}" + (f"/{job.rounds}" if job.rounds else ""))
    if published:
        parts.append(f"published v{published[-1].get('version')}")
    if knobs.get("paused"):
        parts.append("PAUSED")
    return JobView(
        name=job.name,
        kind=job.kind,
        recent_samples_per_s=recent,
        run_samples_per_s=run_rate,
        steps=steps,
        last_loss=rows[-1].loss if rows else None,
        knobs=knobs,
        progress=", ".join(parts),
    )


def _platform_view(sample: TelemetryRow) -> PlatformView:
    return PlatformView(
        source=sample.source,
        power_mode=sample.power_mode or None,
        cpu_util_percent=sample.cpu_util_percent,
        gpu_util_percent=sample.gpu_util_percent,
        gpu_freq_mhz=sample.gpu_freq_mhz,
        power_w=sample.power_w,
        temperature_c=sample.temperature_c,
        memory_used_mb=sample.memory_used_mb,
    )


def _event_view(event: Mapping[str, Any], t0: float | None) -> EventView:
    name = str(event.get("event", "?"))
    severity = "info"
    exited_badly = name == "worker_exited" and event.get("exit_code") not in (0, None)
    stopped_badly = name == "run_stopped" and event.get("status") not in ("completed", None)
    if name in BAD_EVENTS or "restart" in name or "fail" in name or exited_badly or stopped_badly:
        severity = "bad"
    elif name in WARN_EVENTS or "refus" in name:
        severity = "warn"
    elif name in GOOD_EVENTS:
        severity = "good"
    if name == "worker_failed":
        text = f"{event.get('worker')}: {event.get('error')}"
    else:
        text = " ".join(
            _field_text(k, v, t0)
            for k, v in event.items()
            if k not in SKIP_FIELDS
            and v not in (None, "", [])
            and isinstance(v, str | int | float | bool | list)
            and (not k.endswith(MONO_SUFFIX) or t0 is not None)  # no base to convert it to yet
        )
    t_s = event_time_s(event, t0)
    return EventView(t_s, name, text, severity, loading=t_s is None and t0 is None)


MONO_SUFFIX = "_mono_s"


def _field_text(key: str, value: Any, t0: float | None) -> str:
    """`key=value`; a monotonic stamp (`swapped_mono_s`) becomes run seconds (`swapped_s`), the one
    time base every line of the dashboard uses."""
    if key.endswith(MONO_SUFFIX) and t0 is not None and isinstance(value, int | float):
        return f"{key.removesuffix(MONO_SUFFIX)}_s={value - t0:.3f}"
    return f"{key}={_short(value)}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def describe_action(action: Mapping[str, Any]) -> str:
    """`{"inference": {"max_batch_size": 3}}` -> `batch=3`: the changed knobs, shortly."""
    parts: list[str] = []
    inference = action.get("inference")
    if isinstance(inference, dict):
        parts += [f"{KNOB_ABBREV.get(k, k)}={_short(v)}" for k, v in inference.items()]
    training = action.get("training")
    if isinstance(training, dict):
        for job, changes in training.items():
            if isinstance(changes, dict):
                parts += [f"{job}.{KNOB_ABBREV.get(k, k)}={_short(v)}" for k, v in changes.items()]
    if action.get("power_mode") is not None:
        parts.append(f"mode={action['power_mode']}")
    return " ".join(parts)


# --- rendering -----------------------------------------------------------------------------------------


STATUS_STYLE = {
    "loading": "yellow",
    "running": "bold green",
    "completed": "green",
    "failed": "bold red",
    "interrupted": "yellow",
    "stale": "bold red",
}
SEVERITY_STYLE = {"bad": "bold red", "warn": "yellow", "good": "cyan", "info": ""}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _rule(title: str, width: int, extra: str = "") -> Text:
    line = Text("─ ", style="dim")
    line.append(title, style="bold")
    if extra:
        line.append(f" {extra}")
    line.append(" " + "─" * max(0, width - len(line.plain) - 1), style="dim")
    return line


def _attainment_style(value: float | None) -> str:
    if value is None:
        return "dim"
    if value >= 0.99:
        return "green"
    return "yellow" if value >= 0.9 else "bold red"


def chart_top_ms(service: ServiceView) -> float:
    """The chart's full scale: the SLO stays in view, and bars more than 3 x over it are clipped."""
    slo = service.slo_ms
    p99s = [b.p99_ms for b in service.chart if b.p99_ms is not None]
    return min(max([slo * 1.1, *p99s]), 3 * slo) if slo > 0 else max([1.0, *p99s])


MET_MARK = "▀"
MISSED_MARK = "✗"
EMPTY_MARK = "·"


def latency_chart(
    service: ServiceView, width: int, rows: int, target: float = DEFAULT_ATTAINMENT_TARGET
) -> list[Text]:
    """p99 per bar against the SLO, `rows` high, then the per-bar SLO attainment strip and its legend.

    The scale keeps the SLO in view (top = max(1.1 x SLO, highest p99), at most 3 x SLO; taller
    bars are clipped). Bars over the SLO are red; with two or more bar rows the SLO is drawn as a
    dashed line across the chart. The strip marks each bar's window by its shape as well as its
    colour (MET_MARK: at least `target` of its requests within the SLO, MISSED_MARK: fewer,
    EMPTY_MARK: none finished), so it reads without colour (NO_COLOR, colour blindness); the
    legend line says so. Two rows get no legend, one row no strip.
    """
    bars = list(service.chart)[-max(1, width - CHART_LABEL_W) :]
    slo = service.slo_ms
    top = chart_top_ms(service)
    bar_rows = rows - 2 if rows >= 3 else 1
    levels = bar_rows * 8
    slo_level = slo / top * levels if top > 0 else levels
    slo_row = min(bar_rows - 1, int(slo_level // 8)) if slo > 0 else -1
    lines: list[Text] = []
    for row in reversed(range(bar_rows)):
        if row == slo_row:
            label = "SLO"
        elif row == bar_rows - 1:
            label = f"{top:.0f}"
        elif row == 0:
            label = "0"
        else:
            label = ""
        line = Text(label.rjust(CHART_LABEL_W - 1)[: CHART_LABEL_W - 1] + "│", style="dim")
        for b in bars:
            if b.p99_ms is None:
                line.append("·" if row == 0 else (" " if row != slo_row or bar_rows == 1 else "┄"), "dim")
                continue
            level = min(levels, max(1, round(b.p99_ms / top * levels)))
            fill = min(8, max(0, level - row * 8))
            over = b.p99_ms > slo
            if fill == 0 and row == slo_row and bar_rows > 1:
                line.append("┄", "red dim")
            else:
                line.append(BLOCKS[fill], "red" if over else "green")
        lines.append(line)
    if rows >= 2:
        strip = Text("attain".rjust(CHART_LABEL_W - 1) + "│", style="dim")
        for b in bars:
            a = b.attainment
            if a is None:
                strip.append(EMPTY_MARK, "dim")
            elif a >= target:
                strip.append(MET_MARK, "green")
            else:
                strip.append(MISSED_MARK, "bold red")
        lines.append(strip)
    if rows >= 3:
        lines.append(attainment_legend(slo, target))
    return lines


def attainment_legend(slo_ms: float, target: float) -> Text:
    """One line under the strip: what its marks mean, in words."""
    line = Text(" " * CHART_LABEL_W, "dim")
    line.append(MET_MARK, "green")
    line.append(f" met the SLO (≥{target:.0%} within {slo_ms:g} ms)  ", "dim")
    line.append(MISSED_MARK, "bold red")
    line.append(" missed  ", "dim")
    line.append(f"{EMPTY_MARK} no requests", "dim")
    return line


def _service_lines(s: ServiceView, frame: Frame, width: int) -> list[Text]:
    recent = s.recent
    window = f"last {frame.window_s:g} s"
    line1 = Text(f" {window}: ")
    line1.append(f"p50 {_ms(recent.p50_ms)}  p99 {_ms(recent.p99_ms)} ms", "bold")
    line1.append("  attain ")
    line1.append(_pct(recent.attainment), _attainment_style(recent.attainment))
    line1.append(f"  {recent.served_per_s:.1f} req/s")
    queue = "-" if s.queue_max is None else f"max {s.queue_max}"
    optional = [f" mean {s.queue_mean:.1f}"] if s.queue_mean is not None else []
    if s.queue_now is not None:
        queue = str(s.queue_now)
        optional = [f" max {s.queue_max}"] if s.queue_max is not None else []
    arriving = f" ({s.arrival_per_s:.1f} arriving)" if s.arrival_per_s is not None else ""
    if arriving and len(line1.plain) + len(arriving) + len(f"  queue {queue}") <= width:
        line1.append(arriving)
    line1.append("  queue ")
    line1.append(queue, "bold" if s.queue_now is not None else "")
    for part in optional:  # as much as fits
        if len(line1.plain) + len(part) <= width:
            line1.append(part)
    total = s.total
    line2 = Text(" run: ")
    line2.append(f"p50 {_ms(total.p50_ms)}  p99 {_ms(total.p99_ms)} ms  attain ")
    line2.append(_pct(total.attainment), _attainment_style(total.attainment))
    line2.append(f"  served {total.served}  failed {total.failed}  shed {total.shed}")
    line3 = Text(" batch ≤")
    line3.append("-" if s.max_batch_size is None else str(s.max_batch_size), "bold")
    line3.append(", delay ")
    line3.append(_ms(s.max_queue_delay_ms), "bold")
    line3.append(" ms, mean batch ")
    line3.append("-" if recent.mean_batch is None else f"{recent.mean_batch:.2f}")
    line3.append("  variant ")
    line3.append(s.variant or "-", "bold cyan")
    line3.append(f" v{s.model_version if s.model_version is not None else '-'}")
    if s.swaps:
        line3.append(f" ({s.swaps} swaps)")
    if s.threads is not None:
        line3.append(f"  threads {s.threads}")
    if s.instances not in (None, 1):
        line3.append(f" ×{s.instances}")
    return [line1, line2, line3]


def _other_service_line(s: ServiceView, width: int) -> Text:
    """One line per further service: its latency always, then as much as fits, the queue first
    (it says whether the service is falling behind), then its rate and batch limit."""
    recent = s.recent
    line = Text(f" {s.name} (prio {s.priority}, SLO {s.slo_ms:g} ms): ")
    line.append(f"p99 {_ms(recent.p99_ms)} ms  attain ")
    line.append(_pct(recent.attainment), _attainment_style(recent.attainment))
    optional = []
    if s.queue_now is not None:
        optional.append(f"  queue {s.queue_now}" + (f" max {s.queue_max}" if s.queue_max is not None else ""))
    elif s.queue_max is not None:
        optional.append(f"  queue max {s.queue_max}")
    optional += [f"  {recent.served_per_s:.1f} req/s", f"  batch ≤{s.max_batch_size or '-'}"]
    for part in optional:
        if len(line.plain) + len(part) <= width:
            line.append(part)
    return line


def _job_line(job: JobView, width: int) -> Text:
    line = Text(f" {job.name} ", "bold")
    line.append(f"{job.kind}: ", "dim")
    line.append(f"{job.recent_samples_per_s:.1f} samples/s", "bold")
    line.append(f" (run {job.run_samples_per_s:.1f})  step {job.steps}")
    if job.last_loss is not None:
        line.append(f"  loss {job.last_loss:.3g}")
    k = job.knobs
    if k:
        gate = k.get("gate_policy")
        line.append(f"  bs {k.get('batch_size', '-')} workers {k.get('num_workers', '-')}", "dim")
        line.append(f" thr {k.get('threads', '-')}", "dim")
        if gate and gate != "off":
            line.append(f" gate {gate}", "dim")
        duty = k.get("duty_cycle")
        if isinstance(duty, int | float) and duty < 1:
            line.append(f" duty {duty:g}", "dim")
    if job.progress:
        line.append(f"  {job.progress}", "cyan")
    return line


def _platform_line(p: PlatformView | None) -> Text:
    if p is None:
        return Text(" no telemetry yet", "dim")
    line = Text(" mode ")
    line.append(p.power_mode or "-", "bold")
    line.append(f"  CPU {_num(p.cpu_util_percent, '%', 0)}  GPU {_num(p.gpu_util_percent, '%', 0)}")
    if p.gpu_freq_mhz is not None:
        line.append(f" @{p.gpu_freq_mhz:.0f} MHz")
    line.append(f"  power {_num(p.power_w, ' W', 1)}  temp {_num(p.temperature_c, ' °C', 0)}")
    if p.memory_used_mb is not None:
        line.append(f"  mem {p.memory_used_mb:.0f} MB")
    line.append(f"  ({p.source})", "dim")
    return line


def _num(value: float | None, unit: str, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _decision_line(d: Decision) -> Text:
    line = Text(f" {d.t_s:6.1f}s ", "dim")
    action = describe_action(d.action)
    if action:
        line.append(action + " ", "bold")
    line.append(d.reason)
    for note in d.notes:
        line.append(f" [{note}]", "yellow")
    return line


def event_stamp(e: EventView) -> str:
    """When an event happened, in run seconds since t0 (negative while the models loaded), or
    "load" while t0 is not known yet. Never wall-clock or monotonic time."""
    if e.t_s is not None:
        return f"{e.t_s:.1f}s"
    return "load" if e.loading else "-"


def _workers_line(workers: Sequence[WorkerUsage]) -> Text:
    line = Text(" ")
    for i, w in enumerate(workers):
        if i:
            line.append("  ·  ", "dim")
        line.append(w.name, "bold")
        cpu = "-" if w.cpu_percent is None else f"{w.cpu_percent:.0f}%"
        line.append(f" cpu {cpu}")
        if w.children:
            line.append(f" (+{w.children})", "dim")
        line.append(" rss " + ("-" if w.rss_mb is None else f"{w.rss_mb:.0f} MB"))
    return line


def _event_line(e: EventView) -> Text:
    line = Text(f" {event_stamp(e):>7} ", "dim")
    line.append(e.name, SEVERITY_STYLE[e.severity] or "bold")
    if e.text:
        line.append(" " + e.text, SEVERITY_STYLE[e.severity])
    return line


def render_lines(frame: Frame, width: int, height: int, footer: str = "") -> list[Text]:
    """At most `height` lines, none wider than `width`: the frame laid out for that screen.

    The fixed part (header, numbers, one line per job and service, platform, workers) always
    shows; what is left goes to the chart (up to 9 rows with its strip and legend), then to the
    decisions and events lists.
    """
    width = max(40, width)
    header = Text(f"cotrain {frame.run_name}  ", "bold")
    status = "stale (runtime gone, no run_stopped)" if frame.status == "stale" else frame.status
    header.append(status, STATUS_STYLE.get(frame.status, ""))
    clock = f" {frame.now_s:.1f}"
    if frame.duration_s:
        clock += f"/{frame.duration_s:g}"
    header.append(clock + " s", "bold")
    header.append(f"  {frame.controller}  {frame.platform_kind}  {frame.path}", "dim")

    primary = frame.services[0] if frame.services else None
    others = frame.services[1:]
    # header, platform rule + line, decisions and events rules with one line each, footer
    fixed = 1 + 2 + 2 + 2 + (1 if footer else 0)
    fixed += 1 + len(frame.jobs) if frame.jobs else 0
    fixed += 1 + 3 + len(others) if primary is not None else 2
    fixed += 1 if frame.workers else 0
    spare = max(0, height - fixed)
    # a third of the rest for the bars and the attainment strip (up to 7 bar rows), and a line
    # more for the strip's legend once there is a strip
    chart_rows = 0
    if primary is not None and primary.chart:
        base = max(1, spare // 3)
        chart_rows = min(9, base + (1 if base >= 2 else 0), spare)
    rest = spare - chart_rows
    # decisions and events share the rest; a list with fewer items leaves its lines to the other
    have_d, have_e = max(1, len(frame.decisions)), max(1, len(frame.events))
    n_decisions = min(have_d, 1 + rest // 2)
    n_events = min(have_e, 1 + rest - (n_decisions - 1))
    n_decisions = min(have_d, 1 + rest - (n_events - 1))

    lines: list[Text] = [header]
    if primary is None:
        lines.append(_rule("inference", width))
        lines.append(Text(" no inference records yet" if frame.live else " no inference service", "dim"))
    else:
        extra = f"SLO {primary.slo_ms:g} ms"
        if len(frame.services) > 1:
            extra = f"{primary.name} (prio {primary.priority}) · " + extra
        if chart_rows:
            extra += f" · chart: p99 per {primary.chart_bin_s:g} s, 0-{chart_top_ms(primary):.0f} ms"
        lines.append(_rule("inference", width, extra))
        lines += _service_lines(primary, frame, width)
        if chart_rows:
            lines += latency_chart(primary, width, chart_rows, frame.attainment_target)
        lines += [_other_service_line(s, width) for s in others]
    if frame.jobs:
        lines.append(_rule("training", width))
        lines += [_job_line(j, width) for j in frame.jobs]
    lines.append(_rule("platform", width))
    lines.append(_platform_line(frame.platform))
    if frame.workers:
        lines.append(_workers_line(frame.workers))
    lines.append(_rule("decisions", width, f"({len(frame.decisions)})"))
    lines += [_decision_line(d) for d in frame.decisions[-n_decisions:]] or [Text(" none yet", "dim")]
    lines.append(_rule("events", width))
    lines += [_event_line(e) for e in frame.events[-n_events:]] or [Text(" none yet", "dim")]
    if footer:
        lines.append(Text(footer, "dim"))
    for line in lines:
        line.no_wrap = True
        line.overflow = "ellipsis"
        line.truncate(width, overflow="ellipsis")
    return lines[:height]


def render_frame(frame: Frame, width: int, height: int, footer: str = "") -> Group:
    return Group(*render_lines(frame, width, height, footer))


# --- the loop --------------------------------------------------------------------------------------


def chart_bars_for(width: int) -> int:
    return max(10, width - CHART_LABEL_W - 1)


def _runtime_pid(records: RunRecords) -> int | None:
    for event in records.events:
        if event.get("event") == "run_created" and isinstance(event.get("pid"), int):
            return int(event["pid"])
    return None


# --- the workers' CPU and memory ---------------------------------------------------------------------

PID_EVENTS = frozenset({"worker_spawned", "worker_restarted", "worker_ready", "standby_spawned"})
BYTES_PER_MB = 1024 * 1024


@dataclass(frozen=True)
class WorkerPid:
    """A workload process as processes.json names it, and the latest wall-clock time (Unix s) at
    which the run's events name that pid (else run_started's): the real worker was created by
    then, so a process created later holds a reused pid."""

    name: str
    pid: int
    known_by_s: float | None


def worker_pids(records: RunRecords) -> list[WorkerPid]:
    """The workers to sample: processes.json as it is now (the supervisor rewrites it on every
    restart), each with the moment its pid was last seen in events.jsonl."""
    named: dict[int, float] = {}
    started: float | None = None
    for event in records.events:
        wall = event_wall_s(event)
        if wall is None:
            continue
        name, pid = event.get("event"), event.get("pid")
        if name == "run_started":
            started = wall
        elif name in PID_EVENTS and isinstance(pid, int):
            named[pid] = max(wall, named.get(pid, wall))
    return [WorkerPid(name, pid, named.get(pid, started)) for name, pid in records.processes.items()]


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


class WorkerSampler:
    """CPU% and RSS of the run's workers, read in the dashboard's own process with psutil.

    CPU% is the CPU time used between two frames over the time between them (`clock`, monotonic
    seconds), so the sampler keeps each worker's psutil.Process, which also notices a pid reused
    after the worker exited, and the CPU seconds of every process of its tree at the last frame.
    A process that is gone or not readable gives None, never an exception.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._processes: dict[int, psutil.Process] = {}
        self._tree_cpu_s: dict[int, dict[int, float]] = {}  # worker pid -> pid in its tree -> CPU s
        self._sampled_s: dict[int, float] = {}

    def sample(self, workers: Sequence[WorkerPid]) -> list[WorkerUsage]:
        now_s = self._clock()
        usage = [self._sample_one(w, now_s) for w in workers]
        current = {w.pid for w in workers}
        for pid in [p for p in self._processes if p not in current]:
            self._forget(pid)  # restarted under a new pid, or left processes.json
        return usage

    def _sample_one(self, worker: WorkerPid, now_s: float) -> WorkerUsage:
        unknown = WorkerUsage(worker.name, worker.pid, None, None)
        process = self._process(worker)
        if process is None:
            return unknown
        try:
            with process.oneshot():
                rss_mb = process.memory_info().rss / BYTES_PER_MB
                tree = {process.pid: _cpu_s(process)}
            children = process.children(recursive=True)
        except psutil.Error:
            self._forget(worker.pid)
            return unknown
        for child in children:
            try:
                tree[child.pid] = _cpu_s(child)
            except psutil.Error:
                continue  # exited between the listing and the read
        before, at_s = self._tree_cpu_s.get(worker.pid), self._sampled_s.get(worker.pid)
        cpu_percent = None
        if before is not None and at_s is not None and now_s > at_s:
            # a child new since the last frame has no baseline yet: it counts from the next one
            used_s = sum(max(0.0, cpu - before[pid]) for pid, cpu in tree.items() if pid in before)
            cpu_percent = 100.0 * used_s / (now_s - at_s)
        self._tree_cpu_s[worker.pid], self._sampled_s[worker.pid] = tree, now_s
        return WorkerUsage(worker.name, worker.pid, cpu_percent, rss_mb, children=len(tree) - 1)

    def _process(self, worker: WorkerPid) -> psutil.Process | None:
        kept = self._processes.get(worker.pid)
        if kept is not None:
            if kept.is_running():  # same pid and same start time
                return kept
            self._forget(worker.pid)
        try:
            process = psutil.Process(worker.pid)
            created_s = process.create_time()
        except psutil.Error:
            return None
        if worker.known_by_s is not None and created_s > worker.known_by_s + CREATE_TIME_SLACK_S:
            return None  # started after the run last named this pid: someone else's process now
        self._processes[worker.pid] = process
        return process

    def _forget(self, pid: int) -> None:
        self._processes.pop(pid, None)
        self._tree_cpu_s.pop(pid, None)
        self._sampled_s.pop(pid, None)


# --- reading keys --------------------------------------------------------------------------------------


@contextmanager
def cbreak(fd: int) -> Iterator[bool]:
    """The terminal on `fd` in cbreak mode while inside: each key arrives as it is pressed, without
    Enter and without echo, and Ctrl-C still raises SIGINT (cbreak keeps ISIG). The saved mode is
    put back on every way out, an exception or Ctrl-C included.

    Yields False, touching nothing, when `fd` is not a terminal or this process is in the
    background of it (changing or reading it there would stop the process with SIGTTOU/SIGTTIN).
    """
    try:
        saved = termios.tcgetattr(fd)
    except (OSError, termios.error):
        yield False
        return
    try:
        background = os.tcgetpgrp(fd) != os.getpgrp()
    except OSError:
        background = False  # not this process's controlling terminal: no job control stops it
    if background:
        yield False
        return
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def stdin_fd() -> int | None:
    """Standard input's descriptor when it is a terminal, else None (piped, closed, captured)."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return fd if os.isatty(fd) else None


class KeyReader:
    """Calls `on_key` once when one of `keys` is pressed on `fd`, from a thread of its own.

    A terminal is put in cbreak mode while the reader is open (see `cbreak`); a pipe is read as it
    is. The thread also waits on a pipe of its own, so closing wakes it at once instead of waiting
    for a key. It ends after the key, at the end of the input, or when closed.
    """

    def __init__(self, fd: int, on_key: Callable[[], None], keys: frozenset[str] = QUIT_KEYS) -> None:
        self.fd = fd
        self.on_key = on_key
        self.keys = keys
        self.reading = False  # whether keys are read at all (not a background terminal)
        self._stack = ExitStack()
        self._wake: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> KeyReader:
        try:
            is_terminal = os.isatty(self.fd)
            in_cbreak = self._stack.enter_context(cbreak(self.fd))
            self.reading = in_cbreak or not is_terminal
            if self.reading:
                self._wake = os.pipe()
                self._thread = threading.Thread(target=self._read, name="cotrain-keys", daemon=True)
                self._thread.start()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        try:
            if self._wake is not None:
                os.write(self._wake[1], b"x")
            if self._thread is not None:
                self._thread.join()
        finally:
            if self._wake is not None:
                for end in self._wake:
                    os.close(end)
            self._wake, self._thread = None, None
            self._stack.close()  # the terminal's mode, last: the thread no longer reads it

    def _read(self) -> None:
        assert self._wake is not None
        wake = self._wake[0]
        while True:
            try:
                ready, _, _ = select.select([self.fd, wake], [], [])
                if wake in ready:
                    return
                data = os.read(self.fd, 64)
            except (OSError, ValueError):
                return
            if not data:
                return  # end of input
            if any(key in self.keys for key in data.decode("utf-8", errors="ignore")):
                self.on_key()
                return


# --- the loop --------------------------------------------------------------------------------------


class Dashboard:
    """Reads a run directory and renders the frame for a screen of the given size."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        sampler: WorkerSampler | None = None,
    ) -> None:
        self.reader = RunReader(run_dir)
        self.window_s = window_s
        self.sampler = sampler or WorkerSampler()
        self.log_lines: list[str] = []  # the runtime's progress lines, when it runs in this process

    def frame(self, width: int, now_s: float | None = None) -> Frame:
        records = self.reader.read()
        alive = None
        pid = _runtime_pid(records)
        live = records.status in ("loading", "running")
        if pid is not None and live:
            alive = pid_alive(pid)
        workers: list[WorkerUsage] = []
        if live and now_s is None and alive is not False:
            # only a live run's pids are its workers': a finished or dead run's may be anyone's now
            workers = self.sampler.sample(worker_pids(records))
        return build_frame(
            records,
            now_s=now_s,
            window_s=self.window_s,
            chart_bars=chart_bars_for(width),
            runtime_alive=alive,
            workers=workers,
        )

    def render(self, width: int, height: int, footer: str = "", now_s: float | None = None) -> Group:
        frame = self.frame(width, now_s)
        if frame.status == "loading" and self.log_lines:
            last = Text.from_markup(self.log_lines[-1]).plain.strip()
            footer = last + ("  ·  " + footer if footer else "")
        return render_frame(frame, width, height, footer)


def render_once(run_dir: str | Path, console: Console, *, window_s: float = DEFAULT_WINDOW_S) -> None:
    """One frame to the console (`cotrain watch --once`), sized to it."""
    dashboard = Dashboard(run_dir, window_s=window_s)
    width, height = console.size
    console.print(dashboard.render(width, height), crop=True, soft_wrap=False)


def watch(
    dashboard: Dashboard,
    console: Console,
    *,
    refresh_s: float = DEFAULT_REFRESH_S,
    stop: threading.Event | None = None,
    replay_speed: float | None = None,
    screen: bool = True,
    keys_fd: int | None = None,
    quit_hint: str = WATCH_QUIT_HINT,
    ctrl_c_hint: str = "Ctrl-C to quit",
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Redraw every `refresh_s` (never faster than MIN_REFRESH_S) until `stop` is set, `q` is
    pressed on `keys_fd` (which sets `stop` too), or Ctrl-C. Returns True when `q` ended it.

    The last frame stays on the terminal afterwards: drawn once more from the records as they are
    then, without the footer, and printed below the alternate screen (`screen`) or left as the
    live display's last state. With `replay_speed`, the run is shown as it was `replay_speed` x
    the elapsed seconds after its start, from the records alone; the last frame stays up once the
    replay reaches the end. The footer says what `q` does here (`quit_hint`), or what Ctrl-C does
    (`ctrl_c_hint`) when no keys are read.
    """
    from rich.live import Live

    refresh_s = max(MIN_REFRESH_S, refresh_s)
    stop = stop or threading.Event()
    pressed = threading.Event()
    started = clock()

    def quit_pressed() -> None:
        pressed.set()
        stop.set()

    def draw(footer: str, spare_rows: int = 0) -> Group:
        width, height = console.size
        now_s = (clock() - started) * replay_speed if replay_speed else None
        return dashboard.render(width, max(1, height - spare_rows), footer, now_s)

    with suppress(KeyboardInterrupt), ExitStack() as stack:
        keys = None if keys_fd is None else stack.enter_context(KeyReader(keys_fd, quit_pressed))
        reading = keys is not None and keys.reading
        footer = f"refresh {refresh_s:g} s · {quit_hint if reading else ctrl_c_hint}"
        if replay_speed:
            footer = f"replay x{replay_speed:g} · " + footer
        live = stack.enter_context(
            Live(
                draw(footer),
                console=console,
                screen=screen,
                auto_refresh=False,
                transient=False,
                redirect_stderr=False,
            )
        )
        while not stop.is_set():
            drawn = clock()
            live.update(draw(footer), refresh=True)
            if stop.wait(max(0.0, refresh_s - (clock() - drawn))):
                break
        if not screen:
            live.update(draw(""), refresh=True)  # Live leaves its last state on the terminal
    if screen:  # the alternate screen is gone with everything on it
        with suppress(KeyboardInterrupt):
            # a row short of the screen, so the header stays in view above the next prompt
            console.print(draw("", spare_rows=1), crop=True, soft_wrap=False)
    return pressed.is_set()


R = TypeVar("R")


class DashboardThread:
    """`cotrain run --dashboard`: the dashboard in a thread of the runtime's own process.

    The runtime keeps the main thread, which owns the signal handlers, so Ctrl-C still stops the
    run cleanly. The dashboard only reads the run directory, as `cotrain watch` would from
    another terminal, at the same bounded rate; the runtime's progress lines go to `log` and
    show in the footer while the models load, instead of scrolling through the screen.

    `q` (read from `keys_fd`, by default standard input when it is a terminal) closes only the
    dashboard: the run goes on, its last frame stays on the terminal, and from then on the
    progress lines go to `resume_log` (by default printed on `console`).
    """

    def __init__(
        self,
        run_dir: str | Path,
        console: Console,
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        keys_fd: int | Literal["stdin"] | None = "stdin",
        resume_log: Callable[[str], None] | None = None,
    ) -> None:
        self.dashboard = Dashboard(run_dir)
        self.console = console
        self.refresh_s = refresh_s
        self.keys_fd = stdin_fd() if keys_fd == "stdin" else keys_fd
        self.resume_log = resume_log or console.print
        self.closed = threading.Event()  # set when the user closed the dashboard before the run ended
        self._lock = threading.Lock()

    def log(self, message: str) -> None:
        with self._lock:
            if not self.closed.is_set():
                self.dashboard.log_lines.append(message)
                return
        self.resume_log(message)

    def _show(self, stop: threading.Event) -> None:
        closed_by_key = watch(
            self.dashboard,
            self.console,
            refresh_s=self.refresh_s,
            stop=stop,
            keys_fd=self.keys_fd,
            quit_hint=RUN_QUIT_HINT,
            ctrl_c_hint="Ctrl-C stops the run",
        )
        if closed_by_key:
            with self._lock:
                self.closed.set()

    def run_beside(self, work: Callable[[], R]) -> R:
        """Show the dashboard while `work()` runs; take it down before returning or raising."""
        stop = threading.Event()
        thread = threading.Thread(target=self._show, args=(stop,), name="cotrain-dashboard", daemon=True)
        thread.start()
        try:
            return work()
        finally:
            stop.set()
            thread.join(timeout=10.0)

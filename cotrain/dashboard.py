"""The live terminal dashboard: `cotrain watch RUN_DIR` and `cotrain run CONFIG --dashboard`.

jtop already shows a Jetson's CPU, GPU, power and modes; this shows what jtop cannot: the SLO,
the queue, the batch policy and variant, training progress, and why the controller did what it
did. It only reads the run directory (`cotrain.runread`), so it attaches to a headless run,
replays a finished one, and never runs inside a workload process.

Three layers, so each can be tested alone:
- `build_frame(records, ...) -> Frame`: a pure function of what was read. No clock, no I/O.
- `render_frame(frame, width, height) -> Group`: lines of rich Text that fit exactly.
- `watch(...)`: the loop that reads, builds and redraws at a bounded rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
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
    latency_bins,
    latency_window,
    pid_alive,
    queue_depths,
    train_rate,
)

DEFAULT_WINDOW_S = 5.0
DEFAULT_REFRESH_S = 1.0
MIN_REFRESH_S = 0.2  # the dashboard shares the cores with the workloads: never redraw faster
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
    t_s: float | None  # since t0; None before the run has started
    name: str
    text: str
    severity: str  # bad | warn | good | info
    wall: str = ""  # wall-clock HH:MM:SS (UTC), shown while t0 is not known yet


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
) -> Frame:
    """What the dashboard shows, from the records alone.

    `now_s` (seconds since t0) defaults to the latest record; a replay passes earlier times and
    sees only what had been written by then. `runtime_alive=False` marks a run that never wrote
    `run_stopped` because its runtime died. A live run's chart shows the last `chart_bars`
    seconds; a finished run's chart squeezes the whole run into `chart_bars` bars.
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
    )


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
            f"{k}={_short(v)}"
            for k, v in event.items()
            if k not in SKIP_FIELDS
            and v not in (None, "", [])
            and isinstance(v, str | int | float | bool | list)
        )
    wall = str(event.get("wall") or "")
    return EventView(event_time_s(event, t0), name, text, severity, wall[11:19])


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


def latency_chart(service: ServiceView, width: int, rows: int) -> list[Text]:
    """p99 per bar against the SLO, `rows` high; the last row is the per-bar SLO attainment strip.

    The scale keeps the SLO in view (top = max(1.1 x SLO, highest p99), at most 3 x SLO; taller
    bars are clipped). Bars over the SLO are red; with two or more bar rows the SLO is drawn as a
    dashed line across the chart.
    """
    bars = list(service.chart)[-max(1, width - CHART_LABEL_W) :]
    slo = service.slo_ms
    top = chart_top_ms(service)
    bar_rows = max(1, rows - 1) if rows >= 2 else 1
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
            strip.append("·" if a is None else "▀", "dim" if a is None else _attainment_style(a))
        lines.append(strip)
    return lines


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


def _event_line(e: EventView) -> Text:
    when = f"{e.t_s:6.1f}s" if e.t_s is not None else (e.wall or "-").rjust(7)[-8:]
    line = Text(f" {when} ", "dim")
    line.append(e.name, SEVERITY_STYLE[e.severity] or "bold")
    if e.text:
        line.append(" " + e.text, SEVERITY_STYLE[e.severity])
    return line


def render_lines(frame: Frame, width: int, height: int, footer: str = "") -> list[Text]:
    """At most `height` lines, none wider than `width`: the frame laid out for that screen.

    The fixed part (header, numbers, one line per job and service, platform) always shows; what
    is left goes to the chart (up to 8 rows), then to the decisions and events lists.
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
    spare = max(0, height - fixed)
    chart_rows = min(8, max(1, spare // 3), spare) if primary is not None and primary.chart else 0
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
            lines += latency_chart(primary, width, chart_rows)
        lines += [_other_service_line(s, width) for s in others]
    if frame.jobs:
        lines.append(_rule("training", width))
        lines += [_job_line(j, width) for j in frame.jobs]
    lines.append(_rule("platform", width))
    lines.append(_platform_line(frame.platform))
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


class Dashboard:
    """Reads a run directory and renders the frame for a screen of the given size."""

    def __init__(self, run_dir: str | Path, *, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.reader = RunReader(run_dir)
        self.window_s = window_s
        self.log_lines: list[str] = []  # the runtime's progress lines, when it runs in this process

    def frame(self, width: int, now_s: float | None = None) -> Frame:
        records = self.reader.read()
        alive = None
        pid = _runtime_pid(records)
        if pid is not None and records.status in ("loading", "running"):
            alive = pid_alive(pid)
        return build_frame(
            records,
            now_s=now_s,
            window_s=self.window_s,
            chart_bars=chart_bars_for(width),
            runtime_alive=alive,
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
) -> None:
    """Redraw every `refresh_s` (never faster than MIN_REFRESH_S) until `stop` is set or Ctrl-C.

    With `replay_speed`, the run is shown as it was `replay_speed` x the elapsed seconds after
    its start, from the records alone; the last frame stays up once the replay reaches the end.
    """
    from rich.live import Live

    refresh_s = max(MIN_REFRESH_S, refresh_s)
    stop = stop or threading.Event()
    footer = f"refresh {refresh_s:g} s · Ctrl-C to quit"
    if replay_speed:
        footer = f"replay x{replay_speed:g} · " + footer
    started = time.monotonic()

    def draw() -> Group:
        width, height = console.size
        now_s = (time.monotonic() - started) * replay_speed if replay_speed else None
        return dashboard.render(width, height, footer, now_s)

    try:
        with Live(draw(), console=console, screen=screen, auto_refresh=False, redirect_stderr=False) as live:
            while not stop.is_set():
                drawn = time.monotonic()
                live.update(draw(), refresh=True)
                if stop.wait(max(0.0, refresh_s - (time.monotonic() - drawn))):
                    break
    except KeyboardInterrupt:
        pass


R = TypeVar("R")


class DashboardThread:
    """`cotrain run --dashboard`: the dashboard in a thread of the runtime's own process.

    The runtime keeps the main thread, which owns the signal handlers, so Ctrl-C still stops the
    run cleanly. The dashboard only reads the run directory, as `cotrain watch` would from
    another terminal, at the same bounded rate; the runtime's progress lines go to `log` and
    show in the footer while the models load, instead of scrolling through the screen.
    """

    def __init__(
        self, run_dir: str | Path, console: Console, *, refresh_s: float = DEFAULT_REFRESH_S
    ) -> None:
        self.dashboard = Dashboard(run_dir)
        self.console = console
        self.refresh_s = refresh_s

    def log(self, message: str) -> None:
        self.dashboard.log_lines.append(message)

    def run_beside(self, work: Callable[[], R]) -> R:
        """Show the dashboard while `work()` runs; take it down before returning or raising."""
        stop = threading.Event()
        thread = threading.Thread(
            target=watch,
            args=(self.dashboard, self.console),
            kwargs={"refresh_s": self.refresh_s, "stop": stop},
            name="cotrain-dashboard",
            daemon=True,
        )
        thread.start()
        try:
            return work()
        finally:
            stop.set()
            thread.join(timeout=10.0)

"""Tolerant, incremental reading of a run directory, and the series the dashboard and report share.

`cotrain watch` reads a run directory while the run is still writing it, once a second, for the
whole run. Two things follow:

- Nothing the writers can leave behind may crash the reader: a missing or empty file, a torn
  last line (the writer flushes per batch, so the reader can see half a line), a config.yaml
  caught half-written, a file replaced because the run directory was reused. Every reader here
  returns what it could parse and skips the rest.
- Re-reading requests.csv from the start every second would cost more CPU the longer the run
  goes, on the very cores the workloads share. `RunReader` keeps a byte offset per file and
  parses only the complete lines appended since the last read.

`records.read_csv_rows` and `records.read_jsonl` serve the summary, which reads a finished run
once; they stay as they are. Times: requests.csv and train-<job>.csv stamp `time.monotonic()`
seconds; telemetry.csv, decisions.jsonl and events' `t_s` count from the run's t0. Everything
this module returns is in seconds since t0 (`run_started`), so callers never mix the two.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
import yaml

from cotrain.rundir import RunDir

T = TypeVar("T")

# --- typed records ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestRow:
    """One row of requests.csv, times in monotonic seconds as written."""

    arrival_s: float
    start_s: float | None
    end_s: float | None
    latency_ms: float | None
    batch_size: int | None
    variant: str
    model_version: int | None
    outcome: str  # served | failed | shed

    @property
    def done_s(self) -> float:
        """When the request left the system: served or failed at its batch end, shed on arrival."""
        if self.end_s is not None:
            return self.end_s
        return self.start_s if self.start_s is not None else self.arrival_s


FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class RequestColumns:
    """requests.csv as numpy columns, so a frame's statistics cost no Python loop per request.

    A ten-minute run at 100 req/s has 60,000 rows; the dashboard recomputes its windows every
    second on cores the workloads share. Times are monotonic seconds as written; NaN marks a
    stage the request never reached (a shed request never starts) or a latency not recorded.
    """

    arrival_s: FloatArray
    start_s: FloatArray
    done_s: FloatArray  # see RequestRow.done_s
    latency_ms: FloatArray
    batch_size: FloatArray
    served: BoolArray
    failed: BoolArray
    shed: BoolArray

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @staticmethod
    def from_rows(rows: Sequence[RequestRow]) -> RequestColumns:
        def column(values: list[float | None]) -> FloatArray:
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

        outcomes = [r.outcome for r in rows]
        return RequestColumns(
            arrival_s=column([r.arrival_s for r in rows]),
            start_s=column([r.start_s for r in rows]),
            done_s=column([r.done_s for r in rows]),
            latency_ms=column([r.latency_ms for r in rows]),
            batch_size=column([None if r.batch_size is None else float(r.batch_size) for r in rows]),
            served=np.array([o == "served" for o in outcomes], dtype=np.bool_),
            failed=np.array([o == "failed" for o in outcomes], dtype=np.bool_),
            shed=np.array([o == "shed" for o in outcomes], dtype=np.bool_),
        )

    def concat(self, more: RequestColumns) -> RequestColumns:
        return RequestColumns(
            *(np.concatenate([getattr(self, f), getattr(more, f)]) for f in _REQUEST_FIELDS)
        )

    def select(self, which: npt.NDArray[Any] | slice) -> RequestColumns:
        """The requests a boolean mask, an index array or a slice picks."""
        return RequestColumns(*(getattr(self, f)[which] for f in _REQUEST_FIELDS))


_REQUEST_FIELDS = (
    "arrival_s",
    "start_s",
    "done_s",
    "latency_ms",
    "batch_size",
    "served",
    "failed",
    "shed",
)


@dataclass(frozen=True, slots=True)
class TrainRow:
    """One training step of train-<job>.csv; `t_s` is the monotonic time the step ended."""

    step: int
    t_s: float
    samples: int
    loss: float | None
    batch_size: int | None
    num_workers: int | None


@dataclass(frozen=True, slots=True)
class TelemetryRow:
    """One platform sample of telemetry.csv; `t_s` counts from t0. None: the platform cannot tell."""

    t_s: float
    source: str
    power_mode: str
    cpu_util_percent: float | None
    gpu_util_percent: float | None
    gpu_freq_mhz: float | None
    memory_used_mb: float | None
    power_w: float | None
    temperature_c: float | None
    # the primary service's, as it reported them in the tick; None in runs from before the
    # runtime recorded them, and in a tick without a report
    queue_depth: int | None = None
    arrival_rate_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class QueueReport:
    """A service's own count of its queue and its arrival rate, as it reported them in one control
    tick (a row of services/<name>/queue.csv, or the last two columns of telemetry.csv)."""

    t_s: float
    queue_depth: int | None
    arrival_rate_per_s: float | None


@dataclass(frozen=True, slots=True)
class Decision:
    """One line of decisions.jsonl: what the controller applied, and why."""

    t_s: float
    policy: str
    action: Mapping[str, Any]
    reason: str
    notes: tuple[str, ...]
    knobs: Mapping[str, Any]


@dataclass(frozen=True)
class ServiceSpec:
    """An inference service as the config describes it; `name` is "inference" for a single one."""

    name: str
    slo_ms: float
    priority: int
    max_batch_size: int | None
    max_queue_delay_ms: float | None
    requests_csv: str  # relative to the run directory
    queue_csv: str | None = None  # relative; only with several services (one has telemetry.csv)


@dataclass(frozen=True)
class JobSpec:
    name: str
    kind: str
    rounds: int | None  # federated rounds configured, if any


@dataclass(frozen=True)
class RunRecords:
    """Everything read from a run directory at one moment. Times are seconds since t0."""

    path: Path
    config: Mapping[str, Any] | None
    summary: Mapping[str, Any] | None
    events: Sequence[Mapping[str, Any]]
    decisions: Sequence[Decision]
    telemetry: Sequence[TelemetryRow]
    requests: Mapping[str, Sequence[RequestRow]]  # service name -> rows, monotonic times
    training: Mapping[str, Sequence[TrainRow]]  # job -> rows, monotonic times
    continual: Mapping[str, Sequence[Mapping[str, str]]]  # job -> windows of continual-<job>.csv
    federated: Mapping[str, Sequence[Mapping[str, str]]]  # job -> rounds of federated-<job>.csv
    t0_mono_s: float | None  # run_started; None while the workers still load their models
    stop_s: float | None  # run_stopped, since t0
    status: str  # loading | running | completed | failed | interrupted
    request_columns: Mapping[str, RequestColumns] = field(default_factory=dict)  # kept by RunReader
    queues: Mapping[str, Sequence[QueueReport]] = field(default_factory=dict)  # service -> queue.csv rows
    processes: Mapping[str, int] = field(default_factory=dict)  # worker -> pid, from processes.json

    def columns(self, service: str) -> RequestColumns:
        """The service's requests as columns (built here if the reader did not keep them)."""
        rows = self.requests.get(service, [])
        cached = self.request_columns.get(service)
        if cached is not None and len(cached) == len(rows):
            return cached
        return RequestColumns.from_rows(rows)

    def reported_queue(self, service: str) -> list[QueueReport]:
        """What the service itself reported of its queue and arrivals, tick by tick: its own
        queue.csv with several services; telemetry.csv's columns for the controller's service
        otherwise. Empty for runs recorded before either existed."""
        own = self.queues.get(service)
        if own:
            return list(own)
        primary = self.primary()
        if primary is None or primary.name != service:
            return []
        return [
            QueueReport(t.t_s, t.queue_depth, t.arrival_rate_per_s)
            for t in self.telemetry
            if t.queue_depth is not None or t.arrival_rate_per_s is not None
        ]

    @property
    def name(self) -> str:
        name = (self.config or {}).get("name")
        return str(name) if name else self.path.name

    def services(self) -> list[ServiceSpec]:
        return services_of(self.config or {})

    def primary(self) -> ServiceSpec | None:
        """The service the controller acts on: the highest priority, the first listed on ties."""
        services = self.services()
        return max(services, key=lambda s: s.priority) if services else None

    def jobs(self) -> list[JobSpec]:
        known = jobs_of(self.config or {})
        names = {j.name for j in known}
        return known + [JobSpec(name, "sgd", None) for name in sorted(self.training) if name not in names]

    def last_record_s(self) -> float:
        """The latest time any record speaks of, since t0: "now" for a run read from its files."""
        t0 = self.t0_mono_s
        candidates = [0.0]
        if self.stop_s is not None:
            return self.stop_s
        if t0 is not None:
            for rows in self.requests.values():
                if rows:
                    candidates.append(max(r.done_s for r in rows[-64:]) - t0)  # roughly in done order
            for train in self.training.values():
                if train:
                    candidates.append(train[-1].t_s - t0)
        if self.telemetry:
            candidates.append(self.telemetry[-1].t_s)
        if self.decisions:
            candidates.append(self.decisions[-1].t_s)
        for event in reversed(self.events):
            t = event.get("t_s")
            if isinstance(t, int | float):
                candidates.append(float(t))
                break
        return max(candidates)


def services_of(config: Mapping[str, Any]) -> list[ServiceSpec]:
    workloads = config.get("workloads") or {}
    specs: list[ServiceSpec] = []
    for service in workloads.get("services") or []:
        if isinstance(service, dict) and service.get("name"):
            folder = f"services/{service['name']}"
            specs.append(
                _service_spec(str(service["name"]), service, f"{folder}/requests.csv", f"{folder}/queue.csv")
            )
    inference = workloads.get("inference")
    if not specs and isinstance(inference, dict):
        specs.append(_service_spec("inference", inference, "requests.csv"))
    return specs


def _service_spec(
    name: str, data: Mapping[str, Any], requests_csv: str, queue_csv: str | None = None
) -> ServiceSpec:
    batching = data.get("batching") or {}
    return ServiceSpec(
        name=name,
        slo_ms=_number(data.get("slo_ms")) or 0.0,
        priority=int(_number(data.get("priority")) or 0),
        max_batch_size=_int_or_none(batching.get("max_batch_size")),
        max_queue_delay_ms=_number(batching.get("max_queue_delay_ms")),
        requests_csv=requests_csv,
        queue_csv=queue_csv,
    )


def jobs_of(config: Mapping[str, Any]) -> list[JobSpec]:
    jobs: list[JobSpec] = []
    for job in (config.get("workloads") or {}).get("training") or []:
        if isinstance(job, dict) and job.get("name"):
            federated = job.get("federated") or {}
            rounds = _int_or_none(federated.get("rounds")) if isinstance(federated, dict) else None
            jobs.append(JobSpec(str(job["name"]), str(job.get("kind") or "sgd"), rounds))
    return jobs


# --- parsing helpers --------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite float, or None for "", None, NaN or anything unparsable."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int_or_none(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _required(value: Any) -> float:
    number = _number(value)
    if number is None:
        raise ValueError(f"not a number: {value!r}")
    return number


def request_row(row: Mapping[str, str]) -> RequestRow:
    return RequestRow(
        arrival_s=_required(row["arrival_s"]),
        start_s=_number(row["start_s"]),
        end_s=_number(row["end_s"]),
        latency_ms=_number(row["latency_ms"]),
        batch_size=_int_or_none(row["batch_size"]),
        variant=row.get("variant", ""),
        model_version=_int_or_none(row.get("model_version")),
        outcome=row["outcome"],
    )


def train_row(row: Mapping[str, str]) -> TrainRow:
    return TrainRow(
        step=int(_required(row["step"])),
        t_s=_required(row["t_s"]),
        samples=int(_required(row["samples"])),
        loss=_number(row.get("loss")),
        batch_size=_int_or_none(row.get("batch_size")),
        num_workers=_int_or_none(row.get("num_workers")),
    )


def telemetry_row(row: Mapping[str, str]) -> TelemetryRow:
    return TelemetryRow(
        t_s=_required(row["t_s"]),
        source=row.get("source", ""),
        power_mode=row.get("power_mode", ""),
        cpu_util_percent=_number(row.get("cpu_util_percent")),
        gpu_util_percent=_number(row.get("gpu_util_percent")),
        gpu_freq_mhz=_number(row.get("gpu_freq_mhz")),
        memory_used_mb=_number(row.get("memory_used_mb")),
        power_w=_number(row.get("power_w")),
        temperature_c=_number(row.get("temperature_c")),
        queue_depth=_int_or_none(row.get("queue_depth")),
        arrival_rate_per_s=_number(row.get("arrival_rate_per_s")),
    )


def queue_report(row: Mapping[str, str]) -> QueueReport:
    return QueueReport(
        t_s=_required(row["t_s"]),
        queue_depth=_int_or_none(row.get("queue_depth")),
        arrival_rate_per_s=_number(row.get("arrival_rate_per_s")),
    )


def decision(record: Mapping[str, Any]) -> Decision:
    action = record.get("action")
    knobs = record.get("knobs")
    notes = record.get("notes")
    return Decision(
        t_s=_required(record.get("t_s")),
        policy=str(record.get("policy", "")),
        action=action if isinstance(action, dict) else {},
        reason=str(record.get("reason", "")),
        notes=tuple(str(n) for n in notes) if isinstance(notes, list) else (),
        knobs=knobs if isinstance(knobs, dict) else {},
    )


# --- incremental tails ----------------------------------------------------------------------------


HEAD_BYTES = 512  # how much of a file's start identifies it (header and first rows, with their times)


class LineTail:
    """The complete lines appended to a file since the last read.

    The offset only moves past a newline, so a torn last line is read again, whole, next time.
    A file that was replaced (a new run in the same directory) is read from the start, and
    `read` says so, so the caller can drop what it parsed before. Replacement shows as a new
    inode, a smaller size, or different first bytes: the kernel may give the new file the
    freed inode, and it may have grown past the old offset before the next read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._inode: int | None = None
        self._head = b""

    def read(self) -> tuple[bool, str]:
        """(restarted, text of the new complete lines)."""
        seen = self._inode is not None
        try:
            with self.path.open("rb") as f:
                st = os.fstat(f.fileno())
                head = f.read(min(HEAD_BYTES, st.st_size))
                restarted = seen and (
                    st.st_ino != self._inode
                    or st.st_size < self._offset
                    or head[: len(self._head)] != self._head
                )
                if restarted:
                    self._offset = 0
                self._inode, self._head = st.st_ino, head
                if st.st_size <= self._offset:
                    return restarted, ""
                f.seek(self._offset)
                data = f.read(st.st_size - self._offset)
        except OSError:  # missing, or removed between the calls
            self._offset, self._inode, self._head = 0, None, b""
            return seen, ""
        end = data.rfind(b"\n")
        if end < 0:
            return restarted, ""
        self._offset += end + 1
        return restarted, data[: end + 1].decode("utf-8", errors="replace")


class CsvTail(Generic[T]):
    """Rows of a record CSV, converted by `convert`; rows it cannot convert are skipped."""

    def __init__(self, path: Path, convert: Callable[[dict[str, str]], T]) -> None:
        self._lines = LineTail(path)
        self._convert = convert
        self._header: list[str] | None = None
        self.rows: list[T] = []
        self.generation = 0  # bumped when the file was replaced and `rows` started over

    def read(self) -> list[T]:
        restarted, text = self._lines.read()
        if restarted:
            self._header, self.rows = None, []
            self.generation += 1
        if not text:
            return self.rows
        try:
            parsed = list(csv.reader(io.StringIO(text)))
        except csv.Error:
            return self.rows
        for fields in parsed:
            if self._header is None:
                self._header = fields
                continue
            if len(fields) != len(self._header):
                continue
            try:
                self.rows.append(self._convert(dict(zip(self._header, fields, strict=True))))
            except (KeyError, ValueError, TypeError):
                continue
        return self.rows


class JsonlTail(Generic[T]):
    """Records of a JSONL file, converted by `convert`; unparsable lines are skipped."""

    def __init__(self, path: Path, convert: Callable[[dict[str, Any]], T]) -> None:
        self._lines = LineTail(path)
        self._convert = convert
        self.records: list[T] = []

    def read(self) -> list[T]:
        restarted, text = self._lines.read()
        if restarted:
            self.records = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            try:
                self.records.append(self._convert(record))
            except (KeyError, ValueError, TypeError):
                continue
        return self.records


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    return record


def _keep_row(row: dict[str, str]) -> dict[str, str]:
    return row


@dataclass
class _WholeFile:
    """A small file read whole (config.yaml, summary.json), re-parsed only when it changes."""

    path: Path
    parse: Callable[[str], Any]
    value: Any = None
    _stamp: tuple[int, int] | None = field(default=None)

    def read(self) -> Any:
        try:
            st = self.path.stat()
        except OSError:
            self.value, self._stamp = None, None
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                parsed = self.parse(self.path.read_text(encoding="utf-8", errors="replace"))
            except (OSError, ValueError, yaml.YAMLError):
                return self.value  # caught mid-write: keep the last good value, try again next time
            self.value = parsed if isinstance(parsed, dict) else None
            self._stamp = stamp
        return self.value


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and RunDir(path).is_run()


class RunReader:
    """Reads a run directory again and again, parsing only what was appended since last time."""

    def __init__(self, path: str | Path) -> None:
        self.run = RunDir(path)
        self._config = _WholeFile(self.run.config, yaml.safe_load)
        self._summary = _WholeFile(self.run.summary, json.loads)
        self._processes = _WholeFile(self.run.processes, json.loads)
        self._events = JsonlTail(self.run.events, _identity)
        self._decisions = JsonlTail(self.run.decisions, decision)
        self._telemetry = CsvTail(self.run.telemetry_csv, telemetry_row)
        self._requests: dict[str, CsvTail[RequestRow]] = {}
        self._queues: dict[str, CsvTail[QueueReport]] = {}
        self._columns: dict[str, tuple[int, int, RequestColumns]] = {}  # generation, rows, columns
        self._training: dict[str, CsvTail[TrainRow]] = {}
        self._continual: dict[str, CsvTail[dict[str, str]]] = {}
        self._federated: dict[str, CsvTail[dict[str, str]]] = {}

    def read(self) -> RunRecords:
        path = self.run.path
        config = self._config.read()
        events = list(self._events.read())  # first: it holds t0, which every later row needs
        for spec in services_of(config or {}):
            if spec.name not in self._requests:
                self._requests[spec.name] = CsvTail(path / spec.requests_csv, request_row)
            if spec.queue_csv is not None and spec.name not in self._queues:
                self._queues[spec.name] = CsvTail(path / spec.queue_csv, queue_report)
        jobs = [j.name for j in jobs_of(config or {})] + _train_jobs_on_disk(path)
        for job in jobs:
            if job not in self._training:
                self._training[job] = CsvTail(self.run.train_csv(job), train_row)
                self._continual[job] = CsvTail(path / f"continual-{job}.csv", _keep_row)
                self._federated[job] = CsvTail(path / f"federated-{job}.csv", _keep_row)
        t0_mono_s, stop_s, status = run_state(events)
        requests = {name: list(tail.read()) for name, tail in self._requests.items()}
        return RunRecords(
            path=path,
            config=config,
            summary=self._summary.read(),
            events=events,
            decisions=list(self._decisions.read()),
            telemetry=list(self._telemetry.read()),
            requests=requests,
            training={name: list(tail.read()) for name, tail in self._training.items()},
            continual={name: list(tail.read()) for name, tail in self._continual.items()},
            federated={name: list(tail.read()) for name, tail in self._federated.items()},
            t0_mono_s=t0_mono_s,
            stop_s=stop_s,
            status=status,
            request_columns={name: self._columns_of(name, rows) for name, rows in requests.items()},
            queues={name: list(tail.read()) for name, tail in self._queues.items()},
            processes=worker_pids(self._processes.read()),
        )

    def _columns_of(self, name: str, rows: list[RequestRow]) -> RequestColumns:
        """Columns grown by the rows appended since the last read; rebuilt if the file was replaced."""
        generation = self._requests[name].generation
        seen_generation, seen, columns = self._columns.get(
            name, (generation, 0, RequestColumns.from_rows([]))
        )
        if seen_generation != generation or seen > len(rows):
            seen, columns = 0, RequestColumns.from_rows([])
        if len(rows) > seen:
            columns = columns.concat(RequestColumns.from_rows(rows[seen:]))
        self._columns[name] = (generation, len(rows), columns)
        return columns


def worker_pids(data: Mapping[str, Any] | None) -> dict[str, int]:
    """processes.json (worker name -> pid, rewritten by the supervisor on every restart), keeping
    only entries that are a name and a positive pid."""
    return {
        str(name): pid
        for name, pid in (data or {}).items()
        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0
    }


def read_run(path: str | Path) -> RunRecords:
    """A run directory read once (the report's entry point)."""
    return RunReader(path).read()


def _train_jobs_on_disk(path: Path) -> list[str]:
    try:
        names = sorted(p.name for p in path.glob("train-*.csv"))
    except OSError:
        return []
    return [n[len("train-") : -len(".csv")] for n in names]


def run_state(events: Sequence[Mapping[str, Any]]) -> tuple[float | None, float | None, str]:
    """(t0 in monotonic s, stop in s since t0, status) from events.jsonl."""
    t0: float | None = None
    stop_s: float | None = None
    status = "loading"
    for event in events:
        name = event.get("event")
        t_mono = _number(event.get("t_mono_s"))
        if name == "run_started" and t_mono is not None:
            t0, status = t_mono, "running"
        elif name == "run_stopped":
            status = str(event.get("status") or "completed")
            t_rel = _number(event.get("t_s"))
            if t_rel is None and t0 is not None and t_mono is not None:
                t_rel = t_mono - t0
            stop_s = t_rel
        elif name == "worker_failed" and t0 is None:
            status = "failed"
    return t0, stop_s, status


# --- series the dashboard and the report both draw --------------------------------------------------


@dataclass(frozen=True)
class LatencyWindow:
    """The requests that left the system in [from_s, to_s): latency percentiles and SLO attainment.

    Attainment here is per window and over the requests that *finished* in it (served within
    the SLO / served + failed + shed), so a window is complete as soon as it has passed, even
    while later requests still queue.
    """

    from_s: float
    to_s: float
    done: int
    served: int
    failed: int
    shed: int
    within_slo: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_batch: float | None

    @property
    def attainment(self) -> float | None:
        return self.within_slo / self.done if self.done else None

    @property
    def served_per_s(self) -> float:
        span_s = self.to_s - self.from_s
        return self.served / span_s if span_s > 0 else 0.0


def latency_window(
    requests: RequestColumns, t0_mono_s: float, slo_ms: float, from_s: float, to_s: float
) -> LatencyWindow:
    t = requests.done_s - t0_mono_s
    return _window_of(requests.select((t >= from_s) & (t < to_s)), slo_ms, from_s, to_s)


def _window_of(chosen: RequestColumns, slo_ms: float, from_s: float, to_s: float) -> LatencyWindow:
    served = chosen.served & ~np.isnan(chosen.latency_ms)
    latencies = chosen.latency_ms[served]
    batches = chosen.batch_size[chosen.served & ~np.isnan(chosen.batch_size)]
    p50 = p99 = top = None
    if latencies.size:
        p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99]))
        top = float(latencies.max())
    return LatencyWindow(
        from_s=from_s,
        to_s=to_s,
        done=len(chosen),
        served=int(chosen.served.sum()),
        failed=int(chosen.failed.sum()),
        shed=int(chosen.shed.sum()),
        within_slo=int((latencies <= slo_ms).sum()),
        p50_ms=p50,
        p99_ms=p99,
        max_ms=top,
        mean_batch=float(batches.mean()) if batches.size else None,
    )


def latency_bins(
    requests: RequestColumns,
    t0_mono_s: float,
    slo_ms: float,
    from_s: float,
    to_s: float,
    bin_s: float,
    *,
    by_arrival: bool = False,
) -> list[LatencyWindow]:
    """Consecutive windows of `bin_s` covering [from_s, to_s).

    By the time requests finished (a live view: a window is final once it has passed), or with
    `by_arrival` by the time they arrived (a finished run's plot, beside each request's point).
    """
    count = max(0, math.ceil((to_s - from_s) / bin_s - 1e-9))
    at = (requests.arrival_s if by_arrival else requests.done_s) - t0_mono_s
    index = np.floor((at - from_s) / bin_s)
    inside = (index >= 0) & (index < count)
    chosen = requests.select(inside)
    index = index[inside].astype(np.int64)
    order = np.argsort(index, kind="stable")
    chosen, index = chosen.select(order), index[order]
    bounds = np.searchsorted(index, np.arange(count + 1))
    return [
        _window_of(
            chosen.select(slice(int(bounds[i]), int(bounds[i + 1]))),
            slo_ms,
            from_s + i * bin_s,
            from_s + (i + 1) * bin_s,
        )
        for i in range(count)
    ]


def queue_depths(requests: RequestColumns, t0_mono_s: float) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """(arrival time since t0, requests waiting then) for every request that reached a batch.

    telemetry.csv keeps the controller's service's own count once per control period; this
    rebuild from requests.csv serves older runs, further services and the detail in between: at
    each arrival, the requests that had arrived and not yet started a batch (this one included).
    A request still queued is not in the file yet, so at a live run's edge this lags by one
    batch. Shed requests never waited, so they are left out.
    """
    started = ~np.isnan(requests.start_s)
    arrivals = np.sort(requests.arrival_s[started])
    starts = np.sort(requests.start_s[started])
    arrived = np.searchsorted(arrivals, arrivals, side="right")
    begun = np.searchsorted(starts, arrivals, side="right")
    return arrivals - t0_mono_s, np.maximum(arrived - begun, 0).astype(np.int64)


def train_rate(rows: Sequence[TrainRow], t0_mono_s: float, from_s: float, to_s: float) -> float:
    """Samples per second of the steps that ended in [from_s, to_s)."""
    span_s = to_s - from_s
    if span_s <= 0:
        return 0.0
    samples = sum(r.samples for r in rows if from_s <= r.t_s - t0_mono_s < to_s)
    return samples / span_s


def train_rate_bins(
    rows: Sequence[TrainRow], t0_mono_s: float, from_s: float, to_s: float, bin_s: float
) -> tuple[list[float], list[float]]:
    """(bin end since t0, samples/s in the bin) over [from_s, to_s).

    A last bin shorter than half a bin is dropped: a few ms of run after the last whole bin
    would read as a rate of zero or of one step over nothing. A longer one ends at `to_s`.
    """
    whole = math.floor((to_s - from_s) / bin_s + 1e-9)
    tail_s = (to_s - from_s) - whole * bin_s
    count = whole + (1 if tail_s >= bin_s / 2 else 0)
    samples = [0] * count
    for r in rows:
        i = math.floor((r.t_s - t0_mono_s - from_s) / bin_s)
        if 0 <= i < count:
            samples[i] += r.samples
    ends = [min(to_s, from_s + (i + 1) * bin_s) for i in range(count)]
    widths = [end - (from_s + i * bin_s) for i, end in enumerate(ends)]
    return ends, [s / w for s, w in zip(samples, widths, strict=True)]


KnobValue = int | float | str | bool | None


def knob_timeline(decisions: Sequence[Decision]) -> dict[str, list[tuple[float, KnobValue]]]:
    """Each knob's value over time from decisions.jsonl (the full `knobs` each line carries).

    Keys: `inference.<knob>` and `<job>.<knob>`; a step is recorded only where the value changed.
    """
    timeline: dict[str, list[tuple[float, KnobValue]]] = {}
    for d in decisions:
        flat: dict[str, KnobValue] = {}
        inference = d.knobs.get("inference")
        if isinstance(inference, dict):
            for k, v in inference.items():
                flat[f"inference.{k}"] = _scalar(v)
        training = d.knobs.get("training")
        if isinstance(training, dict):
            for job, knobs in training.items():
                if isinstance(knobs, dict):
                    for k, v in knobs.items():
                        flat[f"{job}.{k}"] = _scalar(v)
        for key, value in flat.items():
            steps = timeline.setdefault(key, [])
            if not steps or steps[-1][1] != value:
                steps.append((d.t_s, value))
    return timeline


def _scalar(value: Any) -> KnobValue:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if value is None or isinstance(value, int | float | str | bool):
        return value
    return str(value)


def event_time_s(event: Mapping[str, Any], t0_mono_s: float | None) -> float | None:
    """An event's time since t0; events before t0 (model loading) count back from it, negative."""
    t = _number(event.get("t_s"))
    if t is not None:
        return t
    t_mono = _number(event.get("t_mono_s"))
    if t_mono is not None and t0_mono_s is not None:
        return t_mono - t0_mono_s
    return None


def event_wall_s(event: Mapping[str, Any]) -> float | None:
    """An event's wall-clock time (its `wall`, ISO 8601) as Unix seconds; None if absent or garbled.

    Only for comparing with the kernel's process start times (psutil's `create_time`), which are
    wall-clock; the dashboard shows run seconds since t0."""
    wall = event.get("wall")
    if not isinstance(wall, str) or not wall:
        return None
    try:
        stamp = datetime.fromisoformat(wall)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)  # the runtime writes UTC
    return stamp.timestamp()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a run whose runtime died leaves no run_stopped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True

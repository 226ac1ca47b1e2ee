"""An open-loop load client for any Open Inference Protocol server (KServe v2, as Triton speaks it).

Open loop: every request is sent at its scheduled time whether or not the earlier ones have been
answered, as real independent clients would send them. A closed-loop client (send, wait, send)
slows down exactly when the server does and so hides the queueing it should measure
("coordinated omission"). The schedule is the experiment file's arrival models
(`cotrain.config.ArrivalsConfig`, offsets from `arrival_offsets_s`), so a run through the network
front end and a run with generated arrivals see the same arrival times.

The URL's scheme picks the protocol: `grpc://host:port` or `http://host:port` (`grpcs://` and
`https://` for TLS, verified against `ca_file` or the system's CAs). Before the first request the
client waits until the server and the model answer ready, reads the model's metadata and builds
one seeded random input of shape [batch, *shape[1:]] in the model's datatype; every request
carries it and asks for every output in binary form.

Records, in the output directory:
- `requests.csv`: `request_id,send_s,recv_s,latency_ms,status`, one row per request sent, written
  and flushed as each completes (a killed client keeps what it had). `send_s` and `recv_s` are
  `time.monotonic()` seconds, which on Linux are system-wide, so they compare with the server's
  records on the same machine. `status` is the HTTP status (`200`, `503`) or the gRPC code name
  (`OK`, `UNAVAILABLE`), or a client-side outcome: `timeout` (no answer within `timeout_s`),
  `connection` (the connection failed or broke), `in_flight_limit` (already `max_in_flight`
  requests outstanding: the request is not sent, so the client's memory stays bounded), `error`
  (anything else on the client's side, e.g. an answer it could not decode), `cancelled` (a second
  stop signal gave up on it).
- `summary.json`: url, model, protocol, duration_s (of the schedule that was sent), latency of
  the ok requests (p50, p99, max, mean in ms, null without any), requests sent / ok / error and
  the count of every status. sent == ok + error == rows of requests.csv; a scheduled request that
  was never sent because the run was cut short is not counted at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import json
import math
import os
import signal
import ssl
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, TypeAdapter, ValidationError

from cotrain.config import ArrivalsConfig, ConfigError, describe_error, read_yaml_file
from cotrain.ingress.datatypes import NUMPY_DTYPES
from cotrain.load_args import MAX_IN_FLIGHT, add_load_arguments

CSV_COLUMNS = ("request_id", "send_s", "recv_s", "latency_ms", "status")
TIMEOUT = "timeout"
CONNECTION = "connection"
IN_FLIGHT_LIMIT = "in_flight_limit"
CLIENT_ERROR = "error"
CANCELLED = "cancelled"
READY_POLL_S = 0.1
"""How often readiness is asked while waiting for the server (a poll of the server, not a guess)."""

SCHEMES: dict[str, tuple[Literal["grpc", "http"], bool]] = {
    "grpc": ("grpc", False),
    "grpcs": ("grpc", True),
    "http": ("http", False),
    "https": ("http", True),
}

Log = Callable[[str], None]


class LoadInputError(ValueError):
    """Bad input (URL, arrivals file, token, CA file, a model the client cannot feed): nothing sent."""


class ServerNotReady(RuntimeError):
    """The server or the model did not answer ready within `wait_ready_s`: nothing sent."""


# --- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where to send: `address` is host:port (and a path prefix for HTTP), as tritonclient takes it."""

    url: str
    protocol: Literal["grpc", "http"]
    tls: bool
    address: str


def parse_url(url: str) -> Target:
    """`grpc://host:port`, `grpcs://`, `http://host:port[/prefix]` or `https://` into a Target."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise LoadInputError(f"{url}: the URL must start with grpc://, grpcs://, http:// or https://")
    protocol, tls = SCHEMES[scheme]
    example = f"{scheme}://127.0.0.1:{8001 if protocol == 'grpc' else 8000}"
    try:
        port = parts.port
    except ValueError:
        raise LoadInputError(f"{url}: the port must be a number in 1..65535, e.g. {example}") from None
    if not parts.hostname or port is None or port == 0:
        raise LoadInputError(f"{url}: give host:port, e.g. {example}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise LoadInputError(f"{url}: a URL with credentials, a query or a fragment is not supported")
    path = parts.path.rstrip("/")
    if protocol == "grpc" and path:
        raise LoadInputError(f"{url}: a gRPC URL has no path, e.g. {example}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Target(url=url, protocol=protocol, tls=tls, address=f"{host}:{port}{path}")


class _ArrivalsHolder(BaseModel):
    """Where arrivals sit in an arrivals file; only gives error messages their "did you mean"."""

    arrivals: ArrivalsConfig


class _InferenceHolder(BaseModel):
    inference: _ArrivalsHolder


class _ExperimentHolder(BaseModel):
    workloads: _InferenceHolder


_ARRIVALS: TypeAdapter[ArrivalsConfig] = TypeAdapter(ArrivalsConfig)


def read_arrivals_file(path: str | Path) -> ArrivalsConfig:
    """The arrivals of a YAML file, as an experiment file writes them: the mapping itself
    (`{process: poisson, rate_per_s: 50, seed: 1}`), a mapping with an `arrivals:` key, or a whole
    experiment file (its `workloads.inference.arrivals`). Problems raise LoadInputError with one
    `file:line: path: message` line each."""
    source = str(path)
    try:
        doc = read_yaml_file(Path(path), "arrivals file")
    except ConfigError as exc:
        raise LoadInputError("\n".join(exc.lines)) from None
    data = doc.data
    hint = "give the arrivals mapping ({process: poisson, rate_per_s: 50}), an arrivals: key or an experiment"
    if not isinstance(data, dict):
        raise LoadInputError(f"{source}: an arrivals file must be a mapping: {hint}")
    prefix: tuple[str, ...]
    root: type[BaseModel]
    value: Any
    if "process" in data:
        prefix, root, value = ("arrivals",), _ArrivalsHolder, data
    elif "arrivals" in data:
        prefix, root, value = ("arrivals",), _ArrivalsHolder, data["arrivals"]
    elif "workloads" in data:
        prefix, root = ("workloads", "inference", "arrivals"), _ExperimentHolder
        workloads = data["workloads"]
        inference = workloads.get("inference") if isinstance(workloads, dict) else None
        value = inference.get("arrivals") if isinstance(inference, dict) else None
        if value is None:
            where, line = doc.locate(prefix)
            at = f"{source}:{line}" if line is not None else source
            several = isinstance(workloads, dict) and "services" in workloads and inference is None
            why = "with several services, give one's arrivals mapping itself" if several else hint + " file"
            raise LoadInputError(f"{at}: {where}: this experiment has no arrivals to send; {why}")
    else:
        raise LoadInputError(f"{source}: no arrivals here: {hint} file")
    try:
        return _ARRIVALS.validate_python(value)
    except ValidationError as exc:
        lines = [describe_error({**e, "loc": (*prefix, *e["loc"])}, doc, source, root) for e in exc.errors()]
        raise LoadInputError("\n".join(lines)) from None


def schedule_s(arrivals: ArrivalsConfig, duration_s: float) -> Iterator[float]:
    """Send offsets in seconds from the start, those before `duration_s` (a pure iterator)."""
    from cotrain.workloads.inference.arrivals import arrival_offsets_s

    try:
        offsets = arrival_offsets_s(arrivals)
    except (OSError, ValueError) as exc:  # a trace that cannot be read
        path = getattr(arrivals, "path", "arrivals")
        raise LoadInputError(f"{path}: cannot read the arrival trace: {exc}") from None
    for offset in offsets:
        if offset >= duration_s:
            return
        yield offset


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output from its metadata; `shape` has -1 for the batch dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def request_shape(spec: TensorSpec, batch: int) -> tuple[int, ...]:
    """[batch, *shape[1:]] for a model with a batch dimension (-1 first); its own shape otherwise."""
    shape = spec.shape
    if shape and shape[0] == -1:
        shape = (batch, *shape[1:])
    elif batch != 1:
        raise LoadInputError(
            f"input {spec.name!r} has no batch dimension (shape {list(spec.shape)}): use batch 1"
        )
    if any(d < 0 for d in shape):
        raise LoadInputError(
            f"input {spec.name!r} has a variable dimension besides the batch (shape {list(spec.shape)})"
        )
    return shape


def random_tensor(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Seeded random data: floats in [0, 1), integers in 0..min(max, 255), booleans half true."""
    if datatype not in NUMPY_DTYPES:
        raise LoadInputError(f"datatype {datatype!r} is not supported (one of: {', '.join(NUMPY_DTYPES)})")
    dtype = np.dtype(NUMPY_DTYPES[datatype])
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float64 if dtype.itemsize == 8 else np.float32).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    high = min(int(np.iinfo(dtype).max), 255)
    return rng.integers(0, high + 1, size=shape, dtype=dtype)


def status_of(exc: BaseException) -> str:
    """The status column for a failed request: the HTTP status or gRPC code tritonclient carries
    (`503`, `UNAVAILABLE`), else the client-side outcome (`timeout`, `connection`, `error`)."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = exc.status()
        if status:
            return str(status).removeprefix("StatusCode.")
        return CLIENT_ERROR  # raised by tritonclient itself, e.g. an answer it could not decode
    if isinstance(exc, asyncio.TimeoutError):
        return TIMEOUT
    if isinstance(exc, (ConnectionError, OSError)):
        return CONNECTION
    with contextlib.suppress(ImportError):
        import aiohttp

        if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
            return CONNECTION
    return CLIENT_ERROR


def latency_stats(latencies_ms: Any) -> dict[str, float | None]:
    """p50, p99, max and mean in ms (3 decimals), all None without any latency."""
    values = np.asarray(latencies_ms, dtype=float)
    if values.size == 0:
        return {"p50": None, "p99": None, "max": None, "mean": None}
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p99": round(float(np.percentile(values, 99)), 3),
        "max": round(float(values.max()), 3),
        "mean": round(float(values.mean()), 3),
    }


def ok_status(protocol: str) -> str:
    return "OK" if protocol == "grpc" else "200"


def make_summary(
    *,
    url: str,
    model: str,
    protocol: str,
    duration_s: float,
    status_counts: Mapping[str, int],
    ok_latencies_ms: Any,
) -> dict[str, Any]:
    """What `summary.json` holds, from the status counts and the latencies of the ok requests."""
    sent = sum(status_counts.values())
    ok = status_counts.get(ok_status(protocol), 0)
    return {
        "url": url,
        "model": model,
        "protocol": protocol,
        "duration_s": round(duration_s, 6),
        "latency_ms": latency_stats(ok_latencies_ms),
        "requests": {"sent": sent, "ok": ok, "error": sent - ok},
        "status_counts": dict(sorted(status_counts.items())),
    }


def summarize_requests(
    rows: list[dict[str, str]], *, url: str, model: str, protocol: str, duration_s: float
) -> dict[str, Any]:
    """The summary recomputed from the rows of requests.csv; equal to the one the run wrote."""
    good = ok_status(protocol)
    return make_summary(
        url=url,
        model=model,
        protocol=protocol,
        duration_s=duration_s,
        status_counts=Counter(row["status"] for row in rows),
        ok_latencies_ms=[float(r["latency_ms"]) for r in rows if r["status"] == good],
    )


# --- protocol clients ---------------------------------------------------------------------------


class _Client(Protocol):
    ok: str

    async def ready(self, model: str) -> bool: ...

    async def why_not_ready(self, model: str) -> str: ...

    async def metadata(self, model: str) -> tuple[list[TensorSpec], list[TensorSpec]]: ...

    def prepare(self, inputs: list[tuple[str, str, np.ndarray]], outputs: list[str]) -> None: ...

    async def infer(self, model: str, request_id: str) -> None: ...

    async def close(self) -> None: ...


def _grpc_channel_args() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        # reconnect soon after a server comes up while we wait for it (gRPC's default backoff
        # grows to two minutes)
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class _GrpcClient:
    ok = "OK"

    def __init__(self, target: Target, headers: dict[str, str], ca_file: str | None) -> None:
        import tritonclient.grpc.aio as grpcclient

        self._mod = grpcclient
        self._headers = headers or None
        self._client = grpcclient.InferenceServerClient(
            target.address,
            ssl=target.tls,
            root_certificates=ca_file if target.tls else None,
            channel_args=_grpc_channel_args(),
        )
        self._inputs: list[Any] = []
        self._outputs: list[Any] = []

    async def ready(self, model: str) -> bool:
        c = self._client
        return bool(await c.is_server_ready(headers=self._headers)) and bool(
            await c.is_model_ready(model, headers=self._headers)
        )

    async def why_not_ready(self, model: str) -> str:
        return f"the server or model {model!r} answers not ready"

    async def metadata(self, model: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
        meta = await self._client.get_model_metadata(model, headers=self._headers)

        def specs(tensors: Any) -> list[TensorSpec]:
            return [TensorSpec(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in tensors]

        return specs(meta.inputs), specs(meta.outputs)

    def prepare(self, inputs: list[tuple[str, str, np.ndarray]], outputs: list[str]) -> None:
        self._inputs = []
        for name, datatype, data in inputs:
            tensor = self._mod.InferInput(name, list(data.shape), datatype)
            tensor.set_data_from_numpy(data)
            self._inputs.append(tensor)
        self._outputs = [self._mod.InferRequestedOutput(name) for name in outputs]

    async def infer(self, model: str, request_id: str) -> None:
        await self._client.infer(
            model, self._inputs, outputs=self._outputs, request_id=request_id, headers=self._headers
        )

    async def close(self) -> None:
        await self._client.close()


class _HttpClient:
    ok = "200"

    def __init__(
        self,
        target: Target,
        headers: dict[str, str],
        ca_file: str | None,
        max_in_flight: int,
        timeout_s: float,
    ) -> None:
        import tritonclient.http.aio as httpclient

        self._mod = httpclient
        self._headers = headers or None
        context = ssl.create_default_context(cafile=ca_file) if target.tls else None
        # One connection per request in flight (HTTP/1.1 has no pipelining): a smaller pool would
        # queue requests inside the client, which is closed-loop behaviour. aiohttp's own timeout
        # stays behind ours, so a late answer is recorded as `timeout` by the client's clock.
        self._client = httpclient.InferenceServerClient(
            target.address,
            conn_limit=max_in_flight,
            conn_timeout=timeout_s + 5.0,
            ssl=target.tls,
            ssl_context=context,
        )
        self._inputs: list[Any] = []
        self._outputs: list[Any] = []

    async def ready(self, model: str) -> bool:
        c = self._client
        return bool(await c.is_server_ready(headers=self._headers)) and bool(
            await c.is_model_ready(model, headers=self._headers)
        )

    async def why_not_ready(self, model: str) -> str:
        """The ready endpoints answer only yes or no; the metadata endpoint says why (401, 404)."""
        try:
            await self._client.get_model_metadata(model, headers=self._headers)
        except Exception as exc:
            return _one_line(exc)
        return f"the server or model {model!r} answers not ready"

    async def metadata(self, model: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
        meta = await self._client.get_model_metadata(model, headers=self._headers)

        def specs(tensors: Any) -> list[TensorSpec]:
            return [
                TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
                for t in tensors or []
            ]

        return specs(meta.get("inputs")), specs(meta.get("outputs"))

    def prepare(self, inputs: list[tuple[str, str, np.ndarray]], outputs: list[str]) -> None:
        self._inputs = []
        for name, datatype, data in inputs:
            tensor = self._mod.InferInput(name, list(data.shape), datatype)
            tensor.set_data_from_numpy(data, binary_data=True)
            self._inputs.append(tensor)
        self._outputs = [self._mod.InferRequestedOutput(name, binary_data=True) for name in outputs]

    async def infer(self, model: str, request_id: str) -> None:
        await self._client.infer(
            model, self._inputs, outputs=self._outputs, request_id=request_id, headers=self._headers
        )

    async def close(self) -> None:
        await self._client.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _raise_open_files_limit(wanted: int) -> None:
    """HTTP needs a socket per request in flight: lift the soft limit on open files if we may."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass  # then a request beyond the limit fails as `connection`, and is counted


# --- records ------------------------------------------------------------------------------------


class _Records:
    """requests.csv, a row flushed per completed request, plus the counts for the summary."""

    def __init__(self, path: Path, ok: str, log: Log | None) -> None:
        self.ok = ok
        self._file: TextIO = path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(CSV_COLUMNS)
        self._file.flush()
        self.counts: Counter[str] = Counter()
        self.latencies_ms = array("d")  # 8 bytes per ok request
        self._log = log

    def add(self, request_id: int, send_s: float, recv_s: float, status: str, why: str = "") -> None:
        latency = f"{(recv_s - send_s) * 1000.0:.3f}"
        self._writer.writerow((request_id, f"{send_s:.6f}", f"{recv_s:.6f}", latency, status))
        self._file.flush()
        if status == self.ok:
            self.latencies_ms.append(float(latency))  # the summary is what the rows say
        elif status not in self.counts and self._log is not None:
            self._log(f"first {status}: request {request_id}" + (f": {why}" if why else ""))
        self.counts[status] += 1

    @property
    def sent(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- the run ------------------------------------------------------------------------------------


async def _wait_ready(client: _Client, target: Target, model: str, wait_ready_s: float) -> None:
    deadline = time.monotonic() + wait_ready_s
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        try:
            if await asyncio.wait_for(client.ready(model), timeout=max(0.05, min(remaining, 2.0))):
                return
            last = await asyncio.wait_for(client.why_not_ready(model), timeout=max(0.05, min(remaining, 2.0)))
        except asyncio.TimeoutError:
            last = "no answer"
        except Exception as exc:
            last = _one_line(exc)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerNotReady(f"{target.url}: model {model!r} not ready after {wait_ready_s:g} s: {last}")
        await asyncio.sleep(min(READY_POLL_S, remaining))


async def _build_inputs(
    client: _Client, model: str, batch: int, datatype: str | None, seed: int, timeout_s: float
) -> None:
    inputs, outputs = await asyncio.wait_for(client.metadata(model), timeout=timeout_s)
    if not inputs:
        raise LoadInputError(f"model {model!r} has no inputs in its metadata")
    rng = np.random.default_rng(seed)
    tensors = []
    for spec in inputs:
        kind = datatype or spec.datatype
        tensors.append((spec.name, kind, random_tensor(kind, request_shape(spec, batch), rng)))
    client.prepare(tensors, [spec.name for spec in outputs])


async def _load(
    client: _Client,
    model: str,
    offsets: Iterator[float],
    duration_s: float,
    records: _Records,
    *,
    timeout_s: float,
    max_in_flight: int,
    handle_signals: bool,
) -> tuple[float, bool]:
    """Send on schedule, then wait for the answers. Returns (seconds of schedule sent, cut short).

    With `handle_signals`, SIGINT or SIGTERM stops the sending (what was sent is still waited
    for, each request up to its timeout); a second one, or one after the sending has ended, gives
    up on the answers still missing (recorded `cancelled`)."""
    pending: set[asyncio.Task[None]] = set()
    in_flight = 0
    signals = 0

    async def one(request_id: int) -> None:
        nonlocal in_flight
        send_s = time.monotonic()
        status, why = CANCELLED, ""
        try:
            await asyncio.wait_for(client.infer(model, str(request_id)), timeout=timeout_s)
            status = client.ok
        except asyncio.TimeoutError:
            status = TIMEOUT
        except Exception as exc:
            status, why = status_of(exc), _one_line(exc)
        finally:
            in_flight -= 1
            records.add(request_id, send_s, time.monotonic(), status, why)

    async def send_all() -> None:
        nonlocal in_flight
        for request_id, offset in enumerate(offsets):
            # sleep(0) when late still yields, so the requests already started make progress
            await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
            if in_flight >= max_in_flight:
                now = time.monotonic()
                records.add(request_id, now, now, IN_FLIGHT_LIMIT, f"{in_flight} requests outstanding")
                continue
            in_flight += 1
            task = asyncio.create_task(one(request_id))
            pending.add(task)
            task.add_done_callback(pending.discard)

    t0 = time.monotonic()
    sender = asyncio.create_task(send_all())
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1 and not sender.done():
            sender.cancel()
        else:  # a second signal, or one after the sending ended: stop waiting for answers
            for task in list(pending):
                task.cancel()

    handled = []
    if handle_signals and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, on_signal)
                handled.append(signum)
    try:
        try:
            await sender
        except asyncio.CancelledError:
            if signals == 0:  # not our signal: this task itself is being cancelled
                raise
        cut_short = sender.cancelled()
        sent_s = min(duration_s, time.monotonic() - t0) if cut_short else duration_s
        while pending:  # each bounded by its own timeout_s
            await asyncio.gather(*list(pending), return_exceptions=True)
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
    return sent_s, cut_short


async def _run(
    target: Target,
    model: str,
    offsets: Iterator[float],
    duration_s: float,
    out: Path,
    *,
    seed: int,
    timeout_s: float,
    wait_ready_s: float,
    headers: dict[str, str],
    batch: int,
    datatype: str | None,
    ca_file: str | None,
    max_in_flight: int,
    handle_signals: bool,
    log: Log | None,
) -> tuple[dict[str, Any], bool]:
    client: _Client
    if target.protocol == "grpc":
        client = _GrpcClient(target, {k.lower(): v for k, v in headers.items()}, ca_file)
    else:
        _raise_open_files_limit(max_in_flight + 256)
        client = _HttpClient(target, headers, ca_file, max_in_flight, timeout_s)
    try:
        await _wait_ready(client, target, model, wait_ready_s)
        await _build_inputs(client, model, batch, datatype, seed, timeout_s)
        records = _Records(out / "requests.csv", client.ok, log)
        try:
            sent_s, cut_short = await _load(
                client,
                model,
                offsets,
                duration_s,
                records,
                timeout_s=timeout_s,
                max_in_flight=max_in_flight,
                handle_signals=handle_signals,
            )
        finally:
            records.close()
    finally:
        await client.close()
    summary = make_summary(
        url=target.url,
        model=model,
        protocol=target.protocol,
        duration_s=sent_s,
        status_counts=records.counts,
        ok_latencies_ms=records.latencies_ms,
    )
    _write_json(out / "summary.json", summary)
    return summary, cut_short


def _check_numbers(
    duration_s: float, timeout_s: float, wait_ready_s: float, batch: int, max_in_flight: int
) -> None:
    checks = (
        (math.isfinite(duration_s) and duration_s > 0, f"duration must be > 0 seconds, got {duration_s:g}"),
        (math.isfinite(timeout_s) and timeout_s > 0, f"timeout must be > 0 seconds, got {timeout_s:g}"),
        (
            math.isfinite(wait_ready_s) and wait_ready_s >= 0,
            f"wait for ready must be >= 0 seconds, got {wait_ready_s:g}",
        ),
        (batch >= 1, f"batch must be >= 1, got {batch}"),
        (max_in_flight >= 1, f"the in-flight limit must be >= 1, got {max_in_flight}"),
    )
    for ok, message in checks:
        if not ok:
            raise LoadInputError(message)


def _check_installed(target: Target) -> None:
    """tritonclient and its transport come with the `serve` extra, not with the core install."""
    import importlib.util

    modules = (
        ("tritonclient.grpc.aio", "grpc")
        if target.protocol == "grpc"
        else ("tritonclient.http.aio", "aiohttp")
    )
    try:
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
    except (ImportError, ValueError):  # tritonclient itself is absent or broken
        missing = [modules[0]]
    if missing:
        raise LoadInputError(
            f"{target.url}: {target.protocol} load needs {', '.join(missing)}: pip install 'cotrain[serve]'"
        )


def _prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoadInputError(f"{out}: cannot create the output directory: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise LoadInputError(f"{out}: the output directory is not writable")


def _run_load(
    url: str,
    model: str,
    arrivals: ArrivalsConfig,
    duration_s: float,
    out: Path,
    *,
    seed: int = 0,
    timeout_s: float = 10.0,
    wait_ready_s: float = 30.0,
    token: str | None = None,
    batch: int = 1,
    datatype: str | None = None,
    ca_file: str | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
    handle_signals: bool = False,
    log: Log | None = None,
) -> tuple[dict[str, Any], bool]:
    target = parse_url(url)
    _check_numbers(duration_s, timeout_s, wait_ready_s, batch, max_in_flight)
    if datatype is not None and datatype not in NUMPY_DTYPES:
        raise LoadInputError(f"datatype {datatype!r} is not supported (one of: {', '.join(NUMPY_DTYPES)})")
    if ca_file is not None:
        if not target.tls:
            raise LoadInputError(f"{url}: a CA file is for grpcs:// or https:// only")
        try:
            ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise LoadInputError(f"{ca_file}: not a readable PEM CA bundle: {exc}") from None
    _check_installed(target)
    offsets = schedule_s(arrivals, duration_s)
    first = next(offsets, None)  # a trace is read here: a bad one is bad input, before connecting
    out = Path(out)
    _prepare_out(out)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return asyncio.run(
        _run(
            target,
            model,
            itertools.chain([first], offsets) if first is not None else iter(()),
            duration_s,
            out,
            seed=seed,
            timeout_s=timeout_s,
            wait_ready_s=wait_ready_s,
            headers=headers,
            batch=batch,
            datatype=datatype,
            ca_file=ca_file,
            max_in_flight=max_in_flight,
            handle_signals=handle_signals,
            log=log,
        )
    )


def run_load(
    url: str,
    model: str,
    arrivals: ArrivalsConfig,
    duration_s: float,
    out: Path,
    *,
    seed: int = 0,
    timeout_s: float = 10.0,
    wait_ready_s: float = 30.0,
    token: str | None = None,
    batch: int = 1,
    datatype: str | None = None,
    ca_file: str | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
    log: Log | None = None,
) -> dict[str, Any]:
    """Send `arrivals` for `duration_s` to `model` at `url`, open loop; write `out/requests.csv`
    and `out/summary.json` and return the summary.

    `seed` seeds the input data (the arrival seed is in `arrivals`); `token` is sent as
    `Authorization: Bearer`; `datatype` overrides the model's input datatype. Raises
    LoadInputError for bad input and ServerNotReady if the model is not ready within
    `wait_ready_s`; failed requests are records, not exceptions."""
    summary, _ = _run_load(
        url,
        model,
        arrivals,
        duration_s,
        out,
        seed=seed,
        timeout_s=timeout_s,
        wait_ready_s=wait_ready_s,
        token=token,
        batch=batch,
        datatype=datatype,
        ca_file=ca_file,
        max_in_flight=max_in_flight,
        log=log,
    )
    return summary


# --- command line -------------------------------------------------------------------------------


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def _err(message: str) -> None:
    for line in message.splitlines() or [message]:
        print(f"cotrain: error: {line}", file=sys.stderr)


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadInputError(
            f"{path}: cannot read the token file: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if not token or any(c.isspace() for c in token):
        raise LoadInputError(f"{path}: the token file must hold one token on one line")
    return token


def summary_line(summary: dict[str, Any], out: Path) -> str:
    """The one line `cotrain load` prints."""
    r, lat = summary["requests"], summary["latency_ms"]
    good = ok_status(summary["protocol"])
    errors = ", ".join(f"{s} x{n}" for s, n in summary["status_counts"].items() if s != good)
    latency = (
        f"latency p50 {lat['p50']:.3f} / p99 {lat['p99']:.3f} / max {lat['max']:.3f} ms"
        if lat["p50"] is not None
        else "no latency (nothing ok)"
    )
    return (
        f"cotrain load {summary['url']} {summary['model']}: {r['sent']} sent = {r['ok']} ok + "
        f"{r['error']} errors{f' ({errors})' if errors else ''} in {summary['duration_s']:g} s; "
        f"{latency}; written: {out / 'requests.csv'}, summary.json"
    )


def load_command(args: argparse.Namespace) -> int:
    """`cotrain load`: 0 when it ran (even if requests failed), 2 on bad input, 1 if the server
    never became ready, the run failed or a signal cut it short.

    `args` as `add_load_arguments` makes them; a parser that leaves out the optional flags gets
    their defaults (so the cotrain CLI can declare its flags without importing this module)."""
    try:
        arrivals = read_arrivals_file(args.arrivals)
        token_file = getattr(args, "token_file", None)
        token = _read_token(token_file) if token_file else None
        summary, cut_short = _run_load(
            args.url,
            args.model,
            arrivals,
            args.duration,
            Path(args.out),
            seed=getattr(args, "seed", 0),
            timeout_s=getattr(args, "timeout_s", 10.0),
            wait_ready_s=getattr(args, "wait_ready_s", 30.0),
            token=token,
            batch=getattr(args, "batch", 1),
            datatype=getattr(args, "datatype", None),
            ca_file=getattr(args, "ca", None),
            max_in_flight=getattr(args, "max_in_flight", MAX_IN_FLIGHT),
            handle_signals=True,
            log=lambda m: print(f"cotrain load: {m}", file=sys.stderr),
        )
    except LoadInputError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    except ServerNotReady as exc:
        _err(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:  # before sending began; once it has, a signal stops it in order
        _err("interrupted before any request was sent")
        return EXIT_FAILED
    except Exception as exc:  # e.g. the model's metadata could not be read: report, not a traceback
        _err(f"{args.url}: {_one_line(exc)}")
        return EXIT_FAILED
    print(summary_line(summary, Path(args.out)))
    if cut_short:
        _err("stopped by a signal before the end of the schedule (records kept)")
        return EXIT_FAILED
    return EXIT_OK


def load_main(argv: list[str] | None = None) -> int:
    """`cotrain load URL --model NAME --arrivals FILE.yaml --duration S --out DIR [...]`."""
    parser = argparse.ArgumentParser(
        prog="cotrain load",
        description="Send open-loop load to an Open Inference Protocol (KServe v2) server and record it.",
    )
    add_load_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the problem
        return int(exc.code) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    return load_command(args)


if __name__ == "__main__":
    sys.exit(load_main())

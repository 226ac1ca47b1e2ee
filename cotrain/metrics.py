"""Prometheus metrics of a running cotrain, and the page that serves them.

`Metrics` owns its own `prometheus_client.CollectorRegistry`, never the library's global default,
so several runs in one process (or the tests) never share or collide on a series. Its methods are
pure updates: no I/O and no clock reads, cheap enough for the runtime's control loop and for
front-end threads at a few thousand requests per second, and thread-safe (every prometheus_client
value has its own lock; cotrain's own bookkeeping is under one lock taken only off the hot path).

Names follow the Prometheus conventions: base units in the name (`_seconds`, `_watts`,
`_celsius`, `_ratio`), counters end in `_total`, and facts that are strings (the run, a service's
variant and model version, the power mode) are `_info` series with value 1 whose labels carry
them. A reading that is unknown (None: no GPU, no power meter, no finished request in the window)
leaves its series *absent* rather than 0 or NaN: 0 would be a false reading, and a NaN poisons
every `avg_over_time` or `sum` it takes part in, whereas an absent series is what PromQL means by
"no data" (`absent()` alerts on it, and Prometheus marks the old sample stale).

Prometheus itself is a per-process store. Calls must be made in the process that owns the
`Metrics` (the runtime's); a worker process reports to the runtime, and the runtime calls in.

Counters, histograms and gauges with labels come from prometheus_client's own types; `_created`
series are exported for counters as the library does by default (an operator can turn them off
with its `PROMETHEUS_DISABLE_CREATED_SERIES` environment variable).
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.metrics_core import (
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

__all__ = [
    "METRICS_PATH",
    "OUTCOMES",
    "SLO_BUCKET_FRACTIONS",
    "Metrics",
    "MetricsServer",
    "slo_buckets_s",
]

OUTCOMES: Final = ("served", "failed", "shed")
"""Every request ends in exactly one of these (the batching contract)."""

SLO_BUCKET_FRACTIONS: Final = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 4.0)
"""Latency bucket bounds as fractions of a service's SLO (plus +Inf). The 1.0 bound makes the
share of requests served within the SLO an exact bucket ratio, and the bounds are densest around
it, where a controller's decisions are made."""

METRICS_PATH: Final = "/metrics"

_LATENCY_NAME: Final = "cotrain_request_latency_seconds"
_LATENCY_HELP: Final = (
    "Latency of served requests, arrival to response, in seconds; buckets are fractions of the service's SLO"
)
_CONNECTION_TIMEOUT_S: Final = 10.0  # a client that sends nothing for this long is cut off
_POLL_INTERVAL_S: Final = 0.2  # how soon close() stops the accept loop


def slo_buckets_s(slo_ms: float, fractions: Sequence[float] = SLO_BUCKET_FRACTIONS) -> tuple[float, ...]:
    """Histogram bucket bounds in seconds for an SLO in milliseconds: `fractions` × SLO.

    The products are rounded to 12 significant digits so that, e.g., a 200 ms SLO gives the
    bounds 0.02 and 0.2 rather than 0.020000000000000004.
    """
    if not (math.isfinite(slo_ms) and slo_ms > 0):
        raise ValueError(f"slo_ms must be a positive number, got {slo_ms!r}")
    bounds = tuple(float(f"{slo_ms * f / 1000.0:.12g}") for f in fractions)
    if not bounds or any(b <= 0 for b in bounds) or any(b >= c for b, c in itertools.pairwise(bounds)):
        raise ValueError(f"bucket fractions must be positive and increasing, got {tuple(fractions)}")
    return bounds


# --- custom collectors ---------------------------------------------------------------------------


class _LatencyCollector:
    """One `cotrain_request_latency_seconds` family over one Histogram per service.

    A prometheus_client Histogram fixes its buckets when it is created and shares them across all
    its label sets, but each service's buckets sit around its own SLO. So each service gets its
    own unlabelled Histogram (registered nowhere; it does the thread-safe counting), and this
    collector exposes them as one family with a `service` label. One family with per-series
    bucket bounds is valid in the exposition formats, and `histogram_quantile` works per series
    (but not over `sum by (le)` across services: their bounds differ). Registering the
    per-service Histograms directly is not possible: they would share a name.
    """

    def __init__(self) -> None:
        # Replaced, never mutated: readers iterate a snapshot without a lock.
        self.histograms: dict[str, Histogram] = {}

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(_LATENCY_NAME, _LATENCY_HELP, labels=["service"])]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(_LATENCY_NAME, _LATENCY_HELP, labels=["service"])
        for service, histogram in self.histograms.items():
            buckets: list[tuple[str, float]] = []
            sum_s = 0.0
            for metric in histogram.collect():
                for sample in metric.samples:
                    if sample.name.endswith("_bucket"):
                        buckets.append((sample.labels["le"], sample.value))
                    elif sample.name.endswith("_sum"):
                        sum_s = sample.value
            family.add_metric([service], buckets, sum_s)
        return [family]


@dataclass(frozen=True)
class _PlatformReading:
    power_w: float | None = None
    temperature_c: float | None = None
    power_mode: str | None = None
    cpu_util_ratio: float | None = None
    gpu_util_ratio: float | None = None


@dataclass(frozen=True)
class _RunState:
    name: str
    controller: str
    platform: str
    start_time_s: float


class _SnapshotCollector:
    """The run's and the platform's latest state, where an unknown value has no series.

    An unlabelled Gauge always exposes a sample (0 before it is set) and cannot be removed, so
    these are built at scrape time from immutable snapshots: replacing a reference is atomic, so
    a scrape never sees half of a platform reading.
    """

    def __init__(self) -> None:
        self.platform = _PlatformReading()
        self.run: _RunState | None = None
        self.up = False

    def describe(self) -> Iterable[Metric]:
        return list(self._families(_PlatformReading(), None, up=False))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self.platform, self.run, up=self.up))

    @staticmethod
    def _families(reading: _PlatformReading, run: _RunState | None, *, up: bool) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "cotrain_up", "1 while the run is running, 0 before and after", value=1.0 if up else 0.0
        )
        start = GaugeMetricFamily(
            "cotrain_run_start_time_seconds", "Wall-clock start of the run, seconds since the Unix epoch"
        )
        info = InfoMetricFamily("cotrain_run", "The run: experiment name, controller and platform")
        if run is not None:
            start.add_metric([], run.start_time_s)
            info.add_metric([], {"name": run.name, "controller": run.controller, "platform": run.platform})
        yield start
        yield info
        gauges = (
            ("cotrain_power_watts", "Board power in watts, as the platform reads it", reading.power_w),
            (
                "cotrain_temperature_celsius",
                "Hottest temperature sensor in degrees Celsius",
                reading.temperature_c,
            ),
            ("cotrain_cpu_utilization_ratio", "CPU utilisation over all cores, 0..1", reading.cpu_util_ratio),
            ("cotrain_gpu_utilization_ratio", "GPU utilisation, 0..1", reading.gpu_util_ratio),
        )
        for name, help_text, value in gauges:
            family = GaugeMetricFamily(name, help_text)
            if value is not None:
                family.add_metric([], value)
            yield family
        mode = InfoMetricFamily("cotrain_power_mode", "The platform's current power mode")
        if reading.power_mode is not None:
            mode.add_metric([], {"mode": reading.power_mode})
        yield mode


# --- the metrics ---------------------------------------------------------------------------------


class Metrics:
    """Everything a running cotrain exposes to Prometheus, in a registry of its own.

    Call `add_service` for each inference service before its requests finish. All other label
    sets (jobs, workers, controllers) appear on first use. Unknown services and outcomes raise
    ValueError, so a typo fails loudly instead of creating a stray series.
    """

    def __init__(self, *, slo_bucket_fractions: Sequence[float] = SLO_BUCKET_FRACTIONS) -> None:
        self._fractions = tuple(slo_bucket_fractions)
        slo_buckets_s(1.0, self._fractions)  # validate once, here
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        """The registry this object owns; `render()` and `serve()` expose exactly its contents."""
        registry = self.registry

        self._requests = Counter(
            "cotrain_requests_total",
            "Requests finished, by outcome (served|failed|shed) and the client-visible status "
            '("" for generated requests)',
            ("service", "outcome", "status"),
            registry=registry,
        )
        self._latency = _LatencyCollector()
        registry.register(self._latency)
        self._slo_ms: dict[str, float] = {}
        # (service, outcome, status) -> child: skips the label lookup and its lock per request.
        # Only ever grown (request series are never removed), so a stale read is still valid.
        self._request_children: dict[tuple[str, str, str], Counter] = {}

        self._queue_depth = Gauge(
            "cotrain_queue_depth", "Requests waiting in the service's queue", ("service",), registry=registry
        )
        self._batch_size = Gauge(
            "cotrain_batch_size",
            "Mean batch size over the last control window",
            ("service",),
            registry=registry,
        )
        self._arrival_rate = Gauge(
            "cotrain_arrival_rate_per_second",
            "Requests arrived per second over the last control window",
            ("service",),
            registry=registry,
        )
        self._slo_attainment = Gauge(
            "cotrain_slo_attainment_ratio",
            "Share of the last window's finished requests served within the SLO, 0..1",
            ("service",),
            registry=registry,
        )
        self._service_info = Info(
            "cotrain_service",
            "The variant and model version a service is serving",
            ("service",),
            registry=registry,
        )

        self._samples_per_s = Gauge(
            "cotrain_training_samples_per_second",
            "Training samples per second over the last control window",
            ("job",),
            registry=registry,
        )
        self._steps = Counter(
            "cotrain_training_steps_total", "Training steps executed", ("job",), registry=registry
        )
        self._rounds = Counter(
            "cotrain_federated_rounds_total",
            "Federated rounds the job took part in",
            ("job",),
            registry=registry,
        )
        self._last_steps: dict[str, int] = {}
        self._last_rounds: dict[str, int] = {}

        self._restarts = Counter(
            "cotrain_worker_restarts_total", "Restarts of a worker process", ("worker",), registry=registry
        )
        self._decisions = Counter(
            "cotrain_controller_decisions_total",
            "Actions the controller decided and the runtime applied",
            ("controller",),
            registry=registry,
        )
        self._snapshot = _SnapshotCollector()
        registry.register(self._snapshot)

    # --- inference ------------------------------------------------------------------------------

    def add_service(self, name: str, slo_ms: float) -> None:
        """Register a service and its SLO; the latency buckets are `SLO_BUCKET_FRACTIONS` × SLO.

        Adding the same service again with the same SLO does nothing; with another SLO it is a
        ValueError (a histogram's buckets cannot change under Prometheus).
        """
        buckets = slo_buckets_s(slo_ms, self._fractions)
        with self._lock:
            known = self._slo_ms.get(name)
            if known is not None:
                if known != slo_ms:
                    raise ValueError(f"service {name!r} is registered with slo_ms={known}, not {slo_ms}")
                return
            histogram = Histogram(_LATENCY_NAME, _LATENCY_HELP, buckets=buckets, registry=None)
            self._latency.histograms = {**self._latency.histograms, name: histogram}
            self._slo_ms = {**self._slo_ms, name: slo_ms}

    def request_finished(self, service: str, outcome: str, status: str, latency_s: float | None) -> None:
        """One request finished: count it, and for a served one observe its latency in seconds.

        `status` is what the client saw ("200", "503", ...; "" for a generated request). A served
        request must carry its latency; a failed or shed one's is ignored (the histogram holds
        served requests only, so its `_count` equals the served count).
        """
        served = outcome == "served"
        if served and latency_s is None:
            raise ValueError("a served request needs its latency_s")
        child = self._request_children.get((service, outcome, status))
        if child is None:
            child = self._request_child(service, outcome, status)
        if served and latency_s is not None:
            self._latency.histograms[service].observe(latency_s)
        child.inc()

    def requests_finished(
        self, service: str, outcome: str, status: str, *, count: int, latencies_s: Sequence[float] = ()
    ) -> None:
        """`count` requests finished alike: the bulk form of `request_finished`, for a window's
        aggregates (e.g. a worker's stats message). A served batch needs one latency per request;
        other outcomes take none."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        expected = count if outcome == "served" else 0
        if len(latencies_s) != expected:
            raise ValueError(
                f"{count} {outcome} request(s) need {expected} latencies, got {len(latencies_s)}"
            )
        child = self._request_children.get((service, outcome, status))
        if child is None:
            child = self._request_child(service, outcome, status)
        histogram = self._latency.histograms[service]
        for latency_s in latencies_s:
            histogram.observe(latency_s)
        if count:
            child.inc(count)

    def _request_child(self, service: str, outcome: str, status: str) -> Counter:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        self._require_service(service)
        child = self._requests.labels(service, outcome, status)  # the same child for the same labels
        self._request_children[(service, outcome, status)] = child
        return child

    def _require_service(self, service: str) -> None:
        if service not in self._slo_ms:
            raise ValueError(f"unknown service {service!r}: call add_service(name, slo_ms) first")

    def observe_service(
        self,
        service: str,
        *,
        queue_depth: int | None,
        mean_batch_size: float | None,
        arrival_rate_per_s: float | None,
        slo_attainment: float | None,
        variant: str | None,
        model_version: int | str | None,
    ) -> None:
        """The service's state at the end of a control window. A None number leaves that series
        absent (e.g. no batch ran, nothing finished). `slo_attainment` is a ratio in 0..1.

        `cotrain_service_info` holds one label set per service: a new variant or model version
        replaces the old one, which disappears. A None variant (the single configured model) or
        version is exposed as "".
        """
        self._require_service(service)
        for gauge, value in (
            (self._queue_depth, queue_depth),
            (self._batch_size, mean_batch_size),
            (self._arrival_rate, arrival_rate_per_s),
            (self._slo_attainment, slo_attainment),
        ):
            if value is None:
                gauge.remove(service)
            else:
                gauge.labels(service).set(value)
        self._service_info.labels(service).info(
            {
                "variant": "" if variant is None else variant,
                "model_version": "" if model_version is None else str(model_version),
            }
        )

    # --- training -------------------------------------------------------------------------------

    def observe_training(self, job: str, *, samples_per_s: float | None, steps_total: int) -> None:
        """A training job's window throughput and its step count so far.

        `cotrain_training_steps_total` must never go down, so it grows by the increase of
        `steps_total` since the last call. When `steps_total` falls (the job was restarted from an
        older checkpoint) the new value becomes the baseline: the counter then counts the steps
        done again, i.e. steps executed rather than the model's step number.
        """
        if samples_per_s is None:
            self._samples_per_s.remove(job)
        else:
            self._samples_per_s.labels(job).set(samples_per_s)
        self._inc_by_delta(self._steps, self._last_steps, job, steps_total)

    def federated_rounds(self, job: str, rounds_total: int) -> None:
        """The number of federated rounds the job has taken part in so far (same rule as steps)."""
        self._inc_by_delta(self._rounds, self._last_rounds, job, rounds_total)

    def _inc_by_delta(self, counter: Counter, last: dict[str, int], job: str, total: int) -> None:
        if total < 0:
            raise ValueError(f"a total must be >= 0, got {total}")
        with self._lock:
            delta = total - last.get(job, 0)
            last[job] = total
            child = counter.labels(job)
            if delta > 0:
                child.inc(delta)

    # --- platform, supervision, run -------------------------------------------------------------

    def observe_platform(
        self,
        *,
        power_w: float | None,
        temperature_c: float | None,
        power_mode: str | None,
        cpu_util_percent: float | None,
        gpu_util_percent: float | None,
    ) -> None:
        """One platform reading (a `TelemetrySample`'s fields). Utilisation is given in percent
        and exposed as a ratio; a None value leaves its series absent."""
        self._snapshot.platform = _PlatformReading(
            power_w=power_w,
            temperature_c=temperature_c,
            power_mode=power_mode,
            cpu_util_ratio=None if cpu_util_percent is None else cpu_util_percent / 100.0,
            gpu_util_ratio=None if gpu_util_percent is None else gpu_util_percent / 100.0,
        )

    def add_worker(self, worker: str) -> None:
        """Expose a worker's restart count as 0 before its first restart (optional: so `rate()`
        and `increase()` see the first restart)."""
        self._restarts.labels(worker)

    def worker_restarted(self, worker: str) -> None:
        self._restarts.labels(worker).inc()

    def decision(self, controller: str) -> None:
        """The runtime applied one action of `controller` (one line of decisions.jsonl)."""
        self._decisions.labels(controller).inc()

    def set_run_info(self, *, name: str, controller: str, platform: str, start_time_s: float) -> None:
        """The run has started: `start_time_s` is wall-clock time, seconds since the Unix epoch
        (`time.time()`, not the monotonic clock). Sets `cotrain_up` to 1."""
        self._snapshot.run = _RunState(name, controller, platform, start_time_s)
        self._snapshot.up = True

    def run_stopped(self) -> None:
        """The run has ended (or is draining): `cotrain_up` goes to 0; everything else stays."""
        self._snapshot.up = False

    # --- exposition -----------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of this registry."""
        return generate_latest(self.registry)

    def serve(
        self,
        host: str,
        port: int,
        *,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
    ) -> MetricsServer:
        """Serve `/metrics` on host:port (port 0: any free port) in a daemon thread; HTTPS with a
        certificate chain (and its key, unless the key is in `certfile`)."""
        return MetricsServer(self.registry, host, port, certfile=certfile, keyfile=keyfile)


# --- the HTTP(S) page ----------------------------------------------------------------------------

_WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _only_metrics_path(app: _WsgiApp) -> _WsgiApp:
    def only_metrics(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == METRICS_PATH:
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found: only {METRICS_PATH} is served\n".encode()]

    return only_metrics


class _QuietHandler(WSGIRequestHandler):
    timeout = _CONNECTION_TIMEOUT_S  # StreamRequestHandler applies it to the connection

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


class _MetricsHTTPServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, one daemon thread per connection, with TLS done in that thread.

    Wrapping the listening socket (as prometheus_client's start_http_server does) makes the TLS
    handshake happen inside `accept()`, on the one thread that accepts: a client that connects
    and says nothing would stall the page for everyone. Here the accepted socket is wrapped
    without a handshake, and the handshake runs in the connection's own thread, under a timeout.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], family: int, ssl_context: ssl.SSLContext | None) -> None:
        self.address_family = socket.AddressFamily(family)
        self._ssl_context = ssl_context
        super().__init__(address, _QuietHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, a DNS query that can hang on a device
        # without DNS; the bound address is all the WSGI environ needs.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, client = self.socket.accept()
        if self._ssl_context is not None:
            sock = self._ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, client

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(_CONNECTION_TIMEOUT_S)
            request.do_handshake()
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up, times out or speaks plain HTTP to the TLS port is its problem;
        # anything else is a bug worth the traceback.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class MetricsServer:
    """`/metrics` of one registry over HTTP or HTTPS, served by a daemon thread until `close()`.

    Every other path is 404. Content negotiation and gzip are prometheus_client's
    (`make_wsgi_app`): a plain client gets `text/plain; version=0.0.4`, a Prometheus server
    asking for OpenMetrics gets that. Binding errors (port in use, bad certificate) raise here,
    before any thread starts.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
    ) -> None:
        if keyfile is not None and certfile is None:
            raise ValueError("a keyfile needs its certfile")
        context: ssl.SSLContext | None = None
        if certfile is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(certfile, keyfile)
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self._server = _MetricsHTTPServer((str(sockaddr[0]), port), family, context)
        self._server.set_app(_only_metrics_path(make_wsgi_app(registry)))
        self.tls = context is not None
        bound = self._server.server_address
        self.host = str(bound[0])
        self.port = int(bound[1])
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL_S},
            name=f"metrics-{self.port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def address(self) -> str:
        """The bound host:port (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}{METRICS_PATH}"

    def close(self) -> None:
        """Stop serving and free the port. Idempotent; connections in flight are not awaited."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The Prometheus metrics: every family parses back as set, the SLO buckets, info series that
replace each other, exact counts under threads, and the /metrics page over HTTP and HTTPS."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from cotrain.metrics import SLO_BUCKET_FRACTIONS, Metrics, slo_buckets_s
from tests.tls_certs import self_signed_cert

TIMEOUT_S = 30.0  # generous: only a broken server ever waits this long


def families(metrics: Metrics) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(metrics.render().decode())}


def values(family: Metric, sample_name: str | None = None) -> dict[frozenset[tuple[str, str]], float]:
    """{label set: value} of a family's samples named `sample_name` (default: the family's own)."""
    name = sample_name or family.name
    return {frozenset(s.labels.items()): s.value for s in family.samples if s.name == name}


def labels(**items: str) -> frozenset[tuple[str, str]]:
    return frozenset(items.items())


def fully_observed() -> Metrics:
    """A Metrics after one update of each kind."""
    metrics = Metrics()
    metrics.add_service("vision", slo_ms=200)
    metrics.request_finished("vision", "served", "", 0.05)
    metrics.request_finished("vision", "failed", "500", None)
    metrics.request_finished("vision", "shed", "503", None)
    metrics.observe_service(
        "vision",
        queue_depth=3,
        mean_batch_size=2.5,
        arrival_rate_per_s=20.0,
        slo_attainment=0.75,
        variant="resnet18-fp32",
        model_version=2,
    )
    metrics.observe_training("cl", samples_per_s=203.25, steps_total=128)
    metrics.federated_rounds("fl", 3)
    metrics.observe_platform(
        power_w=12.5, temperature_c=48.0, power_mode="MAXN", cpu_util_percent=62.0, gpu_util_percent=40.0
    )
    metrics.worker_restarted("inference")
    metrics.decision("adaptive")
    metrics.set_run_info(name="quickstart", controller="adaptive", platform="host", start_time_s=1.7e9)
    return metrics


# --- families ------------------------------------------------------------------------------------


def test_every_family_parses_back_with_its_type_labels_and_value() -> None:
    found = families(fully_observed())

    expected_types = {
        "cotrain_requests": "counter",
        "cotrain_request_latency_seconds": "histogram",
        "cotrain_queue_depth": "gauge",
        "cotrain_batch_size": "gauge",
        "cotrain_arrival_rate_per_second": "gauge",
        "cotrain_slo_attainment_ratio": "gauge",
        "cotrain_service_info": "gauge",
        "cotrain_training_samples_per_second": "gauge",
        "cotrain_training_steps": "counter",
        "cotrain_federated_rounds": "counter",
        "cotrain_power_watts": "gauge",
        "cotrain_temperature_celsius": "gauge",
        "cotrain_power_mode_info": "gauge",
        "cotrain_cpu_utilization_ratio": "gauge",
        "cotrain_gpu_utilization_ratio": "gauge",
        "cotrain_worker_restarts": "counter",
        "cotrain_controller_decisions": "counter",
        "cotrain_run_info": "gauge",
        "cotrain_up": "gauge",
        "cotrain_run_start_time_seconds": "gauge",
    }
    assert {name: found[name].type for name in expected_types if name in found} == expected_types
    # Nothing else but the `_created` companions prometheus_client adds to counters.
    assert {n for n in found if not n.endswith("_created")} == set(expected_types)

    assert values(found["cotrain_requests"], "cotrain_requests_total") == {
        labels(service="vision", outcome="served", status=""): 1.0,
        labels(service="vision", outcome="failed", status="500"): 1.0,
        labels(service="vision", outcome="shed", status="503"): 1.0,
    }
    service = labels(service="vision")
    assert values(found["cotrain_queue_depth"]) == {service: 3.0}
    assert values(found["cotrain_batch_size"]) == {service: 2.5}
    assert values(found["cotrain_arrival_rate_per_second"]) == {service: 20.0}
    assert values(found["cotrain_slo_attainment_ratio"]) == {service: 0.75}
    assert values(found["cotrain_service_info"]) == {
        labels(service="vision", variant="resnet18-fp32", model_version="2"): 1.0
    }
    assert values(found["cotrain_training_samples_per_second"]) == {labels(job="cl"): 203.25}
    assert values(found["cotrain_training_steps"], "cotrain_training_steps_total") == {
        labels(job="cl"): 128.0
    }
    assert values(found["cotrain_federated_rounds"], "cotrain_federated_rounds_total") == {
        labels(job="fl"): 3.0
    }
    assert values(found["cotrain_power_watts"]) == {labels(): 12.5}
    assert values(found["cotrain_temperature_celsius"]) == {labels(): 48.0}
    assert values(found["cotrain_power_mode_info"]) == {labels(mode="MAXN"): 1.0}
    assert values(found["cotrain_cpu_utilization_ratio"]) == {labels(): 0.62}
    assert values(found["cotrain_gpu_utilization_ratio"]) == {labels(): 0.4}
    assert values(found["cotrain_worker_restarts"], "cotrain_worker_restarts_total") == {
        labels(worker="inference"): 1.0
    }
    assert values(found["cotrain_controller_decisions"], "cotrain_controller_decisions_total") == {
        labels(controller="adaptive"): 1.0
    }
    assert values(found["cotrain_run_info"]) == {
        labels(name="quickstart", controller="adaptive", platform="host"): 1.0
    }
    assert values(found["cotrain_up"]) == {labels(): 1.0}
    assert values(found["cotrain_run_start_time_seconds"]) == {labels(): 1.7e9}


def test_unknown_readings_leave_their_series_absent_not_zero() -> None:
    """A host without GPU or power meter must not claim 0 W or 0 % GPU."""
    metrics = fully_observed()

    metrics.observe_platform(
        power_w=None, temperature_c=None, power_mode=None, cpu_util_percent=None, gpu_util_percent=None
    )
    metrics.observe_service(
        "vision",
        queue_depth=0,
        mean_batch_size=None,
        arrival_rate_per_s=0.0,
        slo_attainment=None,
        variant=None,
        model_version=None,
    )
    metrics.observe_training("cl", samples_per_s=None, steps_total=128)
    found = families(metrics)

    for name in (
        "cotrain_power_watts",
        "cotrain_temperature_celsius",
        "cotrain_power_mode_info",
        "cotrain_cpu_utilization_ratio",
        "cotrain_gpu_utilization_ratio",
        "cotrain_batch_size",
        "cotrain_slo_attainment_ratio",
        "cotrain_training_samples_per_second",
    ):
        assert found[name].samples == [], name
    assert values(found["cotrain_queue_depth"]) == {labels(service="vision"): 0.0}
    assert values(found["cotrain_arrival_rate_per_second"]) == {labels(service="vision"): 0.0}
    assert values(found["cotrain_service_info"]) == {
        labels(service="vision", variant="", model_version=""): 1.0
    }


def test_before_the_run_starts_it_is_down_with_no_run_info() -> None:
    metrics = Metrics()

    found = families(metrics)

    assert values(found["cotrain_up"]) == {labels(): 0.0}
    assert found["cotrain_run_info"].samples == []
    assert found["cotrain_run_start_time_seconds"].samples == []


def test_run_stopped_sets_up_to_zero_and_keeps_the_run_info() -> None:
    metrics = fully_observed()

    metrics.run_stopped()
    found = families(metrics)

    assert values(found["cotrain_up"]) == {labels(): 0.0}
    assert len(found["cotrain_run_info"].samples) == 1


def test_two_instances_never_share_a_series_and_leave_the_global_registry_alone() -> None:
    first, second = Metrics(), Metrics()
    first.add_service("vision", 200)
    second.add_service("vision", 100)

    first.request_finished("vision", "served", "", 0.01)

    assert values(families(first)["cotrain_requests"], "cotrain_requests_total")
    assert values(families(second)["cotrain_requests"], "cotrain_requests_total") == {}
    assert REGISTRY.get_sample_value("cotrain_requests_total") is None
    assert not any(m.name.startswith("cotrain_") for m in REGISTRY.collect())


# --- requests and the latency histogram ----------------------------------------------------------


def test_buckets_are_fractions_of_the_slo_with_exact_bounds() -> None:
    """200 ms must give a 0.2 s bound, not 0.20000000000000001, and 0.02, not 0.020000000000000004."""
    assert slo_buckets_s(200) == (0.02, 0.05, 0.1, 0.15, 0.18, 0.2, 0.25, 0.3, 0.4, 0.8)
    assert len(slo_buckets_s(7.3)) == len(SLO_BUCKET_FRACTIONS)
    with pytest.raises(ValueError, match="positive"):
        slo_buckets_s(0)


def test_each_service_gets_buckets_around_its_own_slo_and_latencies_land_in_them() -> None:
    metrics = Metrics()
    metrics.add_service("vision", slo_ms=200)
    metrics.add_service("speech", slo_ms=50)
    served_s = [0.01, 0.03, 0.2, 0.21, 0.5, 2.0]  # 0.2 is on a bound: `le` is inclusive

    for latency_s in served_s:
        metrics.request_finished("vision", "served", "200", latency_s)
    metrics.request_finished("vision", "failed", "500", 0.7)  # not a served latency
    metrics.request_finished("vision", "shed", "503", None)
    metrics.request_finished("speech", "served", "", 0.04)
    histogram = families(metrics)["cotrain_request_latency_seconds"]

    def buckets(service: str) -> dict[str, float]:
        return {
            s.labels["le"]: s.value
            for s in histogram.samples
            if s.name.endswith("_bucket") and s.labels["service"] == service
        }

    assert buckets("vision") == {
        "0.02": 1.0,
        "0.05": 2.0,
        "0.1": 2.0,
        "0.15": 2.0,
        "0.18": 2.0,
        "0.2": 3.0,
        "0.25": 4.0,
        "0.3": 4.0,
        "0.4": 4.0,
        "0.8": 5.0,
        "+Inf": 6.0,
    }
    speech_bounds = [
        "0.005",
        "0.0125",
        "0.025",
        "0.0375",
        "0.045",
        "0.05",
        "0.0625",
        "0.075",
        "0.1",
        "0.2",
        "+Inf",
    ]
    assert list(buckets("speech")) == speech_bounds
    assert values(histogram, "cotrain_request_latency_seconds_count") == {
        labels(service="vision"): 6.0,
        labels(service="speech"): 1.0,
    }
    assert values(histogram, "cotrain_request_latency_seconds_sum")[
        labels(service="vision")
    ] == pytest.approx(sum(served_s))


def test_bulk_requests_count_like_single_ones() -> None:
    metrics = Metrics()
    metrics.add_service("vision", slo_ms=200)

    metrics.requests_finished("vision", "served", "", count=3, latencies_s=[0.01, 0.1, 0.3])
    metrics.requests_finished("vision", "shed", "", count=2)
    metrics.requests_finished("vision", "failed", "", count=0)
    found = families(metrics)

    assert values(found["cotrain_requests"], "cotrain_requests_total") == {
        labels(service="vision", outcome="served", status=""): 3.0,
        labels(service="vision", outcome="shed", status=""): 2.0,
        labels(service="vision", outcome="failed", status=""): 0.0,
    }
    assert values(found["cotrain_request_latency_seconds"], "cotrain_request_latency_seconds_count") == {
        labels(service="vision"): 3.0
    }
    with pytest.raises(ValueError, match="latencies"):
        metrics.requests_finished("vision", "served", "", count=2, latencies_s=[0.1])
    with pytest.raises(ValueError, match="latencies"):
        metrics.requests_finished("vision", "shed", "", count=1, latencies_s=[0.1])


def test_typos_fail_loudly_instead_of_creating_stray_series() -> None:
    metrics = Metrics()
    metrics.add_service("vision", slo_ms=200)

    with pytest.raises(ValueError, match="unknown service"):
        metrics.request_finished("visoin", "served", "", 0.1)
    with pytest.raises(ValueError, match="outcome"):
        metrics.request_finished("vision", "dropped", "", None)
    with pytest.raises(ValueError, match="latency"):
        metrics.request_finished("vision", "served", "200", None)
    with pytest.raises(ValueError, match="unknown service"):
        metrics.observe_service(
            "visoin",
            queue_depth=0,
            mean_batch_size=None,
            arrival_rate_per_s=None,
            slo_attainment=None,
            variant=None,
            model_version=None,
        )
    assert values(families(metrics)["cotrain_requests"], "cotrain_requests_total") == {}


def test_a_service_keeps_its_slo() -> None:
    metrics = Metrics()
    metrics.add_service("vision", slo_ms=200)

    metrics.add_service("vision", slo_ms=200)  # the same again: nothing changes

    with pytest.raises(ValueError, match="slo_ms=200"):
        metrics.add_service("vision", slo_ms=100)


def test_counts_are_exact_under_concurrent_front_end_threads() -> None:
    metrics = Metrics()
    metrics.add_service("vision", slo_ms=200)
    threads_n, calls_n = 4, 10_000
    start = threading.Barrier(threads_n)

    def front_end(index: int) -> None:
        start.wait()
        for call in range(calls_n):
            if call % 2:
                metrics.request_finished("vision", "served", "200", 0.001 * (call % 300))
            else:
                metrics.request_finished("vision", ("failed", "shed")[index % 2], "503", None)

    workers = [threading.Thread(target=front_end, args=(i,)) for i in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    found = families(metrics)

    half = threads_n * calls_n // 2
    assert values(found["cotrain_requests"], "cotrain_requests_total") == {
        labels(service="vision", outcome="served", status="200"): half,
        labels(service="vision", outcome="failed", status="503"): half / 2,
        labels(service="vision", outcome="shed", status="503"): half / 2,
    }
    histogram = found["cotrain_request_latency_seconds"]
    assert values(histogram, "cotrain_request_latency_seconds_count") == {labels(service="vision"): half}


# --- info series and counters fed from totals ----------------------------------------------------


def test_a_variant_change_replaces_the_info_series() -> None:
    """No stale series of the old variant may stay behind: `sum(cotrain_service_info)` is 1."""
    metrics = fully_observed()

    metrics.observe_service(
        "vision",
        queue_depth=1,
        mean_batch_size=1.0,
        arrival_rate_per_s=5.0,
        slo_attainment=1.0,
        variant="resnet18-int8",
        model_version=3,
    )

    assert values(families(metrics)["cotrain_service_info"]) == {
        labels(service="vision", variant="resnet18-int8", model_version="3"): 1.0
    }


def test_a_power_mode_change_replaces_the_mode_series() -> None:
    metrics = Metrics()
    reading = {"power_w": 10.0, "temperature_c": 40.0, "cpu_util_percent": 10.0, "gpu_util_percent": None}

    metrics.observe_platform(power_mode="MAXN", **reading)
    metrics.observe_platform(power_mode="30W", **reading)

    assert values(families(metrics)["cotrain_power_mode_info"]) == {labels(mode="30W"): 1.0}


def test_counters_fed_from_totals_never_go_down() -> None:
    """A job restarted from an older checkpoint reports a smaller total; the counter must not
    drop (Prometheus would read a reset), it counts the steps done again instead."""
    metrics = Metrics()

    for total in (10, 25, 5, 8):  # 5: restarted from the checkpoint at step 5
        metrics.observe_training("cl", samples_per_s=100.0, steps_total=total)
    for total in (0, 1, 1, 2):
        metrics.federated_rounds("fl", total)
    found = families(metrics)

    assert values(found["cotrain_training_steps"], "cotrain_training_steps_total") == {labels(job="cl"): 28.0}
    assert values(found["cotrain_federated_rounds"], "cotrain_federated_rounds_total") == {
        labels(job="fl"): 2.0
    }


def test_a_worker_can_be_exposed_before_its_first_restart() -> None:
    metrics = Metrics()

    metrics.add_worker("inference")
    metrics.add_worker("train:cl")
    metrics.worker_restarted("train:cl")

    assert values(families(metrics)["cotrain_worker_restarts"], "cotrain_worker_restarts_total") == {
        labels(worker="inference"): 0.0,
        labels(worker="train:cl"): 1.0,
    }


# --- the page ------------------------------------------------------------------------------------


def fetch(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def error_status(url: str) -> int:
    """The status of a request that must fail with an HTTP error (its response closed)."""
    with pytest.raises(urllib.error.HTTPError) as error:
        fetch(url)
    error.value.close()
    return error.value.code


def test_the_page_serves_metrics_over_loopback_http_and_nothing_else() -> None:
    metrics = fully_observed()
    server = metrics.serve("127.0.0.1", 0)
    try:
        status, content_type, body = fetch(server.url)
        other = error_status(f"http://{server.address}/other")
        below = error_status(f"http://{server.address}/metrics/x")
    finally:
        server.close()

    assert server.address == f"127.0.0.1:{server.port}" and server.port > 0
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    parsed = {f.name: f for f in text_string_to_metric_families(body)}
    assert values(parsed["cotrain_queue_depth"]) == {labels(service="vision"): 3.0}
    assert other == 404 and below == 404


def test_close_frees_the_port() -> None:
    metrics = Metrics()
    server = metrics.serve("127.0.0.1", 0)
    fetch(server.url)  # a served connection leaves TIME_WAIT behind; the port must still rebind

    server.close()
    server.close()  # idempotent

    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", server.port), 5):
        pass
    again = metrics.serve("127.0.0.1", server.port)
    try:
        status, _, _ = fetch(again.url)
    finally:
        again.close()
    assert status == 200


def test_a_port_in_use_fails_at_serve_time() -> None:
    with Metrics().serve("127.0.0.1", 0) as taken, pytest.raises(OSError):
        Metrics().serve("127.0.0.1", taken.port)


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path)


def test_the_page_serves_https_with_the_given_certificate(tls: tuple[Path, Path]) -> None:
    cert, key = tls
    with fully_observed().serve("127.0.0.1", 0, certfile=cert, keyfile=key) as server:
        status, content_type, body = fetch(server.url, ssl.create_default_context(cafile=str(cert)))
        with pytest.raises((OSError, http.client.HTTPException)):
            fetch(f"http://{server.address}/metrics")  # plain text to the TLS port

    assert server.url.startswith("https://127.0.0.1:")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    parsed = {f.name: f for f in text_string_to_metric_families(body)}
    assert values(parsed["cotrain_power_watts"]) == {labels(): 12.5}


def test_a_silent_client_does_not_hold_up_the_tls_page(tls: tuple[Path, Path]) -> None:
    """The TLS handshake runs in each connection's thread: a client that connects and never
    speaks must not block the accept loop (as wrapping the listening socket would)."""
    cert, key = tls
    with fully_observed().serve("127.0.0.1", 0, certfile=cert, keyfile=key) as server:
        silent = socket.create_connection(("127.0.0.1", server.port), TIMEOUT_S)
        try:
            status, _, _ = fetch(server.url, ssl.create_default_context(cafile=str(cert)))
        finally:
            silent.close()

    assert status == 200


def test_a_keyfile_without_its_certfile_is_refused(tls: tuple[Path, Path]) -> None:
    _, key = tls
    with pytest.raises(ValueError, match="certfile"):
        Metrics().serve("127.0.0.1", 0, keyfile=key)


def test_a_prometheus_server_asking_for_openmetrics_gets_it() -> None:
    """Prometheus scrapes with an OpenMetrics Accept header; the custom collectors (per-service
    buckets, absent readings, info series) must render in that format as well."""
    from prometheus_client.openmetrics import parser

    parse_openmetrics: Callable[[str], Iterable[Metric]] = parser.text_string_to_metric_families  # untyped
    accept = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    with fully_observed().serve("127.0.0.1", 0) as server:
        request = urllib.request.Request(server.url, headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            content_type, body = response.headers["Content-Type"], response.read().decode()

    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    parsed = {f.name: f for f in parse_openmetrics(body)}
    assert parsed["cotrain_request_latency_seconds"].type == "histogram"
    assert values(parsed["cotrain_service"], "cotrain_service_info") == {
        labels(service="vision", variant="resnet18-fp32", model_version="2"): 1.0
    }

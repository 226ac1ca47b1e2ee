"""The front end on real processes: `cotrain run` with ingress, beside a training job, driven by
tritonclient over HTTP and gRPC. One run serves every test in the module (models load once);
its records are checked against what the clients were told when it ends.

Two services: `inference` (an ordinary one) and `strict` (a queue of one image and a 1 ms late
budget), so that a burst to `strict` is answered 200, 503 (waited past its budget) and 429 (queue
full) by the real batcher, not by a stand-in.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from cotrain.cli import main
from cotrain.records import read_csv_rows, read_jsonl
from tests.conftest import REPO, TINY
from tests.test_e2e import COTRAIN

SIZE = 32


def ingress_config(tmp: Path, *, duration_s: float = 120) -> Path:
    data = copy.deepcopy(TINY)
    data["duration_s"] = duration_s
    base = data["workloads"].pop("inference")
    base.pop("arrivals")
    ingress = {
        "http": "127.0.0.1:0",
        "grpc": "127.0.0.1:0",
        "metrics": "127.0.0.1:0",
        "limits": {"max_request_bytes": 256 * 1024},
    }
    strict = copy.deepcopy(base)
    strict.update(
        name="strict",
        queue_capacity=1,
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0},
        admission={"policy": "drop_late", "late_ms": 1},
        ingress=ingress,
    )
    data["workloads"]["services"] = [{**base, "name": "inference", "ingress": ingress}, strict]
    path = tmp / "ingress.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


class Run:
    def __init__(self, out: Path, proc: subprocess.Popen[str]) -> None:
        self.out, self.proc = out, proc
        self.sent: Counter[tuple[str, str]] = Counter()  # (service, status) as the clients saw it
        self.lock = threading.Lock()

    def address(self, kind: str) -> str:
        return str(json.loads((self.out / "ingress.json").read_text())[kind])

    def http(self) -> th.InferenceServerClient:
        return th.InferenceServerClient(self.address("http"))

    def grpc(self) -> tg.InferenceServerClient:
        return tg.InferenceServerClient(self.address("grpc"))

    def saw(self, service: str, status: int | str) -> None:
        with self.lock:
            self.sent[(service, str(status))] += 1


def _start(tmp: Path, config: Path) -> tuple[subprocess.Popen[str], Path]:
    out = tmp / "run"
    proc = subprocess.Popen(
        [*COTRAIN, "run", str(config), "--out", str(out), "--quiet"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out


def _wait_ready(proc: subprocess.Popen[str], out: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"cotrain run ended: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "not ready in time"
        if (out / "ingress.json").exists():
            try:
                if th.InferenceServerClient(
                    json.loads((out / "ingress.json").read_text())["http"]
                ).is_server_ready():
                    return
            except (InferenceServerException, OSError, ConnectionError, json.JSONDecodeError):
                pass
        time.sleep(0.2)  # polling a server another process starts; no assertion depends on it


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("ingress-e2e")
    proc, out = _start(tmp, ingress_config(tmp))
    try:
        _wait_ready(proc, out)
        yield Run(out, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=120)


def _image(batch: int = 1, dtype: Any = np.float32) -> np.ndarray:
    rng = np.random.default_rng(batch)
    x = rng.random((batch, 3, SIZE, SIZE))
    return (x * 255).astype(np.uint8) if dtype == np.uint8 else x.astype(np.float32)


def _http_infer(run: Run, model: str, x: np.ndarray, *, binary: bool = True) -> th.InferResult:
    i = th.InferInput("image", list(x.shape), "UINT8" if x.dtype == np.uint8 else "FP32")
    i.set_data_from_numpy(x, binary_data=binary)
    try:
        result = run.http().infer(model, [i])
    except InferenceServerException as exc:
        run.saw(model, exc.status())
        raise
    run.saw(model, 200)
    return result


def _grpc_infer(run: Run, model: str, x: np.ndarray) -> tg.InferResult:
    i = tg.InferInput("image", list(x.shape), "UINT8" if x.dtype == np.uint8 else "FP32")
    i.set_data_from_numpy(x)
    try:
        result = run.grpc().infer(model, [i])
    except InferenceServerException as exc:
        run.saw(model, exc.status())
        raise
    run.saw(model, 200)
    return result


def test_health_and_metadata_over_both_protocols(run: Run) -> None:
    hc, gc = run.http(), run.grpc()
    assert hc.is_server_live() and hc.is_server_ready() and gc.is_server_live() and gc.is_server_ready()
    assert hc.is_model_ready("inference") and gc.is_model_ready("strict")
    assert not hc.is_model_ready("nope") and not gc.is_model_ready("nope")
    meta = hc.get_model_metadata("inference")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["parameters"] == {"variant": "mobilenet_v3_small/fp32"}
    grpc_meta = gc.get_model_metadata("strict", as_json=True)
    assert grpc_meta["name"] == "strict" and grpc_meta["platform"] == "pytorch"
    assert gc.get_server_metadata(as_json=True)["name"] == "cotrain"


@pytest.mark.parametrize("binary", [True, False])
def test_json_and_binary_infer_over_http_return_logits_and_how_they_were_served(
    run: Run, binary: bool
) -> None:
    result = _http_infer(run, "inference", _image(3), binary=binary)
    logits = result.as_numpy("logits")
    assert logits.shape == (3, 4) and np.isfinite(logits).all()
    params = result.get_response()["parameters"]
    assert params["variant"] == "mobilenet_v3_small/fp32" and params["model_version"] == 0
    assert params["batch_size"] >= 3 and params["queue_ms"] >= 0 and params["compute_ms"] > 0


def test_grpc_infer_with_uint8_pixels_matches_the_same_image_as_fp32(run: Run) -> None:
    pixels = _image(1, np.uint8)
    via_pixels = _grpc_infer(run, "inference", pixels).as_numpy("logits")
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    as_floats = ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    via_floats = _grpc_infer(run, "inference", as_floats).as_numpy("logits")
    assert np.allclose(via_pixels, via_floats, atol=1e-4), "UINT8 is normalised as the service's images are"


def test_bad_requests_get_their_status_and_the_service_keeps_serving(run: Run) -> None:
    host, port = run.address("http").rsplit(":", 1)
    cases = [
        (b"{not json", {}, 400),
        (
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "INT8", "shape": [1, 3, SIZE, SIZE], "data": []}]}
            ).encode(),
            {},
            400,
        ),
        (
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 5, 5], "data": [0.0] * 75}]}
            ).encode(),
            {},
            400,
        ),
        (b"x" * (300 * 1024), {}, 413),
    ]
    for body, headers, status in cases:
        conn = __import__("http.client").client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v2/models/inference/infer", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == status, body[:60]
        run.saw("inference", status)
    with pytest.raises(InferenceServerException, match=r"\[404\]"):
        run.http().infer("nope", [th.InferInput("image", [1, 3, SIZE, SIZE], "FP32")])
    with pytest.raises(InferenceServerException) as info:
        _grpc_infer(run, "inference", np.zeros((1, 3, SIZE + 1, SIZE), np.float32))
    assert "INVALID_ARGUMENT" in str(info.value.status())
    assert _http_infer(run, "inference", _image(1)).as_numpy("logits").shape == (1, 4)


def test_a_burst_beyond_the_queue_is_shed_with_429_and_late_requests_with_503(run: Run) -> None:
    statuses: list[str] = []
    x = _image(1)

    def one() -> None:
        i = th.InferInput("image", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        try:
            run.http().infer("strict", [i])
            statuses.append("200")
        except InferenceServerException as exc:
            statuses.append(str(exc.status()))
        run.saw("strict", statuses[-1])

    threads = [threading.Thread(target=one) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    counts = Counter(statuses)
    assert counts["200"] >= 1 and counts["429"] >= 1, counts
    assert set(counts) <= {"200", "429", "503"}, counts


def test_metrics_are_served_in_prometheus_format(run: Run) -> None:
    _http_infer(run, "inference", _image(1))
    text = urllib.request.urlopen(f"http://{run.address('metrics')}/metrics", timeout=30).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "cotrain_requests",
        "cotrain_request_latency_seconds",
        "cotrain_queue_depth",
        "cotrain_slo_attainment_ratio",
        "cotrain_training_samples_per_second",
        "cotrain_worker_restarts",
        "cotrain_up",
    ):
        assert name in families, name
    served = [
        s
        for s in families["cotrain_requests"].samples
        if s.labels.get("status") == "200" and s.name.endswith("_total")
    ]
    assert served and all(s.labels["outcome"] == "served" for s in served)


def test_every_listener_is_on_loopback(run: Run) -> None:
    listening = [
        c.laddr.ip
        for p in [psutil.Process(run.proc.pid), *psutil.Process(run.proc.pid).children(recursive=True)]
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]

    def loopback(ip: str) -> bool:  # gRPC may listen on an IPv6 socket with an IPv4-mapped address
        address = ipaddress.ip_address(ip)
        mapped = getattr(address, "ipv4_mapped", None)
        return address.is_loopback or (mapped is not None and mapped.is_loopback)

    assert len(listening) >= 3 and all(loopback(ip) for ip in listening), listening


def test_zz_at_the_end_every_request_has_one_row_that_matches_its_answer(run: Run) -> None:
    """Named to run last: it stops the module's run and checks its records."""
    run.proc.send_signal(signal.SIGTERM)
    _, stderr = run.proc.communicate(timeout=120)
    assert run.proc.returncode == 1, stderr
    recorded: Counter[tuple[str, str]] = Counter()
    for service in ("inference", "strict"):
        rows = read_csv_rows(run.out / "services" / service / "requests.csv")
        assert sorted(int(r["request_id"]) for r in rows) == list(range(len(rows))), "one row per request"
        for r in rows:
            recorded[(service, r["status"])] += 1
            assert (r["outcome"] == "served") == (r["status"] == "200")
    grpc_names = {"INVALID_ARGUMENT": "400", "RESOURCE_EXHAUSTED": "429", "UNAVAILABLE": "503"}
    seen = Counter()
    for (service, status), n in run.sent.items():
        seen[(service, grpc_names.get(status.removeprefix("StatusCode."), status))] += n
    assert recorded == seen
    summary = json.loads((run.out / "summary.json").read_text())
    assert summary["services"]["inference"]["requests"]["arrived"] == sum(
        n for (s, _), n in recorded.items() if s == "inference"
    )
    events = [e["event"] for e in read_jsonl(run.out / "events.jsonl")]
    assert "ingress_listening" in events and "platform_restored" in events
    unrouted = read_csv_rows(run.out / "ingress-errors.csv")
    assert [(r["status"], r["protocol"], r["target"]) for r in unrouted] == [
        ("404", "http", "/v2/models/nope/infer")
    ]


def test_a_non_loopback_address_without_tls_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(ingress_config(tmp_path).read_text())
    for service in data["workloads"]["services"]:
        service["ingress"]["http"] = "0.0.0.0:0"
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    assert (
        "0.0.0.0:0 is not a loopback address: give ingress.tls (cert and key) or set ingress.insecure: true"
        in capsys.readouterr().err
    )


def test_a_taken_port_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = yaml.safe_load(ingress_config(tmp_path).read_text())
        for service in data["workloads"]["services"]:
            service["ingress"]["grpc"] = f"127.0.0.1:{port}"
        path = tmp_path / "taken.yaml"
        path.write_text(yaml.safe_dump(data))
        assert main(["validate", str(path)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err

"""The front end's listeners and dispatcher over real sockets, with tritonclient and raw HTTP, in
front of an in-process stand-in for the worker (fast: no torch). The real worker processes are
in test_ingress_e2e.py.

The stand-in answers what the dispatcher sends, the way a worker does, and can be told to fail a
batch (500), hold results back (to check the in-flight limit), or vanish (a death).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from cotrain.ingress.dispatch import ServiceDispatcher
from cotrain.ingress.protocol import ModelSpec
from cotrain.ingress.server import Frontend, Limits
from cotrain.ingress.wire import NetResult
from cotrain.records import read_csv_rows
from tests.tls_certs import self_signed_cert

SPEC = ModelSpec("inference", image_size=8, num_classes=4, max_batch=8, variant="stub/fp32")
TOKEN = "s3cret-token-0123456789"


class StubWorker:
    """Answers NetRequests like a worker: logits = mean of each image, per class index."""

    def __init__(self, dispatcher: ServiceDispatcher) -> None:
        from multiprocessing.connection import Connection

        front, back = socket.socketpair()
        self.front = front
        self.back = Connection(back.detach())  # the worker's end, as NetLink holds it
        self.fail = False
        self.open = threading.Event()  # cleared: results are held back until it is set again
        self.open.set()
        self.received = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        self._dispatcher = dispatcher

    def attach(self) -> None:
        """Connect to the dispatcher, as a worker does once the front end's loop runs."""
        self._dispatcher.attach(self.front)
        deadline = time.monotonic() + 10
        while not self._dispatcher.ready:
            assert time.monotonic() < deadline, "the dispatcher never took the stand-in's socket"
            time.sleep(0.005)  # the loop takes the socket on its own thread

    def _loop(self) -> None:
        while True:
            try:
                batch = self.back.recv()
            except (EOFError, OSError):
                return
            self.received += len(batch)
            self.open.wait()
            now = time.monotonic_ns()
            results = []
            for r in batch:
                n = r.shape[0]
                if self.fail:
                    results.append(
                        NetResult(r.request_id, "failed", "RuntimeError: boom", now, now, n, "stub/fp32", 0)
                    )
                    continue
                x = np.frombuffer(r.data, dtype="<f4" if r.datatype == "FP32" else "u1").reshape(r.shape)
                logits = np.repeat(x.reshape(n, -1).mean(axis=1, keepdims=True), 4, axis=1).astype("<f4")
                results.append(
                    NetResult(
                        r.request_id, "served", "", now, now, n, "stub/fp32", 3, logits.tobytes(), (n, 4)
                    )
                )
            try:
                self.back.send(results)
            except OSError:
                return

    def die(self) -> None:
        self.back.close()


@contextlib.contextmanager
def _serving(
    tmp_path: Path, tls: tuple[str, str] | None = None
) -> Iterator[tuple[Frontend, ServiceDispatcher, StubWorker, Path]]:
    csv = tmp_path / "requests.csv"
    dispatcher = ServiceDispatcher(SPEC, "inference", csv, slo_ms=200, max_in_flight=8)
    worker = StubWorker(dispatcher)
    frontend = Frontend(
        {"inference": dispatcher},
        http=("127.0.0.1", 0),
        grpc=("127.0.0.1", 0),
        limits=Limits(
            max_request_bytes=64 * 1024, max_connections=4096, max_concurrent_streams=64, body_timeout_s=1.0
        ),
        version="test",
        token=TOKEN,
        tls=tls,
    )
    frontend.start()
    worker.attach()
    try:
        yield frontend, dispatcher, worker, csv
    finally:
        frontend.stop()
        dispatcher.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Frontend, ServiceDispatcher, StubWorker, Path]]:
    with _serving(tmp_path) as serving:
        yield serving


# gRPC metadata keys must be lower case; pass copies: tritonclient.http adds its own headers to the
# dict it is given
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _address(frontend: Frontend, kind: str) -> str:
    host, port = frontend.bound[kind]
    return f"{host}:{port}"


def _clients(frontend: Frontend) -> tuple[th.InferenceServerClient, tg.InferenceServerClient]:
    return th.InferenceServerClient(_address(frontend, "http")), tg.InferenceServerClient(
        _address(frontend, "grpc")
    )


def _http_input(x: np.ndarray, binary: bool = True) -> th.InferInput:
    i = th.InferInput("image", list(x.shape), "FP32" if x.dtype == np.float32 else "UINT8")
    i.set_data_from_numpy(x, binary_data=binary)
    return i


def _grpc_input(x: np.ndarray) -> tg.InferInput:
    i = tg.InferInput("image", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def test_tritonclient_infers_over_both_protocols_and_every_request_has_one_row(served: Any) -> None:
    frontend, _, _, csv = served
    hc, gc = _clients(frontend)
    assert (
        hc.is_server_live()
        and hc.is_server_ready()
        and gc.is_server_ready()
        and gc.is_model_ready("inference")
    )
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    expected = np.repeat(x.reshape(2, -1).mean(axis=1, keepdims=True), 4, axis=1)
    for binary in (True, False):
        r = hc.infer("inference", [_http_input(x, binary)], headers=dict(AUTH))
        assert np.allclose(r.as_numpy("logits"), expected)
        assert r.get_response()["parameters"]["variant"] == "stub/fp32"
    r = gc.infer("inference", [_grpc_input(x)], headers=dict(AUTH))
    assert np.allclose(r.as_numpy("logits"), expected) and r.get_response().model_version == "3"
    meta = gc.get_model_metadata("inference", headers=dict(AUTH), as_json=True)
    assert meta["inputs"][0]["shape"] == ["-1", "3", "8", "8"]
    frontend.stop()
    rows = read_csv_rows(csv)
    assert [(r["outcome"], r["status"], r["protocol"]) for r in rows] == [
        ("served", "200", "http"),
        ("served", "200", "http"),
        ("served", "200", "grpc"),
    ]
    assert [int(r["request_id"]) for r in rows] == [0, 1, 2]


def test_a_missing_token_is_401_and_health_needs_none(served: Any) -> None:
    frontend, *_ = served
    hc, gc = _clients(frontend)
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(InferenceServerException, match="401"):
        hc.infer("inference", [_http_input(x)])
    with pytest.raises(InferenceServerException) as info:
        gc.infer("inference", [_grpc_input(x)], headers={"authorization": "Bearer wrong"})
    assert "UNAUTHENTICATED" in str(info.value.status())
    assert hc.is_server_live() and gc.is_server_live()


def test_a_failed_batch_is_500_over_http_and_internal_over_grpc(served: Any) -> None:
    frontend, _, worker, csv = served
    worker.fail = True
    hc, gc = _clients(frontend)
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(InferenceServerException, match=r"\[500\] RuntimeError: boom"):
        hc.infer("inference", [_http_input(x)], headers=dict(AUTH))
    with pytest.raises(InferenceServerException) as info:
        gc.infer("inference", [_grpc_input(x)], headers=dict(AUTH))
    assert "INTERNAL" in str(info.value.status())
    frontend.stop()
    assert [(r["outcome"], r["status"]) for r in read_csv_rows(csv)] == [("failed", "500")] * 2


def test_unknown_model_and_endpoint_are_404_and_a_wrong_method_405(served: Any) -> None:
    frontend, *_ = served
    hc, gc = _clients(frontend)
    with pytest.raises(InferenceServerException, match=r"\[404\] unknown model 'nope'"):
        hc.infer("nope", [_http_input(np.zeros((1, 3, 8, 8), np.float32))], headers=dict(AUTH))
    with pytest.raises(InferenceServerException) as info:
        gc.infer("nope", [_grpc_input(np.zeros((1, 3, 8, 8), np.float32))], headers=dict(AUTH))
    assert "NOT_FOUND" in str(info.value.status())
    status, _ = _raw(frontend, "GET", "/v2/models/inference/infer", b"")
    assert status == 405
    status, _ = _raw(frontend, "GET", "/v3/whatever", b"")
    assert status == 404


def _raw(
    frontend: Frontend, method: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    host, port = frontend.bound["http"]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path, body=body, headers={**AUTH, **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def test_a_gigabyte_content_length_is_refused_before_any_body_is_read(served: Any) -> None:
    frontend, _, _, csv = served
    host, port = frontend.bound["http"]
    with socket.create_connection((host, port), timeout=10) as sock:
        head = (
            "POST /v2/models/inference/infer HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {1 << 30}\r\n\r\n"
        )
        sock.sendall(head.encode())
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 413")
    frontend.stop()
    assert [(r["outcome"], r["status"]) for r in read_csv_rows(csv)] == [("failed", "413")]


def test_a_chunked_body_that_outgrows_the_limit_is_413(served: Any) -> None:
    frontend, *_ = served
    host, port = frontend.bound["http"]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            (
                "POST /v2/models/inference/infer HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        chunk = b"x" * 16384
        try:
            for _ in range(8):
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except OSError:
            pass  # the server may close as soon as it has answered
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 413")


def test_a_slow_client_that_never_finishes_its_body_is_cut_off_and_others_are_served(served: Any) -> None:
    frontend, *_ = served
    host, port = frontend.bound["http"]
    hc, _ = _clients(frontend)
    with socket.create_connection((host, port), timeout=10) as slow:
        slow.sendall(
            (
                "POST /v2/models/inference/infer HTTP/1.1\r\nHost: x\r\n"
                f'Authorization: Bearer {TOKEN}\r\nContent-Length: 5000\r\n\r\n{{"inputs":'
            ).encode()
        )
        r = hc.infer("inference", [_http_input(np.zeros((1, 3, 8, 8), np.float32))], headers=dict(AUTH))
        assert r.as_numpy("logits").shape == (1, 4), "served while the slow client hangs"
        slow.settimeout(5)
        reply = slow.recv(4096).decode()  # answered once body_timeout_s (1 s) has passed
    assert reply.startswith("HTTP/1.1 408")


def test_a_thousand_idle_connections_do_not_stop_anyone_being_served(served: Any) -> None:
    frontend, *_ = served
    host, port = frontend.bound["http"]
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(1000)]
    try:
        hc, gc = _clients(frontend)
        x = np.zeros((1, 3, 8, 8), np.float32)
        for _ in range(20):
            assert hc.infer("inference", [_http_input(x)], headers=dict(AUTH)).as_numpy("logits").shape == (
                1,
                4,
            )
            assert gc.infer("inference", [_grpc_input(x)], headers=dict(AUTH)).as_numpy("logits").shape == (
                1,
                4,
            )
    finally:
        for sock in idle:
            sock.close()


def test_beyond_the_in_flight_limit_requests_are_shed_with_503_and_retry_after(served: Any) -> None:
    frontend, dispatcher, worker, csv = served
    worker.open.clear()
    x = np.zeros((1, 3, 8, 8), np.float32)
    results: list[Any] = []

    def call() -> None:
        try:
            results.append(
                th.InferenceServerClient(_address(frontend, "http")).infer(
                    "inference", [_http_input(x)], headers=dict(AUTH)
                )
            )
        except InferenceServerException as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while dispatcher.in_flight() < 8 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling another thread's progress; the assertions do not depend on it
    assert dispatcher.in_flight() == 8
    status, data = _raw(
        frontend,
        "POST",
        "/v2/models/inference/infer",
        th.InferenceServerClient.generate_request_body([_http_input(x, binary=False)])[0],
        headers={"Content-Type": "application/json"},
    )
    assert status == 503 and b"front end full" in data
    worker.open.set()
    for t in threads:
        t.join(10)
    assert all(not isinstance(r, Exception) for r in results)
    frontend.stop()
    statuses = sorted(r["status"] for r in read_csv_rows(csv))
    assert statuses == ["200"] * 8 + ["503"]


def test_a_worker_that_dies_has_its_clients_answered_at_once(served: Any) -> None:
    frontend, dispatcher, worker, csv = served
    worker.open.clear()
    x = np.zeros((1, 3, 8, 8), np.float32)
    errors: list[Any] = []

    def call() -> None:
        try:
            tg.InferenceServerClient(_address(frontend, "grpc")).infer(
                "inference", [_grpc_input(x)], headers=dict(AUTH)
            )
        except InferenceServerException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while dispatcher.in_flight() < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling another thread's progress; the assertions do not depend on it
    worker.die()
    for t in threads:
        t.join(10)
    assert len(errors) == 3 and all("UNAVAILABLE" in str(e.status()) for e in errors)
    hc, _ = _clients(frontend)
    assert not hc.is_server_ready(), "no worker: not ready"
    frontend.stop()
    rows = read_csv_rows(csv)
    assert [(r["outcome"], r["status"], r["reason"]) for r in rows] == [("failed", "503", "worker died")] * 3


def test_the_server_metadata_names_cotrain_and_its_extensions(served: Any) -> None:
    frontend, *_ = served
    status, data = _raw(frontend, "GET", "/v2", b"")
    assert status == 200
    assert json.loads(data) == {
        "name": "cotrain",
        "version": "test",
        "extensions": ["binary_tensor_data", "parameters"],
    }


def test_with_tls_both_listeners_speak_only_tls_with_the_given_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    x = np.full((1, 3, 8, 8), 0.5, np.float32)
    with _serving(tmp_path, tls=(str(cert), str(key))) as (frontend, _, _, csv):
        host, port = frontend.bound["http"]
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
        body = json.dumps(
            {
                "inputs": [
                    {"name": "image", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}
                ]
            }
        )
        conn.request("POST", "/v2/models/inference/infer", body, {**AUTH, "Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["outputs"][0]["data"] == [0.5] * 4
        conn.close()

        grpc_client = tg.InferenceServerClient(
            _address(frontend, "grpc"), ssl=True, root_certificates=str(cert)
        )
        result = grpc_client.infer("inference", [_grpc_input(x)], headers=dict(AUTH))
        assert result.as_numpy("logits").tolist() == [[0.5] * 4]

        # plain text on the TLS port: no HTTP answer, and nothing reaches the records
        with socket.create_connection((host, port), timeout=5) as plain:
            plain.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                reply = plain.recv(64)
            except (ConnectionResetError, TimeoutError):
                reply = b""
            assert not reply.startswith(b"HTTP/1.1 200")
        plain_grpc = tg.InferenceServerClient(_address(frontend, "grpc"))
        with pytest.raises(InferenceServerException):
            plain_grpc.is_server_live(client_timeout=5)
    rows = read_csv_rows(csv)
    assert [r["status"] for r in rows] == ["200", "200"]

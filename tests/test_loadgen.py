"""The open-loop load client (cotrain.loadgen) against the bare echo servers (cotrain.echo_server),
over gRPC and HTTP on loopback, each server on a port the kernel picked.

Nothing here sleeps in the hope that something happened: a server is started before it is used
(its socket is listening when `start_echo` returns), a run ends when `run_load` returns, and the
one test that must act during a run waits for the first row of the client's records."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cotrain.config import ConstantArrivalsConfig, PoissonArrivalsConfig
from cotrain.loadgen import (
    CSV_COLUMNS,
    IN_FLIGHT_LIMIT,
    TIMEOUT,
    LoadInputError,
    TensorSpec,
    load_main,
    ok_status,
    parse_url,
    random_tensor,
    read_arrivals_file,
    request_shape,
    run_load,
    status_of,
    summarize_requests,
)

# the clients and the echo servers come with the `serve` extra
pytest.importorskip("tritonclient.grpc", reason="cotrain[serve] is not installed")
pytest.importorskip("uvicorn", reason="cotrain[serve] is not installed")

from cotrain.echo_server import EchoModel, HttpError, echo_infer_response, start_echo

REPO = Path(__file__).resolve().parent.parent
PROTOCOLS = ("grpc", "http")
SUMMARY_KEYS = {"url", "model", "protocol", "duration_s", "latency_ms", "requests", "status_counts"}


def _constant(rate_per_s: float) -> ConstantArrivalsConfig:
    return ConstantArrivalsConfig(process="constant", rate_per_s=rate_per_s)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "requests.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return sorted(rows, key=lambda r: int(r["request_id"]))


def _max_overlap(rows: list[dict[str, str]]) -> int:
    """The most requests outstanding at once, from their send and receive times."""
    events = [(float(r["send_s"]), 1) for r in rows] + [(float(r["recv_s"]), -1) for r in rows]
    running = peak = 0
    for _, step in sorted(events):  # at a tie an answer (-1) frees its slot before a send (+1)
        running += step
        peak = max(peak, running)
    return peak


@pytest.fixture
def absent_port() -> Iterator[int]:
    """A port that is bound but not listening: every connection to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


# --- runs against the echo servers -------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_constant_load_is_sent_on_schedule_and_every_request_recorded(protocol: str, tmp_path: Path) -> None:
    """Guards the open-loop contract: 2 s at 50 req/s gives 100 rows, all ok, sent on schedule."""
    rate, out = 50.0, tmp_path / "load"
    with start_echo(protocol) as server:
        summary = run_load(
            f"{protocol}://{server.address}",
            "echo",
            _constant(rate),
            2.0,
            out,
            timeout_s=5.0,
            wait_ready_s=10,
        )
    after_s = time.monotonic()

    header = (out / "requests.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == ",".join(CSV_COLUMNS) == "request_id,send_s,recv_s,latency_ms,status"
    rows = _rows(out)
    assert set(summary) == SUMMARY_KEYS
    assert set(summary["latency_ms"]) == {"p50", "p99", "max", "mean"}
    assert summary["protocol"] == protocol and summary["model"] == "echo" and summary["duration_s"] == 2.0
    assert len(rows) == summary["requests"]["sent"] == summary["requests"]["ok"] == 100
    assert summary["requests"]["error"] == 0
    assert summary["status_counts"] == {ok_status(protocol): 100}
    assert [int(r["request_id"]) for r in rows] == list(range(100))
    for r in rows:
        assert float(r["latency_ms"]) > 0 and float(r["recv_s"]) > float(r["send_s"])
        # absolute time.monotonic() seconds, comparable with a server's records on this machine
        assert after_s - 60 < float(r["send_s"]) < after_s
    send = np.array([float(r["send_s"]) for r in rows])
    lateness_s = (send - send[0]) - np.arange(len(rows)) / rate
    assert float(np.mean(np.abs(lateness_s))) < 0.05
    assert float(np.max(np.abs(lateness_s))) < 0.25
    lat = summary["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert json.loads((out / "summary.json").read_text()) == summary
    recomputed = summarize_requests(
        rows, url=summary["url"], model="echo", protocol=protocol, duration_s=summary["duration_s"]
    )
    assert recomputed == summary, "the summary is what the records say"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_refusing_server_is_recorded_as_503_or_unavailable(protocol: str, tmp_path: Path) -> None:
    """Guards that a 503 (with Retry-After) or gRPC UNAVAILABLE is its own status, not `error`."""
    out = tmp_path / "load"
    with start_echo(protocol, fail_every=2) as server:
        summary = run_load(f"{protocol}://{server.address}", "echo", _constant(20), 1.0, out, timeout_s=5.0)
    refused = "503" if protocol == "http" else "UNAVAILABLE"
    assert summary["status_counts"] == {ok_status(protocol): 10, refused: 10}
    assert summary["requests"] == {"sent": 20, "ok": 10, "error": 10}
    rows = _rows(out)
    assert len(rows) == 20
    assert [r["status"] for r in rows if int(r["request_id"]) % 2 == 1] == [refused] * 10


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unanswered_requests_time_out_and_the_in_flight_bound_holds(protocol: str, tmp_path: Path) -> None:
    """Guards the client's memory bound: against a server that never answers, at most
    max_in_flight requests are outstanding; the others are recorded, not queued."""
    out, limit = tmp_path / "load", 5
    with start_echo(protocol, hang=True) as server:
        summary = run_load(
            f"{protocol}://{server.address}",
            "echo",
            _constant(100),
            1.0,
            out,
            timeout_s=0.2,
            max_in_flight=limit,
        )
    rows = _rows(out)
    assert len(rows) == summary["requests"]["sent"] == summary["requests"]["error"] == 100
    assert summary["requests"]["ok"] == 0 and summary["latency_ms"]["p50"] is None
    counts = summary["status_counts"]
    assert set(counts) == {TIMEOUT, IN_FLIGHT_LIMIT}
    assert counts[TIMEOUT] >= limit and counts[IN_FLIGHT_LIMIT] >= 50
    timed_out = [r for r in rows if r["status"] == TIMEOUT]
    assert min(float(r["latency_ms"]) for r in timed_out) >= 190
    assert all(float(r["latency_ms"]) == 0 for r in rows if r["status"] == IN_FLIGHT_LIMIT)
    assert _max_overlap(timed_out) <= limit


def test_batch_and_datatype_override_reach_the_server(tmp_path: Path) -> None:
    with start_echo("grpc", shape=(3, 8, 8)) as server:
        summary = run_load(
            f"grpc://{server.address}", "echo", _constant(20), 0.5, tmp_path, batch=4, datatype="UINT8"
        )
    assert summary["requests"] == {"sent": 10, "ok": 10, "error": 0}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_load_main_exits_1_when_the_server_never_becomes_ready(
    protocol: str, absent_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arrivals = tmp_path / "arrivals.yaml"
    arrivals.write_text("process: constant\nrate_per_s: 10\n")
    url = f"{protocol}://127.0.0.1:{absent_port}"
    argv = [
        url,
        "--model",
        "echo",
        "--arrivals",
        str(arrivals),
        "--duration",
        "1",
        "--out",
        str(tmp_path / "o"),
    ]
    start = time.monotonic()
    assert load_main([*argv, "--wait-ready-s", "0.5"]) == 1
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert url in err and "not ready after 0.5 s" in err
    assert not (tmp_path / "o" / "requests.csv").exists(), "nothing was sent, so nothing is recorded"


def test_load_main_exits_1_when_the_model_is_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arrivals = tmp_path / "arrivals.yaml"
    arrivals.write_text("{process: constant, rate_per_s: 10}\n")
    with start_echo("http") as server:
        argv = [f"http://{server.address}", "--model", "nope", "--arrivals", str(arrivals)]
        code = load_main([*argv, "--duration", "1", "--out", str(tmp_path / "o"), "--wait-ready-s", "0.3"])
    assert code == 1
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_load_main_prints_one_line_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arrivals = tmp_path / "arrivals.yaml"
    arrivals.write_text("arrivals: {process: poisson, rate_per_s: 40, seed: 1}\n")
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with start_echo("http") as server:
        argv = [
            f"http://{server.address}",
            "--model",
            "echo",
            "--arrivals",
            str(arrivals),
            "--duration",
            "0.5",
        ]
        assert load_main([*argv, "--out", str(tmp_path / "o"), "--token-file", str(token)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and " ok + 0 errors" in lines[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("process: poisson\nrate_per_s: -5\n", ":2: rate_per_s: Input should be greater than 0"),
        ("process: poisson\nrate_per_sec: 5\n", ":2: rate_per_sec: unknown key; did you mean 'rate_per_s'?"),
        ("arrivals:\n  process: poison\n", ":2: arrivals.process: unknown process 'poison'; did you mean"),
        ("process: [\n", "not valid YAML"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("rate_per_s: 5\n", "no arrivals here"),
    ],
)
def test_a_bad_arrivals_file_exits_2_naming_the_file(
    content: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    argv = ["grpc://127.0.0.1:8001", "--model", "m", "--arrivals", str(bad), "--duration", "1"]
    assert load_main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and expected in err


@pytest.mark.parametrize(
    "argv",
    [
        ["ftp://127.0.0.1:8001"],
        ["grpc://127.0.0.1"],
        ["http://127.0.0.1:99999"],
        ["grpc://127.0.0.1:8001/v2"],
        ["grpc://127.0.0.1:8001", "--duration", "0"],
        ["grpc://127.0.0.1:8001", "--token-file", "/nonexistent/token"],
        ["grpc://127.0.0.1:8001", "--ca", "/nonexistent/ca.pem"],
        ["grpc://127.0.0.1:8001", "--datatype", "STRING"],
    ],
)
def test_bad_input_exits_2_before_connecting(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arrivals = tmp_path / "arrivals.yaml"
    arrivals.write_text("process: constant\nrate_per_s: 10\n")
    base = ["--model", "m", "--arrivals", str(arrivals), "--out", str(tmp_path / "o"), "--wait-ready-s", "30"]
    if "--duration" not in argv:
        base += ["--duration", "1"]
    start = time.monotonic()
    assert load_main([*argv, *base]) == 2
    assert time.monotonic() - start < 5, "refused at once, without waiting for a server"
    assert "cotrain: error:" in capsys.readouterr().err


def test_a_missing_arrivals_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    argv = ["grpc://127.0.0.1:8001", "--model", "m", "--arrivals", str(missing), "--duration", "1"]
    assert load_main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert f"{missing}: cannot read arrivals file" in capsys.readouterr().err


def test_a_signal_stops_sending_and_keeps_the_invariant(tmp_path: Path) -> None:
    """Guards the cut-short run: SIGINT stops the sending; every request sent is a row and is
    counted, none that was not sent is; the exit code says it was interrupted."""
    arrivals = tmp_path / "arrivals.yaml"
    arrivals.write_text("process: constant\nrate_per_s: 50\n")
    out = tmp_path / "o"
    with start_echo("grpc") as server:
        argv = [f"grpc://{server.address}", "--model", "echo", "--arrivals", str(arrivals)]
        code = "from cotrain.loadgen import load_main; import sys; sys.exit(load_main(sys.argv[1:]))"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *argv, "--duration", "30", "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            csv_path = out / "requests.csv"
            while not (csv_path.exists() and len(csv_path.read_text().splitlines()) > 5):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.02)  # polls the client's records for a real condition
            proc.send_signal(signal.SIGINT)
            stdout, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    rows = _rows(out)
    assert summary["requests"]["sent"] == len(rows) == summary["requests"]["ok"]
    assert 0 < summary["duration_s"] < 30 and len(rows) < 30 * 50
    assert "sent" in stdout


# --- the echo servers themselves ---------------------------------------------------------------


def test_echo_servers_answer_with_their_input_in_every_form() -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    data = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    with start_echo("grpc", model="m") as server:
        client = grpcclient.InferenceServerClient(server.address)
        assert client.is_server_ready() and client.is_model_ready("m") and not client.is_model_ready("x")
        meta = client.get_model_metadata("m")
        assert [list(t.shape) for t in meta.inputs] == [[-1, 3, 64, 64]]
        tensor = grpcclient.InferInput("image", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        result = client.infer("m", [tensor], outputs=[grpcclient.InferRequestedOutput("echo")])
        assert np.array_equal(result.as_numpy("echo"), data)
        client.close()
    with start_echo("http", model="m") as server:
        client = httpclient.InferenceServerClient(server.address)
        assert client.is_server_ready() and client.is_model_ready("m") and not client.is_model_ready("x")
        assert client.get_model_metadata("m")["outputs"][0]["name"] == "echo"
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        for binary_in in (True, False):
            for binary_out in (True, False, None):
                tensor = httpclient.InferInput("image", list(data.shape), "FP32")
                tensor.set_data_from_numpy(data, binary_data=binary_in)
                wanted = None if binary_out is None else [httpclient.InferRequestedOutput("echo", binary_out)]
                result = client.infer("m", [tensor], outputs=wanted)
                assert np.array_equal(result.as_numpy("echo"), data), (binary_in, binary_out)
        client.close()


def test_http_echo_refusal_carries_retry_after() -> None:
    with start_echo("http", fail_every=1) as server:
        request = urllib.request.Request(
            f"http://{server.address}/v2/models/echo/infer",
            data=json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1]}]}
            ).encode(),
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 503 and caught.value.headers["Retry-After"] == "1"
    assert "error" in json.loads(caught.value.read())


def test_grpc_echo_refusal_carries_retry_after() -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with start_echo("grpc", fail_every=1) as server, grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name="echo"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("retry-after", "1") in tuple(caught.value.trailing_metadata())


def test_echo_infer_response_json_in_json_out() -> None:
    body = json.dumps(
        {"id": "7", "inputs": [{"name": "image", "datatype": "INT32", "shape": [2], "data": [1, 2]}]}
    ).encode()
    answer, header_length = echo_infer_response(EchoModel(), body, None)
    assert header_length is None
    assert json.loads(answer) == {
        "model_name": "echo",
        "model_version": "1",
        "id": "7",
        "outputs": [{"name": "echo", "datatype": "INT32", "shape": [2], "data": [1, 2]}],
    }
    with pytest.raises(HttpError, match="unknown output"):
        echo_infer_response(
            EchoModel(), body.replace(b'"inputs"', b'"outputs":[{"name":"x"}],"inputs"'), None
        )


def test_echo_server_runs_as_its_own_process() -> None:
    import tritonclient.grpc as grpcclient

    proc = subprocess.Popen(
        [sys.executable, "-m", "cotrain.echo_server", "grpc", "--port", "0", "--model", "e"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens
        assert line.startswith("echo grpc listening on 127.0.0.1:") and line.split()[-1] == "e"
        client = grpcclient.InferenceServerClient(line.split()[4])
        assert client.is_model_ready("e")
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


# --- pure parts ---------------------------------------------------------------------------------


def test_read_arrivals_file_takes_the_mapping_an_arrivals_key_or_an_experiment(tmp_path: Path) -> None:
    bare = tmp_path / "bare.yaml"
    bare.write_text("{process: poisson, rate_per_s: 50, seed: 1}\n")
    keyed = tmp_path / "keyed.yaml"
    keyed.write_text("arrivals:\n  process: poisson\n  rate_per_s: 50\n  seed: 1\n")
    expected = PoissonArrivalsConfig(process="poisson", rate_per_s=50, seed=1)
    assert read_arrivals_file(bare) == expected == read_arrivals_file(keyed)
    assert read_arrivals_file(REPO / "experiments" / "minimal.yaml") == PoissonArrivalsConfig(
        process="poisson", rate_per_s=20
    )
    no_arrivals = tmp_path / "exp.yaml"
    no_arrivals.write_text("name: x\nworkloads:\n  inference:\n    slo_ms: 5\n")
    with pytest.raises(LoadInputError, match=r"exp.yaml:\d+: workloads.inference.arrivals: .*no arrivals"):
        read_arrivals_file(no_arrivals)


def test_parse_url_picks_the_protocol() -> None:
    assert parse_url("grpc://127.0.0.1:8001").protocol == "grpc"
    http = parse_url("https://[::1]:8443/prefix/")
    assert (http.protocol, http.tls, http.address) == ("http", True, "[::1]:8443/prefix")
    assert parse_url("grpcs://host:1").tls
    with pytest.raises(LoadInputError, match="give host:port"):
        parse_url("http://host")


def test_status_of_keeps_the_server_status() -> None:
    import aiohttp
    from tritonclient.utils import InferenceServerException

    assert status_of(InferenceServerException("busy", status="503")) == "503"
    assert status_of(InferenceServerException("busy", status="StatusCode.UNAVAILABLE")) == "UNAVAILABLE"
    assert status_of(InferenceServerException("cannot decode")) == "error"
    assert status_of(asyncio.TimeoutError()) == "timeout"
    assert status_of(ConnectionRefusedError()) == "connection"
    assert status_of(aiohttp.ServerDisconnectedError()) == "connection"
    assert status_of(KeyError("x")) == "error"


def test_inputs_follow_the_metadata_shape_and_datatype() -> None:
    spec = TensorSpec("image", "FP32", (-1, 3, 64, 64))
    assert request_shape(spec, 4) == (4, 3, 64, 64)
    assert request_shape(TensorSpec("x", "FP32", (3,)), 1) == (3,)
    with pytest.raises(LoadInputError, match="no batch dimension"):
        request_shape(TensorSpec("x", "FP32", (3,)), 2)
    with pytest.raises(LoadInputError, match="variable dimension"):
        request_shape(TensorSpec("x", "FP32", (-1, -1)), 1)
    images = random_tensor("FP32", (2, 3), np.random.default_rng(5))
    assert images.dtype == np.float32 and float(images.min()) >= 0 and float(images.max()) < 1
    assert np.array_equal(images, random_tensor("FP32", (2, 3), np.random.default_rng(5))), "seeded"
    assert random_tensor("UINT8", (4,), np.random.default_rng(0)).dtype == np.uint8
    with pytest.raises(LoadInputError, match="not supported"):
        random_tensor("BYTES", (1,), np.random.default_rng(0))


def test_run_load_refuses_a_bad_url_without_touching_the_output(tmp_path: Path) -> None:
    with pytest.raises(LoadInputError, match="must start with"):
        run_load("tcp://x:1", "m", _constant(1), 1.0, tmp_path / "o")
    assert not (tmp_path / "o").exists()
    assert os.listdir(tmp_path) == []

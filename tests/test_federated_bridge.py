"""The Unix-socket bridge between Flower's ClientApp shim and cotrain's training process.

Real sockets and threads; every wait is an event or a deadline.
"""

from __future__ import annotations

import io
import json
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cotrain.workloads.training.federated.bridge import (
    PROTOCOL_VERSION,
    Arrays,
    BridgeClient,
    BridgeError,
    BridgeInUseError,
    BridgeServer,
    ConfigValue,
    EvaluateResult,
    FitResult,
)

WAIT_S = 10.0


class RecordingHandler:
    """Adds `step` to every array; can be held inside `fit` until the test releases it."""

    def __init__(self, step: float = 1.0, hold: bool = False) -> None:
        self.step = step
        self.calls: list[tuple[str, dict[str, ConfigValue]]] = []
        self.received: list[Arrays] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self._active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def fit(self, arrays: Arrays, config: dict[str, ConfigValue]) -> tuple[Arrays, Mapping[str, float], int]:
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        try:
            self.calls.append(("fit", config))
            self.received.append(arrays)
            self.entered.set()
            assert self.release.wait(WAIT_S)
            return [a + self.step for a in arrays], {"train_loss": 0.25, "steps": 3}, 40
        finally:
            with self._lock:
                self._active -= 1

    def evaluate(
        self, arrays: Arrays, config: dict[str, ConfigValue]
    ) -> tuple[float, Mapping[str, float], int]:
        self.calls.append(("evaluate", config))
        return float(sum(a.sum() for a in arrays)), {"eval_accuracy": 0.5}, 7


class FailingHandler:
    def fit(self, arrays: Arrays, config: dict[str, ConfigValue]) -> tuple[Arrays, Mapping[str, float], int]:
        raise ValueError("loss is NaN at step 12")

    def evaluate(
        self, arrays: Arrays, config: dict[str, ConfigValue]
    ) -> tuple[float, Mapping[str, float], int]:
        return 0.0, {"accuracy": "high"}, 1  # type: ignore[dict-item]  # a handler bug the bridge must catch


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    path = tmp_path / "b.sock"
    assert len(str(path)) < 100, "Unix socket paths are limited to 107 bytes"
    return path


@pytest.fixture
def served(sock_path: Path) -> Iterator[tuple[BridgeServer, RecordingHandler]]:
    handler = RecordingHandler()
    server = BridgeServer(sock_path, handler)
    server.start()
    try:
        yield server, handler
    finally:
        server.stop()


def _arrays() -> Arrays:
    return [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([1, -2, 3], dtype=np.int64),
        np.array(2.5),  # 0-d
        np.zeros((0, 5), dtype=np.float16),
        np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    ]


def test_fit_round_trip_carries_arrays_config_and_metrics(
    served: tuple[BridgeServer, RecordingHandler], sock_path: Path
) -> None:
    _, handler = served
    sent = _arrays()
    config: dict[str, ConfigValue] = {"server-round": 3, "lr": 0.01, "tag": "r3", "warm": True}

    result = BridgeClient(sock_path, timeout_s=WAIT_S).fit(sent, config)

    assert isinstance(result, FitResult)
    assert handler.calls == [("fit", config)]
    for got, want in zip(handler.received[0], sent, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    for got, want in zip(result.arrays, sent, strict=True):
        assert got.dtype == (want + 1.0).dtype
        np.testing.assert_array_equal(got, want + 1.0)
    assert result.metrics == {"train_loss": 0.25, "steps": 3.0}
    assert result.num_examples == 40
    assert type(handler.calls[0][1]["server-round"]) is int  # JSON kept int vs float vs bool apart
    assert type(handler.calls[0][1]["warm"]) is bool


def test_evaluate_round_trip(served: tuple[BridgeServer, RecordingHandler], sock_path: Path) -> None:
    result = BridgeClient(sock_path, timeout_s=WAIT_S).evaluate(
        [np.ones(4), np.full(2, 3.0)], {"server-round": 1}
    )

    assert result == EvaluateResult(loss=10.0, metrics={"eval_accuracy": 0.5}, num_examples=7)


def test_handler_errors_reach_the_client_and_the_server_keeps_serving(sock_path: Path) -> None:
    with BridgeServer(sock_path, FailingHandler()):
        client = BridgeClient(sock_path, timeout_s=WAIT_S)
        with pytest.raises(BridgeError, match="ValueError: loss is NaN at step 12"):
            client.fit([np.ones(2)], {})
        with pytest.raises(BridgeError, match="TypeError: metric 'accuracy' is a str"):
            client.evaluate([np.ones(2)], {})


def test_socket_is_owner_only_and_removed_on_stop(sock_path: Path) -> None:
    server = BridgeServer(sock_path, RecordingHandler())
    server.start()
    mode = sock_path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600

    server.stop()
    server.stop()  # idempotent

    assert not sock_path.exists()
    with pytest.raises(ConnectionError):
        BridgeClient(sock_path, timeout_s=1.0, connect_timeout_s=0.2).fit([np.ones(1)], {})


def test_stale_socket_is_replaced_but_live_ones_and_other_files_are_not(sock_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))  # a server that died without unlinking
    stale.close()
    assert sock_path.exists()

    with BridgeServer(sock_path, RecordingHandler()):
        assert BridgeClient(sock_path, timeout_s=WAIT_S).fit([np.ones(1)], {}).num_examples == 40
        with pytest.raises(BridgeInUseError):
            BridgeServer(sock_path, RecordingHandler()).start()

    not_a_socket = sock_path.with_name("notes.txt")
    not_a_socket.write_text("keep me")
    with pytest.raises(FileExistsError):
        BridgeServer(not_a_socket, RecordingHandler()).start()
    assert not_a_socket.read_text() == "keep me"


def test_a_client_arriving_while_training_runs_waits_its_turn(sock_path: Path) -> None:
    """A paused or slow local round must only delay the next shim, never overlap it."""
    handler = RecordingHandler(hold=True)
    results: dict[str, FitResult] = {}
    done = {name: threading.Event() for name in ("a", "b")}

    def call(name: str) -> None:
        results[name] = BridgeClient(sock_path, timeout_s=WAIT_S).fit([np.zeros(2)], {"who": name})
        done[name].set()

    with BridgeServer(sock_path, handler):
        threading.Thread(target=call, args=("a",), daemon=True).start()
        assert handler.entered.wait(WAIT_S)
        threading.Thread(target=call, args=("b",), daemon=True).start()

        assert not done["b"].wait(0.5), "b finished while a still held the trainer"
        assert [c[1]["who"] for c in handler.calls] == ["a"]
        handler.release.set()
        assert done["a"].wait(WAIT_S) and done["b"].wait(WAIT_S)

    assert [c[1]["who"] for c in handler.calls] == ["a", "b"]
    assert handler.max_active == 1
    np.testing.assert_array_equal(results["b"].arrays[0], np.ones(2))


def test_a_client_that_gives_up_times_out_and_its_request_is_skipped(sock_path: Path) -> None:
    handler = RecordingHandler(hold=True)
    first_done = threading.Event()

    def first() -> None:
        BridgeClient(sock_path, timeout_s=WAIT_S).fit([np.zeros(1)], {"who": "first"})
        first_done.set()

    with BridgeServer(sock_path, handler) as server:
        threading.Thread(target=first, daemon=True).start()
        assert handler.entered.wait(WAIT_S)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="no fit reply"):
            BridgeClient(sock_path, timeout_s=0.3).fit([np.zeros(1)], {"who": "impatient"})
        assert time.monotonic() - start < 5.0
        handler.release.set()
        assert first_done.wait(WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while server.requests_skipped < 1 and time.monotonic() < deadline:
            time.sleep(0.01)

    assert server.requests_skipped == 1
    assert [c[1]["who"] for c in handler.calls] == ["first"]


def test_client_waits_for_a_server_that_starts_later(sock_path: Path) -> None:
    outcome: list[FitResult | BaseException] = []
    finished = threading.Event()

    def call() -> None:
        try:
            outcome.append(
                BridgeClient(sock_path, timeout_s=WAIT_S, connect_timeout_s=WAIT_S).fit([np.ones(1)], {})
            )
        except BaseException as exc:
            outcome.append(exc)
        finished.set()

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    assert not finished.wait(0.2), "the client gave up before any server existed"
    with BridgeServer(sock_path, RecordingHandler()):
        assert finished.wait(WAIT_S)
    assert isinstance(outcome[0], FitResult)


def _raw_request(sock_path: Path, header: dict[str, Any], frames: list[bytes]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT_S)
        sock.connect(str(sock_path))
        for payload in [json.dumps(header).encode(), *frames]:
            sock.sendall(len(payload).to_bytes(8, "big") + payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    size = int.from_bytes(data[:8], "big")
    reply: dict[str, Any] = json.loads(data[8 : 8 + size])
    return reply


def test_server_refuses_pickled_arrays_without_calling_the_handler(
    served: tuple[BridgeServer, RecordingHandler], sock_path: Path
) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)

    reply = _raw_request(
        sock_path, {"v": PROTOCOL_VERSION, "op": "fit", "config": {}, "arrays": 1}, [buf.getvalue()]
    )

    assert reply["status"] == "error" and "protocol error" in reply["message"]
    assert served[1].calls == []


def test_client_refuses_config_that_json_cannot_carry(
    served: tuple[BridgeServer, RecordingHandler], sock_path: Path
) -> None:
    with pytest.raises(TypeError, match="'blob' is a bytes"):
        BridgeClient(sock_path, timeout_s=WAIT_S).fit([np.ones(1)], {"blob": b"\x00"})  # type: ignore[dict-item]
    assert served[1].calls == []


# ----------------------------------------------------------------------------- the ClientApp shim


def _flower_message(
    message_type: str, arrays: dict[str, np.ndarray[Any, Any]], config: dict[str, Any]
) -> Any:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict

    content = RecordDict(
        {
            "arrays": ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord(config),
        }
    )
    metadata = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type=message_type,
    )
    return Message(content, metadata=metadata)


def _flower_context(sock_path: Path) -> Any:
    from flwr.app import Context, RecordDict

    return Context(
        run_id=1,
        node_id=7,
        node_config={"bridge-socket": str(sock_path), "partition-id": 0},
        state=RecordDict(),
        run_config={"bridge-timeout-s": WAIT_S, "bridge-connect-timeout-s": 1.0},
    )


def test_shim_forwards_a_train_message_and_keeps_the_array_keys(
    served: tuple[BridgeServer, RecordingHandler], sock_path: Path
) -> None:
    pytest.importorskip("flwr")
    from cotrain.workloads.training.federated.app import client_app

    weights = {"conv.weight": np.ones((2, 2), dtype=np.float32), "fc.bias": np.zeros(3, dtype=np.float32)}
    msg = _flower_message("train", weights, {"server-round": 2, "local-steps": 5})

    reply = client_app.app(msg, _flower_context(sock_path))

    assert not reply.has_error()
    record = reply.content.array_records["arrays"]
    assert list(record.keys()) == ["conv.weight", "fc.bias"]
    np.testing.assert_array_equal(record["conv.weight"].numpy(), np.full((2, 2), 2.0, dtype=np.float32))
    metrics = dict(reply.content.metric_records["metrics"])
    assert metrics == {"train_loss": 0.25, "steps": 3.0, "num-examples": 40}
    assert served[1].calls == [("fit", {"server-round": 2, "local-steps": 5})]


def test_shim_forwards_an_evaluate_message(
    served: tuple[BridgeServer, RecordingHandler], sock_path: Path
) -> None:
    pytest.importorskip("flwr")
    from cotrain.workloads.training.federated.app import client_app

    msg = _flower_message("evaluate", {"w": np.full(3, 2.0)}, {"server-round": 1})

    reply = client_app.app(msg, _flower_context(sock_path))

    assert dict(reply.content.metric_records["metrics"]) == {
        "eval_accuracy": 0.5,
        "eval_loss": 6.0,
        "num-examples": 7,
    }
    assert "arrays" not in reply.content.array_records


def test_shim_imports_neither_torch_nor_the_trainer() -> None:
    """Flower imports the shim in a fresh process every round; torch would cost seconds."""
    pytest.importorskip("flwr")
    code = (
        "import sys; import cotrain.workloads.training.federated.app.client_app\n"
        "print(sorted(m for m in ('torch', 'cotrain.workloads.training.trainer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"

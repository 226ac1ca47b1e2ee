"""The local channel between Flower's per-round ClientApp shim and cotrain's training process.

Flower starts a fresh ClientApp process for every train or evaluate message. Importing torch
and rebuilding the model there would cost seconds per round and put the model outside the
knobs that cotrain turns (threads, pause, affinity). So the shim only forwards: it sends the
round's arrays and config over this Unix socket to the long-lived training process, which
trains under its usual knobs and answers with the new arrays and metrics.

Wire format (all lengths are unsigned 64-bit big-endian):

    frame   := length payload
    message := header-frame array-frame*

The header is a UTF-8 JSON object; its `arrays` field says how many array frames follow. Each
array frame is one `.npy` image written and read with `allow_pickle=False`, so a peer can
never make the other side unpickle anything. Messages:

    request : {"v": 1, "op": "fit" | "evaluate", "config": {...}, "arrays": n} + n arrays
    fit ok  : {"v": 1, "status": "ok", "metrics": {...}, "num_examples": k, "arrays": n} + n arrays
    eval ok : {"v": 1, "status": "ok", "loss": x, "metrics": {...}, "num_examples": k, "arrays": 0}
    error   : {"v": 1, "status": "error", "message": "...", "arrays": 0}

One connection carries one request. The server runs one handler call at a time: a client that
connects while another round's training runs is read at once and then waits for the handler,
so a long or paused local training only delays the reply; the client's `timeout_s` bounds it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
_LENGTH = struct.Struct(">Q")
MAX_HEADER_BYTES = 1 << 20
"""A header is a small JSON dict; anything larger is a broken or hostile peer."""
MAX_ARRAY_BYTES = 1 << 34
"""16 GiB: far above any edge model, small enough to refuse a garbage length."""
MAX_ARRAYS = 1 << 16
SOCKET_MODE = 0o600
"""Only the owner may connect: the socket hands out model weights and runs training."""
_SUN_PATH_MAX_BYTES = 107  # Linux sun_path is 108 bytes including the terminating NUL.

ConfigValue = str | int | float | bool
"""A config value that JSON carries without loss. Flower's bytes and list values are refused."""
Arrays = list[NDArray[Any]]


class FitResult(NamedTuple):
    arrays: Arrays
    metrics: dict[str, float]
    num_examples: int


class EvaluateResult(NamedTuple):
    loss: float
    metrics: dict[str, float]
    num_examples: int


class FitHandler(Protocol):
    """What cotrain's training process implements to take part in federated rounds.

    `fit` trains locally from the given arrays (in the model's parameter order) and returns
    the trained arrays, metrics and the number of examples used, which FedAvg uses as the
    weight. `evaluate` returns the loss of the given arrays on local data. Metrics must carry
    the same keys on every client (FedAvg refuses to aggregate otherwise); the ServerApp
    records `train_loss` from fit metrics and `eval_accuracy` from evaluate metrics.
    Calls never overlap: the server holds a lock around each one.
    """

    def fit(
        self, arrays: Arrays, config: dict[str, ConfigValue]
    ) -> tuple[Arrays, Mapping[str, float], int]: ...

    def evaluate(
        self, arrays: Arrays, config: dict[str, ConfigValue]
    ) -> tuple[float, Mapping[str, float], int]: ...


class BridgeError(RuntimeError):
    """The training process answered with an error; the message is the handler's."""


class BridgeProtocolError(RuntimeError):
    """A peer sent something that is not a valid bridge message."""


class BridgeInUseError(RuntimeError):
    """Another live server already listens on the socket path."""


class _PeerClosed(ConnectionError):
    pass


# ----------------------------------------------------------------------------- wire format


def _send_frame(sock: socket.socket, payload: bytes | memoryview) -> None:
    sock.sendall(_LENGTH.pack(len(payload)))
    sock.sendall(payload)


def _recv_exact(sock: socket.socket, size: int, deadline: float | None) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        if deadline is not None:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise TimeoutError("bridge peer did not send in time")
            sock.settimeout(remaining_s)
        n = sock.recv_into(view[got:], min(size - got, 1 << 22))
        if n == 0:
            raise _PeerClosed("bridge peer closed the connection")
        got += n
    return buf


def _recv_frame(sock: socket.socket, limit: int, deadline: float | None) -> bytearray:
    (size,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size, deadline))
    if size > limit:
        raise BridgeProtocolError(f"frame of {size} bytes exceeds the limit of {limit}")
    return _recv_exact(sock, size, deadline)


def _send_message(sock: socket.socket, header: dict[str, Any], arrays: Sequence[NDArray[Any]] = ()) -> None:
    header = {"v": PROTOCOL_VERSION, **header, "arrays": len(arrays)}
    _send_frame(sock, json.dumps(header).encode())
    for array in arrays:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
        _send_frame(sock, buf.getbuffer())


def _recv_message(sock: socket.socket, deadline: float | None) -> tuple[dict[str, Any], Arrays]:
    try:
        header = json.loads(_recv_frame(sock, MAX_HEADER_BYTES, deadline))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BridgeProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != PROTOCOL_VERSION:
        raise BridgeProtocolError(f"expected a version {PROTOCOL_VERSION} header, got {header!r:.200}")
    count = header.get("arrays")
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_ARRAYS:
        raise BridgeProtocolError(f"bad array count {count!r}")
    arrays: Arrays = []
    for _ in range(count):
        frame = _recv_frame(sock, MAX_ARRAY_BYTES, deadline)
        try:
            arrays.append(np.lib.format.read_array(io.BytesIO(frame), allow_pickle=False))
        except ValueError as exc:
            raise BridgeProtocolError(f"array frame is not a plain .npy image: {exc}") from None
    return header, arrays


# ----------------------------------------------------------------------------- validation


def _check_config(config: Mapping[str, Any]) -> dict[str, ConfigValue]:
    checked: dict[str, ConfigValue] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise TypeError(f"config key {key!r} is not a string")
        if not isinstance(value, str | int | float | bool):
            raise TypeError(
                f"config {key!r} is a {type(value).__name__}; the bridge carries str/int/float/bool"
            )
        checked[key] = value
    return checked


def _check_metrics(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}")
    checked: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"metric key {key!r} is not a string")
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise TypeError(f"metric {key!r} is a {type(value).__name__}, not a number")
        checked[key] = float(value)
    return checked


def _check_num_examples(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise TypeError(f"num_examples must be a non-negative int, got {value!r}")
    return int(value)


def _check_arrays(arrays: Any) -> Arrays:
    """numpy scalars (what `0-d array + 1.0` gives) become 0-d arrays; anything else is refused."""
    if not isinstance(arrays, Sequence) or not all(isinstance(a, np.ndarray | np.generic) for a in arrays):
        raise TypeError("arrays must be a sequence of numpy arrays")
    return [np.asarray(a) for a in arrays]


def _check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > _SUN_PATH_MAX_BYTES:
        raise ValueError(f"socket path is longer than {_SUN_PATH_MAX_BYTES} bytes: {path}")


# ----------------------------------------------------------------------------- server


class BridgeServer:
    """Serves `FitHandler` calls on a Unix socket from a background thread.

    Lives in cotrain's training process. Each connection gets a reader thread so that a
    waiting client's request is taken off the socket at once; the handler itself runs under a
    lock, one call at a time, because the training process has one model. A request whose
    client has already given up (closed) by the time the lock is free is skipped rather than
    trained for nobody.
    """

    def __init__(
        self, socket_path: Path, handler: FitHandler, *, request_read_timeout_s: float = 60.0
    ) -> None:
        _check_socket_path(socket_path)
        self.socket_path = socket_path
        self.handler = handler
        self.request_read_timeout_s = request_read_timeout_s
        self._handler_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._socket_inode: int | None = None
        self._stopping = threading.Event()
        self.requests_handled = 0
        self.requests_skipped = 0
        """Requests whose client had hung up before the handler was free (not run)."""

    def __enter__(self) -> BridgeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._listener is not None:
            raise RuntimeError("bridge server already started")
        _remove_stale_socket(self.socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.socket_path))
            # Nobody can connect before listen(), so tightening the mode here leaves no window.
            os.chmod(self.socket_path, SOCKET_MODE)
            self._socket_inode = os.stat(self.socket_path).st_ino
            listener.listen(16)
        except BaseException:
            listener.close()
            if self._socket_inode is not None:
                self.socket_path.unlink(missing_ok=True)
                self._socket_inode = None
            raise
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name="bridge-accept", daemon=True
        )
        self._accept_thread.start()

    def stop(self) -> None:
        """Stop accepting, drop open connections and remove the socket file. Idempotent.

        A handler call in progress is not interrupted (training cannot be cut mid-step from
        here); it finishes in its daemon thread and its reply is discarded.
        """
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5.0)
            self._accept_thread = None
        with self._state_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._socket_inode is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.socket_path).st_ino == self._socket_inode:
                    self.socket_path.unlink()
            self._socket_inode = None

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("bridge accept failed on %s", self.socket_path)
                return
            with self._state_lock:
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="bridge-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                deadline = time.monotonic() + self.request_read_timeout_s
                try:
                    header, arrays = _recv_message(conn, deadline)
                except (_PeerClosed, TimeoutError, OSError):
                    return
                except BridgeProtocolError as exc:
                    log.warning("bridge request refused: %s", exc)
                    _send_message(conn, {"status": "error", "message": f"protocol error: {exc}"})
                    return
                conn.settimeout(None)
                with self._handler_lock:
                    if _peer_closed(conn):
                        log.warning("bridge client left before its %s ran; skipped", header.get("op"))
                        self.requests_skipped += 1
                        return
                    reply_header, reply_arrays = self._call_handler(header, arrays)
                    self.requests_handled += 1
                _send_message(conn, reply_header, reply_arrays)
        except OSError as exc:
            log.warning("bridge reply not delivered: %s", exc)
        finally:
            with self._state_lock:
                self._connections.discard(conn)

    def _call_handler(self, header: dict[str, Any], arrays: Arrays) -> tuple[dict[str, Any], Arrays]:
        op = header.get("op")
        try:
            config = _check_config(header.get("config") or {})
            if op == "fit":
                out_arrays, metrics, num_examples = self.handler.fit(arrays, config)
                checked_arrays = _check_arrays(out_arrays)
                body = {"metrics": _check_metrics(metrics), "num_examples": _check_num_examples(num_examples)}
                return {"status": "ok", **body}, checked_arrays
            if op == "evaluate":
                loss, metrics, num_examples = self.handler.evaluate(arrays, config)
                if isinstance(loss, bool) or not isinstance(loss, int | float | np.integer | np.floating):
                    raise TypeError(f"loss must be a number, got {loss!r}")
                body = {
                    "loss": float(loss),
                    "metrics": _check_metrics(metrics),
                    "num_examples": _check_num_examples(num_examples),
                }
                return {"status": "ok", **body}, []
            raise BridgeProtocolError(f"unknown op {op!r}")
        except Exception as exc:
            log.exception("bridge %s handler failed", op)
            return {"status": "error", "message": f"{type(exc).__name__}: {exc}"}, []


def _peer_closed(conn: socket.socket) -> bool:
    """True when the client has hung up (EOF is readable), without consuming anything."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead server; refuse to touch anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise BridgeInUseError(f"a live bridge server already listens on {path}")


# ----------------------------------------------------------------------------- client


class BridgeClient:
    """Used by the ClientApp shim: one request per connection, bounded by `timeout_s`.

    `timeout_s` covers the whole call, waiting for a busy or paused trainer included, so it
    must exceed the slowest local round. The socket may not exist yet when a round arrives
    (the training process is still starting); connecting is retried for `connect_timeout_s`.
    """

    def __init__(self, socket_path: Path, timeout_s: float, *, connect_timeout_s: float = 30.0) -> None:
        _check_socket_path(socket_path)
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s

    def fit(self, arrays: Sequence[NDArray[Any]], config: Mapping[str, ConfigValue]) -> FitResult:
        header, out_arrays = self._request("fit", arrays, config)
        return FitResult(
            out_arrays, _check_metrics(header.get("metrics")), _check_num_examples(header.get("num_examples"))
        )

    def evaluate(self, arrays: Sequence[NDArray[Any]], config: Mapping[str, ConfigValue]) -> EvaluateResult:
        header, _ = self._request("evaluate", arrays, config)
        loss = header.get("loss")
        if not isinstance(loss, int | float) or isinstance(loss, bool):
            raise BridgeProtocolError(f"evaluate reply has no numeric loss: {loss!r}")
        return EvaluateResult(
            float(loss),
            _check_metrics(header.get("metrics")),
            _check_num_examples(header.get("num_examples")),
        )

    def _request(
        self, op: str, arrays: Sequence[NDArray[Any]], config: Mapping[str, ConfigValue]
    ) -> tuple[dict[str, Any], Arrays]:
        start = time.monotonic()
        deadline = start + self.timeout_s
        checked_config = _check_config(config)
        with self._connect(min(deadline, start + self.connect_timeout_s)) as sock:
            try:
                sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                _send_message(sock, {"op": op, "config": checked_config}, list(arrays))
                header, out_arrays = _recv_message(sock, deadline)
            except TimeoutError:
                raise TimeoutError(
                    f"no {op} reply from {self.socket_path} within {self.timeout_s:g} s"
                ) from None
            except _PeerClosed:
                raise BridgeError(f"training process closed the bridge during {op}") from None
        if header.get("status") == "error":
            raise BridgeError(str(header.get("message")))
        if header.get("status") != "ok":
            raise BridgeProtocolError(f"unexpected reply status {header.get('status')!r}")
        return header, out_arrays

    def _connect(self, connect_deadline: float) -> socket.socket:
        backoff_s = 0.05
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.socket_path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() + backoff_s > connect_deadline:
                    raise ConnectionError(f"no bridge server on {self.socket_path}: {exc}") from None
                time.sleep(backoff_s)  # the training process is not listening yet
                backoff_s = min(backoff_s * 2, 1.0)
            except BaseException:
                sock.close()
                raise

"""Bare Open Inference Protocol (KServe v2, as Triton speaks it) servers that echo their input.

They hold none of cotrain's machinery (no queue, batcher, model, records or supervision), so the
same load client (`cotrain.loadgen`) run against an echo server and against cotrain's own front
end, in the same run on the same machine, separates what cotrain adds per request from what the
protocol stack, the network and the client cost.

- gRPC: `grpc.server` on a thread pool with a `GRPCInferenceServiceServicer`: ServerLive,
  ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer, which answers with the
  first input as the output (`raw_output_contents`, or typed `contents` if that is what came).
- HTTP: a raw ASGI app run by uvicorn (httptools and uvloop when installed): the health, metadata
  and infer endpoints, with JSON tensors and the binary tensor extension
  (`Inference-Header-Content-Length`); an output is binary when the request asks for it with
  `parameters.binary_data` on the output or `parameters.binary_data_output` on the request, as
  tritonclient.http does by default.

One model, named as configured, with one input (default `image`, FP32, [-1, 3, 64, 64]) and one
output (`echo`, the same). The echo does not check that the input matches the metadata: a client
that sends UINT8 gets UINT8 back.

Two behaviours make failure cases testable: `fail_every=n` refuses every n-th inference (HTTP 503
with `Retry-After`, gRPC UNAVAILABLE with a `retry-after` trailer) and `hang=True` never answers
an inference until the client gives up or the server stops.

In-process: `start_echo("grpc" | "http", port=0)` returns an `EchoServer` with the bound
`.address` and `.stop()`. As its own process: `python -m cotrain.echo_server grpc|http --port P`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import socket
import struct
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from cotrain import __version__
from cotrain.ingress.datatypes import NUMPY_DTYPES

SERVER_NAME = "cotrain-echo"
MODEL_VERSION = "1"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest request either server takes (gRPC message, HTTP body): a batch of 8 224x224 FP32
images is 4.8 MB, above gRPC's 4 MB default."""


@dataclass(frozen=True)
class EchoModel:
    """The one model an echo server serves. `shape` excludes the batch dimension (-1)."""

    name: str = "echo"
    input_name: str = "image"
    output_name: str = "echo"
    datatype: str = "FP32"
    shape: tuple[int, ...] = (3, 64, 64)

    def tensor_shape(self) -> list[int]:
        return [-1, *self.shape]

    def metadata(self) -> dict[str, Any]:
        """The model metadata as the HTTP endpoint returns it (`GET /v2/models/{name}`)."""
        return {
            "name": self.name,
            "versions": [MODEL_VERSION],
            "platform": SERVER_NAME,
            "inputs": [{"name": self.input_name, "datatype": self.datatype, "shape": self.tensor_shape()}],
            "outputs": [{"name": self.output_name, "datatype": self.datatype, "shape": self.tensor_shape()}],
        }


SERVER_METADATA: dict[str, Any] = {
    "name": SERVER_NAME,
    "version": __version__,
    "extensions": ["binary_tensor_data"],
}


class _Refusals:
    """Decides, thread-safely, which inferences are refused: every `fail_every`-th (0: none)."""

    def __init__(self, fail_every: int) -> None:
        if fail_every < 0:
            raise ValueError("fail_every must be >= 0")
        self.fail_every = fail_every
        self._count = 0
        self._lock = threading.Lock()

    def refuse_next(self) -> bool:
        if self.fail_every == 0:
            return False
        with self._lock:
            self._count += 1
            return self._count % self.fail_every == 0


# --- gRPC ---------------------------------------------------------------------------------------


def _make_servicer(model: EchoModel, refusals: _Refusals, hang: bool) -> tuple[Any, Callable[[], None]]:
    """A GRPCInferenceServiceServicer for the echo model, and a function that releases every
    inference held by `hang` (called at stop, so the pool's threads are not left blocked)."""
    waiters: set[threading.Event] = set()
    lock = threading.Lock()
    released = threading.Event()

    def release() -> None:
        with lock:
            released.set()
            for waiter in waiters:
                waiter.set()

    def tensor_metadata(name: str) -> Any:
        return pb.ModelMetadataResponse.TensorMetadata(
            name=name, datatype=model.datatype, shape=model.tensor_shape()
        )

    class EchoServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]  # untyped base
        def ServerLive(self, request: Any, context: Any) -> Any:
            return pb.ServerLiveResponse(live=True)

        def ServerReady(self, request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=True)

        def ModelReady(self, request: Any, context: Any) -> Any:
            return pb.ModelReadyResponse(ready=request.name == model.name)

        def ServerMetadata(self, request: Any, context: Any) -> Any:
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

        def ModelMetadata(self, request: Any, context: Any) -> Any:
            if request.name != model.name:
                context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
            return pb.ModelMetadataResponse(
                name=model.name,
                versions=[MODEL_VERSION],
                platform=SERVER_NAME,
                inputs=[tensor_metadata(model.input_name)],
                outputs=[tensor_metadata(model.output_name)],
            )

        def ModelInfer(self, request: Any, context: Any) -> Any:
            if request.model_name != model.name:
                context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name!r}")
            if hang:
                self._hold(context)
            if refusals.refuse_next():
                context.set_trailing_metadata((("retry-after", "1"),))
                context.abort(grpc.StatusCode.UNAVAILABLE, "echo: refused (fail_every), retry later")
            if len(request.inputs) == 0:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request has no inputs")
            for wanted in request.outputs:
                if wanted.name != model.output_name:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown output {wanted.name!r}")
            tensor = request.inputs[0]
            response = pb.ModelInferResponse(
                model_name=model.name, model_version=MODEL_VERSION, id=request.id
            )
            output = response.outputs.add()
            output.name = model.output_name
            output.datatype = tensor.datatype
            output.shape.extend(tensor.shape)
            if len(request.raw_input_contents) > 0:
                response.raw_output_contents.append(request.raw_input_contents[0])
            else:
                output.contents.CopyFrom(tensor.contents)
            return response

        def _hold(self, context: Any) -> None:
            """Never answer: wait until the client cancels or the server stops, then refuse."""
            waiter = threading.Event()
            with lock:
                waiters.add(waiter)
                # the callback runs when the RPC ends (cancelled, timed out); False: it has ended
                if released.is_set() or not context.add_callback(waiter.set):
                    waiter.set()
            waiter.wait()
            with lock:
                waiters.discard(waiter)
            context.abort(grpc.StatusCode.UNAVAILABLE, "echo: stopping")

    return EchoServicer(), release


# --- HTTP ---------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?$")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bytes_elements(raw: bytes) -> list[str]:
    """A BYTES tensor's binary form (4-byte little-endian length, then the bytes, per element)."""
    items: list[str] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise HttpError(400, "truncated BYTES tensor")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        items.append(raw[offset : offset + length].decode("utf-8", errors="replace"))
        offset += length
    return items


def _to_binary(datatype: str, data: Any) -> bytes:
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).reshape(-1)
        parts = [s if isinstance(s, bytes) else str(s).encode("utf-8") for s in flat]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)
    if datatype not in NUMPY_DTYPES:
        raise HttpError(400, f"datatype {datatype!r} cannot be converted from JSON")
    return np.asarray(data, dtype=NUMPY_DTYPES[datatype]).tobytes()


def _to_json(datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":
        return _bytes_elements(raw)
    if datatype not in NUMPY_DTYPES:
        raise HttpError(400, f"datatype {datatype!r} cannot be returned as JSON; ask for binary_data")
    dtype = np.dtype(NUMPY_DTYPES[datatype])
    if len(raw) % dtype.itemsize:
        raise HttpError(400, f"{len(raw)} bytes is not a whole number of {datatype} elements")
    values: list[Any] = np.frombuffer(raw, dtype=dtype).tolist()
    return values


def echo_infer_response(model: EchoModel, body: bytes, header_length: int | None) -> tuple[bytes, int | None]:
    """The echo's answer to an infer request body: (response body, JSON header length if the
    response is in binary form). Pure, so the protocol handling is testable without a socket."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise HttpError(400, "Inference-Header-Content-Length is larger than the body")
    header, binary = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"the request header is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise HttpError(400, "the request must be a JSON object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        raise HttpError(400, "the request has no inputs")
    tensor = inputs[0]
    datatype = str(tensor.get("datatype", ""))
    shape = tensor.get("shape")
    if not isinstance(shape, list):
        raise HttpError(400, "the input has no shape")
    input_params = tensor.get("parameters") or {}
    raw: bytes | None = None
    if "binary_data_size" in input_params:
        size = int(input_params["binary_data_size"])
        if size < 0 or size > len(binary):
            raise HttpError(400, "binary_data_size is larger than the binary part of the body")
        raw = binary[:size]
    elif "data" not in tensor:
        raise HttpError(400, "the input has neither data nor binary_data_size")
    request_params = request.get("parameters") or {}
    binary_out = bool(request_params.get("binary_data_output", False))
    for wanted in request.get("outputs") or []:
        if not isinstance(wanted, dict) or wanted.get("name") != model.output_name:
            name = wanted.get("name") if isinstance(wanted, dict) else wanted
            raise HttpError(400, f"unknown output {name!r}")
        binary_out = bool((wanted.get("parameters") or {}).get("binary_data", binary_out))
    output: dict[str, Any] = {"name": model.output_name, "datatype": datatype, "shape": shape}
    payload = b""
    if binary_out:
        payload = raw if raw is not None else _to_binary(datatype, tensor["data"])
        output["parameters"] = {"binary_data_size": len(payload)}
    else:
        output["data"] = _to_json(datatype, raw) if raw is not None else tensor["data"]
    answer: dict[str, Any] = {"model_name": model.name, "model_version": MODEL_VERSION, "outputs": [output]}
    if "id" in request:
        answer["id"] = request["id"]
    text = json.dumps(answer, separators=(",", ":")).encode()
    return (text + payload, len(text)) if binary_out else (text, None)


class EchoAsgiApp:
    """A raw ASGI app: no framework, so what it costs is the protocol and uvicorn alone."""

    def __init__(
        self,
        model: EchoModel,
        *,
        fail_every: int = 0,
        hang: bool = False,
        max_body_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.model = model
        self.refusals = _Refusals(fail_every)
        self.hang = hang
        self.max_body_bytes = max_body_bytes
        self._released = False
        self._release_event: asyncio.Event | None = None

    def release(self) -> None:
        """Answer every held (`hang`) request; call it on the server's event loop."""
        self._released = True
        if self._release_event is not None:
            self._release_event.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except HttpError as exc:
            await _respond(send, exc.status, _error_body(exc.message))

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if path in ("/v2/health/live", "/v2/health/ready"):
            _require(method, "GET")
            await _respond(send, 200, b"")
            return
        if path == "/v2":
            _require(method, "GET")
            await _respond_json(send, 200, SERVER_METADATA)
            return
        match = _MODEL_PATH.match(path)
        if match is None:
            raise HttpError(404, f"no such endpoint: {path}")
        name, version, action = unquote(match.group(1)), match.group(2), match.group(3)
        if name != self.model.name or version not in (None, MODEL_VERSION):
            raise HttpError(404, f"unknown model {name!r}" + (f" version {version!r}" if version else ""))
        if action is None:
            _require(method, "GET")
            await _respond_json(send, 200, self.model.metadata())
        elif action == "/ready":
            _require(method, "GET")
            await _respond(send, 200, b"")
        else:
            _require(method, "POST")
            await self._infer(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._read_body(receive)
        if body is None:
            return  # the client left
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if headers.get(b"content-encoding", b"identity") not in (b"identity", b""):
            raise HttpError(400, "compressed requests are not supported by the echo server")
        if self.hang:
            await self._hold(receive)
            raise HttpError(503, "echo: stopping")
        if self.refusals.refuse_next():
            await _respond(
                send,
                503,
                _error_body("echo: refused (fail_every), retry later"),
                [(b"retry-after", b"1")],
            )
            return
        length = headers.get(b"inference-header-content-length")
        try:
            header_length = None if length is None else int(length)
        except ValueError:
            raise HttpError(400, "Inference-Header-Content-Length is not a number") from None
        answer, answer_header = echo_infer_response(self.model, body, header_length)
        if answer_header is None:
            await _respond(send, 200, answer)
        else:
            extra = [(b"inference-header-content-length", str(answer_header).encode())]
            await _respond(send, 200, answer, extra, content_type=b"application/octet-stream")

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise HttpError(413, f"the request is larger than {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _hold(self, receive: Receive) -> None:
        """Never answer: wait until the client disconnects or the server releases us."""
        if self._released:
            return
        if self._release_event is None:
            self._release_event = asyncio.Event()
        released = asyncio.ensure_future(self._release_event.wait())
        left = asyncio.ensure_future(receive())  # the next message is http.disconnect
        _, pending = await asyncio.wait({released, left}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()


def _require(method: str, wanted: str) -> None:
    if method != wanted:
        raise HttpError(405, f"use {wanted}")


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def _respond_json(send: Send, status: int, value: Any) -> None:
    await _respond(send, status, json.dumps(value, separators=(",", ":")).encode())


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


def _uvicorn_config(app: EchoAsgiApp) -> Any:
    import importlib.util

    import uvicorn

    return uvicorn.Config(
        app,
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        lifespan="off",
        ws="none",
        log_level="warning",
        log_config=None,  # leave the calling process's logging as it is
        access_log=False,
        server_header=False,
        date_header=False,
    )


def _new_event_loop(config: Any) -> asyncio.AbstractEventLoop:
    """The loop uvicorn would run on, made without touching the process's event loop policy."""
    get_factory = getattr(config, "get_loop_factory", None)  # uvicorn >= 0.36
    factory = get_factory() if get_factory is not None else None
    if factory is not None:
        made: asyncio.AbstractEventLoop = factory()
        return made
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.setblocking(False)
    return sock


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- servers ------------------------------------------------------------------------------------


@dataclass
class EchoServer:
    """A running echo server: `address` is the host:port actually bound; `stop()` ends it."""

    protocol: str
    address: str
    model: EchoModel
    _stop: Callable[[], None] = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stop()

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_echo(
    protocol: str,
    host: str = "127.0.0.1",
    port: int = 0,
    model: str = "echo",
    shape: tuple[int, ...] = (3, 64, 64),
    *,
    datatype: str = "FP32",
    fail_every: int = 0,
    hang: bool = False,
    threads: int = 8,
) -> EchoServer:
    """Start an echo server in background threads of this process; port 0 picks a free port."""
    spec = EchoModel(name=model, datatype=datatype, shape=tuple(shape))
    if protocol == "grpc":
        return _start_grpc(spec, host, port, _Refusals(fail_every), hang, threads)
    if protocol == "http":
        return _start_http(spec, host, port, fail_every, hang)
    raise ValueError(f"protocol must be grpc or http, not {protocol!r}")


def _grpc_server(
    model: EchoModel, host: str, port: int, refusals: _Refusals, hang: bool, threads: int
) -> tuple[Any, int, Callable[[], None]]:
    servicer, held = _make_servicer(model, refusals, hang)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="echo-grpc")
    server = grpc.server(
        pool,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a second server on a taken port fails instead of sharing it
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    try:
        bound = int(server.add_insecure_port(_host_port(host, port)))
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {_host_port(host, port)}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot listen on {_host_port(host, port)}")

    def release() -> None:
        """Free what `stop` leaves behind: the held inferences, then the pool's threads."""
        held()
        pool.shutdown(wait=False)

    return server, bound, release


def _start_grpc(
    model: EchoModel, host: str, port: int, refusals: _Refusals, hang: bool, threads: int
) -> EchoServer:
    server, bound, release = _grpc_server(model, host, port, refusals, hang, threads)
    server.start()

    def stop() -> None:
        stopped = server.stop(grace=1.0)
        release()
        stopped.wait(5.0)

    return EchoServer("grpc", _host_port(host, bound), model, stop)


def _start_http(model: EchoModel, host: str, port: int, fail_every: int, hang: bool) -> EchoServer:
    import uvicorn

    app = EchoAsgiApp(model, fail_every=fail_every, hang=hang)
    config = _uvicorn_config(app)
    server = uvicorn.Server(config)
    sock = _listening_socket(host, port)  # listening already: a client may connect at once
    bound = sock.getsockname()[1]
    loop = _new_event_loop(config)
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as exc:  # reported by stop(); a server thread must not die silently
            failure.append(exc)
        finally:
            loop.close()
            sock.close()

    thread = threading.Thread(target=serve, name=f"echo-http-{bound}", daemon=True)
    thread.start()

    def stop() -> None:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(app.release)
        server.should_exit = True
        thread.join(10.0)
        if failure:
            raise RuntimeError(f"the HTTP echo server failed: {failure[0]!r}") from failure[0]

    return EchoServer("http", _host_port(host, bound), model, stop)


# --- python -m cotrain.echo_server --------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cotrain.echo_server",
        description="A bare Open Inference Protocol server that answers with its input.",
    )
    parser.add_argument("protocol", choices=("grpc", "http"))
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--model", default="echo", help="model name (default: %(default)s)")
    parser.add_argument(
        "--shape",
        default="3,64,64",
        type=lambda s: tuple(int(d) for d in s.split(",") if d),
        help="input shape without the batch dimension (default: %(default)s)",
    )
    parser.add_argument(
        "--datatype", default="FP32", help="input datatype in the metadata (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=8, help="gRPC worker threads (default: %(default)s)")
    parser.add_argument("--fail-every", type=int, default=0, help="refuse every n-th inference (503)")
    args = parser.parse_args(argv)
    model = EchoModel(name=args.model, datatype=args.datatype, shape=args.shape)
    try:
        if args.protocol == "grpc":
            return _serve_grpc_forever(model, args.host, args.port, args.fail_every, args.threads)
        return _serve_http_forever(model, args.host, args.port, args.fail_every)
    except OSError as exc:
        print(f"echo_server: error: {exc}", file=sys.stderr)
        return 2


def _announce(protocol: str, address: str, model: EchoModel) -> None:
    # one line a script can read to learn the port when it asked for port 0
    print(f"echo {protocol} listening on {address} model {model.name}", flush=True)


def _serve_grpc_forever(model: EchoModel, host: str, port: int, fail_every: int, threads: int) -> int:
    server, bound, release = _grpc_server(model, host, port, _Refusals(fail_every), False, threads)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    server.start()
    _announce("grpc", _host_port(host, bound), model)
    done.wait()
    stopped = server.stop(grace=1.0)
    release()
    stopped.wait(5.0)
    return 0


def _serve_http_forever(model: EchoModel, host: str, port: int, fail_every: int) -> int:
    import uvicorn

    app = EchoAsgiApp(model, fail_every=fail_every)
    config = _uvicorn_config(app)
    sock = _listening_socket(host, port)
    _announce("http", _host_port(host, sock.getsockname()[1]), model)
    uvicorn.Server(config).run(sockets=[sock])  # uvicorn handles SIGINT/SIGTERM in the main thread
    return 0


if __name__ == "__main__":
    sys.exit(main())

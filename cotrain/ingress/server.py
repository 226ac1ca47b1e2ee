"""The HTTP and gRPC listeners of the Open Inference Protocol front end, on one event loop.

Both run in one thread of the runtime's process, on one asyncio loop: uvicorn (httptools, uvloop
where installed) serving a small framework-less ASGI app, and grpc.aio serving tritonclient's
generated `GRPCInferenceService`. A request is decoded and checked (protocol.py), handed to its
service's dispatcher (dispatch.py), awaited, and answered; nothing here blocks the loop.
docs/benchmarks.md has the measurement behind uvicorn over aiohttp.

Limits, so that no client can make the server allocate without bound: a body larger than
`max_request_bytes` is refused from its Content-Length (413) or as soon as it grows past it; a
body not complete within `body_timeout_s` is answered 408 and the connection closed; gRPC
messages are capped at the same size and the streams per connection at
`max_concurrent_streams`; the dispatcher sheds beyond `max_in_flight` (503). Health endpoints
need no token (probes cannot carry one); everything else does when `token_file` is set, compared
in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import service_pb2, service_pb2_grpc

from cotrain.ingress.dispatch import Reply, ServiceDispatcher
from cotrain.ingress.protocol import (
    PROTOCOL_EXTENSIONS,
    ProtocolError,
    decode_grpc_infer,
    decode_http_infer,
    encode_grpc_infer,
    encode_http_infer,
    error_json,
)

SERVER_NAME = "cotrain"
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?/?$")

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int
    max_connections: int
    max_concurrent_streams: int
    body_timeout_s: float


class Frontend:
    """The listeners over a set of dispatchers, one per model name.

    `start()` binds every listener before it returns (a port in use raises at once), and
    `stop()` closes them; requests already accepted are answered by their dispatchers.
    """

    def __init__(
        self,
        dispatchers: Mapping[str, ServiceDispatcher],
        *,
        http: tuple[str, int] | None,
        grpc: tuple[str, int] | None,
        limits: Limits,
        version: str,
        token: str | None = None,
        tls: tuple[str, str] | None = None,
        on_unrouted: Callable[[int, str, str, str], None] | None = None,
    ) -> None:
        self.dispatchers = dict(dispatchers)
        self._on_unrouted = on_unrouted
        self.http_address = http
        self.grpc_address = grpc
        self.limits = limits
        self.version = version
        self._token = token
        self._tls = tls
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._uvicorn: Any = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: Any = None
        self._started = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.bound: dict[str, tuple[str, int]] = {}

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._run, name="ingress", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError("the ingress listeners did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        for dispatcher in self.dispatchers.values():
            dispatcher.loop = asyncio.get_running_loop()
        try:
            if self.grpc_address is not None:
                await self._start_grpc(*self.grpc_address)
            if self.http_address is not None:
                await self._start_http(*self.http_address)
        except BaseException as exc:  # a port in use, a bad certificate: the runtime reports it
            self._error = exc
            self._started.set()
            await self._shutdown()
            return
        self._started.set()
        await self._stopped.wait()
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            if self._http_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._http_task, timeout=10)

    def stop(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- HTTP -------------------------------------------------------------------------------------

    async def _start_http(self, host: str, port: int) -> None:
        """Bind the socket here, so a port in use is an OSError of ours (uvicorn would exit)."""
        import socket

        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=2048)
        config = uvicorn.Config(
            self.asgi,
            log_level="warning",
            access_log=False,
            http="httptools",
            loop="none",
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,
            limit_concurrency=self.limits.max_connections,
            timeout_keep_alive=5,
            server_header=False,
            ssl_certfile=self._tls[0] if self._tls else None,
            ssl_keyfile=self._tls[1] if self._tls else None,
        )
        server = uvicorn.Server(config)
        self._uvicorn = server
        self._http_task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._http_task.done():
                self._http_task.result()
                raise OSError(f"the HTTP server on {host}:{port} did not start")
            await asyncio.sleep(0.005)  # uvicorn flips `started` from its own task
        self.bound["http"] = sock.getsockname()[:2]

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        routed = False  # once a dispatcher has the request, it records the outcome
        try:
            if path.startswith("/v2/health/"):
                await self._http_health(path, method, send)
                return
            self._check_token(headers.get("authorization"))
            if path in ("/v2", "/v2/"):
                self._allow(method, "GET")
                await _respond(send, 200, json.dumps(self.server_metadata()).encode())
                return
            match = _MODEL_PATH.match(path)
            if match is None:
                raise ProtocolError(404, f"no such endpoint: {path}")
            name, _version, action = match.groups()
            dispatcher = self._dispatcher(name)
            if action == "/ready":
                self._allow(method, "GET")
                await _respond(send, 200 if dispatcher.ready else 400, b"")
                return
            if action is None:
                self._allow(method, "GET")
                await _respond(send, 200, json.dumps(dispatcher.spec.metadata()).encode())
                return
            self._allow(method, "POST")
            routed = True
            await self._http_infer(dispatcher, headers, receive, send)
        except ProtocolError as exc:
            if not routed and method == "POST":
                self._unrouted(exc, "http", path)
            await _respond(send, exc.status, error_json(exc.message), _retry_header(exc.retry_after_s))

    async def _http_health(self, path: str, method: str, send: Send) -> None:
        self._allow(method, "GET")
        if path.rstrip("/") == "/v2/health/live":
            await _respond(send, 200, b"")
        elif path.rstrip("/") == "/v2/health/ready":
            await _respond(send, 200 if self.ready() else 400, b"")
        else:
            raise ProtocolError(404, f"no such endpoint: {path}")

    async def _http_infer(
        self, dispatcher: ServiceDispatcher, headers: Mapping[str, str], receive: Receive, send: Send
    ) -> None:
        limit = self.limits.max_request_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            error = ProtocolError(413, f"request body over {limit} bytes")
            dispatcher.reject(error, "http")
            await _respond(send, 413, error_json(error.message), close=True)
            return
        try:
            body = await asyncio.wait_for(_read_body(receive, limit), self.limits.body_timeout_s)
        except TimeoutError:
            error = ProtocolError(408, f"request body not received within {self.limits.body_timeout_s:g} s")
            dispatcher.reject(error, "http")
            await _respond(send, 408, error_json(error.message), close=True)
            return
        except ProtocolError as exc:
            dispatcher.reject(exc, "http")
            await _respond(send, exc.status, error_json(exc.message), close=True)
            return
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            try:
                body = _decompress(body, encoding, limit)
            except ProtocolError as exc:
                dispatcher.reject(exc, "http")
                raise
        header_length = headers.get("inference-header-content-length")
        try:
            if header_length is not None and not header_length.isdigit():
                raise ProtocolError(400, "Inference-Header-Content-Length must be a number")
            request = decode_http_infer(dispatcher.spec, body, int(header_length) if header_length else None)
        except ProtocolError as exc:
            dispatcher.reject(exc, "http")
            raise
        reply: Reply = await dispatcher.submit(request, "http")
        if reply.status != 200:
            raise reply.error()
        assert reply.logits is not None and reply.served is not None
        payload, extra = encode_http_infer(dispatcher.spec, request, reply.logits, reply.served)
        await _respond(send, 200, payload, extra)

    # --- gRPC -------------------------------------------------------------------------------------

    async def _start_grpc(self, host: str, port: int) -> None:
        import grpc

        limit = self.limits.max_request_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.max_concurrent_streams", self.limits.max_concurrent_streams),
                ("grpc.so_reuseport", 0),
            ],
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_GrpcService(self), server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self._tls is not None:
            cert, key = (Path(p).read_bytes() for p in self._tls)
            bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        else:
            bound = server.add_insecure_port(address)
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port} (gRPC)")
        await server.start()
        self._grpc = server
        self.bound["grpc"] = (host, bound)

    # --- shared -----------------------------------------------------------------------------------

    def ready(self) -> bool:
        return bool(self.dispatchers) and all(d.ready for d in self.dispatchers.values())

    def _unrouted(self, error: ProtocolError, protocol: str, target: str) -> None:
        """An inference request no service received (unknown model or path, no token): its row."""
        if self._on_unrouted is not None:
            self._on_unrouted(error.status, protocol, target[:200], error.message[:200])

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.version, "extensions": list(PROTOCOL_EXTENSIONS)}

    def _dispatcher(self, name: str) -> ServiceDispatcher:
        dispatcher = self.dispatchers.get(name)
        if dispatcher is None:
            known = ", ".join(sorted(self.dispatchers))
            raise ProtocolError(404, f"unknown model {name!r}; served: {known}")
        return dispatcher

    def _check_token(self, authorization: str | None) -> None:
        if self._token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self._token.encode()):
            raise ProtocolError(401, "missing or wrong bearer token")

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            raise ProtocolError(405, f"method {method} not allowed here; use {allowed}")


class _GrpcService(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """tritonclient's `GRPCInferenceServiceServicer`: the protocol's core methods; the others
    (repository, shared memory, tracing) keep the base class's UNIMPLEMENTED answer."""

    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.pb = service_pb2

    async def _guard(self, context: Any) -> None:
        metadata = dict(context.invocation_metadata() or ())
        try:
            self.frontend._check_token(metadata.get("authorization"))
        except ProtocolError as exc:
            await _abort(context, exc)

    # The method names are the protocol's own (GRPCInferenceService in grpc_service.proto).
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return self.pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return self.pb.ServerReadyResponse(ready=self.frontend.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        dispatcher = self.frontend.dispatchers.get(request.name)
        return self.pb.ModelReadyResponse(ready=dispatcher is not None and dispatcher.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        await self._guard(context)
        meta = self.frontend.server_metadata()
        return self.pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        await self._guard(context)
        dispatcher = await self._dispatcher(request.name, context)
        meta = dispatcher.spec.metadata()
        response = self.pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for kind in ("inputs", "outputs"):
            for tensor in meta[kind]:
                entry = getattr(response, kind).add()
                entry.name, entry.datatype = tensor["name"], tensor["datatype"]
                entry.shape.extend(tensor["shape"])
        return response

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        try:
            self.frontend._check_token(dict(context.invocation_metadata() or ()).get("authorization"))
            dispatcher = self.frontend._dispatcher(request.model_name)
        except ProtocolError as exc:
            self.frontend._unrouted(exc, "grpc", request.model_name)
            await _abort(context, exc)
            raise  # unreachable: abort raises
        try:
            decoded = decode_grpc_infer(dispatcher.spec, request)
        except ProtocolError as exc:
            dispatcher.reject(exc, "grpc")
            await _abort(context, exc)
        reply: Reply = await dispatcher.submit(decoded, "grpc")
        if reply.status != 200:
            await _abort(context, reply.error())
        assert reply.logits is not None and reply.served is not None
        return encode_grpc_infer(dispatcher.spec, decoded, reply.logits, reply.served, self.pb)

    async def _dispatcher(self, name: str, context: Any) -> ServiceDispatcher:
        try:
            return self.frontend._dispatcher(name)
        except ProtocolError as exc:
            await _abort(context, exc)
            raise  # unreachable: abort raises


async def _abort(context: Any, error: ProtocolError) -> None:
    import grpc

    if error.retry_after_s is not None:
        context.set_trailing_metadata((("retry-after", f"{error.retry_after_s:g}"),))
    await context.abort(getattr(grpc.StatusCode, error.grpc_code), error.message)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProtocolError(400, "client disconnected before the body ended")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ProtocolError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body (tritonclient's request compression), never inflated past `limit`."""
    import zlib

    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise ProtocolError(400, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(400, f"body is not valid {encoding}: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise ProtocolError(413, f"request body over {limit} bytes once decompressed")
    return data


def _retry_header(retry_after_s: float | None) -> dict[str, str]:
    return {} if retry_after_s is None else {"retry-after": str(max(1, round(retry_after_s)))}


async def _respond(
    send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None, *, close: bool = False
) -> None:
    merged = {"content-type": "application/json", **(headers or {})}
    if close:
        merged["connection"] = "close"
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in merged.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """The TLS context preflight loads to prove the files are a usable certificate and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context

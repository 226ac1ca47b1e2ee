"""One service's side of the front end: every client request's single outcome, answer and record.

The dispatcher lives in the runtime's process, on the front end's event loop. It gives each
request an id, its arrival stamp and a pending entry, writes it to the service's worker
(cotrain/ingress/wire.py), and completes the entry when the worker's result comes back: the
client's answer (a `Reply`) and one row in the service's requests.csv, written here and nowhere
else. Because it, not the worker, owns the entries, a worker that dies cannot take a request with
it: the dispatcher sees the connection close and answers everything the worker held at once
(503, recorded `failed`), or, with `retry_on_restart`, sends it to the replacement while its SLO
budget lasts.

Why on the loop, with the worker's socket as an asyncio transport: a request then costs no thread
hand-off on this side at all. The HTTP or gRPC handler writes the request to the transport, and
the result arrives in the same loop that answers the client; the only hand-offs left are the
worker's own (docs/benchmarks.md has the measurement that chose this over sender and reader
threads). The worker keeps `multiprocessing.connection` framing: a 4-byte big-endian length,
then a pickle.

Statuses: served 200; queue full 429; shed for overload (waited past the SLO, the in-flight
limit, stopping) 503; both with Retry-After; the model failed 500; the worker died or the
service is restarting 503. A request the protocol refuses before it reaches a service (a bad
tensor) is recorded here too, `failed` with its 4xx status.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import pickle
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt

from cotrain.clock import NS_PER_MS, Clock, MonotonicClock
from cotrain.ingress.protocol import InferInput, ModelSpec, ProtocolError, Served
from cotrain.ingress.wire import NetRequest, NetResult
from cotrain.records import REQUEST_COLUMNS, CsvAppender, fmt_s

INGRESS_REQUEST_COLUMNS = (*REQUEST_COLUMNS, "status", "protocol")
RETRY_AFTER_S = 1.0
_HEADER = struct.Struct("!i")

WORKER_DIED = "worker died"
RESTARTING = "service restarting"
STOPPING = "server shutting down"
FRONT_FULL = "front end full"
NOT_READY = "service not ready"


@dataclass(frozen=True)
class Reply:
    """What the client is told. `logits` and `served` only for status 200."""

    status: int
    outcome: str
    reason: str = ""
    logits: npt.NDArray[np.float32] | None = None
    served: Served | None = None
    retry_after_s: float | None = None

    def error(self) -> ProtocolError:
        return ProtocolError(self.status, self.reason or self.outcome, retry_after_s=self.retry_after_s)


@dataclass
class _Pending:
    request: NetRequest
    future: asyncio.Future[Reply]
    protocol: str


def status_of(outcome: str, reason: str) -> int:
    """The HTTP status a worker's outcome is answered with."""
    if outcome == "served":
        return 200
    if outcome == "shed":
        return 429 if reason == "queue full" else 503
    if reason in (WORKER_DIED, RESTARTING):
        return 503
    return 500


def frame(obj: object) -> tuple[bytes, bytes]:
    """`multiprocessing.connection.Connection.send`'s framing, so the worker reads it with recv():
    header and payload apart, so that a request's tensor is not copied once more to join them."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)), data


class _WorkerLink(asyncio.Protocol):
    """The worker's socket as seen from the loop: frames of result lists in, request lists out."""

    def __init__(self, dispatcher: ServiceDispatcher, generation: int) -> None:
        self.dispatcher = dispatcher
        self.generation = generation
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            if len(buffer) < _HEADER.size + size:
                return
            payload = bytes(buffer[_HEADER.size : _HEADER.size + size])
            del buffer[: _HEADER.size + size]
            for result in pickle.loads(payload):
                self.dispatcher._complete(result)

    def connection_lost(self, exc: Exception | None) -> None:
        self.dispatcher._lost_link(self)


class ServiceDispatcher:
    def __init__(
        self,
        spec: ModelSpec,
        worker: str,
        requests_csv: Path,
        *,
        slo_ms: float,
        max_in_flight: int,
        retry_on_restart: bool = False,
        clock: Clock | None = None,
        on_reply: Callable[[str, Reply, float | None], None] | None = None,
    ) -> None:
        self.spec = spec
        self.worker = worker
        self.slo_ms = slo_ms
        self.max_in_flight = max_in_flight
        self.retry_on_restart = retry_on_restart
        self.clock = clock or MonotonicClock()
        self._on_reply = on_reply
        self._writer = CsvAppender(requests_csv, INGRESS_REQUEST_COLUMNS)
        self._write_lock = threading.Lock()  # rows come from the loop and from refusals elsewhere
        self.loop: asyncio.AbstractEventLoop | None = None
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}
        self._held: list[int] = []  # ids waiting for a replacement worker (retry_on_restart)
        self._link: _WorkerLink | None = None
        self._closed_reason = ""
        self.generation = 0  # bumped at every attach; the link of an older worker is ignored
        self._idle = threading.Event()  # set while nothing is pending (read by the runtime's thread)
        self._idle.set()

    # --- the worker's connection (loop side) ------------------------------------------------------

    @property
    def ready(self) -> bool:
        link = self._link
        return link is not None and link.transport is not None and not self._closed_reason

    def attach(self, sock: socket.socket) -> None:
        """A (new) worker connected; from any thread. Its socket joins the loop."""
        loop = self.loop
        if loop is None or loop.is_closed():
            sock.close()
            return
        loop.call_soon_threadsafe(lambda: loop.create_task(self._attach(sock)))

    async def _attach(self, sock: socket.socket) -> None:
        assert self.loop is not None
        self.generation += 1
        generation = self.generation
        old = self._link
        try:
            _, link = await self.loop.connect_accepted_socket(lambda: _WorkerLink(self, generation), sock)
        except OSError:
            sock.close()
            return
        if generation != self.generation:  # a newer worker connected meanwhile
            if link.transport is not None:
                link.transport.close()
            return
        self._link = link
        if old is not None and old.transport is not None:
            old.transport.close()
        held, self._held = self._held, []
        now_ns = self.clock.now_ns()
        budget_ns = round(self.slo_ms * NS_PER_MS)
        resend = []
        for request_id in held:
            pending = self._pending.get(request_id)
            if pending is None:
                continue
            if self._closed_reason or now_ns - pending.request.arrival_ns >= budget_ns:
                self._fail(request_id, self._closed_reason or WORKER_DIED)
            else:
                resend.append(pending.request)
        if resend:
            self._write(resend)

    def _lost_link(self, link: _WorkerLink) -> None:
        if link is self._link:
            self._detach_in_loop(WORKER_DIED)

    def _detach_in_loop(self, reason: str) -> None:
        link, self._link = self._link, None
        if link is not None and link.transport is not None:
            link.transport.close()
        waiting = list(self._pending)
        if self.retry_on_restart and not self._closed_reason:
            self._held = sorted(set(self._held) | set(waiting))
            return
        for request_id in waiting:
            self._fail(request_id, reason)

    def detach(self, reason: str = WORKER_DIED) -> None:
        """The worker is gone (the runtime saw it die); from any thread."""
        self._in_loop(lambda: self._detach_in_loop(reason))

    def _in_loop(self, call: Callable[[], None]) -> None:
        """Run `call` on the loop and wait for it; inline when the loop is not running."""
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            call()
            return
        try:
            if asyncio.get_running_loop() is loop:
                call()
                return
        except RuntimeError:
            pass
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                call()
                done.set_result(None)
            except BaseException as exc:  # surfaced in the caller's thread
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            done.result(timeout=30)

    def _write(self, requests: list[NetRequest]) -> None:
        link = self._link
        if link is None or link.transport is None or link.transport.is_closing():
            for request in requests:
                self._lost(request.request_id)
            return
        link.transport.writelines(frame(requests))

    def _lost(self, request_id: int) -> None:
        """A request no worker can take now: held for the next one, or failed."""
        if self.retry_on_restart and not self._closed_reason and request_id in self._pending:
            self._held.append(request_id)
        else:
            self._fail(request_id, RESTARTING)

    # --- requests (loop side) ---------------------------------------------------------------------

    def submit(self, request: InferInput, protocol: str) -> asyncio.Future[Reply]:
        """Accept a decoded request, in the loop; the future completes with its one reply."""
        assert self.loop is not None
        future: asyncio.Future[Reply] = self.loop.create_future()
        request_id = self._next_id
        self._next_id += 1
        images = request.images
        net = NetRequest(
            request_id,
            self.clock.now_ns(),
            "FP32" if images.dtype.kind == "f" else "UINT8",
            tuple(int(d) for d in images.shape),
            images.tobytes() if images.flags.c_contiguous else np.ascontiguousarray(images).tobytes(),
        )
        refusal = ""
        if self._closed_reason:
            refusal = self._closed_reason
        elif len(self._pending) >= self.max_in_flight:
            refusal = FRONT_FULL
        elif self._link is None and not (self.retry_on_restart and self.generation > 0):
            refusal = RESTARTING if self.generation > 0 else NOT_READY
        if refusal:
            outcome = "failed" if refusal == RESTARTING else "shed"
            reply = Reply(503, outcome, refusal, retry_after_s=RETRY_AFTER_S)
            self._finish(net, protocol, reply, None, None)
            future.set_result(reply)
            return future
        self._pending[request_id] = _Pending(net, future, protocol)
        self._idle.clear()
        if self._link is None:
            self._held.append(request_id)  # retry_on_restart: the replacement gets it
        else:
            self._write([net])
        return future

    def reject(self, error: ProtocolError, protocol: str) -> None:
        """A request for this service that the protocol refused: one `failed` row with its status."""
        request_id = self._next_id
        self._next_id += 1
        net = NetRequest(request_id, self.clock.now_ns(), "", (), b"")
        self._finish(net, protocol, Reply(error.status, "failed", error.message[:200]), None, None)

    def _complete(self, result: NetResult) -> None:
        pending = self._pending.pop(result.request_id, None)
        if pending is None:
            return  # already answered (failed when the worker was thought dead)
        if not self._pending:
            self._idle.set()
        status = status_of(result.outcome, result.reason)
        served = None
        logits = None
        if status == 200:
            logits = np.frombuffer(result.logits, dtype="<f4").reshape(result.shape)
            start_ns = result.start_ns or pending.request.arrival_ns
            served = Served(
                result.variant,
                result.model_version,
                result.batch_size or 0,
                (start_ns - pending.request.arrival_ns) / NS_PER_MS,
                ((result.end_ns or start_ns) - start_ns) / NS_PER_MS,
            )
        retry = RETRY_AFTER_S if status in (429, 503) else None
        reply = Reply(status, result.outcome, result.reason, logits, served, retry)
        end_ns = self.clock.now_ns()
        if not pending.future.done():
            pending.future.set_result(reply)
        # The row and the metrics after the answer: the handler's wake-up is already queued, so
        # the client's reply leaves first. close() runs on this loop too, behind these calls, so
        # no row is lost at the end.
        assert self.loop is not None
        self.loop.call_soon(self._finish, pending.request, pending.protocol, reply, result, end_ns)

    def _fail(self, request_id: int, reason: str) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        if not self._pending:
            self._idle.set()
        reply = Reply(503, "failed", reason, retry_after_s=RETRY_AFTER_S)
        self._finish(pending.request, pending.protocol, reply, None, None)
        if not pending.future.done():
            pending.future.set_result(reply)

    def _finish(
        self, request: NetRequest, protocol: str, reply: Reply, result: NetResult | None, end_ns: int | None
    ) -> None:
        """The request's one row. Latency is to the moment the front end has the answer, the
        closest this process gets to what the client sees."""
        latency_ms = None
        if reply.status == 200 and end_ns is not None:
            latency_ms = (end_ns - request.arrival_ns) / NS_PER_MS
        row = (
            request.request_id,
            fmt_s(request.arrival_ns),
            fmt_s(result.start_ns if result is not None else None),
            fmt_s(end_ns if reply.status == 200 else None),
            "" if latency_ms is None else f"{latency_ms:.3f}",
            "" if result is None or result.batch_size is None else result.batch_size,
            "" if result is None else result.variant,
            "" if result is None else result.model_version,
            reply.outcome,
            reply.reason,
            reply.status,
            protocol,
        )
        with self._write_lock:
            self._writer.write_rows([row])
        if self._on_reply is not None:
            self._on_reply(self.spec.name, reply, None if latency_ms is None else latency_ms / 1000.0)

    # --- stopping (from the runtime's thread) -----------------------------------------------------

    def close_admission(self, reason: str = STOPPING) -> None:
        """From now on new requests are refused (503); those accepted still complete."""

        def close() -> None:
            self._closed_reason = reason
            held, self._held = self._held, []
            for request_id in held:
                self._fail(request_id, reason)

        self._in_loop(close)

    def in_flight(self) -> int:
        return len(self._pending)

    def wait_idle(self, timeout_s: float) -> bool:
        """Until every accepted request is answered, or `timeout_s`; True if none is left."""
        return self._idle.wait(timeout_s)

    def close(self, reason: str = "stopped") -> None:
        """Answer whatever is still pending (503, failed), drop the worker's link, close the records."""

        def finish() -> None:
            self._closed_reason = self._closed_reason or reason
            for request_id in list(self._pending):
                self._fail(request_id, reason)
            self._held = []
            link, self._link = self._link, None
            if link is not None and link.transport is not None:
                link.transport.close()

        self._in_loop(finish)
        with self._write_lock:
            self._writer.close()

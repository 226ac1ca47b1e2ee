"""One service's side of the front end: every client request's single outcome, answer and record.

The dispatcher lives in the runtime's process. It gives each request an id, its arrival stamp and
a pending entry, sends it to the service's worker (cotrain/ingress/wire.py), and completes the
entry when the worker's result comes back: the client's answer (a `Reply`) and one row in the
service's requests.csv, written here and nowhere else. Because it, not the worker, owns the
entries, a worker that dies cannot take a request with it: the dispatcher sees the connection
close and answers everything the worker held at once (503, recorded `failed`), or, with
`retry_on_restart`, sends it to the replacement while its SLO budget lasts.

Statuses: served 200; queue full 429; shed for overload (waited past the SLO, the in-flight
limit, stopping) 503; both with Retry-After; the model failed 500; the worker died or the
service is restarting 503. A request the protocol refuses before it reaches a service (bad
tensor) is recorded here too, `failed` with its 4xx status.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cotrain.clock import NS_PER_MS, Clock, MonotonicClock
from cotrain.ingress.protocol import InferInput, ModelSpec, ProtocolError, Served
from cotrain.ingress.wire import NetRequest, NetResult
from cotrain.records import REQUEST_COLUMNS, CsvAppender, fmt_s

INGRESS_REQUEST_COLUMNS = (*REQUEST_COLUMNS, "status", "protocol")
RETRY_AFTER_S = 1.0

WORKER_DIED = "worker died"
RESTARTING = "service restarting"
STOPPING = "server shutting down"
FRONT_FULL = "front end full"


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
    future: Future[Reply]
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
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when nothing is pending
        self._send_lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}
        self._held: list[int] = []  # ids waiting for a replacement worker (retry_on_restart)
        self._conn: Any = None
        self._admitting = False
        self._closed_reason = ""
        self.generation = 0  # bumped at every attach; a late reader of an old connection is ignored
        # One thread writes to the worker, so no caller (an event loop among them) ever blocks on
        # a full socket, and requests that queue up meanwhile go out together in one message.
        self._outbox: queue.SimpleQueue[NetRequest | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name=f"ingress-send-{spec.name}", daemon=True)
        self._sender.start()

    # --- the worker's connection ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._conn is not None and self._admitting

    def attach(self, conn: Any) -> None:
        """A (new) worker process connected: send it what was held for it, then read its results."""
        with self._lock:
            self.generation += 1
            generation = self.generation
            self._conn = conn
            self._admitting = not self._closed_reason
            held, self._held = self._held, []
            now_ns = self.clock.now_ns()
            budget_ns = round(self.slo_ms * NS_PER_MS)
            resend = [
                self._pending[i].request
                for i in held
                if now_ns - self._pending[i].request.arrival_ns < budget_ns
            ]
            expired = [i for i in held if now_ns - self._pending[i].request.arrival_ns >= budget_ns]
        for request_id in expired:
            self._fail(request_id, WORKER_DIED)
        if resend:
            self._send(resend)
        threading.Thread(
            target=self._read, args=(conn, generation), name=f"ingress-{self.spec.name}", daemon=True
        ).start()

    def detach(self, reason: str = WORKER_DIED) -> None:
        """The worker is gone: answer what it held (or hold it for the next one)."""
        with self._lock:
            conn, self._conn = self._conn, None
            self.generation += 1
            waiting = list(self._pending)
            if self.retry_on_restart and not self._closed_reason:
                self._held = sorted(set(self._held) | set(waiting))
                waiting = []
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
        for request_id in waiting:
            self._fail(request_id, reason)

    def _read(self, conn: Any, generation: int) -> None:
        while True:
            try:
                results: list[NetResult] = conn.recv()
            except (EOFError, OSError):
                break
            for result in results:
                self._complete(result)
        with self._lock:
            current = generation == self.generation
        if current:
            self.detach(WORKER_DIED)

    def _send(self, requests: list[NetRequest]) -> None:
        for request in requests:
            self._outbox.put(request)

    def _send_loop(self) -> None:
        while True:
            first = self._outbox.get()
            if first is None:
                return
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 256:
                    item = self._outbox.get_nowait()
                    if item is None:
                        self._outbox.put(None)
                        break
                    batch.append(item)
            with self._lock:
                conn = self._conn
            try:
                if conn is None:
                    raise BrokenPipeError
                with self._send_lock:
                    conn.send(batch)
            except (BrokenPipeError, EOFError, OSError):
                for request in batch:
                    self._lost(request.request_id)

    def _lost(self, request_id: int) -> None:
        """A request that could not be handed to a worker: held for the next, or failed now."""
        with self._lock:
            hold = self.retry_on_restart and not self._closed_reason and request_id in self._pending
            if hold:
                self._held.append(request_id)
        if not hold:
            self._fail(request_id, RESTARTING)

    # --- requests ---------------------------------------------------------------------------------

    def submit(self, request: InferInput, protocol: str) -> Future[Reply]:
        """Accept a decoded request; the future completes with its one reply (never raises)."""
        future: Future[Reply] = Future()
        arrival_ns = self.clock.now_ns()
        with self._lock:
            request_id = self._next_id
            self._next_id += 1
            net = NetRequest(
                request_id,
                arrival_ns,
                "FP32" if request.images.dtype.kind == "f" else "UINT8",
                tuple(int(d) for d in request.images.shape),
                np.ascontiguousarray(request.images).tobytes(),
            )
            refusal = ""
            if self._closed_reason:
                refusal = self._closed_reason
            elif len(self._pending) >= self.max_in_flight:
                refusal = FRONT_FULL
            elif self._conn is None and not (self.retry_on_restart and self.generation > 0):
                refusal = RESTARTING if self.generation > 0 else "service not ready"
            if not refusal:
                self._pending[request_id] = _Pending(net, future, protocol)
                if self._conn is None:
                    self._held.append(request_id)  # retry_on_restart: the replacement gets it
                    return future
        if refusal:
            outcome = "failed" if refusal == RESTARTING else "shed"
            reply = Reply(503, outcome, refusal, retry_after_s=RETRY_AFTER_S)
            self._finish(net, protocol, reply, None, None, None)
            future.set_result(reply)
            return future
        self._send([net])
        return future

    def reject(self, error: ProtocolError, protocol: str) -> None:
        """A request for this service that the protocol refused: one `failed` row with its status."""
        with self._lock:
            request_id = self._next_id
            self._next_id += 1
        net = NetRequest(request_id, self.clock.now_ns(), "", (), b"")
        self._finish(net, protocol, Reply(error.status, "failed", error.message[:200]), None, None, None)

    def _complete(self, result: NetResult) -> None:
        with self._lock:
            pending = self._pending.pop(result.request_id, None)
            if not self._pending:
                self._idle.notify_all()
        if pending is None:
            return  # already answered (failed when the worker was thought dead)
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
        self._finish(pending.request, pending.protocol, reply, result, result.start_ns, self.clock.now_ns())
        pending.future.set_result(reply)

    def _fail(self, request_id: int, reason: str) -> None:
        with self._lock:
            pending = self._pending.pop(request_id, None)
            if not self._pending:
                self._idle.notify_all()
        if pending is None:
            return
        reply = Reply(503, "failed", reason, retry_after_s=RETRY_AFTER_S)
        self._finish(pending.request, pending.protocol, reply, None, None, None)
        pending.future.set_result(reply)

    def _finish(
        self,
        request: NetRequest,
        protocol: str,
        reply: Reply,
        result: NetResult | None,
        start_ns: int | None,
        end_ns: int | None,
    ) -> None:
        """The request's one row. Latency is to the moment the front end has the answer, the
        closest this process gets to what the client sees."""
        latency_ms = None
        if reply.status == 200 and end_ns is not None:
            latency_ms = (end_ns - request.arrival_ns) / NS_PER_MS
        row = (
            request.request_id,
            fmt_s(request.arrival_ns),
            fmt_s(start_ns),
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
        self._writer.write_rows([row])
        if self._on_reply is not None:
            self._on_reply(self.spec.name, reply, None if latency_ms is None else latency_ms / 1000.0)

    # --- stopping ---------------------------------------------------------------------------------

    def close_admission(self, reason: str = STOPPING) -> None:
        """From now on new requests are refused (503); those accepted still complete."""
        with self._lock:
            self._closed_reason = reason
            self._admitting = False
            held, self._held = self._held, []
        for request_id in held:
            self._fail(request_id, reason)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def wait_idle(self, timeout_s: float) -> bool:
        """Until every accepted request is answered, or `timeout_s`; True if none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout=timeout_s)

    def close(self, reason: str = "stopped") -> None:
        """Answer whatever is still pending (503, failed) and close the records."""
        self.close_admission(reason)
        with self._lock:
            waiting = list(self._pending)
        for request_id in waiting:
            self._fail(request_id, reason)
        self.detach(reason)
        self._outbox.put(None)
        self._sender.join(timeout=5)
        self._writer.close()

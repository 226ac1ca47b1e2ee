"""The runtime's front end: the listeners, one dispatcher per service with ingress, and the socket
the services' worker processes connect to.

The runtime builds one `IngressHub` for a run whose services have `ingress`. It binds the
listeners before the workers finish loading (a port in use fails the run at once, and
`/v2/health/live` answers while models load), accepts each worker's connection when the worker
starts serving (after a restart too, and for a promoted warm standby), and at the end closes
admission before the workers drain, then answers what is left and closes the listeners.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any

from cotrain.config import ServiceSpec, shared_ingress
from cotrain.ingress.dispatch import Reply, ServiceDispatcher
from cotrain.ingress.protocol import ModelSpec
from cotrain.ingress.server import Frontend, Limits
from cotrain.ingress.wire import Hello
from cotrain.records import CsvAppender, fmt_s

UNROUTED_COLUMNS = ("arrival_s", "protocol", "status", "target", "reason")
"""ingress-errors.csv: inference requests no service received (unknown model or path, no token)."""


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def model_spec(service: ServiceSpec, num_classes: int) -> ModelSpec:
    config = service.config
    return ModelSpec(
        name=service.name,
        image_size=config.dataset.image_size,
        num_classes=num_classes,
        max_batch=config.batching.max_batch_size,
        variant=(config.variants or [f"{config.model.name}/fp32"])[0],
    )


class IngressHub:
    def __init__(
        self,
        services: Sequence[ServiceSpec],
        requests_csv: Callable[[str], Path],
        errors_csv: Path,
        socket_path: Path,
        num_classes: Callable[[ServiceSpec], int],
        *,
        version: str,
        on_reply: Callable[[str, Reply, float | None], None] | None = None,
        log: Callable[[str], None] = lambda message: None,
    ) -> None:
        ingress = shared_ingress(services)
        assert ingress is not None, "IngressHub needs a service with ingress"
        self.ingress = ingress
        self.services = [s for s in services if s.config.ingress is not None]
        self.authkey = secrets.token_bytes(32)
        self.socket_path = socket_path
        self._log = log
        self.by_worker: dict[str, ServiceDispatcher] = {}
        for service in self.services:
            requests_csv(service.worker).parent.mkdir(parents=True, exist_ok=True)
            self.by_worker[service.worker] = ServiceDispatcher(
                model_spec(service, num_classes(service)),
                service.worker,
                requests_csv(service.worker),
                slo_ms=service.config.slo_ms,
                max_in_flight=ingress.limits.max_in_flight,
                retry_on_restart=ingress.retry_on_restart,
                on_reply=on_reply,
            )
        self._errors = CsvAppender(errors_csv, UNROUTED_COLUMNS)
        self._errors_lock = threading.Lock()
        token = None
        if ingress.token_file is not None:
            token = Path(ingress.token_file).read_text(encoding="utf-8").strip()
        limits = ingress.limits
        self.frontend = Frontend(
            {d.spec.name: d for d in self.by_worker.values()},
            http=split_address(ingress.http) if ingress.http else None,
            grpc=split_address(ingress.grpc) if ingress.grpc else None,
            limits=Limits(
                limits.max_request_bytes,
                limits.max_connections,
                limits.max_concurrent_streams,
                limits.body_timeout_s,
            ),
            version=version,
            token=token,
            tls=(ingress.tls.cert, ingress.tls.key) if ingress.tls is not None else None,
            on_unrouted=self._record_unrouted,
        )
        self._listener: Listener | None = None
        self._closing = False
        self._accepting = threading.Thread(target=self._accept_loop, name="ingress-accept", daemon=True)

    def _record_unrouted(self, status: int, protocol: str, target: str, reason: str) -> None:
        row = (fmt_s(time.monotonic_ns()), protocol, status, target, reason)
        with self._errors_lock:
            self._errors.write_rows([row])

    def worker_args(self, worker: str) -> tuple[str, bytes, str] | None:
        """What an inference process of `worker` needs to connect (None for a service without ingress)."""
        if worker not in self.by_worker:
            return None
        return (str(self.socket_path), self.authkey, worker)

    def start(self) -> None:
        """Bind the workers' socket (mode 0600) and the listeners; raise if a port is taken."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        old_umask = os.umask(0o077)
        try:
            self._listener = Listener(str(self.socket_path), family="AF_UNIX", authkey=self.authkey)
        finally:
            os.umask(old_umask)
        self._accepting.start()
        self.frontend.start()
        for kind, (host, port) in sorted(self.frontend.bound.items()):
            self._log(f"  serving {kind} on {host}:{port} ({', '.join(self.frontend.dispatchers)})")

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closing:
            try:
                conn = self._listener.accept()
            except (OSError, EOFError):
                return
            except Exception:  # a stranger with the wrong key: refuse it, keep accepting
                continue
            try:
                hello = conn.recv()
            except (EOFError, OSError):
                conn.close()
                continue
            if self._closing:
                conn.close()
                return
            dispatcher = self.by_worker.get(hello.worker) if isinstance(hello, Hello) else None
            if dispatcher is None:
                conn.close()
                continue
            # the handshake done, the socket itself goes to the dispatcher's event loop
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))
            conn.close()
            dispatcher.attach(sock)

    def worker_died(self, worker: str) -> None:
        dispatcher = self.by_worker.get(worker)
        if dispatcher is not None:
            dispatcher.detach()

    def close_admission(self) -> None:
        for dispatcher in self.by_worker.values():
            dispatcher.close_admission()

    def close(self) -> None:
        for dispatcher in self.by_worker.values():
            dispatcher.close()
        self.frontend.stop()
        self._closing = True
        if self._listener is not None and self._accepting.is_alive():
            # accept() does not wake when its socket closes: connect once, so it returns and stops
            with contextlib.suppress(OSError, EOFError):
                from multiprocessing.connection import Client

                Client(str(self.socket_path), family="AF_UNIX", authkey=self.authkey).send(None)
            self._accepting.join(timeout=5)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with self._errors_lock:
            self._errors.close()

    def bound(self) -> dict[str, Any]:
        return {kind: f"{host}:{port}" for kind, (host, port) in self.frontend.bound.items()}

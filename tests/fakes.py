"""Test doubles built on event gates rather than sleeps."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from cotrain.messages import Command, Report, Stop


class FakeChannel:
    """Stands in for a worker's Channel: records what the worker sends, feeds it commands.

    `waiting` is set whenever the worker blocks for a command with a timeout, which tells a test
    that the worker is idle (e.g. paused) without sleeping.
    """

    def __init__(self) -> None:
        self.sent: list[Report] = []
        self.commands: queue.Queue[Command] = queue.Queue()
        self.waiting = threading.Event()
        self.closed = False
        self._lock = threading.Lock()
        self._sent_changed = threading.Condition(self._lock)

    def send(self, message: Report) -> None:
        with self._sent_changed:
            self.sent.append(message)
            self._sent_changed.notify_all()

    def wait_for_sent(self, predicate: Callable[[Report], bool], timeout_s: float = 60) -> bool:
        """Blocks until the worker has sent a report matching `predicate`: an event gate, not a sleep."""
        with self._sent_changed:
            return self._sent_changed.wait_for(lambda: any(predicate(m) for m in self.sent), timeout_s)

    def recv(self, timeout_s: float | None = None) -> Command | None:
        if timeout_s is not None and timeout_s > 0:
            self.waiting.set()
        try:
            if timeout_s is None:
                return self.commands.get(timeout=60)
            return self.commands.get(timeout=timeout_s) if timeout_s > 0 else self.commands.get_nowait()
        except queue.Empty:
            return None if timeout_s is not None else Stop("test timeout")

    def of_type(self, kind: type) -> list[Any]:
        with self._lock:
            return [m for m in self.sent if isinstance(m, kind)]

"""What every workload process shares: its channel to the runtime and its start-up rules.

Workload processes ignore SIGINT: a Ctrl-C in the terminal reaches the whole process group, and
the runtime, not each worker, decides how to stop (drain, checkpoint, account for every request).
If the runtime disappears, the channel closes and the worker stops on its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from typing import NoReturn

from cotrain.messages import Command, Report, Start, Stop, WorkerFailed


class Channel:
    """A Pipe end shared by a worker's threads: sends are serialised, a closed pipe is not an error."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.closed = False

    def send(self, message: Report) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                self._conn.send(message)
            except (BrokenPipeError, EOFError, OSError):
                self.closed = True

    def recv(self, timeout_s: float | None = None) -> Command | None:
        """Next command, None on timeout; a closed pipe reads as Stop."""
        try:
            if timeout_s is not None and not self._conn.poll(timeout_s):
                return None
            message: Command = self._conn.recv()
            return message
        except (EOFError, OSError):
            self.closed = True
            return Stop(reason="runtime went away")


def worker_setup(threads: int) -> None:
    """Process-wide settings that must precede any torch work."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only possible before the first parallel work
        torch.set_num_interop_threads(1)


def wait_for_start(channel: Channel) -> Start | Stop:
    while True:
        message = channel.recv()
        if isinstance(message, Start | Stop):
            return message


def report_failure(channel: Channel, exc: BaseException) -> None:
    channel.send(WorkerFailed(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()))


def exit_now(code: int = 0) -> NoReturn:
    """End a worker that has finished cleanly, skipping the interpreter's teardown.

    Why: once torch and torchvision are imported, Python's module teardown at exit takes about
    1 s here (0.6 s after `import torch` alone, 1.0-1.4 s with torchvision and a model), and the
    runtime waits for every worker to exit before it restores the platform and writes the
    summary. By the time a worker calls this it has closed its records (every row is flushed
    when written), stopped its DataLoader workers and its sockets, and sent Finished: teardown
    would only free memory the kernel frees anyway. Failure paths keep the normal exit.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)

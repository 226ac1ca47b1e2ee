"""Run tegrastats in the background and keep its latest sample.

tegrastats is the one source of Jetson telemetry that needs no root and no jtop service, but it
only streams: it prints a line every interval until it is killed. So a reader thread consumes
its output line by line, and callers read the latest sample or block (with a timeout) for the
next one. The binary and the process factory are injected, so tests run a fake script.

The child runs in its own session and is signalled as a process group. A wrapper such as a
shell script (or `sudo tegrastats`) leaves a grandchild holding the output pipe open after its
parent dies; killing only the parent would leave the reader thread blocked on that pipe.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from cotrain.platform.tegrastats import TegrastatsSample, parse_tegrastats_line

PopenFactory = Callable[..., subprocess.Popen[str]]


class TegrastatsUnavailable(RuntimeError):
    """tegrastats could not be started (missing, not executable, bad arguments)."""


class TegrastatsReader:
    def __init__(
        self,
        binary: str | Path,
        interval_ms: int = 500,
        popen: PopenFactory = subprocess.Popen,
        stop_timeout_s: float = 2.0,
    ) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        self._argv = [str(binary), "--interval", str(interval_ms)]
        self._popen = popen
        self._stop_timeout_s = stop_timeout_s
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._latest: TegrastatsSample | None = None
        self._samples = 0
        self._skipped = 0
        self._tail: collections.deque[str] = collections.deque(maxlen=3)  # last non-sample lines
        self._finished = False
        self._stopping = False
        self._error: str | None = None
        self._returncode: int | None = None

    @property
    def argv(self) -> list[str]:
        return list(self._argv)

    def start(self) -> None:
        """Start the process and the reader thread. Raises TegrastatsUnavailable at once if the
        binary cannot be run, so a misconfigured path fails loudly instead of reading nothing."""
        if self._proc is not None:
            raise RuntimeError("TegrastatsReader.start() called twice")
        try:
            proc = self._popen(
                self._argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # its complaints end up in `error`, not a full pipe
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,
            )
        except OSError as exc:
            raise TegrastatsUnavailable(f"cannot run {self._argv[0]!r}: {exc.strerror or exc}") from exc
        self._proc = proc
        thread = threading.Thread(target=self._read, args=(proc,), name="tegrastats-reader", daemon=True)
        self._thread = thread
        thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        error: str | None = None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sample = parse_tegrastats_line(line)
                with self._cond:
                    if sample is None:
                        self._skipped += 1
                        if line.strip():
                            self._tail.append(line.strip())
                    else:
                        self._latest = sample
                        self._samples += 1
                    self._cond.notify_all()
        except (OSError, ValueError) as exc:  # ValueError: the pipe was closed under us
            error = f"reading tegrastats failed: {exc!r}"
        returncode: int | None = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            returncode = proc.wait(timeout=self._stop_timeout_s)
        with self._cond:
            self._returncode = returncode
            if error is None and not self._stopping:
                tail = f"; last output: {' | '.join(self._tail)}" if self._tail else ""
                error = f"tegrastats exited on its own with code {returncode}{tail}"
            self._error = error
            self._finished = True
            self._cond.notify_all()

    def latest(self) -> TegrastatsSample | None:
        with self._cond:
            return self._latest

    def wait_for_sample(self, timeout_s: float) -> TegrastatsSample | None:
        """The next sample read after this call, or None on timeout or once the process ended.

        Samples read before the call do not count: use `latest()` for the current one, or
        `wait_for_samples(n)` to wait for a total that may already have been reached.
        """
        with self._cond:
            seen = self._samples
            self._cond.wait_for(lambda: self._samples > seen or self._idle(), timeout=timeout_s)
            return self._latest if self._samples > seen else None

    def wait_for_samples(self, count: int, timeout_s: float) -> bool:
        """Block until `count` samples in total have been read; False on timeout or exit."""
        with self._cond:
            return self._cond.wait_for(lambda: self._samples >= count or self._idle(), timeout_s) and (
                self._samples >= count
            )

    def wait_for_exit(self, timeout_s: float) -> bool:
        """Block until the process has ended and its output is drained; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._finished, timeout=timeout_s)

    def _idle(self) -> bool:
        return self._finished or self._proc is None

    @property
    def alive(self) -> bool:
        with self._cond:
            return self._proc is not None and not self._finished and self._proc.poll() is None

    @property
    def error(self) -> str | None:
        """Why the reader stopped without being asked to; None while healthy or after stop()."""
        with self._cond:
            return self._error

    @property
    def returncode(self) -> int | None:
        with self._cond:
            return self._returncode

    @property
    def samples_read(self) -> int:
        with self._cond:
            return self._samples

    @property
    def lines_skipped(self) -> int:
        with self._cond:
            return self._skipped

    def stop(self) -> None:
        """Terminate the process group, kill it after `stop_timeout_s`, and join the thread.

        Safe to call more than once and before start(). Bounded: every wait has a timeout.
        """
        with self._cond:
            self._stopping = True
            proc, thread = self._proc, self._thread
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self._stop_timeout_s)
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout=self._stop_timeout_s)
        if thread.is_alive():
            # The leader is gone but the pipe is still open: a grandchild holds it.
            self._signal(proc, signal.SIGKILL)
            thread.join(timeout=self._stop_timeout_s)
        if thread.is_alive():
            with self._cond:
                self._error = "tegrastats reader thread did not end: its output pipe is still open"

    @staticmethod
    def _signal(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)  # the child leads its own session (start_new_session)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def __enter__(self) -> TegrastatsReader:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""Run tegrastats in the background and keep its latest sample.

tegrastats is the one source of Jetson telemetry that needs no root and no jtop service, but it
only streams: it prints a line every interval until it is killed. So a reader thread consumes
its output line by line, and callers read the latest sample or block (with a timeout) for the
next one. The binary and the process factory are injected, so tests run a fake script.

The child runs in its own session and is signalled as a process group. A wrapper such as a
shell script (or `sudo tegrastats`) leaves a grandchild holding the output pipe open after its
parent dies; killing only the parent would leave the reader thread blocked on that pipe.

Its own session also means no terminal signal reaches it, and nothing stops it if cotrain dies
without running stop() (SIGKILL, the OOM killer). So on Linux the child asks the kernel for a
parent-death signal: `prctl(PR_SET_PDEATHSIG, SIGTERM)`, set between fork and exec. The kernel
sends it when the *thread* that forked the child ends, so the child is forked from the reader
thread, which lives as long as the child's output does, never from the short-lived thread that
happens to call start(). Limits: the signal reaches the direct child only (a wrapper script must
pass it on; `sudo` does), and the kernel clears it when the child execs a set-user-ID binary.
Where prctl is unavailable (not Linux, no libc symbol) the child runs without it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from cotrain.platform.tegrastats import TegrastatsSample, parse_tegrastats_line

PopenFactory = Callable[..., subprocess.Popen[str]]

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def parent_death_signal_setter(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the kernel send `sig` to the child when its parent thread ends.

    None where prctl is unavailable. The libc symbol is looked up here, in the parent, so the
    child between fork and exec only makes the call. If the parent died before the call took
    effect, the child is already orphaned and the signal would never come: it signals itself.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent_pid = os.getpid()

    def set_parent_death_signal() -> None:
        if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0 and os.getppid() != parent_pid:
            os.kill(os.getpid(), sig)

    return set_parent_death_signal


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
        self._started = False
        self._error: str | None = None
        self._returncode: int | None = None

    @property
    def argv(self) -> list[str]:
        return list(self._argv)

    def start(self) -> None:
        """Start the process and the reader thread. Raises TegrastatsUnavailable at once if the
        binary cannot be run, so a misconfigured path fails loudly instead of reading nothing.

        The process is forked by the reader thread (see the module docstring: the parent-death
        signal follows the forking thread); this call returns once the fork has succeeded or failed.
        """
        with self._cond:
            if self._started:
                raise RuntimeError("TegrastatsReader.start() called twice")
            self._started = True
            launched = threading.Event()
            failure: list[Exception] = []
            thread = threading.Thread(
                target=self._run, args=(launched, failure), name="tegrastats-reader", daemon=True
            )
            self._thread = thread
        thread.start()
        launched.wait()  # Popen returns or raises: fork and exec do not block
        if failure:
            exc = failure[0]
            if isinstance(exc, OSError):
                raise TegrastatsUnavailable(f"cannot run {self._argv[0]!r}: {exc.strerror or exc}") from exc
            raise exc

    def _run(self, launched: threading.Event, failure: list[Exception]) -> None:
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
                preexec_fn=parent_death_signal_setter(),
            )
        except Exception as exc:  # handed to start(), which raises it in the caller's thread
            failure.append(exc)
            launched.set()
            return
        with self._cond:
            self._proc = proc
            stopping = self._stopping
        launched.set()
        if stopping:  # stop() ran from another thread while we were forking
            self._signal(proc, signal.SIGTERM)
        self._read(proc)

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
            if error is not None:  # keep what stop() may have recorded already
                self._error = error if self._error is None else f"{self._error}; {error}"
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
        """Why the reader stopped without being asked to, or what stop() could not do (a signal
        refused, a pipe left open); None while healthy and after a clean stop()."""
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
            self._note_error("tegrastats reader thread did not end: its output pipe is still open")

    def _signal(self, proc: subprocess.Popen[str], sig: signal.Signals) -> None:
        """Signal the process group, else the process. Never raises: stop() must always finish.

        A failure other than "already gone" (EPERM: the child changed its credentials, as a
        set-user-ID wrapper does) is recorded in `error`, because the process may live on.
        """
        group_error: OSError | None = None
        try:
            os.killpg(proc.pid, sig)  # the child leads its own session (start_new_session)
            return
        except ProcessLookupError:
            pass  # no such group; the leader may still be a zombie
        except OSError as exc:
            group_error = exc
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        except OSError as exc:
            group = f" (to its process group: {group_error})" if group_error else ""
            self._note_error(f"cannot send {sig.name} to tegrastats (pid {proc.pid}): {exc}{group}")

    def _note_error(self, message: str) -> None:
        with self._cond:
            self._error = message if self._error is None else f"{self._error}; {message}"

    def __enter__(self) -> TegrastatsReader:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

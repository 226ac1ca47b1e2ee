"""Flower's processes, started so that none outlives the federation that started them.

Flower's servers spawn helpers that leave their parent's process group: the SuperLink starts
`flower-superexec` in a new session (which starts `flwr-serverapp`), and each SuperNode's
superexec starts a `flwr-clientapp` per message. Killing the process groups we started is
therefore not enough. Every process we start gets a run-local `FLWR_HOME`, which all of
Flower's descendants inherit; stopping kills the process trees we know and then sweeps any
process whose environment carries that marker, so even a helper that was re-parented to init
before we saw it is found.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class Spawned:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode(errors="replace")


class ProcessSet:
    """Starts processes in their own sessions (a terminal Ctrl-C reaches only the parent,
    which decides how to stop) and terminates them with every descendant."""

    def __init__(self, env: Mapping[str, str], cwd: Path, marker: tuple[str, str]) -> None:
        self.env = dict(env)
        self.cwd = cwd
        self.marker = marker
        if self.env.get(marker[0]) != marker[1]:
            raise ValueError(f"env must carry the marker {marker[0]}={marker[1]}")
        self.spawned: list[Spawned] = []

    def spawn(self, name: str, argv: Sequence[str], log_path: Path) -> Spawned:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(
                list(argv),
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        spawned = Spawned(name, popen, log_path)
        self.spawned.append(spawned)
        return spawned

    def terminate_all(self, grace_s: float) -> list[str]:
        """SIGTERM every process we own, SIGKILL what is left after `grace_s`. Idempotent.

        Returns a description of each process that needed SIGKILL (empty when all went
        quietly). Never raises for processes that are already gone.
        """
        roots = [s.popen.pid for s in self.spawned if s.alive()]
        procs = _with_descendants(_processes(roots)) | marked_processes(*self.marker)
        signaled: set[psutil.Process] = set()
        deadline = time.monotonic() + grace_s
        while True:
            for proc in procs - signaled:
                _signal(proc, signal.SIGTERM)
                signaled.add(proc)
            alive = _living(procs)
            if not alive or time.monotonic() >= deadline:
                break
            psutil.wait_procs(list(alive), timeout=0.1)
            # Children spawned after the snapshot (a ClientApp starting just now) join the set.
            procs |= _with_descendants(_living(procs))
        killed: list[str] = []
        for _ in range(3):
            leftovers = _living(_with_descendants(alive) | marked_processes(*self.marker))
            if not leftovers:
                break
            for proc in leftovers:
                killed.append(_describe(proc))
                _signal(proc, signal.SIGKILL)
            _, still = psutil.wait_procs(list(leftovers), timeout=2.0)
            alive = set(still)
        for spawned in self.spawned:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spawned.popen.wait(timeout=1.0)  # reap our direct children
        return killed


def marked_processes(key: str, value: str) -> set[psutil.Process]:
    """Processes of ours whose environment has `key=value` (other users' are unreadable)."""
    found: set[psutil.Process] = set()
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get(key) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.add(proc)
    return found


def _processes(pids: Iterable[int]) -> set[psutil.Process]:
    procs = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.add(psutil.Process(pid))
    return procs


def _with_descendants(procs: Iterable[psutil.Process]) -> set[psutil.Process]:
    out = set(procs)
    for proc in list(out):
        with contextlib.suppress(psutil.Error):
            out.update(proc.children(recursive=True))
    return out


def _living(procs: Iterable[psutil.Process]) -> set[psutil.Process]:
    living = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                living.add(proc)
    return living


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline()[:3])}"
    except psutil.Error:
        return str(proc.pid)

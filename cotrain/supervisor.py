"""Spawning, watching and stopping the workload processes.

One process per workload (spawn start method, never fork: a forked torch process inherits
thread pools and locks in unknown states). Each has a duplex Pipe to the runtime. `poll` waits on
the pipes and on the process sentinels together, so a dead worker is noticed as soon as it dies,
not at the next control tick.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from cotrain.messages import Command, Finished, Report, Stop, WorkerFailed
from cotrain.records import write_json_atomic
from cotrain.rundir import RunDir


@dataclass
class WorkerHandle:
    name: str  # "inference" or "train:<job>"
    process: BaseProcess
    conn: Connection
    pid: int | None = None
    finished: bool = False
    failure: WorkerFailed | None = None
    conn_open: bool = True
    exit_reported: bool = field(default=False)

    @property
    def alive(self) -> bool:
        return self.process.is_alive()


class Supervisor:
    def __init__(self, run_dir: RunDir, env: dict[str, str] | None = None) -> None:
        self.run_dir = run_dir
        self.ctx = mp.get_context("spawn")
        self.workers: dict[str, WorkerHandle] = {}
        self._env = env or {}
        self._recipes: dict[str, tuple[Callable[..., None], tuple[Any, ...]]] = {}

    def spawn(self, name: str, target: Callable[..., None], args: tuple[Any, ...]) -> WorkerHandle:
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(target=target, args=(child_conn, *args), name=f"cotrain-{name}")
        saved = {k: os.environ.get(k) for k in self._env}
        os.environ.update(self._env)  # spawned children copy the environment at start
        try:
            process.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child_conn.close()
        handle = WorkerHandle(name=name, process=process, conn=parent_conn, pid=process.pid)
        self.workers[name] = handle
        self._recipes[name] = (target, args)
        self.write_processes()
        return handle

    def respawn(self, name: str) -> WorkerHandle:
        """Start a dead worker again with the arguments it was first started with.

        The old handle's pipe is closed and `processes.json` names the new pid.
        """
        old = self.workers.get(name)
        if old is not None:
            if old.process.is_alive():
                raise RuntimeError(f"{name} is still running (pid {old.pid})")
            old.conn.close()
            old.process.join(timeout=0)
        target, args = self._recipes[name]
        return self.spawn(name, target, args)

    def promote(self, standby: str, name: str) -> WorkerHandle:
        """Let the (ready, idle) worker `standby` take the place of the dead worker `name`."""
        handle = self.workers.pop(standby)
        old = self.workers.get(name)
        if old is not None:
            old.conn.close()
            old.process.join(timeout=0)
        handle.name = name
        self.workers[name] = handle
        self.write_processes()
        return handle

    def write_processes(self) -> None:
        write_json_atomic(self.run_dir.processes, {h.name: h.pid for h in self.workers.values()})

    def send(self, name: str, message: Command) -> None:
        handle = self.workers[name]
        if not handle.conn_open:
            return
        try:
            handle.conn.send(message)
        except (BrokenPipeError, EOFError, OSError):
            handle.conn_open = False

    def broadcast(self, message: Command) -> None:
        for name in self.workers:
            self.send(name, message)

    def poll(self, timeout_s: float, extra: list[Any] | None = None) -> list[tuple[str, Report]]:
        """Reports received within `timeout_s` (returns early on the first one, or on a death).

        `extra` are further waitable objects (the runtime's wake-up pipe).
        """
        by_conn = {h.conn: h for h in self.workers.values() if h.conn_open}
        sentinels = {h.process.sentinel: h for h in self.workers.values() if not h.exit_reported}
        ready = wait([*by_conn, *sentinels, *(extra or [])], timeout=max(0.0, timeout_s))
        reports: list[tuple[str, Report]] = []
        for obj in ready:
            handle = by_conn.get(obj)  # type: ignore[call-overload]
            if handle is None:
                continue
            try:
                while handle.conn.poll():
                    message = handle.conn.recv()
                    if isinstance(message, Finished):
                        handle.finished = True
                    elif isinstance(message, WorkerFailed):
                        handle.failure = message
                    reports.append((handle.name, message))
            except (EOFError, OSError):
                handle.conn_open = False
        return reports

    def died(self) -> list[WorkerHandle]:
        """Workers that exited without finishing cleanly (reported once each)."""
        dead = []
        for h in self.workers.values():
            if not h.exit_reported and not h.process.is_alive():
                h.exit_reported = True
                if not h.finished or h.process.exitcode not in (0, None):
                    dead.append(h)
        return dead

    def stop_all(self, timeout_s: float, on_report: Callable[[str, Report], None]) -> list[str]:
        """Ask every worker to stop, wait for them, and kill what does not exit. Returns the killed."""
        self.broadcast(Stop())
        deadline = _monotonic() + timeout_s
        while any(h.process.is_alive() for h in self.workers.values()) and _monotonic() < deadline:
            for name, report in self.poll(min(0.5, max(0.0, deadline - _monotonic()))):
                on_report(name, report)
            for h in self.workers.values():
                if h.finished and h.process.is_alive():
                    h.process.join(timeout=0.05)
        for name, report in self.poll(0.0):
            on_report(name, report)
        killed = []
        for h in self.workers.values():
            if h.process.is_alive():
                h.process.terminate()
                h.process.join(timeout=3)
                if h.process.is_alive():
                    h.process.kill()
                    h.process.join(timeout=3)
                killed.append(h.name)
            h.process.join(timeout=1)
        return killed

    def kill_remaining(self) -> list[str]:
        """SIGKILL every worker still alive, without waiting for a drain (a forced exit)."""
        killed = []
        for h in self.workers.values():
            if h.process.is_alive():
                h.process.kill()
                h.process.join(timeout=3)
                killed.append(h.name)
        return killed

    def close(self) -> None:
        for h in self.workers.values():
            h.conn.close()


def _monotonic() -> float:
    return time.monotonic()


def restart_delay_s(attempt: int, backoff_s: float, backoff_max_s: float) -> float:
    """Back-off before the `attempt`-th restart of one worker (1-based): doubling, capped."""
    return min(backoff_max_s, backoff_s * 2.0 ** max(0, attempt - 1))

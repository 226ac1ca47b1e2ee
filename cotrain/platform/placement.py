"""CPU placement by affinity, shared by every Linux backend.

Affinity on Linux is per thread. Torch's worker threads and DataLoader worker processes exist
before a live placement change, so `pin` walks every task (thread) of the process and of its
descendants; threads created later inherit the mask of their creator. The first mask seen for
each thread is remembered so `restore` can put it back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

SetAffinity = Callable[[int, Iterable[int]], None]
GetAffinity = Callable[[int], set[int]]


class AffinityPlacer:
    def __init__(
        self,
        proc_root: Path = Path("/proc"),
        set_affinity: SetAffinity = os.sched_setaffinity,
        get_affinity: GetAffinity = os.sched_getaffinity,
    ) -> None:
        self._proc_root = proc_root
        self._set_affinity = set_affinity
        self.get_affinity = get_affinity
        self._changed: dict[int, set[int]] = {}  # tid -> affinity before we first changed it

    def _tasks(self, pid: int) -> list[int]:
        try:
            return [int(t.name) for t in (self._proc_root / str(pid) / "task").iterdir()]
        except OSError:
            return []

    def _tree(self, pid: int) -> list[int]:
        try:
            children = [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            children = []
        return [pid, *children]

    def pin(self, pid: int, cpus: set[int]) -> None:
        """Pin every thread of `pid` and of its descendants to `cpus`."""
        for proc in self._tree(pid):
            for tid in self._tasks(proc):
                try:
                    before = self.get_affinity(tid)
                    self._changed.setdefault(tid, before)
                    self._set_affinity(tid, cpus)
                except OSError:
                    continue  # the thread ended between listing and pinning

    def restore(self) -> None:
        for tid, before in list(self._changed.items()):
            with contextlib.suppress(OSError):  # a thread that is gone needs no restoring
                self._set_affinity(tid, before)
            del self._changed[tid]

"""Any Linux host: placement by CPU affinity, telemetry from psutil.

Affinity on Linux is per thread. Torch's worker threads and DataLoader worker processes exist
before a live placement change, so `place` walks every task (thread) of the process and of its
descendants; threads created later inherit the mask of their creator.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import psutil

from cotrain.platform.base import TelemetrySample

SetAffinity = Callable[[int, Iterable[int]], None]
GetAffinity = Callable[[int], set[int]]


class HostPlatform:
    name = "host"

    def __init__(
        self,
        proc_root: Path = Path("/proc"),
        set_affinity: SetAffinity = os.sched_setaffinity,
        get_affinity: GetAffinity = os.sched_getaffinity,
    ) -> None:
        self._proc_root = proc_root
        self._set_affinity = set_affinity
        self._get_affinity = get_affinity
        self._cpus = tuple(sorted(get_affinity(0)))
        self._changed: dict[int, set[int]] = {}  # tid -> affinity before we first changed it
        psutil.cpu_percent(interval=None)  # prime: the first non-blocking reading is meaningless

    def cpu_ids(self) -> tuple[int, ...]:
        return self._cpus

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

    def place(self, pid: int, cpus: Sequence[int] | None) -> None:
        target = set(self._cpus if cpus is None else cpus)
        unknown = target - set(self._cpus)
        if unknown:
            raise ValueError(f"CPUs {sorted(unknown)} are not available here (available: {list(self._cpus)})")
        for proc in self._tree(pid):
            for tid in self._tasks(proc):
                try:
                    before = self._get_affinity(tid)
                    self._changed.setdefault(tid, before)
                    self._set_affinity(tid, target)
                except OSError:
                    continue  # the thread ended between listing and pinning

    def telemetry(self) -> TelemetrySample:
        per_cpu = psutil.cpu_percent(interval=None, percpu=True)
        mine = [per_cpu[c] for c in self._cpus if c < len(per_cpu)]
        return TelemetrySample(
            cpu_util_percent=sum(mine) / len(mine) if mine else None,
            per_cpu_util_percent=tuple(mine),
            memory_used_mb=psutil.virtual_memory().used / 2**20,
        )

    def describe(self) -> dict[str, object]:
        return {
            "platform": self.name,
            "cpus": list(self._cpus),
            "cpu_count_logical": psutil.cpu_count(logical=True),
            "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
            "power_modes": "unsupported on this backend so far",
        }

    def restore(self) -> None:
        for tid, before in list(self._changed.items()):
            with contextlib.suppress(OSError):  # a thread that is gone needs no restoring
                self._set_affinity(tid, before)
            del self._changed[tid]

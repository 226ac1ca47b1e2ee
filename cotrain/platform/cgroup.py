"""A CPU quota for cotrain's workloads through a child cgroup: the host's stand-in for DVFS.

A host has no nvpmodel, but a CPU quota caps how much CPU time the workloads get, which is the
effect a lower power mode has on throughput. cotrain creates its own child cgroup
(`cotrain-<pid>`) under the cpu controller, moves only its workload processes into it, and on
restore moves them back to the cgroup they came from and removes the child. Nothing outside
cotrain's processes is ever touched.

Both layouts are handled: cgroup v2 (`cpu.max` = "<quota_us> <period_us>" or "max <period_us>")
and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us` under the `cpu` hierarchy, as on this project's
machines). The root is injected, so tests run against a fake tree.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

PERIOD_US = 100_000


class CgroupError(Exception):
    pass


@dataclass(frozen=True)
class CgroupLayout:
    version: int  # 1 or 2
    controller_root: Path  # v1: <root>/cpu ; v2: <root>

    def describe(self) -> str:
        knob = "cpu.max" if self.version == 2 else "cpu.cfs_quota_us"
        return f"cgroup v{self.version} {knob} under {self.controller_root}"


def detect_layout(cgroup_root: Path = Path("/sys/fs/cgroup")) -> tuple[CgroupLayout | None, str]:
    """The writable CPU-quota layout here, or None with the reason it is not usable."""
    v1 = cgroup_root / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        layout = CgroupLayout(1, v1)
    elif "cpu" in _read(cgroup_root / "cgroup.controllers").split():
        layout = CgroupLayout(2, cgroup_root)
    else:
        return None, f"no cpu controller under {cgroup_root}"
    if not os.access(layout.controller_root, os.W_OK):
        return None, f"{layout.describe()} is not writable (cotrain needs root or a delegated cgroup)"
    return layout, layout.describe()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


class CpuQuotaGroup:
    """cotrain's child cgroup. Created on first use, removed by `remove()`."""

    def __init__(self, layout: CgroupLayout, cpu_count: int, proc_root: Path = Path("/proc")) -> None:
        self.layout = layout
        self.cpu_count = cpu_count
        self.path = layout.controller_root / f"cotrain-{os.getpid()}"
        self._proc_root = proc_root
        self._origin: dict[int, Path] = {}  # pid -> the cgroup it came from
        self.quota_fraction: float | None = None

    def _ensure(self) -> None:
        if self.path.is_dir():
            return
        try:
            self.path.mkdir()
        except OSError as exc:
            raise CgroupError(f"cannot create {self.path}: {exc.strerror or exc}") from None

    def _origin_of(self, pid: int) -> Path:
        """The cgroup `pid` is in now, for the cpu controller (v1) or the unified tree (v2)."""
        for line in _read(self._proc_root / str(pid) / "cgroup").splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            wanted = hierarchy == "0" if self.layout.version == 2 else "cpu" in controllers.split(",")
            if wanted:
                return self.layout.controller_root / path.lstrip("/")
        return self.layout.controller_root

    def add(self, pid: int) -> None:
        self._ensure()
        self._origin.setdefault(pid, self._origin_of(pid))
        self._write(self.path / "cgroup.procs", str(pid))

    def set_quota(self, fraction: float | None) -> None:
        """Cap the group at `fraction` of all CPUs (0 < fraction <= 1), or lift the cap with None."""
        self._ensure()
        if fraction is None:
            quota = "max" if self.layout.version == 2 else "-1"
        else:
            if not 0 < fraction <= 1:
                raise ValueError("quota fraction must be in (0, 1]")
            quota = str(max(1000, round(fraction * self.cpu_count * PERIOD_US)))
        if self.layout.version == 2:
            self._write(self.path / "cpu.max", f"{quota} {PERIOD_US}")
        else:
            self._write(self.path / "cpu.cfs_period_us", str(PERIOD_US))
            self._write(self.path / "cpu.cfs_quota_us", quota)
        self.quota_fraction = fraction

    def remove(self) -> None:
        """Move every process back where it came from, then delete the group. Idempotent."""
        for pid, origin in list(self._origin.items()):
            with contextlib.suppress(OSError):  # the process may be gone already
                (origin / "cgroup.procs").write_text(str(pid), encoding="utf-8")
            del self._origin[pid]
        if self.path.is_dir():
            with contextlib.suppress(OSError):
                self.path.rmdir()
        self.quota_fraction = None

    def _write(self, path: Path, value: str) -> None:
        try:
            path.write_text(value, encoding="utf-8")
        except OSError as exc:
            raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror or exc}") from None

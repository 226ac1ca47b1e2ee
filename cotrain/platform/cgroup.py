"""A CPU quota for cotrain's workloads through a child cgroup: the host's stand-in for DVFS.

A host has no nvpmodel, but a CPU quota caps how much CPU time the workloads get, which is the
effect a lower power mode has on throughput. cotrain creates its own child cgroup
(`cotrain-<pid>`) under the cpu controller, moves only its workload processes into it, and on
restore moves them back to the cgroup they came from and removes the child. Nothing outside
cotrain's processes is ever touched.

Both layouts are handled: cgroup v2 (`cpu.max` = "<quota_us> <period_us>" or "max <period_us>")
and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us` under the `cpu` hierarchy, as on this project's
machines). The root is injected, so tests run against a fake tree.

Writing a pid to `cgroup.procs` moves that one process. Its children forked later inherit the
group, but children that already exist (DataLoader workers, a launcher's payload) stay where
they are, outside the quota. So `add` moves the process and all its current descendants, and
`remove` empties the group by what the kernel lists in it, not by what was recorded: a process
forked inside the group after `add` is moved out too, or the group could not be removed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

PERIOD_US = 100_000
_EMPTYING_ROUNDS = 5  # processes fork while the group is emptied; each round moves the newcomers

Descendants = Callable[[int], Sequence[int]]


def psutil_descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children, grandchildren, ...); [] if `pid` is gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


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

    def __init__(
        self,
        layout: CgroupLayout,
        cpu_count: int,
        proc_root: Path = Path("/proc"),
        descendants: Descendants = psutil_descendants,
    ) -> None:
        self.layout = layout
        self.cpu_count = cpu_count
        self.path = layout.controller_root / f"cotrain-{os.getpid()}"
        self._proc_root = proc_root
        self._descendants = descendants
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
        """Move `pid` and every descendant it has now into the group, remembering where each was.

        Adding again is harmless and picks up descendants that appeared since. A process that
        has exited (ESRCH) is skipped: it needs no quota. Any other failure raises CgroupError.
        """
        self._ensure()
        for member in dict.fromkeys([pid, *self._descendants(pid)]):
            origin = self._origin.get(member) or self._origin_of(member)
            try:
                _append_pid(self.path / "cgroup.procs", member)
            except ProcessLookupError:
                continue
            except OSError as exc:
                raise CgroupError(
                    f"cannot move pid {member} into {self.path}: {exc.strerror or exc}"
                ) from None
            if origin != self.path:  # forked inside the group: it goes to the parent on remove
                self._origin.setdefault(member, origin)

    def members(self) -> list[int]:
        """The pids the kernel lists in the group now, once each (v1 may list a pid twice), in the
        order listed; none if the group does not exist."""
        listed = [int(p) for p in _read(self.path / "cgroup.procs").split() if p.isdecimal()]
        return list(dict.fromkeys(listed))

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

    def remove(self) -> list[str]:
        """Empty the group, delete it, and return what could not be done (empty when all went well).

        Every process the kernel lists in the group goes back to the cgroup recorded for it by
        `add`, or to the group's parent if it was never recorded (a process forked inside the
        group). Listing and moving repeat while new processes appear, a bounded number of times.
        A process that has exited needs no move. Idempotent; never raises.
        """
        warnings: list[str] = []
        seen: set[int] = set()
        for _ in range(_EMPTYING_ROUNDS):
            newcomers = [pid for pid in self.members() if pid not in seen]
            if not newcomers:
                break
            for pid in newcomers:
                seen.add(pid)
                problem = self._move_out(pid)
                if problem is not None:
                    warnings.append(problem)
        for pid in [p for p in self._origin if p not in seen]:  # gone, or moved on by someone else
            del self._origin[pid]
        if self.path.is_dir():
            try:
                self.path.rmdir()
            except OSError as exc:
                still = self.members()
                inside = f" (pids still inside: {still})" if still else ""
                warnings.append(f"cannot remove cgroup {self.path}: {exc.strerror or exc}{inside}")
        self.quota_fraction = None
        return warnings

    def _move_out(self, pid: int) -> str | None:
        """Move `pid` to its recorded origin, else to the parent; a warning if that fell short."""
        parent = self.path.parent
        failures: list[str] = []
        for target in dict.fromkeys([self._origin.get(pid, parent), parent]):
            try:
                _append_pid(target / "cgroup.procs", pid)
            except ProcessLookupError:  # it exited: nothing to move
                self._origin.pop(pid, None)
                return None
            except OSError as exc:
                failures.append(f"{target}: {exc.strerror or exc}")
                continue
            self._origin.pop(pid, None)
            return f"pid {pid} went to {parent}, not back to {failures[0]}" if failures else None
        return f"cannot move pid {pid} out of {self.path} ({'; '.join(failures)})"

    def _write(self, path: Path, value: str) -> None:
        try:
            path.write_text(value, encoding="utf-8")
        except OSError as exc:
            raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror or exc}") from None


def _append_pid(procs: Path, pid: int) -> None:
    """Move one process by writing its pid to a `cgroup.procs` file, one pid per write.

    Appending is what `echo PID >> cgroup.procs` does; the kernel ignores the file offset, and a
    fake tree in tests keeps every pid written, so a test can see each move.
    """
    with procs.open("a", encoding="utf-8") as f:
        f.write(f"{pid}\n")

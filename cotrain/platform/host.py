"""Any Linux host: placement by CPU affinity, telemetry from psutil, emulated power modes.

A host has no nvpmodel, so "power modes" are emulated with the two levers a host does have over
cotrain's own workloads:
- an online-core set: the workloads may only use the first N of cotrain's CPUs (applied through
  affinity; no CPU is taken offline for the rest of the system);
- a CPU quota, where a cgroup CPU controller is writable (see cgroup.py).
Mode 0 is always "all cores, no quota", i.e. the state cotrain found; `restore` returns to it.

Power comes from RAPL (CPU packages) plus NVML (NVIDIA GPUs), each where it is readable (see
host_power.py); `describe()` says which of them `power_w` covers here, or why neither works.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from cotrain.platform.base import PowerModeError, PowerModeInfo, TelemetrySample
from cotrain.platform.cgroup import (
    CgroupError,
    CgroupLayout,
    CpuQuotaGroup,
    Descendants,
    detect_layout,
    psutil_descendants,
)
from cotrain.platform.host_power import NvmlReader, PowerReader, RaplReader
from cotrain.platform.placement import AffinityPlacer, GetAffinity, SetAffinity

QUOTA_STEPS_PCT = (75, 50, 25)


def host_modes(cpu_count: int, quota: bool) -> tuple[PowerModeInfo, ...]:
    """Modes from most to least capable: each core count, then (with quota) each quota step."""
    modes: list[PowerModeInfo] = []
    for cores in range(cpu_count, 0, -1):
        for pct in (None, *(QUOTA_STEPS_PCT if quota else ())):
            name = f"{cores}core" + (f"-{pct}pct" if pct else "")
            detail = f"{cores} of {cpu_count} CPUs" + (f", CPU quota {pct}% of them" if pct else "")
            rank = cores * (pct or 100) / 100
            modes.append(
                PowerModeInfo(id=len(modes), name=name, online_cores=cores, detail=detail, rank=rank)
            )
    return tuple(modes)


def _mode_levers(mode: PowerModeInfo) -> tuple[int, float | None]:
    """(online cores, quota as a fraction of *all* CPUs or None) of a host mode."""
    pct = int(mode.name.split("-")[1].removesuffix("pct")) if "-" in mode.name else None
    return mode.online_cores, pct


class HostPlatform:
    name = "host"

    def __init__(
        self,
        proc_root: Path = Path("/proc"),
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        set_affinity: SetAffinity = os.sched_setaffinity,
        get_affinity: GetAffinity = os.sched_getaffinity,
        enable_quota: bool = True,
        descendants: Descendants = psutil_descendants,
        warn: Callable[[str], None] = lambda message: None,
        rapl: PowerReader | None = None,
        nvml: PowerReader | None = None,
    ) -> None:
        """`rapl` and `nvml` default to the real readers (RaplReader(), NvmlReader()); `warn`
        receives what restore could not undo (a cgroup that could not be emptied or removed)."""
        self._proc_root = proc_root
        self._descendants = descendants
        self._warn = warn
        self._power: tuple[tuple[str, PowerReader], ...] = (
            ("RAPL", RaplReader() if rapl is None else rapl),
            ("NVML", NvmlReader() if nvml is None else nvml),
        )
        for _, reader in self._power:
            if reader.available:
                reader.read_w()  # prime: RAPL's first reading only starts the interval
        self._placer = AffinityPlacer(proc_root, set_affinity, get_affinity)
        self._all_cpus = tuple(sorted(get_affinity(0)))
        self._active_cpus = self._all_cpus
        self._requested: dict[int, tuple[int, ...] | None] = {}  # pid -> cpus asked for by `place`
        layout, self._quota_reason = detect_layout(cgroup_root) if enable_quota else (None, "disabled")
        self._layout: CgroupLayout | None = layout
        self._group: CpuQuotaGroup | None = None
        self._modes = host_modes(len(self._all_cpus), quota=layout is not None)
        self._mode = self._modes[0]
        psutil.cpu_percent(interval=None)  # prime: the first non-blocking reading is meaningless

    # --- placement -----------------------------------------------------------------------------

    def cpu_ids(self) -> tuple[int, ...]:
        return self._active_cpus

    def clusters(self) -> tuple[tuple[int, ...], ...]:
        """Each CPU is its own cluster here: a VM exposes no shared-clock domains worth using."""
        return tuple((c,) for c in self._all_cpus)

    def attach(self, pid: int) -> None:
        self._requested.setdefault(pid, None)
        if self._group is not None:
            self._group.add(pid)

    def place(self, pid: int, cpus: Sequence[int] | None) -> None:
        requested = tuple(sorted(set(cpus))) if cpus is not None else None
        unknown = set(requested or ()) - set(self._all_cpus)
        if unknown:
            raise ValueError(
                f"CPUs {sorted(unknown)} are not available here (available: {list(self._all_cpus)})"
            )
        self._requested[pid] = requested
        self._placer.pin(pid, self._effective(requested))

    def _effective(self, requested: tuple[int, ...] | None) -> set[int]:
        """The requested CPUs within the current mode's core set (all of it if they fall outside)."""
        active = set(self._active_cpus)
        chosen = set(requested or ()) & active
        return chosen or active

    # --- power modes ---------------------------------------------------------------------------

    def power_modes(self) -> tuple[PowerModeInfo, ...]:
        return self._modes

    def current_power_mode(self) -> PowerModeInfo | None:
        return self._mode

    def _find(self, mode: int | str) -> PowerModeInfo:
        for m in self._modes:
            if mode in (m.id, m.name) or str(mode) == str(m.id):
                return m
        names = ", ".join(m.name for m in self._modes)
        raise PowerModeError(f"host has no power mode {mode!r}; available: {names}")

    def set_power_mode(self, mode: int | str) -> PowerModeInfo:
        target = self._find(mode)
        cores, pct = _mode_levers(target)
        try:
            if pct is not None or self._group is not None:
                if self._group is None:
                    assert self._layout is not None
                    self._group = CpuQuotaGroup(
                        self._layout, len(self._all_cpus), self._proc_root, self._descendants
                    )
                for pid in self._requested:  # again each time: workers started since are included
                    self._group.add(pid)
                self._group.set_quota(None if pct is None else pct / 100 * cores / len(self._all_cpus))
        except CgroupError as exc:
            raise PowerModeError(f"cannot apply host mode {target.name}: {exc}") from None
        self._active_cpus = self._all_cpus[:cores]
        for pid, requested in self._requested.items():
            self._placer.pin(pid, self._effective(requested))
        self._mode = target
        return target

    # --- telemetry and the rest ----------------------------------------------------------------

    def telemetry(self) -> TelemetrySample:
        per_cpu = psutil.cpu_percent(interval=None, percpu=True)
        mine = [per_cpu[c] for c in self._all_cpus if c < len(per_cpu)]
        return TelemetrySample(
            cpu_util_percent=sum(mine) / len(mine) if mine else None,
            per_cpu_util_percent=tuple(mine),
            memory_used_mb=psutil.virtual_memory().used / 2**20,
            temperature_c=_hottest_sensor_c(),
            power_w=self._power_w(),
            power_mode=self._mode.name,
            source="psutil",
        )

    def _power_w(self) -> float | None:
        """The sum of the available readers; None if any of them has no reading this time, because
        a partial sum would look like a drop in power."""
        readings = [reader.read_w() for _, reader in self._power if reader.available]
        values = [w for w in readings if w is not None]
        return sum(values) if values and len(values) == len(readings) else None

    def _describe_power(self) -> str:
        used = [reader.reason for _, reader in self._power if reader.available]
        missing = [
            f"{name} unavailable: {reader.reason}" for name, reader in self._power if not reader.available
        ]
        if not used:
            return "unsupported: " + "; ".join(missing)
        what = " + ".join(used) + " (CPU packages and GPUs only: less than power at the wall)"
        return "; ".join([what, *missing])

    def describe(self) -> dict[str, object]:
        quota = self._layout.describe() if self._layout else f"unsupported: {self._quota_reason}"
        return {
            "platform": self.name,
            "cpus": list(self._all_cpus),
            "cpu_count_logical": psutil.cpu_count(logical=True),
            "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
            "placement": "CPU affinity per thread, of each workload process and its children",
            "power_modes": {
                "emulated_by": "online-core sets (affinity of cotrain's workloads)"
                + (" and CPU quota" if self._layout else ""),
                "cpu_quota": quota,
                "modes": [m.name for m in self._modes],
            },
            "telemetry": {
                "source": "psutil",
                "power_w": self._describe_power(),
                "temperature": "psutil sensors"
                if _hottest_sensor_c() is not None
                else "unsupported: no sensors",
            },
        }

    def restore(self) -> None:
        if self._group is not None:
            for warning in self._group.remove():
                self._warn(warning)
            self._group = None
        self._active_cpus = self._all_cpus
        self._mode = self._modes[0]
        self._placer.restore()


def _hottest_sensor_c() -> float | None:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        readings = [t.current for entries in read().values() for t in entries if t.current is not None]
    except (OSError, RuntimeError):
        return None
    return max(readings) if readings else None

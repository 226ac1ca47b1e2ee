"""The Platform interface: what the runtime needs from a device, whatever the device is.

Real and fake implementations are injected through constructors (roots, binaries, clocks), never
switched on an environment variable. Every backend must leave the device as it found it:
`restore()` undoes every change it made and is called on every exit path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class TelemetrySample:
    """One reading of the device. Fields a platform cannot measure are None."""

    cpu_util_percent: float | None
    per_cpu_util_percent: tuple[float, ...] | None
    memory_used_mb: float | None
    power_w: float | None = None
    temperature_c: float | None = None  # the hottest sensor
    gpu_util_percent: float | None = None
    gpu_freq_mhz: float | None = None
    power_mode: str | None = None
    source: str = ""  # jtop | tegrastats | sysfs | psutil | sim
    rails_mw: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PowerModeInfo:
    """A power mode as the controller sees it."""

    id: int
    name: str
    online_cores: int
    needs_reboot: bool = False  # from the current mode: never chosen unless a policy allows it
    detail: str = ""
    rank: float = 0.0  # higher = more capable; orders modes for "never step up over budget"
    # The clocks the mode allows, in MHz (the highest CPU cluster cap for the CPU), for a
    # controller that models speed and power over clocks; None where the platform cannot say.
    cpu_mhz: float | None = None
    gpu_mhz: float | None = None
    emc_mhz: float | None = None


def by_capability(modes: tuple[PowerModeInfo, ...]) -> tuple[str, ...]:
    """Mode names from most to least capable (file order on a Jetson is not capability order)."""
    return tuple(m.name for m in sorted(modes, key=lambda m: -m.rank))


class PowerModeError(Exception):
    """A power-mode change that cannot or must not happen. The message says why, for the user."""


class RebootRequired(PowerModeError):
    pass


class PowerModesUnsupported(PowerModeError):
    pass


class Platform(Protocol):
    name: str

    def cpu_ids(self) -> tuple[int, ...]:
        """CPUs the workloads may use now (a power mode can shrink this set)."""
        ...

    def clusters(self) -> tuple[tuple[int, ...], ...]:
        """CPU clusters (cores that share a clock and cache), for placement by cluster."""
        ...

    def attach(self, pid: int) -> None:
        """A workload process the platform manages (host mode emulation applies to it)."""
        ...

    def place(self, pid: int, cpus: Sequence[int] | None) -> None:
        """Pin a process and all its threads and descendants to `cpus` (None: all `cpu_ids()`)."""
        ...

    def telemetry(self) -> TelemetrySample: ...

    def power_modes(self) -> tuple[PowerModeInfo, ...]:
        """Every mode this device offers; empty when power modes are unsupported."""
        ...

    def current_power_mode(self) -> PowerModeInfo | None: ...

    def set_power_mode(self, mode: int | str) -> PowerModeInfo:
        """Switch mode, or raise PowerModeError (RebootRequired, PowerModesUnsupported, ...)."""
        ...

    def describe(self) -> dict[str, object]:
        """What was detected and what is supported, for `cotrain platform info` and events."""
        ...

    def restore(self) -> None:
        """Undo every device change this platform made. Safe to call more than once."""
        ...

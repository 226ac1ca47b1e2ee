"""The Platform interface: what the runtime needs from a device, whatever the device is.

Real and fake implementations are injected through constructors (roots, binaries, clocks), never
switched on an environment variable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TelemetrySample:
    """One reading of the device. Fields a platform cannot measure are None."""

    cpu_util_percent: float | None
    per_cpu_util_percent: tuple[float, ...] | None
    memory_used_mb: float | None
    power_w: float | None = None
    temperature_c: float | None = None


class Platform(Protocol):
    name: str

    def cpu_ids(self) -> tuple[int, ...]:
        """CPUs this run may use (the affinity cotrain itself was started with)."""
        ...

    def place(self, pid: int, cpus: Sequence[int] | None) -> None:
        """Pin a process and all its threads and descendants to `cpus` (None: all `cpu_ids()`)."""
        ...

    def telemetry(self) -> TelemetrySample: ...

    def describe(self) -> dict[str, object]:
        """What was detected, for `processes.json`/events and `cotrain platform info`."""
        ...

    def restore(self) -> None:
        """Undo every device change this platform made. Safe to call more than once."""
        ...

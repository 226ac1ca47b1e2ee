"""Host power telemetry: CPU package energy from RAPL, GPU board power from NVML.

A host has no board-level power sensor that cotrain can read, but two partial ones are common:
- RAPL (Intel, and AMD through the same driver): a cumulative energy counter per CPU package in
  `/sys/class/powercap/intel-rapl:N/energy_uj`. Power is the energy between two readings over
  the time between them, so the first reading gives no watts. Since Linux 5.10 the counter is
  readable by root only (CVE-2020-8694), and VMs expose no powercap at all.
- NVML (`pynvml`, from the nvidia-ml-py package): each NVIDIA GPU's power draw in mW, on hosts
  with the NVIDIA driver.
Neither covers the whole machine (memory, disks, fans, PSU losses), so their sum reads lower
than power at the wall. Each reader says whether it works here and, if not, why, so `platform
info` can tell the user exactly what `power_w` measures.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

_PACKAGE_DOMAIN = re.compile(r"intel-rapl:\d+")  # top level; `intel-rapl:0:1` are its subdomains


class PowerReader(Protocol):
    """A source of power readings. `read_w` is None when there is no reading this time."""

    @property
    def available(self) -> bool: ...

    @property
    def reason(self) -> str:
        """What is measured when available; why not otherwise."""
        ...

    def read_w(self) -> float | None: ...


@dataclass(frozen=True)
class _RaplDomain:
    name: str
    energy_path: Path
    max_energy_range_uj: int | None


class RaplReader:
    """Average CPU package power between consecutive `read_w` calls, from RAPL energy counters.

    Sums the top-level `intel-rapl:N` package domains. A top-level domain named `psys` (the
    platform domain of some laptops) is left out, because it already contains the packages.
    A counter that went down wrapped at its `max_energy_range_uj`.
    """

    def __init__(
        self,
        powercap_root: Path = Path("/sys/class/powercap"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._previous: tuple[float, dict[str, int]] | None = None
        self._domains: tuple[_RaplDomain, ...] = ()
        if not powercap_root.is_dir():
            self._reason = f"no {powercap_root}: no powercap driver is loaded (a VM has none)"
            return
        domains = [
            d
            for d in sorted(powercap_root.iterdir(), key=lambda p: p.name)
            if _PACKAGE_DOMAIN.fullmatch(d.name) and _read(d / "name") != "psys"
        ]
        if not domains:
            self._reason = f"no intel-rapl:N package domain under {powercap_root}"
            return
        unreadable = [d.name for d in domains if _read_int(d / "energy_uj") is None]
        if unreadable:
            self._reason = (
                f"{', '.join(unreadable)} energy_uj under {powercap_root} is not readable "
                "(root only since Linux 5.10)"
            )
            return
        self._domains = tuple(
            _RaplDomain(d.name, d / "energy_uj", _read_int(d / "max_energy_range_uj")) for d in domains
        )
        self._reason = f"RAPL package energy ({', '.join(d.name for d in self._domains)})"

    @property
    def available(self) -> bool:
        return bool(self._domains)

    @property
    def reason(self) -> str:
        return self._reason

    def read_w(self) -> float | None:
        """Watts since the previous call; None on the first call, or when a counter is unreadable
        or wrapped without a known range (the next call starts afresh)."""
        if not self._domains:
            return None
        now = self._clock()
        energy: dict[str, int] = {}
        for domain in self._domains:
            value = _read_int(domain.energy_path)
            if value is None:
                self._previous = None
                return None
            energy[domain.name] = value
        previous, self._previous = self._previous, (now, energy)
        if previous is None:
            return None
        then, before = previous
        if now <= then:
            return None
        total_uj = 0
        for domain in self._domains:
            delta = energy[domain.name] - before[domain.name]
            if delta < 0:
                if domain.max_energy_range_uj is None:
                    return None
                delta += domain.max_energy_range_uj
            total_uj += delta
        return total_uj / 1e6 / (now - then)


class NvmlModule(Protocol):
    """The part of `pynvml` used here (a stub in tests)."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int: ...


class NvmlReader:
    """The summed power draw of every NVIDIA GPU that reports one, through NVML.

    `nvml` is the pynvml module, imported when not given. Unavailable (with the reason) when it
    cannot be imported, `nvmlInit` fails (no driver: "NVML Shared Library Not Found"), there is no
    GPU, or no GPU reports its power. A GPU that does not report power is left out, and `reason`
    names it, because the sum then covers fewer GPUs than there are.
    """

    def __init__(self, nvml: NvmlModule | None = None) -> None:
        self._nvml: NvmlModule | None = None
        self._handles: list[Any] = []
        if nvml is None:
            try:
                nvml = cast(NvmlModule, importlib.import_module("pynvml"))
            except ImportError as exc:
                self._reason = f"pynvml is not importable ({exc})"
                return
        try:
            nvml.nvmlInit()
        except Exception as exc:  # pynvml raises NVMLError subclasses, or OSError from the loader
            self._reason = f"NVML did not initialise ({type(exc).__name__}: {exc})"
            return
        self._nvml = nvml
        try:
            count = nvml.nvmlDeviceGetCount()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:
            self.close()
            self._reason = f"NVML lists no GPUs ({type(exc).__name__}: {exc})"
            return
        silent: list[int] = []
        for index, handle in enumerate(handles):
            try:
                nvml.nvmlDeviceGetPowerUsage(handle)
            except Exception:
                silent.append(index)
            else:
                self._handles.append(handle)
        if not self._handles:
            self.close()
            self._reason = f"NVML: none of {count} GPU(s) reports its power"
            return
        left_out = f"; GPU(s) {silent} report no power and are left out" if silent else ""
        self._reason = f"NVML power of {len(self._handles)} GPU(s){left_out}"

    @property
    def available(self) -> bool:
        return self._nvml is not None and bool(self._handles)

    @property
    def reason(self) -> str:
        return self._reason

    def read_w(self) -> float | None:
        """The current draw of the GPUs in W; None if NVML is unavailable or a reading fails."""
        if self._nvml is None or not self._handles:
            return None
        try:
            return sum(self._nvml.nvmlDeviceGetPowerUsage(h) for h in self._handles) / 1000.0
        except Exception:  # a GPU fell off the bus, the driver was unloaded
            return None

    def close(self) -> None:
        """Release NVML. Idempotent; the reader is unavailable afterwards."""
        nvml, self._nvml = self._nvml, None
        self._handles = []
        if nvml is not None:
            self._reason = "NVML was closed"
            with contextlib.suppress(Exception):  # shutting down: nothing left to report it to
                nvml.nvmlShutdown()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _read_int(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text.isdecimal() else None

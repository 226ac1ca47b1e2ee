"""Device backends behind one interface: placement, power modes, telemetry and restore-on-exit.

`HostPlatform` drives any Linux host; `JetsonPlatform` a Jetson (jtop / nvpmodel / tegrastats /
sysfs). The simulated Orin (`cotrain/sim/`) is not a `Platform`: it is a discrete-event engine of
its own, reached through `cotrain bench --platform sim`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cotrain.config import HostPlatformConfig, JetsonPlatformConfig, PlatformConfig
from cotrain.platform.base import Platform, PowerModeError, PowerModeInfo, TelemetrySample
from cotrain.platform.host import HostPlatform

__all__ = [
    "HostPlatform",
    "Platform",
    "PowerModeError",
    "PowerModeInfo",
    "TelemetrySample",
    "create_platform",
    "detect_kind",
]


def detect_kind(root: Path = Path("/")) -> str:
    """`jetson` when the device tree or L4T release file says so, else `host`."""
    for candidate in (root / "etc/nv_tegra_release", root / "proc/device-tree/model"):
        try:
            text = candidate.read_bytes().decode(errors="replace")
        except OSError:
            continue
        if candidate.name == "nv_tegra_release" or "jetson" in text.lower():
            return "jetson"
    return "host"


def create_platform(
    config: PlatformConfig | None = None, warn: Callable[[str], None] | None = None
) -> Platform:
    config = config or HostPlatformConfig(kind="host")
    if isinstance(config, HostPlatformConfig):
        return HostPlatform(enable_quota=config.cpu_quota)
    if isinstance(config, JetsonPlatformConfig):
        from cotrain.platform.jetson import JetsonPaths, JetsonPlatform, default_jtop_factory

        paths = JetsonPaths(
            root=Path(config.root),
            nvpmodel=config.nvpmodel,
            tegrastats=config.tegrastats,
            nvpmodel_conf=Path(config.nvpmodel_conf) if config.nvpmodel_conf else None,
        )
        return JetsonPlatform(
            paths,
            jtop_factory=default_jtop_factory if config.jtop else None,
            warn=warn,
            tegrastats_interval_ms=config.telemetry_interval_ms,
        )
    raise ValueError(f"unknown platform {config!r}")

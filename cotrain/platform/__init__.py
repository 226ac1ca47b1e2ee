"""Device backends behind one interface: placement, telemetry and restore-on-exit.

`HostPlatform` drives any Linux host. Jetson and simulated backends implement the same
`Platform` protocol (see base.py) and are chosen by `platform.kind` in the experiment config.
"""

from cotrain.platform.base import Platform, TelemetrySample
from cotrain.platform.host import HostPlatform

__all__ = ["HostPlatform", "Platform", "TelemetrySample", "create_platform"]


def create_platform(kind: str) -> Platform:
    if kind == "host":
        return HostPlatform()
    raise ValueError(f"unknown platform kind {kind!r}")

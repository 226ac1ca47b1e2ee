"""Print pip constraints that keep what the system already has: NVIDIA's torch and torchvision
builds for JetPack, and the jetson-stats whose jtop.service is running.

Why: a venv made with --system-site-packages sees NVIDIA's wheels, but pip may still "upgrade"
them from PyPI (a CPU-only or wrong-CUDA build) when another requirement allows a newer one.
Pinning each to the installed version makes pip keep it. jtop refuses a client whose
major.minor differs from its service's, and the service runs from the system's jetson-stats, so
the venv is held to that major.minor. Run with the system Python: `python3 installed_pins.py`.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version


def pins() -> list[str]:
    lines = []
    for dist in ("torch", "torchvision"):
        try:
            lines.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            print(f"installed_pins: no {dist} on this Python; install NVIDIA's wheel first", file=sys.stderr)
    try:
        major_minor = ".".join(version("jetson-stats").split(".")[:2])
        lines.append(f"jetson-stats=={major_minor}.*")
    except PackageNotFoundError:
        pass  # no jtop.service on this system: the jetson extra takes any version
    return lines


if __name__ == "__main__":
    print("\n".join(pins()))

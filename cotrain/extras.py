"""Optional extras: what each adds, how to tell it is installed, and the command that installs it.

The core install stays small and permissively licensed. Flower (`cotrain[federated]`) is only
needed by federated jobs, and jetson-stats (`cotrain[jetson]`, AGPL-3.0-or-later) only on a
Jetson, for jtop telemetry and mode switching through jtop.service. A config that needs an extra
which is not installed is refused before anything starts, with the command that fixes it,
rather than failing after the models have loaded.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version


@dataclass(frozen=True)
class Extra:
    name: str  # cotrain[<name>]
    module: str  # what `import` must find
    distribution: str  # the PyPI package
    needs: str  # what in a config needs it
    min_python: tuple[int, int] = (3, 10)
    also: tuple[str, ...] = ()  # further modules the extra brings

    @property
    def install(self) -> str:
        return f"pip install 'cotrain[{self.name}]'"


FEDERATED = Extra("federated", "flwr", "flwr", "federated training jobs (kind: federated)", (3, 11))
JETSON = Extra("jetson", "jtop", "jetson-stats", "jtop telemetry and mode switching on a Jetson")
SERVE = Extra(
    "serve",
    "tritonclient.grpc",
    "tritonclient",
    "the network front end (ingress) and cotrain load",
    also=("grpc", "uvicorn", "prometheus_client"),
)
EXTRAS = (FEDERATED, JETSON, SERVE)


def installed(extra: Extra) -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in (extra.module, *extra.also))
    except (ImportError, ValueError):  # a broken or half-installed package
        return False


def installed_version(extra: Extra) -> str | None:
    try:
        return version(extra.distribution)
    except PackageNotFoundError:
        return None


def missing_reason(extra: Extra, python: tuple[int, int] | None = None) -> str | None:
    """None when the extra is usable here; else why not and what to do, in one sentence."""
    running = python or (sys.version_info.major, sys.version_info.minor)
    if running < extra.min_python:
        wanted = ".".join(map(str, extra.min_python))
        return (
            f"{extra.needs} need {extra.distribution}, which needs Python >= {wanted} "
            f"(this is {running[0]}.{running[1]}); use a Python {wanted} venv and {extra.install}"
        )
    if not installed(extra):
        return f"{extra.needs} need {extra.distribution}, which is not installed: {extra.install}"
    return None

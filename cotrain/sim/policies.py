"""The registered controllers as the simulated board builds them.

A real Jetson tells a controller which power modes it offers and at which clocks (nvpmodel.conf
and the DVFS tables); the simulated Orin does the same through `mode_table`: every mode of the
board's space the runtime's power-mode guard would let the run switch to (no reboot: the same
GPU TPC gating as the starting mode). `adaptive` gets that table and searches it; every other
policy is built from its config exactly as the runtime builds it.
"""

from __future__ import annotations

from cotrain.config import AdaptiveControllerConfig, ControllerConfig, parse_controller
from cotrain.controllers.adaptive import AdaptivePolicy
from cotrain.controllers.base import Policy
from cotrain.controllers.modesearch import ModeInfo
from cotrain.controllers.registry import build_policy
from cotrain.controllers.wrappers import PowerModeRules
from cotrain.sim.modes import ModeSpace


def mode_table(space: ModeSpace, rules: PowerModeRules) -> tuple[ModeInfo, ...]:
    """The modes a controller may switch to, with their clocks, named as the platform names them
    (nvpmodel names for the named modes, `c12-cpu…-gpu…-emc…` for custom ones)."""
    allowed = rules.allowed
    table = []
    for m in space.modes:
        name = space.label(m)
        if name in rules.needs_reboot and not rules.allow_reboot_modes:
            continue
        if allowed is not None and name not in allowed:
            continue
        table.append(ModeInfo(name, m.cores, m.cpu_mhz, m.gpu_mhz, m.emc_mhz, m.gpu_tpcs))
    return tuple(table)


def sim_policy(controller: str | ControllerConfig, space: ModeSpace, rules: PowerModeRules) -> Policy:
    """A registered controller (by name: with its config's defaults); `adaptive` with the mode table."""
    config = parse_controller({"name": controller}) if isinstance(controller, str) else controller
    if isinstance(config, AdaptiveControllerConfig):
        return AdaptivePolicy(
            config.max_profiles,
            config.profile_windows,
            config.headroom,
            config.replan_rate_change,
            modes=mode_table(space, rules),
        )
    return build_policy(config)

"""The simulated board as a controller sees it, and the registered controllers built on it.

A real Jetson tells a controller which power modes it offers and at which clocks (nvpmodel.conf
and the DVFS tables); the simulated Orin does the same through its mode space. `sim_capabilities`
is the simulator's counterpart of the runtime's `run_capabilities`: from it, `assemble_policy`
builds and wraps a controller exactly as the runtime does, so `adaptive` searches the modes the
runtime's power-mode guard would let the run switch to (no reboot: the same GPU TPC gating as
the starting mode).
"""

from __future__ import annotations

from cotrain.config import ControllerConfig, parse_controller
from cotrain.controllers.base import Policy
from cotrain.controllers.capabilities import Capabilities, searchable_modes
from cotrain.controllers.modesearch import ModeInfo
from cotrain.controllers.registry import build_policy
from cotrain.controllers.wrappers import PowerModeRules
from cotrain.sim.modes import ModeSpace
from cotrain.sim.scenario import SimScenario


def _mode_infos(space: ModeSpace) -> tuple[ModeInfo, ...]:
    """Every mode of the board with its clocks, named as the platform names them (nvpmodel names
    for the named modes, `c12-cpu…-gpu…-emc…` for custom ones)."""
    return tuple(
        ModeInfo(space.label(m), m.cores, m.cpu_mhz, m.gpu_mhz, m.emc_mhz, m.gpu_tpcs) for m in space.modes
    )


def mode_table(space: ModeSpace, rules: PowerModeRules) -> tuple[ModeInfo, ...]:
    """The modes a controller may switch to, with their clocks."""
    return searchable_modes(_mode_infos(space), rules)


def sim_capabilities(
    scenario: SimScenario, space: ModeSpace, rules: PowerModeRules | None = None
) -> Capabilities:
    """What the simulated board offers: its largest mode's cores, every mode with its clocks,
    and the guard's `rules` (None: any mode of the space goes, no guard)."""
    cores = max(m.cores for m in space.modes)

    def canonical(name: str) -> str:
        return space.label(space.resolve(name)) if name in space.names() else name

    return Capabilities(
        cpus=tuple(range(cores)),
        queue_capacity=scenario.queue_capacity,
        jobs=frozenset(j.name for j in scenario.training),
        mode_names=space.names(),
        modes=_mode_infos(space),
        power_rules=rules,
        canonical_mode=canonical,
    )


def sim_policy(
    controller: str | ControllerConfig, scenario: SimScenario, space: ModeSpace, rules: PowerModeRules
) -> Policy:
    """A registered controller (by name: with its config's defaults), unwrapped, built on the
    simulated board's capabilities; `run_policy` wraps it."""
    config = parse_controller({"name": controller}) if isinstance(controller, str) else controller
    return build_policy(config, sim_capabilities(scenario, space, rules))

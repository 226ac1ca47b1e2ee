"""What a device offers a controller, and the one place a configured policy is built and wrapped.

The runtime learns it from the platform (CPUs, nvpmodel modes and their clocks, the power-mode
policy file); the simulator from its board's mode space. Both hand a `Capabilities` to
`assemble_policy`, so a controller meets the same bounds, the same power-mode guard and the same
construction (for `adaptive`, the same mode table) on a real device and in simulation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from cotrain.config import ControllerConfig
from cotrain.controllers.base import Policy
from cotrain.controllers.modesearch import ModeInfo
from cotrain.controllers.wrappers import (
    Bounded,
    CanonicalModeNames,
    KnobBounds,
    PowerModeGuard,
    PowerModeRules,
)

NO_MODE_IDS: Mapping[str, str] = MappingProxyType({})
MAX_QUEUE_DELAY_MS = 60_000.0


@dataclass(frozen=True)
class Capabilities:
    """The device and the run as a controller may use them.

    `modes` are every power mode with its clocks, or empty where the platform cannot tell clocks
    (a host's emulated modes); `searchable_modes` narrows them to what the guard would allow.
    `mode_names` are all the names a policy may ask a mode by (None: the device has no modes).
    `canonical_mode` maps an accepted alias to the name the guard's rules use (the simulated
    board accepts `50W` for `MODE_50W`); None where names are already canonical."""

    cpus: tuple[int, ...]
    queue_capacity: int
    jobs: frozenset[str]
    variants: frozenset[str] | None = None
    mode_names: frozenset[str] | None = None
    mode_names_by_id: Mapping[str, str] = field(default_factory=lambda: NO_MODE_IDS)
    modes: tuple[ModeInfo, ...] = ()
    power_rules: PowerModeRules | None = None
    canonical_mode: Callable[[str], str] | None = None

    def knob_bounds(self) -> KnobBounds:
        """The range of every knob: batch up to the queue, threads up to the CPUs, loader workers
        up to two per CPU (beyond that they only contend for the same cores)."""
        n = max(1, len(self.cpus))
        return KnobBounds(
            max_batch_size=(1, max(1, self.queue_capacity)),
            max_queue_delay_ms=(0.0, MAX_QUEUE_DELAY_MS),
            threads=(1, n),
            num_workers=(0, 2 * n),
            cpus=self.cpus,
            jobs=self.jobs,
            power_modes=self.mode_names,
            variants=self.variants,
        )

    def searchable_modes(self) -> tuple[ModeInfo, ...]:
        return searchable_modes(self.modes, self.power_rules)


def searchable_modes(modes: Sequence[ModeInfo], rules: PowerModeRules | None) -> tuple[ModeInfo, ...]:
    """The modes a search may plan over: those the power-mode guard would let the run switch to
    (no reboot unless the policy file allows it, within its allowed list), so a controller never
    plans around a mode it cannot have."""
    if rules is None:
        return tuple(modes)
    return tuple(
        m
        for m in modes
        if (m.name not in rules.needs_reboot or rules.allow_reboot_modes)
        and (rules.allowed is None or m.name in rules.allowed)
    )


def wrap_policy(policy: Policy, caps: Capabilities) -> Policy:
    """Safety every policy gets: its knobs clamped into the bounds, a mode alias renamed, and every
    power-mode change judged by the guard (dwell, budget, reboot, allowed list)."""
    wrapped: Policy = Bounded(policy, caps.knob_bounds())
    if caps.canonical_mode is not None:
        wrapped = CanonicalModeNames(wrapped, caps.canonical_mode)
    if caps.power_rules is not None:
        wrapped = PowerModeGuard(wrapped, caps.power_rules)
    return wrapped


def assemble_policy(config: ControllerConfig, caps: Capabilities, policy: Policy | None = None) -> Policy:
    """The configured controller (or `policy`, when a caller supplies its own), built from
    `caps` and wrapped: what the runtime and the simulator both run."""
    from cotrain.controllers.registry import build_policy

    return wrap_policy(policy if policy is not None else build_policy(config, caps), caps)

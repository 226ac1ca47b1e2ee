"""Policies by name. The config's `controller.name` picks one; tests run the contract over all."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cotrain.config import (
    AdaptiveControllerConfig,
    AimdControllerConfig,
    ControllerConfig,
    KnobChangesConfig,
    LadderControllerConfig,
    NaiveControllerConfig,
    ScheduleControllerConfig,
    SequentialControllerConfig,
    StaticControllerConfig,
)
from cotrain.control import Action, InferenceChange, TrainingChange
from cotrain.controllers.adaptive import AdaptivePolicy
from cotrain.controllers.aimd import AimdPolicy
from cotrain.controllers.base import Policy
from cotrain.controllers.capabilities import NO_MODE_IDS, Capabilities
from cotrain.controllers.ladder import LadderPolicy
from cotrain.controllers.naive import NaivePolicy
from cotrain.controllers.schedule import ScheduledAction, SchedulePolicy
from cotrain.controllers.sequential import SequentialPolicy
from cotrain.controllers.static import StaticPolicy

NO_CAPABILITIES = Capabilities(cpus=(), queue_capacity=1, jobs=frozenset())


def action_from_config(
    changes: KnobChangesConfig, reason: str = "", mode_names_by_id: Mapping[str, str] = NO_MODE_IDS
) -> Action:
    """The Action a config's knob changes describe. A power mode given by its id (`power_mode: 2`,
    as nvpmodel numbers them) becomes the platform's name for it here, once: every rule after
    this (the bounds, the guard, the policy file) speaks names."""
    inference = None
    if changes.inference is not None:
        i = changes.inference
        inference = InferenceChange(
            variant=i.variant,
            max_batch_size=i.max_batch_size,
            max_queue_delay_ms=i.max_queue_delay_ms,
            threads=i.threads,
            cpus=tuple(i.cpus) if i.cpus is not None else None,
            instances=i.instances,
        )
    training = {
        job: TrainingChange(
            threads=t.threads,
            cpus=tuple(t.cpus) if t.cpus is not None else None,
            num_workers=t.num_workers,
            paused=t.paused,
            batch_size=t.batch_size,
            duty_cycle=t.duty_cycle,
            gate_policy=t.interleave.policy if t.interleave is not None else None,
            gate_max_wait_ms=t.interleave.max_wait_ms if t.interleave is not None else None,
        )
        for job, t in changes.training.items()
    }
    power_mode = None if changes.power_mode is None else str(changes.power_mode)
    if power_mode is not None:
        power_mode = mode_names_by_id.get(power_mode, power_mode)
    return Action(inference=inference, training=training, power_mode=power_mode, reason=reason)


def _static(config: ControllerConfig, caps: Capabilities) -> Policy:
    return StaticPolicy()


def _schedule(config: ControllerConfig, caps: Capabilities) -> Policy:
    assert isinstance(config, ScheduleControllerConfig)
    return SchedulePolicy(
        [
            ScheduledAction(s.at_s, action_from_config(s.set, mode_names_by_id=caps.mode_names_by_id))
            for s in config.steps
        ]
    )


def _adaptive(config: ControllerConfig, caps: Capabilities) -> Policy:
    assert isinstance(config, AdaptiveControllerConfig)
    # a platform that reports its modes' clocks: adaptive searches the power modes too
    return AdaptivePolicy(
        config.max_profiles,
        config.profile_windows,
        config.headroom,
        config.replan_rate_change,
        modes=caps.searchable_modes(),
    )


def _ladder(config: ControllerConfig, caps: Capabilities) -> Policy:
    assert isinstance(config, LadderControllerConfig)
    return LadderPolicy(config.headroom, config.up_after_windows)


def _naive(config: ControllerConfig, caps: Capabilities) -> Policy:
    return NaivePolicy()


def _sequential(config: ControllerConfig, caps: Capabilities) -> Policy:
    return SequentialPolicy()


def _aimd(config: ControllerConfig, caps: Capabilities) -> Policy:
    assert isinstance(config, AimdControllerConfig)
    return AimdPolicy(config.additive_step, config.decrease_factor, config.headroom)


_REGISTRY: dict[type, tuple[str, Callable[[ControllerConfig, Capabilities], Policy]]] = {
    AdaptiveControllerConfig: ("adaptive", _adaptive),
    LadderControllerConfig: ("ladder", _ladder),
    StaticControllerConfig: ("static", _static),
    ScheduleControllerConfig: ("schedule", _schedule),
    NaiveControllerConfig: ("naive", _naive),
    SequentialControllerConfig: ("sequential", _sequential),
    AimdControllerConfig: ("aimd", _aimd),
}


def registered_policies() -> list[str]:
    return sorted(name for name, _ in _REGISTRY.values())


def build_policy(config: ControllerConfig, caps: Capabilities = NO_CAPABILITIES) -> Policy:
    """The configured policy, unwrapped (`assemble_policy` wraps it). From `caps` it takes what a
    policy plans with: the platform's mode ids for configs that name a mode by id, and for
    `adaptive` the modes it may search."""
    _, factory = _REGISTRY[type(config)]
    return factory(config, caps)

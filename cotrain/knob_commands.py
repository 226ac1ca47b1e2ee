"""The one mapping from knob settings to the commands a worker gets.

A knob reaches its worker by one path: `Runtime.actuate` sends what an action changed, and a
restarted worker's resume sends every knob as it stands; both ask these functions which
messages that means, so the mapping from a knob to its message is written once. CPU placement
is not a message (the platform pins the worker's process), so it comes back as `place`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from cotrain.control import InferenceKnobs, TrainingKnobs
from cotrain.messages import (
    Command,
    SetBatching,
    SetBatchSize,
    SetDutyCycle,
    SetInstances,
    SetInterleave,
    SetNumWorkers,
    SetPaused,
    SetThreads,
    SetVariant,
)


@dataclass(frozen=True)
class KnobCommands:
    messages: tuple[Command, ...]
    place: bool  # pin the worker's process to `cpus` (None: every CPU of the run)
    cpus: tuple[int, ...] | None = None


def _wanted(changed: Collection[str] | None, *knobs: str) -> bool:
    return changed is None or any(k in changed for k in knobs)


def inference_commands(
    knobs: InferenceKnobs, changed: Collection[str] | None = None, *, has_variants: bool = True
) -> KnobCommands:
    """The commands that set the inference service's knobs `changed` (None: all of them, as a
    restarted worker needs) to their values in `knobs`. Batch size and queue delay travel in
    one SetBatching, so the batcher never sees half a change."""
    messages: list[Command] = []
    if knobs.variant is not None and has_variants and _wanted(changed, "variant"):
        messages.append(SetVariant(knobs.variant))
    if _wanted(changed, "max_batch_size", "max_queue_delay_ms"):
        messages.append(SetBatching(knobs.max_batch_size, knobs.max_queue_delay_ms))
    if _wanted(changed, "threads"):
        messages.append(SetThreads(knobs.threads))
    if _wanted(changed, "instances"):
        messages.append(SetInstances(knobs.instances))
    place = "cpus" in changed if changed is not None else knobs.cpus is not None
    return KnobCommands(tuple(messages), place, knobs.cpus)


def training_commands(knobs: TrainingKnobs, changed: Collection[str] | None = None) -> KnobCommands:
    """The commands that set a training job's knobs `changed` (None: all) to their values in
    `knobs`. The gate's policy and its wait bound travel together in one SetInterleave; pausing
    comes last, so a resumed job takes up its other settings before it trains again."""
    messages: list[Command] = []
    if _wanted(changed, "threads"):
        messages.append(SetThreads(knobs.threads))
    if _wanted(changed, "num_workers"):
        messages.append(SetNumWorkers(knobs.num_workers))
    if _wanted(changed, "batch_size"):
        messages.append(SetBatchSize(knobs.batch_size))
    if _wanted(changed, "duty_cycle"):
        messages.append(SetDutyCycle(knobs.duty_cycle))
    if _wanted(changed, "gate_policy", "gate_max_wait_ms"):
        messages.append(SetInterleave(knobs.gate_policy, knobs.gate_max_wait_ms))
    if _wanted(changed, "paused"):
        messages.append(SetPaused(knobs.paused))
    place = "cpus" in changed if changed is not None else knobs.cpus is not None
    return KnobCommands(tuple(messages), place, knobs.cpus)

"""Every command reaches a worker that handles it, or the worker says it was sent to the wrong
one: a knob routed to the wrong process must be seen, not silently ignored."""

from __future__ import annotations

import threading
import typing
from dataclasses import replace
from itertools import repeat
from pathlib import Path

from cotrain.messages import (
    Applied,
    Command,
    CommandRefused,
    LoadModel,
    SetBatching,
    SetBatchSize,
    SetDutyCycle,
    SetInstances,
    SetInterleave,
    SetNumWorkers,
    SetPaused,
    SetThreads,
    SetVariant,
    Start,
    Stop,
)
from cotrain.workloads.inference.service import InferenceService
from tests.fakes import FakeChannel
from tests.test_service import inference_config
from tests.test_trainer import make_trainer

INFERENCE_ONLY: list[Command] = [
    SetBatching(4, 5.0),
    SetVariant("m"),
    SetInstances(1),
    LoadModel("x", 1, "cl"),
]
TRAINING_ONLY: list[Command] = [
    SetNumWorkers(0),
    SetPaused(False),
    SetBatchSize(8),
    SetDutyCycle(1.0),
    SetInterleave("off", None),
]
BOTH: list[Command] = [SetThreads(1), Stop()]


def test_the_lists_above_name_every_command() -> None:
    named = {type(c) for c in INFERENCE_ONLY + TRAINING_ONLY + BOTH} | {Start}  # Start: before the loop
    assert named == set(typing.get_args(Command))


def test_the_inference_worker_refuses_training_knobs_and_handles_its_own(tmp_path: Path) -> None:
    channel = FakeChannel()
    service = InferenceService(
        inference_config(), tmp_path / "requests.csv", channel, lambda b: [0] * len(b), "m", repeat(0)
    )  # type: ignore[arg-type]
    listener = threading.Thread(target=service.listen, daemon=True)
    listener.start()
    for command in [*TRAINING_ONLY, Start(0), SetBatching(4, 5.0), Stop()]:
        channel.commands.put(command)
    listener.join(timeout=30)
    assert not listener.is_alive()
    refused = [m.command for m in channel.of_type(CommandRefused)]
    assert refused == [type(c).__name__ for c in TRAINING_ONLY] + ["Start"]
    assert any(isinstance(m, Applied) and m.knob == "max_batch_size" for m in channel.sent)


def test_the_trainer_refuses_inference_knobs_and_handles_its_own(tmp_path: Path) -> None:
    trainer, channel = make_trainer(tmp_path)
    for command in [*INFERENCE_ONLY, Start(0), *TRAINING_ONLY]:
        trainer.handle(command)
    trainer.writer.close()
    refused = [m.command for m in channel.of_type(CommandRefused)]
    assert refused == [type(c).__name__ for c in INFERENCE_ONLY] + ["Start"]
    applied = {m.knob for m in channel.of_type(Applied)}
    assert applied == {"num_workers", "paused", "batch_size", "duty_cycle", "interleave"}


def test_every_knob_has_one_path_to_its_worker() -> None:
    """Each knob of InferenceKnobs and TrainingKnobs, changed alone, yields a command (or a
    placement) for its worker, and a restarted worker gets every knob as it stands."""
    from dataclasses import fields

    from cotrain.control import InferenceKnobs, TrainingKnobs
    from cotrain.knob_commands import inference_commands, training_commands

    inference = InferenceKnobs(8, 20.0, 2, (0,), variant="resnet18/fp32", instances=2)
    training = TrainingKnobs(1, (1,), 2, False, batch_size=16, duty_cycle=0.5, gate_policy="yield")
    for f in fields(InferenceKnobs):
        one = inference_commands(inference, {f.name})
        assert one.messages or one.place, f"inference knob {f.name} reaches no worker"
    for f in fields(TrainingKnobs):
        one = training_commands(training, {f.name})
        assert one.messages or one.place, f"training knob {f.name} reaches no worker"
    full = inference_commands(inference)
    assert [type(m).__name__ for m in full.messages] == [
        "SetVariant",
        "SetBatching",
        "SetThreads",
        "SetInstances",
    ]
    assert full.place and full.cpus == (0,)
    resumed = training_commands(training)
    assert type(resumed.messages[-1]).__name__ == "SetPaused", "unpaused only once everything else is set"
    assert len(resumed.messages) == 6 and resumed.place
    assert not training_commands(replace(training, cpus=None)).place, "unpinned: nothing to pin on a restart"
    assert inference_commands(inference, {"max_queue_delay_ms"}).messages == (
        inference_commands(inference, {"max_batch_size"}).messages
    )

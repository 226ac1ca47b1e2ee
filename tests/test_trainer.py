"""The training loop in-process: knobs apply at step boundaries, pause uses no steps,
checkpoints are atomic and a corrupt newest one falls back to the previous."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from cotrain.config import TrainingJobConfig, parse_config
from cotrain.gate import InterleavingGate
from cotrain.messages import Applied, SetBatchSize, SetNumWorkers, SetPaused, SetThreads, Stop, TrainingStats
from cotrain.records import read_csv_rows
from cotrain.workloads.training.checkpoint import list_checkpoints, load_latest, save_checkpoint
from cotrain.workloads.training.trainer import Trainer
from tests.conftest import TINY
from tests.fakes import FakeChannel


def job(**overrides: object) -> TrainingJobConfig:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["workloads"]["training"][0].update(overrides)
    return parse_config(data).workloads.training[0]


def make_trainer(tmp_path: Path, **overrides: object) -> tuple[Trainer, FakeChannel]:
    channel = FakeChannel()
    trainer = Trainer(job(**overrides), tmp_path / "train-cl.csv", tmp_path / "ckpt", channel, threads=1)  # type: ignore[arg-type]
    return trainer, channel


def test_steps_are_recorded_and_loss_is_real(tmp_path: Path) -> None:
    trainer, _ = make_trainer(tmp_path)
    for _ in range(3):
        trainer.train_step()
    trainer.writer.close()
    rows = read_csv_rows(tmp_path / "train-cl.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(int(r["samples"]) == 8 and float(r["loss"]) > 0 for r in rows)
    assert all(float(r["step_ms"]) > 0 for r in rows)


def test_the_window_reports_the_time_spent_waiting_for_data(tmp_path: Path) -> None:
    """The data_ms of the steps, summed over the window: what a controller reads to see that
    the loader keeps training waiting."""
    trainer, channel = make_trainer(tmp_path)
    for _ in range(3):
        trainer.train_step()
    trainer._send_stats()
    trainer.writer.close()
    rows = read_csv_rows(tmp_path / "train-cl.csv")
    stats = channel.of_type(TrainingStats)[-1]
    assert stats.steps == 3
    assert stats.data_wait_ms == pytest.approx(sum(float(r["data_ms"]) for r in rows), abs=0.01)
    assert stats.data_wait_ms > 0


def test_dataloader_workers_change_at_the_next_step(tmp_path: Path) -> None:
    trainer, channel = make_trainer(tmp_path)
    trainer.train_step()
    assert trainer._loader is not None and trainer._loader.num_workers == 0
    trainer.handle(SetNumWorkers(1))
    trainer.train_step()
    assert trainer._loader is not None and trainer._loader.num_workers == 1
    trainer.handle(SetThreads(1))
    trainer.train_step()
    trainer._drop_loader()
    trainer.writer.close()
    rows = read_csv_rows(tmp_path / "train-cl.csv")
    assert [r["num_workers"] for r in rows] == ["0", "1", "1"]
    assert [(a.knob, a.value) for a in channel.of_type(Applied)] == [("num_workers", 1), ("threads", 1)]


def test_a_paused_job_blocks_without_stepping_until_resumed(tmp_path: Path) -> None:
    trainer, channel = make_trainer(tmp_path, paused=True)
    runner = threading.Thread(target=trainer.run, args=(0,), daemon=True)
    runner.start()
    assert channel.waiting.wait(timeout=60)  # blocked on its command channel, not training
    assert trainer.step == 0
    channel.commands.put(SetPaused(False))
    channel.commands.put(Stop())
    runner.join(timeout=60)
    assert not runner.is_alive()
    assert ("paused", False) in [(a.knob, a.value) for a in channel.of_type(Applied)]
    assert channel.of_type(TrainingStats)[-1].paused is False
    if trainer.step == 0:
        assert not list_checkpoints(tmp_path / "ckpt"), "nothing trained, nothing to checkpoint"
    else:
        assert list_checkpoints(tmp_path / "ckpt")[-1].name == f"step-{trainer.step:09d}.pt"


def test_checkpoints_are_pruned_and_a_corrupt_newest_falls_back(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    for step in (10, 20, 30):
        save_checkpoint(directory, step, {"model": {"w": torch.tensor([float(step)])}, "step": step})
    assert [p.name for p in list_checkpoints(directory)] == ["step-000000020.pt", "step-000000030.pt"]
    newest = list_checkpoints(directory)[-1]
    newest.write_bytes(newest.read_bytes()[:20])  # torn write
    latest = load_latest(directory)
    assert latest is not None and latest[1]["step"] == 20
    assert not list(directory.glob(".*.tmp"))


def test_a_new_trainer_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    trainer, _ = make_trainer(tmp_path)
    trainer.train_step()
    trainer.train_step()
    trainer.checkpoint()
    trainer.writer.close()
    resumed, _ = make_trainer(tmp_path)
    assert resumed.step == 2 and resumed.resumed_from is not None
    resumed.writer.close()


def test_batch_size_changes_at_the_next_step(tmp_path: Path) -> None:
    trainer, _ = make_trainer(tmp_path)
    trainer.train_step()
    trainer.handle(SetBatchSize(4))
    trainer.train_step()
    trainer.writer.close()
    rows = read_csv_rows(tmp_path / "train-cl.csv")
    assert [int(r["samples"]) for r in rows] == [8, 4]
    assert [r["batch_size"] for r in rows] == ["8", "4"]


def run_until(trainer: Trainer, channel: FakeChannel, steps: int) -> None:
    """Run the loop in a thread until `steps` steps are done, then stop it."""
    runner = threading.Thread(target=trainer.run, args=(0,), daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while trainer.step < steps:
        assert runner.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)  # polling a counter; the assertions below do not depend on this timing
    channel.commands.put(Stop())
    runner.join(timeout=60)
    assert not runner.is_alive()


def test_duty_cycle_idles_in_proportion_to_the_step(tmp_path: Path) -> None:
    trainer, channel = make_trainer(tmp_path, duty_cycle=0.5)
    run_until(trainer, channel, steps=3)
    rows = read_csv_rows(tmp_path / "train-cl.csv")
    for previous, row in itertools.pairwise(rows):
        busy_ms = float(previous["step_ms"]) + float(previous["data_ms"])
        assert float(row["idle_ms"]) >= 0.95 * busy_ms, "d=0.5: idle at least as long as the step"


class SpyGate(InterleavingGate):
    def __init__(self) -> None:
        super().__init__(mp.get_context("spawn"))
        self.waited = threading.Event()

    def wait_lowered(self, timeout_s: float | None) -> bool:
        self.waited.set()
        return super().wait_lowered(timeout_s)


def start_yielding(tmp_path: Path) -> tuple[Trainer, FakeChannel, SpyGate, threading.Thread]:
    """A trainer with policy `yield` running on a thread, the gate raised as inference holds it."""
    gate = SpyGate()
    gate.set(True)
    channel = FakeChannel()
    trainer = Trainer(
        job(interleave={"policy": "yield"}),
        tmp_path / "t.csv",
        tmp_path / "ck",
        channel,  # type: ignore[arg-type]
        threads=1,
        gate=gate,
    )
    runner = threading.Thread(target=trainer.run, args=(0,), daemon=True)
    runner.start()
    return trainer, channel, gate, runner


def test_yield_waits_while_inference_is_busy_and_resumes_when_it_is_not(tmp_path: Path) -> None:
    trainer, channel, gate, runner = start_yielding(tmp_path)
    assert gate.waited.wait(timeout=60)
    assert trainer.step == 0, "no minibatch while inference holds the gate"
    gate.set(False)
    deadline = time.monotonic() + 60
    while trainer.step < 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a counter
    channel.commands.put(Stop())
    runner.join(timeout=60)
    rows = read_csv_rows(tmp_path / "t.csv")
    assert rows and float(rows[0]["gate_wait_ms"]) > 0


def test_yield_with_max_wait_cannot_starve_training(tmp_path: Path) -> None:
    gate = InterleavingGate(mp.get_context("spawn"))
    gate.set(True)  # inference never lets go
    channel = FakeChannel()
    trainer = Trainer(
        job(interleave={"policy": "yield", "max_wait_ms": 30}),
        tmp_path / "t.csv",
        tmp_path / "ck",
        channel,
        threads=1,
        gate=gate,
    )  # type: ignore[arg-type]
    run_until(trainer, channel, steps=2)
    rows = read_csv_rows(tmp_path / "t.csv")
    assert all(29 <= float(r["gate_wait_ms"]) < 1000 for r in rows[:2])


def test_switching_the_gate_off_ends_a_wait_already_in_progress(tmp_path: Path) -> None:
    """Bug: a trainer already waiting under `yield` kept waiting after SetInterleave("off"), for as
    long as inference held the gate (24 s of no training in a real bench)."""
    from cotrain.messages import SetInterleave

    trainer, channel, gate, runner = start_yielding(tmp_path)  # inference never lets go
    assert gate.waited.wait(timeout=60), "the trainer is waiting on the raised gate"
    assert trainer.step == 0
    channel.commands.put(SetInterleave("off", None))
    deadline = time.monotonic() + 60
    while trainer.step < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a counter; the assertion below does not depend on this timing
    channel.commands.put(Stop())
    runner.join(timeout=60)
    assert trainer.step >= 2, "training runs with the gate still raised once the policy is off"

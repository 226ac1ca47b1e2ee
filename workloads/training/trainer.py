"""The training job process: an SGD loop whose knobs can be turned while it runs.

Every knob is applied at the next step boundary, the only point where changing it is safe:
- threads: `torch.set_num_threads` in the loop's own thread (the setting is per thread);
- dataloader workers and batch size: the DataLoader is rebuilt, so the next batch comes from it;
- pause/resume: the loop blocks on its command channel, using no CPU, until resumed or stopped;
- duty cycle d: after a step of t seconds the loop idles t·(1−d)/d, so it trains a fraction d
  of the time (idle is spent waiting on the command channel, so commands still arrive);
- interleaving: with policy `yield`, before each minibatch the loop waits while the inference
  gate is raised (at most `max_wait_ms` if set; see cotrain/gate.py).
Each application is reported back (`Applied`) and lands in events.jsonl with its time.

One CSV row is written and flushed per step, and an atomic checkpoint every N steps and at stop.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from cotrain.clock import NS_PER_MS, NS_PER_S, Clock, MonotonicClock
from cotrain.config import TrainingJobConfig
from cotrain.gate import InterleavingGate
from cotrain.messages import (
    Applied,
    Command,
    CommandRefused,
    Finished,
    LoadModel,
    Ready,
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
    TrainingStats,
    unhandled,
)
from cotrain.records import TRAIN_COLUMNS, CsvAppender, fmt_s
from cotrain.worker import Channel, exit_now, report_failure, wait_for_start, worker_setup
from cotrain.workloads.data import build_dataset, dataset_num_classes
from cotrain.workloads.models import build_model
from cotrain.workloads.training.checkpoint import load_latest, save_checkpoint


class Trainer:
    def __init__(
        self,
        job: TrainingJobConfig,
        train_csv: Path,
        checkpoint_dir: Path,
        channel: Channel,
        threads: int,
        seed: int = 0,
        clock: Clock | None = None,
        gate: InterleavingGate | None = None,
    ) -> None:
        self.job = job
        self.gate = gate
        self.batch_size = job.batch_size
        self.duty_cycle = job.duty_cycle
        self.gate_policy: str = job.interleave.policy
        self.gate_max_wait_ms = job.interleave.max_wait_ms
        self._last_idle_ms = 0.0
        self.channel = channel
        self.clock = clock or MonotonicClock()
        self.checkpoint_dir = checkpoint_dir
        self.threads = threads
        self.num_workers = job.num_workers
        self.paused = job.paused
        self.stopping = False
        self.seed = seed
        self.dataset: Dataset[Any] = build_dataset(job.dataset)
        num_classes = job.model.num_classes or dataset_num_classes(job.dataset)
        torch.manual_seed(seed)  # the same initial weights as an inference model built with this seed
        self.model = build_model(job.model, num_classes).train()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=job.lr, momentum=job.momentum, weight_decay=job.weight_decay
        )
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.step = 0
        self._checkpointed_step = 0
        self.resumed_from: Path | None = None
        latest = load_latest(checkpoint_dir)
        self.resume_state: dict[str, Any] = {}
        if latest is not None:
            self.resumed_from, state = latest
            self.resume_state = state
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
        self._checkpointed_step = self.step
        self.writer = CsvAppender(train_csv, TRAIN_COLUMNS)
        self._batches: Iterator[Any] | None = None
        self._loader: DataLoader[Any] | None = None
        self._window_steps = 0
        self._window_samples = 0
        self._window_data_wait_ms = 0.0
        self._last_loss: float | None = None

    # --- data ----------------------------------------------------------------------------------

    def _make_loader(self) -> DataLoader[Any]:
        """A DataLoader for the current `num_workers`.

        Workers are forked where the OS allows it. This process was itself spawned, so Python's
        default for its children would be spawn too, and every spawned worker re-imports torch:
        2.4 s measured here for a live `num_workers` change, against milliseconds for fork, which
        is also what PyTorch users get by default on Linux (Jetson included).
        """
        generator = torch.Generator().manual_seed(self.seed + self.step)
        context = "fork" if self.num_workers > 0 and "fork" in mp.get_all_start_methods() else None
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=generator,
            multiprocessing_context=context,
        )

    def _next_batch(self) -> Any:
        if self._batches is None:
            self._loader = self._make_loader()
            self._batches = iter(self._loader)
        try:
            return next(self._batches)
        except StopIteration:  # next epoch, same loader (and same persistent workers)
            assert self._loader is not None
            self._batches = iter(self._loader)
            return next(self._batches)

    def _drop_loader(self) -> None:
        self._batches = None  # the iterator's destructor shuts its worker processes down
        self._loader = None

    # --- commands ------------------------------------------------------------------------------

    def handle(self, message: Command) -> None:
        now_ns = self.clock.now_ns()
        match message:
            case Stop():
                self.stopping = True
            case SetThreads():
                torch.set_num_threads(message.threads)
                self.threads = message.threads
                self.channel.send(Applied("threads", message.threads, now_ns))
            case SetNumWorkers():
                if message.num_workers != self.num_workers:
                    self.num_workers = message.num_workers
                    self._drop_loader()
                self.channel.send(Applied("num_workers", message.num_workers, now_ns))
            case SetPaused():
                self.paused = message.paused
                self.channel.send(Applied("paused", message.paused, now_ns))
            case SetBatchSize():
                if message.batch_size != self.batch_size:
                    self.batch_size = message.batch_size
                    self._drop_loader()
                self.channel.send(Applied("batch_size", message.batch_size, now_ns))
            case SetDutyCycle():
                self.duty_cycle = message.duty_cycle
                self.channel.send(Applied("duty_cycle", message.duty_cycle, now_ns))
            case SetInterleave():
                self.gate_policy, self.gate_max_wait_ms = message.policy, message.max_wait_ms
                self.channel.send(Applied("interleave", [message.policy, message.max_wait_ms], now_ns))
            case Start() | LoadModel() | SetBatching() | SetVariant() | SetInstances():
                # an inference knob, or a second Start: the runtime sent it to the wrong worker
                self.channel.send(CommandRefused(type(message).__name__, now_ns))
            case _:
                unhandled(message)

    def _poll_commands(self, timeout_s: float) -> None:
        """Handle every waiting command; wait up to `timeout_s` for the first one."""
        message = self.channel.recv(timeout_s)
        while message is not None:
            self.handle(message)
            if isinstance(message, Stop):
                break  # a closed pipe reads as Stop on every call: draining it would never end
            message = self.channel.recv(0.0)

    # --- loop ----------------------------------------------------------------------------------

    def _send_stats(self) -> None:
        self.channel.send(
            TrainingStats(
                window_end_ns=self.clock.now_ns(),
                steps=self._window_steps,
                samples=self._window_samples,
                total_steps=self.step,
                last_loss=self._last_loss,
                paused=self.paused,
                data_wait_ms=self._window_data_wait_ms,
            )
        )
        self._window_steps = self._window_samples = 0
        self._window_data_wait_ms = 0.0

    def _yield_to_inference(self) -> float:
        """With policy `yield`, wait while inference is busy. Returns the wait in ms."""
        gate = self.gate
        if gate is None or self.gate_policy != "yield" or not gate.raised:
            return 0.0
        start_ns = self.clock.now_ns()
        # The policy and its bound are re-read every slice: a SetInterleave that arrives while
        # training waits (the gate switched off, or bounded) must end or shorten this wait.
        while not (self.stopping or self.paused) and self.gate_policy == "yield":
            slice_s = 0.05
            if self.gate_max_wait_ms is not None:
                limit_ns = start_ns + round(self.gate_max_wait_ms * NS_PER_MS)
                slice_s = min(slice_s, (limit_ns - self.clock.now_ns()) / NS_PER_S)
            if slice_s <= 0 or gate.wait_lowered(slice_s):
                break
            self._poll_commands(0.0)  # stay responsive to stop/pause/gate changes while yielding
        return (self.clock.now_ns() - start_ns) / NS_PER_MS

    def _throttle(self, step_ns: int) -> None:
        """Idle so that training takes `duty_cycle` of the time; commands are handled meanwhile."""
        if self.duty_cycle >= 1.0:
            self._last_idle_ms = 0.0
            return
        start_ns = self.clock.now_ns()
        until_ns = start_ns + round(step_ns * (1 - self.duty_cycle) / self.duty_cycle)
        while not (self.stopping or self.paused):
            remaining_s = (until_ns - self.clock.now_ns()) / NS_PER_S
            if remaining_s <= 0:
                break
            self._poll_commands(remaining_s)
        self._last_idle_ms = (self.clock.now_ns() - start_ns) / NS_PER_MS

    def train_step(self, gate_wait_ms: float = 0.0) -> int:
        """One minibatch. Returns its duration in ns (data loading included)."""
        t_data_ns = self.clock.now_ns()
        inputs, labels = self._next_batch()
        t_start_ns = self.clock.now_ns()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(inputs), labels)
        loss.backward()
        self.optimizer.step()
        t_end_ns = self.clock.now_ns()
        self.step += 1
        samples = int(labels.shape[0])
        self._last_loss = float(loss.detach())
        self._window_steps += 1
        self._window_samples += samples
        self._window_data_wait_ms += (t_start_ns - t_data_ns) / NS_PER_MS
        self.writer.write_rows(
            [
                (
                    self.step,
                    fmt_s(t_end_ns),
                    samples,
                    f"{self._last_loss:.6f}",
                    f"{(t_end_ns - t_start_ns) / NS_PER_MS:.3f}",
                    f"{(t_start_ns - t_data_ns) / NS_PER_MS:.3f}",
                    self.batch_size,
                    self.num_workers,
                    self.threads,
                    f"{gate_wait_ms:.3f}",
                    f"{self._last_idle_ms:.3f}",
                )
            ]
        )
        if self.step % self.job.checkpoint_every_steps == 0:
            self.checkpoint()
        return t_end_ns - t_data_ns

    def checkpoint_extra(self) -> dict[str, Any]:
        """Job-kind state saved with every checkpoint (continual: the served model version)."""
        return {}

    def checkpoint(self) -> None:
        self._checkpointed_step = self.step
        save_checkpoint(
            self.checkpoint_dir,
            self.step,
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                **self.checkpoint_extra(),
            },
        )

    # --- hooks for job kinds (continual learning overrides them) -------------------------------

    def begin(self, t0_ns: int) -> None:
        """Called once when the run starts, before the first step."""

    def after_step(self) -> None:
        """Called after every step, at a safe boundary (the loader may be swapped here)."""

    def finish(self) -> None:
        """Called once when the loop ends, before the final checkpoint."""

    def has_work(self) -> bool:
        """Whether to take a step now. Plain and continual jobs always train; a federated client
        trains only inside a round the server asked for."""
        return True

    def wait_for_work(self, timeout_s: float) -> None:
        """Idle until there may be work, handling commands meanwhile."""
        self._poll_commands(timeout_s)

    def run(self, t0_ns: int) -> None:
        self.begin(t0_ns)
        period_ns = round(self.job.stats_period_s * NS_PER_S)
        next_stats_ns = t0_ns + period_ns
        while True:
            self._poll_commands(0.0)
            while self.paused and not self.stopping:
                self._poll_commands(max(0.01, (next_stats_ns - self.clock.now_ns()) / NS_PER_S))
                if self.clock.now_ns() >= next_stats_ns:
                    self._send_stats()
                    next_stats_ns = self.clock.now_ns() + period_ns
            if self.stopping:
                break
            if not self.has_work():
                self.wait_for_work(max(0.01, min(0.1, (next_stats_ns - self.clock.now_ns()) / NS_PER_S)))
                if self.clock.now_ns() >= next_stats_ns:
                    self._send_stats()
                    next_stats_ns = self.clock.now_ns() + period_ns
                continue
            gate_wait_ms = self._yield_to_inference()
            if self.stopping or self.paused:
                continue
            self._throttle(self.train_step(gate_wait_ms))
            self.after_step()
            if self.clock.now_ns() >= next_stats_ns:
                self._send_stats()
                next_stats_ns = self.clock.now_ns() + period_ns
        self.finish()
        if self.step != self._checkpointed_step:
            self.checkpoint()
        self._send_stats()
        self._drop_loader()
        self.writer.close()


def training_process_main(
    conn: Connection,
    job: TrainingJobConfig,
    train_csv: str,
    checkpoint_dir: str,
    threads: int,
    seed: int,
    gate: InterleavingGate | None = None,
) -> None:
    """Entry point of a spawned training process."""
    channel = Channel(conn)
    try:
        worker_setup(threads)
        args = (job, Path(train_csv), Path(checkpoint_dir), channel, threads, seed)
        trainer: Trainer
        if job.kind == "federated":
            from cotrain.workloads.training.federated_client import FederatedTrainer

            trainer = FederatedTrainer(*args, gate=gate, run_dir=Path(train_csv).parent)
        elif job.kind == "continual":
            from cotrain.workloads.training.continual import ContinualTrainer

            trainer = ContinualTrainer(*args, gate=gate, run_dir=Path(train_csv).parent)
        else:
            trainer = Trainer(*args, gate=gate)
        detail = f"{job.model.name}" + (
            f", resumed from {trainer.resumed_from.name}" if trainer.resumed_from else ""
        )
        channel.send(Ready(pid=os.getpid(), detail=detail))
        start = wait_for_start(channel)
        if isinstance(start, Stop):
            trainer.writer.close()
            channel.send(Finished("stopped before start"))
            exit_now()
        trainer.run(start.t0_ns)
        channel.send(Finished(f"{trainer.step} steps"))
        exit_now()
    except BaseException as exc:
        report_failure(channel, exc)
        raise SystemExit(1) from None

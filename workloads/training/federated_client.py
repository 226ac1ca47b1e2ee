"""A federated-learning client whose local training is cotrain's own training loop.

Flower's ClientApp is a thin shim (federated/app/client_app.py) that forwards each round over a
Unix socket (federated/bridge.py) to this long-lived process. Requests arrive on the bridge's
thread, but the model, the optimizer and every knob belong to the training loop's thread, so a
request is handed over through a queue and the loop runs it:
- `fit`: load the global arrays, train `local-steps` minibatches through the ordinary step loop
  (so threads, workers, batch size, pause, duty cycle, the gate and placement all apply), then
  return the local arrays, the mean loss and the number of examples;
- `evaluate`: load the arrays and measure loss and accuracy on local held-out data.
Between rounds the loop idles on its command channel. One row per round goes to
`federated-<job>.csv`.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from cotrain.clock import NS_PER_MS, NS_PER_S
from cotrain.config import DigitsDatasetConfig, FederatedConfig, TrainingJobConfig
from cotrain.records import CsvAppender
from cotrain.rundir import RunDir
from cotrain.workloads.data import TensorPairs, digits_tensors
from cotrain.workloads.training.federated.bridge import BridgeServer
from cotrain.workloads.training.trainer import Trainer

ROUND_COLUMNS = ("round", "t_s", "steps", "train_loss", "examples", "round_ms", "eval_accuracy")


@dataclass
class _Request:
    kind: str  # "fit" | "evaluate"
    arrays: list[np.ndarray[Any, Any]]
    steps: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: str | None = None
    losses: list[float] = field(default_factory=list)
    samples: int = 0
    started_ns: int = 0
    cancelled: bool = False  # the bridge gave up waiting: never run it for nobody


class FederatedTrainer(Trainer):
    def __init__(self, job: TrainingJobConfig, *args: object, run_dir: Path, **kwargs: object) -> None:
        super().__init__(job, *args, **kwargs)  # type: ignore[arg-type]
        self.cfg: FederatedConfig = job.federated or FederatedConfig()
        part = self.cfg.partition_id or 0
        parts = self.cfg.num_partitions or 1
        full = self.dataset
        self.dataset = Subset(full, [i for i in range(len(full)) if i % parts == part])  # type: ignore[arg-type]
        if isinstance(job.dataset, DigitsDatasetConfig):
            images, labels = digits_tensors("test", job.dataset.image_size, job.dataset.seed)
            keep = [i for i in range(len(labels)) if i % parts == part]
            self.heldout: Any = TensorPairs(images[keep], labels[keep])
        else:
            self.heldout = self.dataset  # no held-out split of its own: evaluate on the local shard
        rundir = RunDir(run_dir)
        rundir.federation.mkdir(parents=True, exist_ok=True)
        self.initial_arrays = rundir.federation / f"initial-{job.name}.npz"
        self._save_arrays(self.initial_arrays)
        self.bridge = BridgeServer(rundir.bridge_socket(job.name), self)
        self.rounds = CsvAppender(run_dir / f"federated-{job.name}.csv", ROUND_COLUMNS)
        self._requests: queue.Queue[_Request] = queue.Queue()
        self._active: _Request | None = None
        self._round = 0
        self._pending_row: tuple[object, ...] | None = None

    # --- weights <-> arrays --------------------------------------------------------------------

    def _arrays(self) -> list[np.ndarray[Any, Any]]:
        return [t.detach().cpu().numpy().copy() for t in self.model.state_dict().values()]

    def _save_arrays(self, path: Path) -> None:
        keys = list(self.model.state_dict())
        tmp = path.with_name(f".{path.name}.tmp.npz")
        named = {f"{i:04d}.{k}": a for i, (k, a) in enumerate(zip(keys, self._arrays(), strict=True))}
        np.savez(tmp, **named)  # type: ignore[arg-type]
        tmp.replace(path)

    def _load_arrays(self, arrays: list[np.ndarray[Any, Any]]) -> None:
        state = self.model.state_dict()
        if len(arrays) != len(state):
            raise ValueError(f"got {len(arrays)} arrays for a model with {len(state)} tensors")
        self.model.load_state_dict(
            {
                k: torch.from_numpy(np.asarray(a)).to(v.dtype).reshape(v.shape)
                for (k, v), a in zip(state.items(), arrays, strict=True)
            }
        )

    # --- the bridge's side (another thread) ----------------------------------------------------

    def _call(self, request: _Request) -> Any:
        self._requests.put(request)
        if not request.done.wait(timeout=self.cfg.round_timeout_s):
            request.cancelled = True
            raise TimeoutError(f"local {request.kind} did not finish within {self.cfg.round_timeout_s:g} s")
        if request.error is not None:
            raise RuntimeError(request.error)
        return request.result

    def fit(self, arrays: list[np.ndarray[Any, Any]], config: dict[str, Any]) -> Any:
        steps = int(config.get("local-steps") or 0) or self.cfg.local_steps
        return self._call(_Request("fit", list(arrays), steps))

    def evaluate(self, arrays: list[np.ndarray[Any, Any]], config: dict[str, Any]) -> Any:
        return self._call(_Request("evaluate", list(arrays), 0))

    # --- the training loop's side --------------------------------------------------------------

    def begin(self, t0_ns: int) -> None:
        self.bridge.start()

    def has_work(self) -> bool:
        if self._active is None:
            try:
                self._start(self._requests.get_nowait())
            except queue.Empty:
                return False
        return self._active is not None

    def wait_for_work(self, timeout_s: float) -> None:
        self._poll_commands(0.0)
        try:
            self._start(self._requests.get(timeout=timeout_s))
        except queue.Empty:
            return

    def _start(self, request: _Request) -> None:
        if request.cancelled:
            return
        request.started_ns = self.clock.now_ns()
        try:
            self._load_arrays(request.arrays)
        except Exception as exc:
            request.error = f"cannot load the global arrays: {exc}"
            request.done.set()
            return
        if request.kind == "evaluate":
            loss, accuracy, n = self._evaluate()
            request.result = (loss, {"eval_accuracy": accuracy}, n)
            # Flower evaluates after fit: this completes the round's row. Written before the reply,
            # so an acknowledged round is always on disk.
            self._flush_round(accuracy)
            request.done.set()
            return
        self._active = request

    def _evaluate(self) -> tuple[float, float, int]:
        self.model.eval()
        loader = torch.utils.data.DataLoader(self.heldout, batch_size=128)
        total_loss, correct, n = 0.0, 0, 0
        with torch.inference_mode():
            for inputs, labels in loader:
                logits = self.model(inputs)
                total_loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
                correct += int((logits.argmax(dim=1) == labels).sum())
                n += int(labels.shape[0])
        self.model.train()
        return total_loss / max(1, n), correct / max(1, n), n

    def after_step(self) -> None:
        request = self._active
        if request is None:
            return
        if request.cancelled:  # the server stopped waiting (e.g. a long pause): drop the round
            self._active = None
            return
        request.losses.append(self._last_loss if self._last_loss is not None else float("nan"))
        request.samples += (
            self.batch_size
        )  # the last batch of an epoch may be smaller; close enough as a weight
        if len(request.losses) < request.steps:
            return
        self._flush_round(None)  # a round without an evaluate still gets its row
        self._round += 1
        mean_loss = float(np.mean(request.losses))
        request.result = (self._arrays(), {"train_loss": mean_loss}, request.samples)
        request.done.set()
        self._active = None
        now_ns = self.clock.now_ns()
        self._pending_row = (
            self._round,
            f"{now_ns / NS_PER_S:.6f}",
            len(request.losses),
            f"{mean_loss:.6f}",
            request.samples,
            f"{(now_ns - request.started_ns) / NS_PER_MS:.1f}",
        )
        self.checkpoint()

    def _flush_round(self, eval_accuracy: float | None) -> None:
        """Write the last fit's row, with the accuracy of the evaluate that followed it if any."""
        if self._pending_row is None:
            return
        accuracy = "" if eval_accuracy is None else f"{eval_accuracy:.4f}"
        self.rounds.write_rows([(*self._pending_row, accuracy)])
        self._pending_row = None

    def finish(self) -> None:
        for request in [self._active, *self._drain()]:
            if request is not None and not request.done.is_set():
                request.error = "the training job is stopping"
                request.done.set()
        self._active = None
        self.bridge.stop()
        self._flush_round(None)
        self.rounds.close()

    def _drain(self) -> list[_Request]:
        items = []
        while True:
            try:
                items.append(self._requests.get_nowait())
            except queue.Empty:
                return items

"""Continual learning (after Ekya): retrain on drifting data in windows, deploy what is better.

Every `window_s` seconds of run time a retraining window starts:
1. `arrivals_per_window` newly labelled samples arrive from the stream, drawn from the training
   split and rotated by the drift angle of that moment (plus per-sample jitter), all seeded;
2. the window's training set is those samples plus a replay sample of older ones (a reservoir
   buffer, so earlier drift is not forgotten);
3. the current model is evaluated on held-out data at the same drift (`accuracy_before`);
4. the job trains on the window's set through the ordinary step loop, so every knob (threads,
   workers, batch size, pause, duty cycle, interleaving) applies;
5. at the window's end it is evaluated again (`accuracy_after`), next to the model the service
   serves now. If it is better by `min_improvement`, its weights are saved atomically as a new
   version and announced (`ModelReady`); the runtime tells the inference service, which swaps it
   in between batches.

One row per window goes to `continual-<job>.csv`. The served model starts as version 0: the
same seeded initial weights the inference service built, so the first comparison is fair.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cotrain.clock import NS_PER_S
from cotrain.config import ContinualConfig, DigitsDatasetConfig, DriftConfig, TrainingJobConfig
from cotrain.messages import ModelReady
from cotrain.records import CsvAppender
from cotrain.workloads.data import DIGITS_CLASSES, TensorPairs, digits_tensors, rotate
from cotrain.workloads.models import build_model
from cotrain.workloads.training.trainer import Trainer

WINDOW_COLUMNS = (
    "window",
    "t_s",
    "angle_deg",
    "new_samples",
    "replay_samples",
    "steps",
    "accuracy_before",
    "accuracy_after",
    "served_accuracy",
    "deployed",
    "served_version",
)


def drift_angle_deg(drift: DriftConfig, elapsed_s: float) -> float:
    """The stream's rotation at `elapsed_s` into the run."""
    return min(drift.max_deg, drift.rotate_deg_per_s * max(0.0, elapsed_s))


class ReplayBuffer:
    """Reservoir sampling: every sample seen so far is kept with equal probability."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.seen = 0
        self.images: list[torch.Tensor] = []
        self.labels: list[int] = []
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        for image, label in zip(images, labels, strict=True):
            self.seen += 1
            if len(self.labels) < self.capacity:
                self.images.append(image)
                self.labels.append(int(label))
            else:
                slot = int(self._rng.integers(0, self.seen))
                if slot < self.capacity:
                    self.images[slot], self.labels[slot] = image, int(label)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = min(n, len(self.labels))
        if n == 0:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        idx = self._rng.choice(len(self.labels), size=n, replace=False)
        return torch.stack([self.images[i] for i in idx]), torch.tensor([self.labels[i] for i in idx])


@dataclass
class Window:
    index: int
    started_ns: int
    angle_deg: float
    new_samples: int
    replay_samples: int
    first_step: int
    eval_images: torch.Tensor
    eval_labels: torch.Tensor
    accuracy_before: float


def evaluate(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128
) -> float:
    """Top-1 accuracy; the model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            predicted = model(images[start : start + batch_size]).argmax(dim=1)
            correct += int((predicted == labels[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(labels))


class ContinualTrainer(Trainer):
    def __init__(self, job: TrainingJobConfig, *args: object, run_dir: Path, **kwargs: object) -> None:
        super().__init__(job, *args, **kwargs)  # type: ignore[arg-type]
        if not isinstance(job.dataset, DigitsDatasetConfig):
            raise ValueError("continual learning needs a labelled stream: use dataset kind 'digits'")
        self.cfg: ContinualConfig = job.continual or ContinualConfig()
        self.stream_images, self.stream_labels = digits_tensors(
            "train", job.dataset.image_size, job.dataset.seed
        )
        self.heldout_images, self.heldout_labels = digits_tensors(
            "test", job.dataset.image_size, job.dataset.seed
        )
        self.replay = ReplayBuffer(self.cfg.replay_capacity, self.seed + 17)
        self.models_dir = run_dir / "models" / job.name
        self.served_version = int(self.resume_state.get("served_version", 0))
        torch.manual_seed(self.seed)  # version 0: the same seeded initial weights the service built
        self.served = build_model(job.model, job.model.num_classes or DIGITS_CLASSES).eval()
        if self.served_version:  # resumed: compare against what the service really serves
            served_path = self.models_dir / f"v{self.served_version:04d}.pt"
            self.served.load_state_dict(torch.load(served_path, map_location="cpu", weights_only=True))
        self.windows = CsvAppender(run_dir / f"continual-{job.name}.csv", WINDOW_COLUMNS)
        self.window: Window | None = None
        self.t0_ns = 0
        self._rng = np.random.default_rng(self.cfg.drift.seed)

    # --- windows -------------------------------------------------------------------------------

    def begin(self, t0_ns: int) -> None:
        self.t0_ns = t0_ns
        self._start_window(0)

    def _start_window(self, index: int) -> None:
        now_ns = self.clock.now_ns()
        angle = drift_angle_deg(self.cfg.drift, (now_ns - self.t0_ns) / NS_PER_S)
        jitter = self.cfg.drift.jitter_deg
        n_new = self.cfg.arrivals_per_window
        pick = self._rng.choice(len(self.stream_labels), size=n_new, replace=n_new > len(self.stream_labels))
        angles = torch.tensor(angle + self._rng.uniform(-jitter, jitter, size=n_new), dtype=torch.float32)
        new_images = rotate(self.stream_images[pick], angles)
        new_labels = self.stream_labels[pick]
        n_replay = round(n_new * self.cfg.replay_fraction / (1 - self.cfg.replay_fraction))
        old_images, old_labels = self.replay.sample(n_replay)
        images = torch.cat([new_images, old_images]) if len(old_labels) else new_images
        labels = torch.cat([new_labels, old_labels]) if len(old_labels) else new_labels
        self.replay.add(new_images, new_labels)
        self.dataset = TensorPairs(images, labels)
        self._drop_loader()  # the next batch comes from this window's set

        pick_eval = self._rng.choice(
            len(self.heldout_labels),
            size=self.cfg.eval_samples,
            replace=self.cfg.eval_samples > len(self.heldout_labels),
        )
        eval_angles = torch.tensor(
            angle + self._rng.uniform(-jitter, jitter, size=len(pick_eval)), dtype=torch.float32
        )
        eval_images = rotate(self.heldout_images[pick_eval], eval_angles)
        eval_labels = self.heldout_labels[pick_eval]
        self.window = Window(
            index=index,
            started_ns=now_ns,
            angle_deg=angle,
            new_samples=n_new,
            replay_samples=len(old_labels),
            first_step=self.step,
            eval_images=eval_images,
            eval_labels=eval_labels,
            accuracy_before=evaluate(self.model, eval_images, eval_labels),
        )

    def after_step(self) -> None:
        window = self.window
        if window is None:
            return
        if self.clock.now_ns() - window.started_ns >= round(self.cfg.window_s * NS_PER_S):
            self._end_window(window)
            self._start_window(window.index + 1)

    def _end_window(self, window: Window) -> None:
        after = evaluate(self.model, window.eval_images, window.eval_labels)
        served = evaluate(self.served, window.eval_images, window.eval_labels)
        deploy = self.cfg.deploy_to is not None and after > served + self.cfg.min_improvement
        if deploy:
            self._deploy(after)
        self.windows.write_rows(
            [
                (
                    window.index,
                    f"{self.clock.now_ns() / NS_PER_S:.6f}",
                    f"{window.angle_deg:.2f}",
                    window.new_samples,
                    window.replay_samples,
                    self.step - window.first_step,
                    f"{window.accuracy_before:.4f}",
                    f"{after:.4f}",
                    f"{served:.4f}",
                    int(deploy),
                    self.served_version,
                )
            ]
        )
        self.checkpoint()

    def _deploy(self, accuracy: float) -> None:
        """Save the weights atomically as the next version and announce them."""
        version = self.served_version + 1
        self.models_dir.mkdir(parents=True, exist_ok=True)
        path = self.models_dir / f"v{version:04d}.pt"
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("wb") as f:
            torch.save(self.model.state_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.served = copy.deepcopy(self.model).eval()
        self.served_version = version
        self.channel.send(ModelReady(path=str(path), version=version, accuracy=accuracy))

    def checkpoint_extra(self) -> dict[str, object]:
        return {"served_version": self.served_version}

    def finish(self) -> None:
        self.windows.close()

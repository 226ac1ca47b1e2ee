"""Continual learning: the reservoir, the drift, windows on a fake clock, atomic deployment, and
the inference service swapping a new model version in between batches without losing a request."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import torch
import yaml

from cotrain.clock import FakeClock, MonotonicClock
from cotrain.config import DriftConfig, parse_config
from cotrain.messages import LoadModel, ModelReady, ModelSwapped, Stop
from cotrain.records import read_csv_rows
from cotrain.workloads.inference.requests import Request
from cotrain.workloads.inference.service import InferenceService
from cotrain.workloads.training.checkpoint import load_latest
from cotrain.workloads.training.continual import ContinualTrainer, ReplayBuffer, drift_angle_deg
from tests.conftest import TINY
from tests.fakes import FakeChannel


def test_reservoir_keeps_capacity_and_a_uniform_share_of_the_stream() -> None:
    buffer = ReplayBuffer(capacity=100, seed=1)
    images = torch.zeros(1000, 1)
    labels = torch.arange(1000)
    buffer.add(images, labels)
    assert len(buffer) == 100 and buffer.seen == 1000
    kept = sorted(buffer.labels)
    assert kept[0] < 200 and kept[-1] > 800, "old and new samples both survive"
    x, y = buffer.sample(10)
    assert x.shape == (10, 1) and len(set(y.tolist())) == 10


def test_drift_grows_with_time_and_stops_at_its_maximum() -> None:
    drift = DriftConfig(rotate_deg_per_s=2.0, max_deg=30.0)
    assert [drift_angle_deg(drift, t) for t in (0, 5, 15, 100)] == [0.0, 10.0, 30.0, 30.0]


def continual_job(window_s: float = 1.0) -> Any:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["workloads"]["inference"]["model"] = {"name": "mobilenet_v3_small"}
    data["workloads"]["inference"]["dataset"] = {"kind": "digits", "split": "test", "image_size": 32}
    data["workloads"]["training"][0].update(
        kind="continual",
        dataset={"kind": "digits", "split": "train", "image_size": 32},
        batch_size=16,
        continual={
            "window_s": window_s,
            "arrivals_per_window": 32,
            "eval_samples": 40,
            "min_improvement": 0.0,
        },
    )
    return parse_config(data).workloads.training[0]


def test_a_window_on_a_fake_clock_evaluates_deploys_and_checkpoints(tmp_path: Path) -> None:
    clock = FakeClock(start_ns=10**12)
    channel = FakeChannel()
    trainer = ContinualTrainer(
        continual_job(),
        tmp_path / "train-cl.csv",
        tmp_path / "ckpt",
        channel,
        1,
        0,  # type: ignore[arg-type]
        clock=clock,
        run_dir=tmp_path,
    )
    trainer.begin(clock.now_ns())
    trainer.served_version = 0
    for _ in range(3):
        trainer.train_step()
        trainer.after_step()  # no window end yet: the fake clock has not moved
    assert not read_csv_rows(tmp_path / "continual-cl.csv")
    clock.advance_ms(1000)
    trainer.train_step()
    trainer.after_step()
    trainer.finish()

    (row,) = read_csv_rows(tmp_path / "continual-cl.csv")
    assert row["window"] == "0" and row["steps"] == "4" and row["new_samples"] == "32"
    deployed = row["deployed"] == "1"
    assert deployed == (float(row["accuracy_after"]) > float(row["served_accuracy"]))
    ready = [m for m in channel.sent if isinstance(m, ModelReady)]
    assert len(ready) == int(deployed)
    if deployed:
        assert Path(ready[0].path).is_file() and ready[0].version == 1
        torch.load(ready[0].path, weights_only=True)  # a complete, loadable state dict
    latest = load_latest(tmp_path / "ckpt")
    assert latest is not None and latest[1]["served_version"] == int(deployed)
    assert trainer.window is not None and trainer.window.index == 1, "the next window started"


class TaggedModel:
    """A fake model version: answers with its own tag, blocking on a gate when asked to."""

    def __init__(self, tag: int, gate: threading.Event | None = None) -> None:
        self.tag, self.gate, self.entered = tag, gate, threading.Event()

    def __call__(self, batch: Sequence[Request]) -> list[int]:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(timeout=60)
        return [self.tag] * len(batch)


def test_a_new_model_version_is_swapped_in_between_batches_without_losing_a_request(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["workloads"]["inference"]["batching"] = {"max_batch_size": 2, "max_queue_delay_ms": 0}
    config = parse_config(data).workloads.inference
    assert config is not None
    release_v0 = threading.Event()
    v0, v1 = TaggedModel(0, release_v0), TaggedModel(1)
    loaded = threading.Event()

    def load_model(path: str) -> Any:
        loaded.set()
        return v1

    channel = FakeChannel()
    service = InferenceService(
        config,
        tmp_path / "requests.csv",
        channel,
        v0,
        "m",
        repeat(0),  # type: ignore[arg-type]
        load_model=load_model,
    )
    threading.Thread(target=service.listen, daemon=True).start()
    serving = threading.Thread(
        target=service.serve, args=(MonotonicClock().now_ns(), iter([0.0] * 6)), daemon=True
    )
    serving.start()
    assert v0.entered.wait(60)  # a v0 batch is running
    channel.commands.put(LoadModel(str(tmp_path / "v1.pt"), 1, "train:cl"))
    assert loaded.wait(60)
    release_v0.set()  # the running batch finishes on v0; the swap happens before the next one
    assert service.arrivals_done.wait(60)
    channel.commands.put(Stop())
    serving.join(timeout=60)

    rows = read_csv_rows(tmp_path / "requests.csv")
    assert sorted(int(r["request_id"]) for r in rows) == list(range(6))
    assert {r["outcome"] for r in rows} == {"served"}
    versions = [int(r["model_version"]) for r in sorted(rows, key=lambda r: float(r["start_s"]))]
    assert versions[0] == 0 and versions[-1] == 1 and versions == sorted(versions), "one clean switch"
    (swap,) = [m for m in channel.sent if isinstance(m, ModelSwapped)]
    assert swap.version == 1 and swap.prepare_ms >= 0

"""The federated client's side of a round, in-process: the bridge's thread hands fit/evaluate to
the training loop, which trains through the ordinary step loop and answers."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cotrain.config import parse_config
from cotrain.messages import SetPaused, Stop
from cotrain.records import read_csv_rows
from cotrain.workloads.training.federated_client import FederatedTrainer
from tests.conftest import TINY
from tests.fakes import FakeChannel


def federated_job(**federated: Any) -> Any:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["workloads"]["training"][0].update(
        kind="federated",
        dataset={"kind": "digits", "split": "train", "image_size": 32},
        batch_size=8,
        federated={"local_steps": 3, "partition_id": 1, "num_partitions": 2, **federated},
    )
    return parse_config(data).workloads.training[0]


@pytest.fixture
def client(tmp_path: Path) -> Any:
    channel = FakeChannel()
    trainer = FederatedTrainer(
        federated_job(),
        tmp_path / "train-cl.csv",
        tmp_path / "ck",
        channel,
        1,
        0,  # type: ignore[arg-type]
        run_dir=tmp_path,
    )
    loop = threading.Thread(target=trainer.run, args=(0,), daemon=True)
    loop.start()
    yield trainer, channel
    channel.commands.put(Stop())
    loop.join(timeout=60)
    assert not loop.is_alive()


def test_a_fit_trains_local_steps_in_the_loop_and_returns_arrays(client: Any, tmp_path: Path) -> None:
    trainer, _ = client
    initial = np.load(tmp_path / "fl" / "initial-cl.npz")
    arrays = [initial[name] for name in initial.files]

    trained, metrics, examples = trainer.fit(arrays, {"local-steps": 2})

    assert [a.shape for a in trained] == [a.shape for a in arrays]
    assert any(not np.array_equal(a, b) for a, b in zip(trained, arrays, strict=True)), "weights moved"
    assert metrics["train_loss"] > 0 and examples == 16
    assert not read_csv_rows(tmp_path / "federated-cl.csv"), "the round's row waits for its evaluate"
    _, eval_metrics, _ = trainer.evaluate(trained, {})
    (row,) = read_csv_rows(tmp_path / "federated-cl.csv")
    assert row["round"] == "1" and row["steps"] == "2"
    assert float(row["eval_accuracy"]) == pytest.approx(eval_metrics["eval_accuracy"], abs=1e-4)
    assert len(trainer.dataset) == 676, "partition 1 of 2 of the 1,352 training digits"


def test_evaluate_measures_the_given_arrays_on_local_held_out_data(client: Any, tmp_path: Path) -> None:
    trainer, _ = client
    initial = np.load(tmp_path / "fl" / "initial-cl.npz")
    loss, metrics, n = trainer.evaluate([initial[name] for name in initial.files], {})
    assert loss > 0 and 0 <= metrics["eval_accuracy"] <= 1 and n == 222


def test_a_paused_client_trains_its_round_after_resuming(client: Any, tmp_path: Path) -> None:
    trainer, channel = client
    channel.commands.put(SetPaused(True))
    initial = np.load(tmp_path / "fl" / "initial-cl.npz")
    result: list[Any] = []
    caller = threading.Thread(
        target=lambda: result.append(trainer.fit([initial[n] for n in initial.files], {}))
    )
    caller.start()
    caller.join(timeout=1.0)  # bounded wait: the round must not complete while paused
    assert caller.is_alive() and not result
    channel.commands.put(SetPaused(False))
    caller.join(timeout=60)
    assert result and result[0][2] == 24  # default local_steps 3 × batch 8

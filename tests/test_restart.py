"""A training process killed with SIGKILL and started again resumes from its last checkpoint."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import yaml

from cotrain.config import parse_config
from cotrain.messages import Ready, Start, Stop
from cotrain.records import read_csv_rows
from cotrain.workloads.training.checkpoint import list_checkpoints
from cotrain.workloads.training.trainer import training_process_main
from tests.conftest import TINY


def start(tmp_path: Path, job: object) -> tuple[mp.process.BaseProcess, object, Ready]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=training_process_main,
        args=(child, job, str(tmp_path / "train-cl.csv"), str(tmp_path / "ckpt"), 1, 0),
    )
    proc.start()
    child.close()
    assert parent.poll(120), "the training process never became ready"
    ready = parent.recv()
    assert isinstance(ready, Ready)
    parent.send(Start(time.monotonic_ns()))
    return proc, parent, ready


def test_a_killed_training_process_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["workloads"]["training"][0]["checkpoint_every_steps"] = 5
    job = parse_config(data).workloads.training[0]

    proc, _conn, first = start(tmp_path, job)
    deadline = time.monotonic() + 120
    while not list_checkpoints(tmp_path / "ckpt"):
        assert time.monotonic() < deadline and proc.is_alive()
        time.sleep(0.05)  # polling for a file the child writes
    os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
    proc.join(timeout=30)
    checkpoint = list_checkpoints(tmp_path / "ckpt")[-1]
    resumed_step = int(checkpoint.stem.split("-")[1])
    steps_before = len(read_csv_rows(tmp_path / "train-cl.csv"))

    proc, conn, second = start(tmp_path, job)
    deadline = time.monotonic() + 120
    while len(read_csv_rows(tmp_path / "train-cl.csv")) < steps_before + 2:
        assert time.monotonic() < deadline and proc.is_alive()
        time.sleep(0.05)
    conn.send(Stop())  # type: ignore[attr-defined]
    proc.join(timeout=60)

    assert "resumed" not in first.detail
    assert f"resumed from {checkpoint.name}" in second.detail
    steps = [int(r["step"]) for r in read_csv_rows(tmp_path / "train-cl.csv")]
    assert steps[steps_before] == resumed_step + 1, "the new process continues after the checkpoint's step"
    assert proc.exitcode == 0

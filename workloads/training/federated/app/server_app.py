"""The ServerApp: FedAvg over every connected client, with one flushed CSV row per round.

Runs on the SuperLink host (in `flwr-serverapp`), which in a real fleet need not have cotrain
installed, so this module imports only flwr, numpy and the standard library.

Initial arrays: FedAvg's `start()` needs the global arrays before any client has answered,
and a ServerApp cannot cheaply ask one client's trainer for its weights first. So the parent
that submits the run exports its model to an `.npz` (parameter order kept) and passes the path
as `initial-arrays`. Keys of that file become the ArrayRecord keys every client echoes back.

Why a file per round: `flwr run` returns at once and Flower keeps no per-round results that a
parent can read while the run goes on, so the strategy appends one row per round (flushed) to
`rounds-file`, and replaces `arrays-file` with the global arrays after each round. Timestamps
are `time.monotonic()` seconds, system-wide on Linux, so they line up with cotrain's records.

A phase that times out aggregates only the replies it has; with none, FedAvg keeps the old
arrays and the run still ends "completed". Such a round is written with `clients` = 0 and NaN
losses rather than skipped, so the parent can see it (FLOWER.md pitfall).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

log = logging.getLogger("flwr")

ROUNDS_COLUMNS = (
    "round",
    "t_s",
    "train_loss",
    "train_examples",
    "eval_loss",
    "eval_accuracy",
    "clients",
    "round_s",
    "train_failures",
)
"""`clients`: train replies aggregated; `train_failures`: error replies (timeouts are neither)."""
NUM_EXAMPLES_KEY = "num-examples"
TRAIN_LOSS_KEY = "train_loss"
EVAL_LOSS_KEY = "eval_loss"
EVAL_ACCURACY_KEY = "eval_accuracy"

app = ServerApp()


@dataclass(frozen=True)
class ServerSettings:
    num_rounds: int
    min_clients: int
    fraction_evaluate: float
    round_timeout_s: float
    local_steps: int
    initial_arrays: Path
    rounds_file: Path | None
    arrays_file: Path | None

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> ServerSettings:
        initial = str(run_config["initial-arrays"])
        if not initial:
            raise ValueError("run config initial-arrays is empty: pass the path of an .npz")
        settings = cls(
            num_rounds=int(run_config["num-server-rounds"]),
            min_clients=int(run_config["min-clients"]),
            fraction_evaluate=float(run_config["fraction-evaluate"]),
            round_timeout_s=float(run_config["round-timeout-s"]),
            local_steps=int(run_config["local-steps"]),
            initial_arrays=Path(initial),
            rounds_file=_optional_path(run_config["rounds-file"]),
            arrays_file=_optional_path(run_config["arrays-file"]),
        )
        if settings.num_rounds < 1 or settings.min_clients < 1 or settings.round_timeout_s <= 0:
            raise ValueError(f"need num-server-rounds, min-clients and round-timeout-s > 0: {settings}")
        return settings


def _optional_path(value: Any) -> Path | None:
    return Path(str(value)) if str(value) else None


def load_arrays(path: Path) -> ArrayRecord:
    """Arrays from an .npz, in file order, under the file's names (no pickles)."""
    with np.load(path, allow_pickle=False) as npz:
        return ArrayRecord(array_dict={name: Array(np.asarray(npz[name])) for name in npz.files})


def save_arrays(record: ArrayRecord, path: Path) -> None:
    """Write the arrays as an .npz (what `np.load` reads) and replace `path` atomically, so a
    reader never sees a half-written file. Written member by member: `np.savez(**names)`
    would clash with its own keyword arguments for some parameter names."""
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w") as npz:
        for name, array in zip(record.keys(), record.to_numpy_ndarrays(), strict=True):
            with npz.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    os.replace(tmp, path)


class RoundsCsv:
    """Appends one row per round and flushes it, so a parent can tail the file live."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if self._file.tell() == 0:
            self._writer.writerow(ROUNDS_COLUMNS)
            self._file.flush()

    def append(self, row: dict[str, float | int]) -> None:
        self._writer.writerow([_fmt(row[name]) for name in ROUNDS_COLUMNS])
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _fmt(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.6f}"


@dataclass
class _Round:
    number: int
    started_s: float
    clients: int = 0
    train_failures: int = 0
    train_examples: int = 0
    train_loss: float = math.nan
    eval_loss: float = math.nan
    eval_accuracy: float = math.nan


class RecordingFedAvg(FedAvg):
    """FedAvg that records each round through the strategy's own hooks.

    `configure_train` opens a round, `aggregate_train` and `aggregate_evaluate` fill it in,
    and the row is written at the end of `aggregate_evaluate`, which `Strategy.start()` calls
    every round, even when evaluation is switched off or got no replies.
    """

    def __init__(
        self,
        *,
        rounds_csv: RoundsCsv | None,
        arrays_file: Path | None,
        clock_s: Callable[[], float] = time.monotonic,
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        self._rounds_csv = rounds_csv
        self._arrays_file = arrays_file
        self._clock_s = clock_s
        self._round: _Round | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round = _Round(number=server_round, started_s=self._clock_s())
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        current = self._current(server_round)
        valid = [m for m in replies if not m.has_error()]
        current.clients = len(valid)
        current.train_failures = len(replies) - len(valid)
        current.train_examples = sum(_num_examples(m) for m in valid)
        if not valid:
            log.warning("round %d: no train replies; global arrays unchanged", server_round)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None:
            current.train_loss = _metric(metrics, TRAIN_LOSS_KEY)
        if arrays is not None and self._arrays_file is not None:
            save_arrays(arrays, self._arrays_file)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        metrics = super().aggregate_evaluate(server_round, list(replies))
        current = self._current(server_round)
        if metrics is not None:
            current.eval_loss = _metric(metrics, EVAL_LOSS_KEY)
            current.eval_accuracy = _metric(metrics, EVAL_ACCURACY_KEY)
        if self._rounds_csv is not None:
            now_s = self._clock_s()
            self._rounds_csv.append(
                {
                    "round": current.number,
                    "t_s": now_s,
                    "train_loss": current.train_loss,
                    "train_examples": current.train_examples,
                    "eval_loss": current.eval_loss,
                    "eval_accuracy": current.eval_accuracy,
                    "clients": current.clients,
                    "round_s": now_s - current.started_s,
                    "train_failures": current.train_failures,
                }
            )
        return metrics

    def _current(self, server_round: int) -> _Round:
        if self._round is None or self._round.number != server_round:
            self._round = _Round(number=server_round, started_s=self._clock_s())
        return self._round


def _num_examples(msg: Message) -> int:
    for record in msg.content.metric_records.values():
        value = record.get(NUM_EXAMPLES_KEY)
        if isinstance(value, int | float):
            return int(value)
    return 0


def _metric(metrics: MetricRecord, key: str) -> float:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) else math.nan


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = ServerSettings.from_run_config(context.run_config)
    rounds_csv = RoundsCsv(settings.rounds_file) if settings.rounds_file else None
    strategy = RecordingFedAvg(
        rounds_csv=rounds_csv,
        arrays_file=settings.arrays_file,
        fraction_train=1.0,
        fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=settings.min_clients,
        min_evaluate_nodes=settings.min_clients,
        min_available_nodes=settings.min_clients,
    )
    try:
        strategy.start(
            grid=grid,
            initial_arrays=load_arrays(settings.initial_arrays),
            num_rounds=settings.num_rounds,
            timeout=settings.round_timeout_s,
            train_config=ConfigRecord({"local-steps": settings.local_steps}),
        )
    finally:
        if rounds_csv is not None:
            rounds_csv.close()

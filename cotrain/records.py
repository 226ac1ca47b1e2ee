"""Append-only record files and tolerant readers.

Writers flush after every batch or step, so a crash loses at most the line being written.
Readers skip a torn last line, so a crashed run can still be summarised and reported.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REQUEST_COLUMNS = (
    "request_id",
    "arrival_s",
    "start_s",
    "end_s",
    "latency_ms",
    "batch_size",
    "variant",
    "model_version",
    "outcome",
    "reason",
)

TRAIN_COLUMNS = (
    "step",
    "t_s",
    "samples",
    "loss",
    "step_ms",
    "data_ms",
    "batch_size",
    "num_workers",
    "threads",
    "gate_wait_ms",
    "idle_ms",
)


ROTATE_ENV = "COTRAIN_RECORDS_ROTATE_MB"
KEEP_ENV = "COTRAIN_RECORDS_KEEP"
"""Record rotation (`output.rotate_mb`, `output.keep_rotated`) reaches every process that writes
records through these two variables, which the runtime sets for itself and its workers: one
setting, read in one place, whichever process writes the file."""


def rotation_from_env() -> tuple[int | None, int]:
    """(bytes after which a record file is rotated, None for never; rotated files kept)."""
    mb = os.environ.get(ROTATE_ENV)
    keep = int(os.environ.get(KEEP_ENV) or 4)
    return (int(float(mb) * 1024 * 1024) if mb else None), max(1, keep)


class CsvAppender:
    """A thread-safe CSV appender that writes its header once and flushes on demand.

    With rotation on, a file grown past the limit becomes `<name>.1` (older ones shift to `.2`,
    ... up to the number kept; the oldest is deleted and counted in `<name>.dropped`) and a new
    file starts with its header, so a run of days keeps bounded records.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = tuple(columns)
        self._lock = threading.Lock()
        self._rotate_bytes, self._keep = rotation_from_env()
        self._open()

    def _open(self) -> None:
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        # Two processes may open one file at once (a service and its warm standby): the lock
        # makes "empty, so write the header" atomic, so the header is written exactly once.
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        try:
            if os.fstat(self._file.fileno()).st_size == 0:
                self._writer.writerow(self.columns)
                self._file.flush()
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def write_rows(self, rows: Sequence[Sequence[object]]) -> None:
        """Append rows and flush them to the OS in one go (one call per batch or step)."""
        with self._lock:
            self._writer.writerows(rows)
            self._file.flush()
            if self._rotate_bytes is not None and self._file.tell() > self._rotate_bytes:
                self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        oldest = self.path.with_name(f"{self.path.name}.{self._keep}")
        if oldest.exists():
            oldest.unlink()
            dropped = self.path.with_name(f"{self.path.name}.dropped")
            count = int(dropped.read_text() or 0) if dropped.exists() else 0
            dropped.write_text(str(count + 1))
        for k in range(self._keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{k}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{k + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()


class JsonlAppender:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


def fmt_s(ns: int | None) -> str:
    """Monotonic ns -> seconds with µs resolution; empty when the stage was not reached."""
    return "" if ns is None else f"{ns / 1e9:.6f}"


def read_segments(path: Path) -> list[dict[str, str]]:
    """The rows of a record file and of its rotated segments, oldest first."""
    rows: list[dict[str, str]] = []
    rotated = sorted(
        (p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    for segment in [*rotated, path]:
        rows += read_csv_rows(segment)
    return rows


def rotated_away(run_dir: Path) -> bool:
    """Whether any record segment was deleted (the records no longer hold the whole run)."""
    return any(run_dir.rglob("*.dropped"))


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a record CSV; a torn (incomplete) last line is dropped."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    return [row for row in reader if len(row) == len(columns) and None not in row.values()]


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; unparsable (torn) lines are skipped."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, allow_nan=False)  # NaN is not JSON
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

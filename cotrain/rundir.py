"""The run directory: the one place a run's records live.

Layout: config.yaml (resolved), requests.csv, train-<job>.csv, telemetry.csv, decisions.jsonl,
events.jsonl, processes.json, summary.json, checkpoints/<job>/. The dashboard, report and the
summary recomputation all read these files, so a live, finished or crashed run reads the same.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import shutil
import stat
import tempfile
from pathlib import Path

RUN_MARKERS = ("config.yaml", "events.jsonl", "summary.json")


class OutputDirError(Exception):
    pass


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def requests_csv(self) -> Path:
        return self.path / "requests.csv"

    def service_requests_csv(self, service: str) -> Path:
        """With several inference services, each keeps its records (and ladder files) in its own folder."""
        return self.path / "services" / service / "requests.csv"

    def service_queue_csv(self, service: str) -> Path:
        """With several inference services, each one's queue depth and arrival rate as it reported
        them, once per control tick (a single service has them in telemetry.csv)."""
        return self.path / "services" / service / "queue.csv"

    def train_csv(self, job: str) -> Path:
        return self.path / f"train-{job}.csv"

    @property
    def telemetry_csv(self) -> Path:
        return self.path / "telemetry.csv"

    @property
    def decisions(self) -> Path:
        return self.path / "decisions.jsonl"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def processes(self) -> Path:
        return self.path / "processes.json"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    def checkpoints(self, job: str) -> Path:
        return self.path / "checkpoints" / job

    @property
    def federation(self) -> Path:
        """Flower's working directory for a local federation (FLWR_HOME, logs, rounds.csv)."""
        return self.path / "fl"

    def bridge_socket(self, job: str) -> Path:
        """The Unix socket a federated job serves its Flower shim on.

        Kept short under the temp dir (a socket path may not exceed 107 bytes, and run
        directories can be deep), and unique per run directory and job.
        """
        digest = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"cotrain-{digest}-{job}.sock"

    def ingress_socket(self) -> Path:
        """The Unix socket the inference processes connect to the front end on (mode 0600)."""
        digest = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"cotrain-{digest}-ingress.sock"

    def is_run(self) -> bool:
        return any((self.path / m).exists() for m in RUN_MARKERS)

    def prepare(self, *, replace: bool = False) -> bool:
        """Create the directory. Returns True if a previous run was replaced.

        A directory holding a previous run is replaced only when `replace` is set (`--force`):
        records are the product of a run, and a repeated command line must not silently delete
        them.

        A non-empty directory that is not a cotrain run is refused rather than mixed into, and
        an unwritable or full location is reported before anything is changed: the write probe
        runs before a previous run is cleared, and directories created here are removed again
        when it fails.

        Permissions: directories are created with the user's umask, but never world-writable;
        `o+w` is dropped from what is created here, and added to this process's umask, so
        nothing the run writes afterwards (records, checkpoints, its workers' files) is
        world-writable either, even under `umask 000`.
        """
        _umask_without_other_write()
        try:
            return self._prepare(replace)
        except OSError as exc:  # e.g. a parent this user may not search
            raise OutputDirError(f"output directory {str(self.path)!r}: {_reason(exc)}") from None

    def _prepare(self, replace: bool) -> bool:
        replaced = False
        if self.path.exists():
            if not self.path.is_dir():
                raise OutputDirError(f"output path {str(self.path)!r} exists and is not a directory")
            previous = any(self.path.iterdir())
            if previous and not self.is_run():
                raise OutputDirError(
                    f"output directory {str(self.path)!r} is not empty and is not a cotrain run; "
                    "choose another --out"
                )
            if previous and not replace:
                raise OutputDirError(
                    f"output directory {str(self.path)!r} holds a previous run; give --force to "
                    "replace it, or choose another --out"
                )
            self._probe()
            if previous:
                try:
                    self._clear_previous_run()
                except OSError as exc:
                    raise OutputDirError(
                        f"output directory {str(self.path)!r}: cannot replace the previous run: "
                        f"{_reason(exc)}"
                    ) from None
                replaced = True
            return replaced
        created = self._make_dirs()
        try:
            self._probe()
        except OutputDirError:
            _remove_empty(created)
            raise
        return replaced

    def _make_dirs(self) -> list[Path]:
        """mkdir -p, returning the directories it created (outermost first), each without o+w."""
        target = self.path.absolute()
        missing = list(itertools.takewhile(lambda p: not p.exists(), (target, *target.parents)))
        created: list[Path] = []
        try:
            for directory in reversed(missing):
                directory.mkdir(exist_ok=True)
                created.append(directory)
                mode = directory.stat().st_mode
                if mode & stat.S_IWOTH:
                    directory.chmod(stat.S_IMODE(mode) & ~stat.S_IWOTH)
        except OSError as exc:
            _remove_empty(created)
            raise OutputDirError(f"output directory {str(self.path)!r}: {_reason(exc)}") from None
        return created

    def _probe(self) -> None:
        """Write, sync and delete a small file: a full or read-only file system shows here."""
        probe = self.path / ".write-probe"
        try:
            try:
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, b"\0" * PROBE_BYTES)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            finally:
                with contextlib.suppress(OSError):
                    probe.unlink()
        except OSError as exc:
            raise OutputDirError(f"output directory {str(self.path)!r}: {_reason(exc)}") from None

    def _clear_previous_run(self) -> None:
        for child in self.path.iterdir():
            if child.is_dir() and child.name in ("checkpoints", "services", "models", "fl"):
                shutil.rmtree(child)
            elif child.is_file() and (
                child.name in RUN_MARKERS
                or child.suffix in (".csv", ".jsonl", ".json")
                or child.name.startswith(".")
            ):
                child.unlink()


PROBE_BYTES = 64 * 1024
"""Enough to need a data block on any file system, so a full one fails the probe."""


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device ({exc.strerror or exc}); free some space or choose another --out"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"not writable ({exc.strerror or exc}); choose another --out"
    return f"cannot be used ({exc.strerror or exc})"


def _remove_empty(created: list[Path]) -> None:
    """Undo `_make_dirs`: remove what it created, innermost first, if still empty."""
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _umask_without_other_write() -> None:
    """Add o+w to the umask (os.umask can only be read by setting it)."""
    current = os.umask(0o022)
    os.umask(current | stat.S_IWOTH)

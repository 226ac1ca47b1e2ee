"""The run directory: the one place a run's records live.

Layout: config.yaml (resolved), requests.csv, train-<job>.csv, telemetry.csv, decisions.jsonl,
events.jsonl, processes.json, summary.json, checkpoints/<job>/. The dashboard, report and the
summary recomputation all read these files, so a live, finished or crashed run reads the same.
"""

from __future__ import annotations

import hashlib
import shutil
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

    def is_run(self) -> bool:
        return any((self.path / m).exists() for m in RUN_MARKERS)

    def prepare(self) -> bool:
        """Create the directory (honouring the umask). Returns True if a previous run was replaced.

        A non-empty directory that is not a cotrain run is refused rather than mixed into, and
        an unwritable location is reported before anything starts.
        """
        replaced = False
        if self.path.exists():
            if not self.path.is_dir():
                raise OutputDirError(f"output path {str(self.path)!r} exists and is not a directory")
            if any(self.path.iterdir()):
                if not self.is_run():
                    raise OutputDirError(
                        f"output directory {str(self.path)!r} is not empty and is not a cotrain run; "
                        "choose another --out"
                    )
                self._clear_previous_run()
                replaced = True
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-probe"
            probe.write_text("ok", encoding="utf-8")
            probe.unlink()
        except OSError as exc:
            raise OutputDirError(
                f"output directory {str(self.path)!r} is not writable: {exc.strerror or exc}"
            ) from None
        return replaced

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

"""Starting cotrain from Python: `Run` runs an experiment in its own process and hands back its
run directory and, with ingress, its endpoints.

Why a process and not a thread of the caller: the runtime owns signal handlers, spawns workers,
changes the device's power mode and must restore it on every exit path; a separate process keeps
all of that away from the embedding program, and a crash of either side cannot take the other
with it. The process is the same `cotrain run` (or `cotrain serve`) a user types.

    from cotrain import Run

    with Run("experiments/serve-demo.yaml", out="runs/serve") as run:
        run.wait_ready()
        print(run.endpoints["grpc"])          # give this to a tritonclient
    print(run.summary()["inference"]["slo_attainment"])
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any


class RunError(RuntimeError):
    """The run did not start (bad input: exit 2) or ended before it was ready."""


class Run:
    def __init__(
        self,
        config: str | Path,
        *,
        out: str | Path,
        serve: bool = True,
        duration_s: float | None = None,
        force: bool = False,
        python: str = sys.executable,
    ) -> None:
        """`serve=True` runs `cotrain serve` (until `stop()`, or `duration_s`); False runs
        `cotrain run`, which needs a duration in the config or `duration_s`."""
        self.config = Path(config)
        self.run_dir = Path(out)
        command = [python, "-m", "cotrain", "serve" if serve else "run", str(self.config), "--out", str(out)]
        command.append("--quiet")
        if duration_s is not None:
            command += ["--duration", f"{duration_s:g}"]
        if force:
            command.append("--force")
        self.command = command
        self._proc: subprocess.Popen[str] | None = None
        self._stderr = ""

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Run:
        if self._proc is not None:
            raise RunError("this run was started already")
        (self.run_dir / "ingress.json").unlink(missing_ok=True)  # a previous run's endpoints are stale
        self._proc = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        return self

    def wait_ready(self, timeout_s: float = 300.0) -> dict[str, str]:
        """Until the front end answers ready (every service loaded); returns the endpoints.

        Without ingress, until the run has started (its `run_started` event)."""
        proc = self._started()
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RunError(f"cotrain exited {proc.returncode} before it was ready: {self._read_stderr()}")
            if self._is_ready():
                return self.endpoints
            if time.monotonic() > deadline:
                raise RunError(f"not ready after {timeout_s:g} s")
            time.sleep(0.1)  # polling files and a port another process is bringing up

    def _is_ready(self) -> bool:
        endpoints = self.endpoints
        if not endpoints:
            events = self.run_dir / "events.jsonl"
            return events.exists() and '"run_started"' in events.read_text(encoding="utf-8")
        if "http" not in endpoints:
            return (self.run_dir / "events.jsonl").exists() and '"run_started"' in (
                self.run_dir / "events.jsonl"
            ).read_text(encoding="utf-8")
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{endpoints['http']}/v2/health/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM: the run drains, restores the device and writes its summary. Returns the exit code."""
        proc = self._started()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float | None = None) -> int:
        proc = self._started()
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        self._stderr += stderr or ""
        return int(proc.returncode)

    def __enter__(self) -> Run:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.stop()

    # --- what the run wrote -----------------------------------------------------------------------

    @property
    def endpoints(self) -> dict[str, str]:
        """`{"http": host:port, "grpc": ..., "metrics": ...}` as bound; empty before it listens."""
        path = self.run_dir / "ingress.json"
        try:
            data: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}
        return data

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.run_dir / "summary.json").read_text(encoding="utf-8"))
        return data

    def _started(self) -> subprocess.Popen[str]:
        if self._proc is None:
            raise RunError("call start() first (or use the run as a context manager)")
        return self._proc

    def _read_stderr(self) -> str:
        proc = self._started()
        if proc.stderr is not None and proc.poll() is not None:
            self._stderr += proc.stderr.read()
        return self._stderr.strip()[-2000:]

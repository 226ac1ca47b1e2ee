"""Flower's server side for cotrain: a loopback federation for demos, or one SuperNode for a fleet.

`LocalFederation` runs everything on 127.0.0.1 with Flower's Deployment Engine: one
`flower-superlink`, one `flower-supernode` per client bridge socket, and a run submitted with
`flwr run`. The ServerApp appends one row per round to a CSV that `rounds()` reads, because
`flwr run` returns at once and Flower offers no per-round results while a run goes on.

`RemoteFederation` is the real-fleet case: the SuperLink is someone else's, so only a local
SuperNode is started, pointing at it over TLS (or explicitly insecure).

Every Flower process gets `FLWR_TELEMETRY_ENABLED=0`, `FLWR_DISABLE_UPDATE_CHECK=1` and a
run-local `FLWR_HOME` (otherwise Flower calls home), and `PATH` starts with the directory of
the injected binaries, because the SuperLink and SuperNode start `flower-superexec` by name.
The SuperLink runs with `--disable-runtime-dependency-installation` and the app declares no
dependencies, so nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cotrain.workloads.training.federated.process_tree import ProcessSet, Spawned

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_APP_DIR = Path(__file__).resolve().parent / "app"
"""The Flower app shipped with cotrain (see app/pyproject.toml for the run-config keys)."""
FLWR_HOME_ENV = "FLWR_HOME"
BRIDGE_SOCKET_KEY = "bridge-socket"
CLI_TIMEOUT_S = 60.0
"""`flwr run/ls/stop` answer in about a second; this bounds a hung Control API."""

NodeConfigValue = str | int | float | bool


class FederationError(RuntimeError):
    """A Flower process died, a CLI call failed, or the run ended before its rounds."""


@dataclass(frozen=True)
class FlowerBinaries:
    superlink: Path
    supernode: Path
    flwr: Path

    @classmethod
    def beside(cls, python: Path | None = None) -> FlowerBinaries:
        """The console scripts installed next to `python` (default: this interpreter's venv)."""
        bin_dir = (python or Path(sys.executable)).parent
        return cls(bin_dir / "flower-superlink", bin_dir / "flower-supernode", bin_dir / "flwr")

    @property
    def path_dirs(self) -> list[str]:
        return list(dict.fromkeys(str(p.parent) for p in (self.superlink, self.supernode, self.flwr)))


def flower_env(flwr_home: Path, binaries: FlowerBinaries, base: Mapping[str, str]) -> dict[str, str]:
    """The environment for every Flower process: offline, run-local home, superexec on PATH."""
    env = dict(base)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env[FLWR_HOME_ENV] = str(flwr_home)
    env["PATH"] = os.pathsep.join([*binaries.path_dirs, env.get("PATH", os.defpath)])
    return env


# ----------------------------------------------------------------------------- argv and files


def _toml_value(value: NodeConfigValue) -> str:
    """A TOML literal. json.dumps of a str is a valid TOML basic string (same escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML config cannot carry {value}")
        return repr(value)
    return json.dumps(value)


def node_config_arg(config: Mapping[str, NodeConfigValue]) -> str:
    """`--node-config` value: space-separated `key=value` with TOML values.

    Flower splits it with a regex that ends a double-quoted value at the first `"`, so a
    string holding a quote, backslash or newline is refused rather than silently cut.
    """
    parts = []
    for key, value in config.items():
        if not key or any(c.isspace() or c == "=" for c in key):
            raise ValueError(f"bad node-config key {key!r}")
        if isinstance(value, str) and any(c in value for c in "\"\\\n'"):
            raise ValueError(
                f"node-config {key}={value!r}: quotes, backslashes and newlines are not supported"
            )
        parts.append(f"{key}={_toml_value(value)}")
    return " ".join(parts)


def toml_table(values: Mapping[str, NodeConfigValue]) -> str:
    return "".join(f"{json.dumps(key)} = {_toml_value(value)}\n" for key, value in values.items())


def superlink_argv(binary: Path, host: str, port: int) -> list[str]:
    return [
        str(binary),
        "--insecure",
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]


@dataclass(frozen=True)
class RemoteSuperLink:
    """How a SuperNode (and the `flwr` CLI) reach a SuperLink that is not ours.

    TLS is the default. `root_certificates` is the CA that signed the SuperLink's certificate
    (its SANs must name the address used here); without it the system trust store is used.
    `insecure=True` must be asked for explicitly and excludes `root_certificates`.
    """

    address: str
    root_certificates: Path | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"SuperLink address must be host:port, got {self.address!r}")
        if self.insecure and self.root_certificates is not None:
            raise ValueError("insecure=True and root_certificates exclude each other")

    def tls_args(self) -> list[str]:
        if self.insecure:
            return ["--insecure"]
        if self.root_certificates is not None:
            return ["--root-certificates", str(self.root_certificates.resolve())]
        return []

    def connection_toml(self, name: str) -> str:
        """`$FLWR_HOME/config.toml` naming this SuperLink as the default connection."""
        conn: dict[str, NodeConfigValue] = {"address": self.address}
        if self.insecure:
            conn["insecure"] = True
        elif self.root_certificates is not None:
            conn["root-certificates"] = str(self.root_certificates.resolve())
        return f"[superlink]\ndefault = {json.dumps(name)}\n\n[superlink.{name}]\n" + toml_table(conn)


def supernode_argv(
    binary: Path,
    superlink: RemoteSuperLink,
    runtime_port: int,
    node_config: Mapping[str, NodeConfigValue],
    *,
    runtime_host: str = LOOPBACK,
    max_retries: int | None = None,
    max_wait_time_s: float | None = None,
) -> list[str]:
    """argv of one SuperNode. Its own Runtime API listens on `runtime_host:runtime_port`; two
    SuperNodes on one host need different ports."""
    argv = [
        str(binary),
        *superlink.tls_args(),
        "--superlink",
        superlink.address,
        "--host",
        runtime_host,
        "--port",
        str(runtime_port),
        "--node-config",
        node_config_arg(node_config),
    ]
    if max_retries is not None:
        argv += ["--max-retries", str(max_retries)]
    if max_wait_time_s is not None:
        argv += ["--max-wait-time", str(max_wait_time_s)]
    return argv


def free_loopback_port() -> int:
    """A port that was free a moment ago. Startup checks that our process really got it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# ----------------------------------------------------------------------------- run settings and rounds


@dataclass(frozen=True)
class RunSettings:
    """What one `flwr run` asks of the ServerApp (keys of app/pyproject.toml's run config)."""

    initial_arrays: Path
    num_rounds: int = 2
    round_timeout_s: float = 3600.0
    bridge_timeout_s: float = 3000.0
    bridge_connect_timeout_s: float = 60.0
    fraction_evaluate: float = 1.0
    local_steps: int = 0

    def run_config(
        self, *, min_clients: int, rounds_file: Path, arrays_file: Path
    ) -> dict[str, NodeConfigValue]:
        if self.bridge_timeout_s >= self.round_timeout_s:
            raise ValueError("bridge_timeout_s must be below round_timeout_s, so a stuck trainer is reported")
        return {
            "num-server-rounds": self.num_rounds,
            "min-clients": min_clients,
            "fraction-evaluate": float(self.fraction_evaluate),
            "round-timeout-s": float(self.round_timeout_s),
            "bridge-timeout-s": float(self.bridge_timeout_s),
            "bridge-connect-timeout-s": float(self.bridge_connect_timeout_s),
            "local-steps": self.local_steps,
            "initial-arrays": str(self.initial_arrays.resolve()),
            "rounds-file": str(rounds_file.resolve()),
            "arrays-file": str(arrays_file.resolve()),
        }


@dataclass(frozen=True)
class RoundRow:
    """One row of the ServerApp's rounds file. `clients` < the fleet size means lost replies."""

    round: int
    t_s: float
    train_loss: float
    train_examples: int
    eval_loss: float
    eval_accuracy: float
    clients: int
    round_s: float
    train_failures: int


ROUND_COLUMNS = tuple(f.name for f in fields(RoundRow))


def read_rounds(path: Path) -> list[RoundRow]:
    """Rows so far; a torn last line (the ServerApp mid-write) is dropped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = []
    for record in csv.DictReader(text.splitlines()):
        if tuple(record) != ROUND_COLUMNS:
            raise FederationError(f"{path}: columns {tuple(record)} are not {ROUND_COLUMNS}")
        rows.append(
            RoundRow(
                round=int(record["round"]),
                t_s=float(record["t_s"]),
                train_loss=float(record["train_loss"]),
                train_examples=int(record["train_examples"]),
                eval_loss=float(record["eval_loss"]),
                eval_accuracy=float(record["eval_accuracy"]),
                clients=int(record["clients"]),
                round_s=float(record["round_s"]),
                train_failures=int(record["train_failures"]),
            )
        )
    return rows


@dataclass(frozen=True)
class FederationStatus:
    run_id: int | None
    run_status: str | None
    """Flower's status, e.g. "running", "finished:completed"; None before submit or if unknown."""
    superlink_alive: bool
    supernodes_alive: tuple[bool, ...]
    rounds_done: int


# ----------------------------------------------------------------------------- the federations


class _Flower:
    """What both federations share: a run-local FLWR_HOME, the env, the processes, the CLI."""

    def __init__(self, work_dir: Path, binaries: FlowerBinaries | None, base_env: Mapping[str, str] | None):
        self.work_dir = work_dir.resolve()
        self.binaries = binaries or FlowerBinaries.beside()
        self.flwr_home = self.work_dir / "flwr-home"
        self.log_dir = self.work_dir / "logs"
        self.env = flower_env(self.flwr_home, self.binaries, os.environ if base_env is None else base_env)
        self.processes = ProcessSet(self.env, self.work_dir, (FLWR_HOME_ENV, str(self.flwr_home)))
        self.killed: list[str] = []
        """Processes that ignored SIGTERM at the last stop (for diagnosis)."""

    def _prepare_dirs(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        # A parent that was SIGKILLed leaves its fleet running; the marker finds it.
        self.killed += self.processes.terminate_all(grace_s=5.0)

    def _cli(self, *args: str, timeout_s: float = CLI_TIMEOUT_S) -> dict[str, Any]:
        """Run `flwr ... --format json` and return its JSON answer; raise on failure."""
        argv = [str(self.binaries.flwr), *args, "--format", "json"]
        try:
            done = subprocess.run(
                argv, env=self.env, cwd=self.work_dir, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise FederationError(f"{' '.join(argv[:3])} gave no answer in {timeout_s:g} s") from None
        start = done.stdout.find("{")
        try:
            answer: dict[str, Any] = json.loads(done.stdout[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            answer = {}
        if done.returncode != 0 or not answer.get("success", False):
            reason = answer.get("error-message") or done.stderr.strip()[-2000:] or done.stdout[-2000:]
            raise FederationError(f"{' '.join(argv[:3])} failed: {reason}")
        return answer

    def _terminate(self, grace_s: float) -> None:
        try:
            self.killed += self.processes.terminate_all(grace_s)
        except Exception:  # stop() runs in finally blocks; a failure must not mask the cause
            log.exception("stopping Flower processes under %s failed", self.work_dir)


class LocalFederation(_Flower):
    """A SuperLink and one SuperNode per bridge socket, all on loopback, and one run.

    Lifecycle: `start()` → `submit(RunSettings)` → `wait_rounds(n, timeout_s)` / `rounds()` →
    `stop()`. `stop()` is idempotent and never raises, so it belongs in a `finally` (also the
    one after a KeyboardInterrupt); the context manager calls it. Waiting for nodes never
    times out inside Flower, so `wait_rounds` brings its own deadline.
    """

    def __init__(
        self,
        work_dir: Path,
        bridge_sockets: Sequence[Path],
        *,
        app_dir: Path = DEFAULT_APP_DIR,
        binaries: FlowerBinaries | None = None,
        host: str = LOOPBACK,
        connection_name: str = "cotrain-local",
        startup_timeout_s: float = 60.0,
        stop_grace_s: float = 10.0,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        if not bridge_sockets:
            raise ValueError("a federation needs at least one client bridge socket")
        super().__init__(work_dir, binaries, base_env)
        self.bridge_sockets = [Path(p).resolve() for p in bridge_sockets]
        self.app_dir = app_dir
        self.host = host
        self.connection_name = connection_name
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.rounds_file = self.work_dir / "rounds.csv"
        self.arrays_file = self.work_dir / "global-arrays.npz"
        self.superlink_port: int | None = None
        self.supernode_ports: list[int] = []
        self.run_id: int | None = None
        self._superlink: Spawned | None = None
        self._supernodes: list[Spawned] = []
        self._run_cancelled = False

    def __enter__(self) -> LocalFederation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def superlink_address(self) -> str:
        if self.superlink_port is None:
            raise RuntimeError("federation not started")
        return f"{self.host}:{self.superlink_port}"

    def start(self) -> None:
        """Start the SuperLink and the SuperNodes; return once all of them listen."""
        if self._superlink is not None:
            raise RuntimeError("federation already started")
        self._prepare_dirs()
        try:
            self._start_processes()
        except BaseException:
            self.stop()
            raise

    def _start_processes(self) -> None:
        self.superlink_port = free_loopback_port()
        self._superlink = self.processes.spawn(
            "superlink",
            superlink_argv(self.binaries.superlink, self.host, self.superlink_port),
            self.log_dir / "superlink.log",
        )
        link = RemoteSuperLink(self.superlink_address, insecure=True)
        (self.flwr_home / "config.toml").write_text(link.connection_toml(self.connection_name))
        self._wait_listening(self._superlink, self.superlink_port)
        for index, socket_path in enumerate(self.bridge_sockets):
            port = free_loopback_port()
            node_config: dict[str, NodeConfigValue] = {
                BRIDGE_SOCKET_KEY: str(socket_path),
                "partition-id": index,
                "num-partitions": len(self.bridge_sockets),
            }
            argv = supernode_argv(self.binaries.supernode, link, port, node_config, runtime_host=self.host)
            self.supernode_ports.append(port)
            self._supernodes.append(
                self.processes.spawn(f"supernode-{index}", argv, self.log_dir / f"supernode-{index}.log")
            )
        for node, port in zip(self._supernodes, self.supernode_ports, strict=True):
            self._wait_listening(node, port)

    def _wait_listening(self, spawned: Spawned, port: int) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while not _port_open(self.host, port):
            if not spawned.alive():
                raise FederationError(f"{spawned.name} exited during startup:\n{spawned.log_tail()}")
            if time.monotonic() > deadline:
                raise FederationError(f"{spawned.name} did not listen on {self.host}:{port} in time")
            time.sleep(0.1)  # polling an external process's port; no event to wait on

    def submit(self, settings: RunSettings) -> int:
        """Submit the run with `flwr run`; returns Flower's run id. One run per federation."""
        if self._superlink is None:
            raise RuntimeError("start() the federation first")
        if self.run_id is not None:
            raise RuntimeError(f"run {self.run_id} was already submitted")
        if not settings.initial_arrays.is_file():
            raise FileNotFoundError(f"initial arrays not found: {settings.initial_arrays}")
        # Bundle a private copy: flwr may write beside the app, and the installed one may be read-only.
        app_copy = self.work_dir / "app"
        shutil.rmtree(app_copy, ignore_errors=True)
        shutil.copytree(self.app_dir, app_copy, ignore=shutil.ignore_patterns("__pycache__"))
        run_config_file = self.work_dir / "run-config.toml"
        run_config = settings.run_config(
            min_clients=len(self.bridge_sockets), rounds_file=self.rounds_file, arrays_file=self.arrays_file
        )
        run_config_file.write_text(toml_table(run_config))
        self.rounds_file.unlink(missing_ok=True)
        answer = self._cli("run", str(app_copy), self.connection_name, "--run-config", str(run_config_file))
        self.run_id = int(answer["run-id"])
        return self.run_id

    def rounds(self) -> list[RoundRow]:
        return read_rounds(self.rounds_file)

    def wait_rounds(self, n: int, timeout_s: float, *, status_every_s: float = 15.0) -> list[RoundRow]:
        """Block until the rounds file has `n` rows; raise `FederationError` early when a Flower
        process died or the run ended without them, `TimeoutError` at the deadline."""
        start = time.monotonic()
        next_status_s = start + status_every_s
        while True:
            rows = self.rounds()
            if len(rows) >= n:
                return rows
            self._check_alive()
            now = time.monotonic()
            if now >= next_status_s and self.run_id is not None:
                next_status_s = now + status_every_s
                status = self._run_status()
                if status is not None and status.startswith("finished"):
                    rows = self.rounds()
                    if len(rows) >= n:
                        return rows
                    raise FederationError(f"run {self.run_id} ended {status} after {len(rows)} of {n} rounds")
            if now - start > timeout_s:
                raise TimeoutError(f"{len(rows)} of {n} rounds after {timeout_s:g} s")
            time.sleep(0.2)  # the ServerApp appends to a file; nothing to wait on but the file

    def status(self) -> FederationStatus:
        return FederationStatus(
            run_id=self.run_id,
            run_status=self._run_status(),
            superlink_alive=self._superlink is not None and self._superlink.alive(),
            supernodes_alive=tuple(n.alive() for n in self._supernodes),
            rounds_done=len(self.rounds()),
        )

    def _run_status(self) -> str | None:
        if self.run_id is None or self._superlink is None or not self._superlink.alive():
            return None
        try:
            answer = self._cli("ls", self.connection_name, "--run-id", str(self.run_id))
        except FederationError:
            return None
        runs = answer.get("runs") or []
        return str(runs[0].get("status")) if runs else None

    def _check_alive(self) -> None:
        for spawned in [self._superlink, *self._supernodes]:
            if spawned is not None and not spawned.alive():
                raise FederationError(
                    f"{spawned.name} exited with {spawned.popen.returncode}:\n{spawned.log_tail()}"
                )

    def stop(self) -> None:
        """Cancel the run and end every process started here. Idempotent; never raises."""
        try:
            if self.run_id is not None and not self._run_cancelled and self._superlink is not None:
                self._run_cancelled = True
                if self._superlink.alive():
                    with contextlib.suppress(FederationError):
                        self._cli("stop", str(self.run_id), self.connection_name, timeout_s=15.0)
        finally:
            self._terminate(self.stop_grace_s)


class RemoteFederation(_Flower):
    """Joins a real fleet: one local SuperNode whose ClientApp shim talks to `bridge_socket`.

    The run is submitted by whoever operates the SuperLink; `connection_toml` writes the
    `flwr` CLI connection for it into this node's FLWR_HOME, for `flwr ls`/`flwr log`.
    """

    def __init__(
        self,
        superlink: RemoteSuperLink,
        work_dir: Path,
        bridge_socket: Path,
        *,
        partition_id: int = 0,
        num_partitions: int = 1,
        runtime_port: int | None = None,
        binaries: FlowerBinaries | None = None,
        connection_name: str = "fleet",
        max_retries: int | None = None,
        max_wait_time_s: float | None = None,
        stop_grace_s: float = 10.0,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(work_dir, binaries, base_env)
        self.superlink = superlink
        self.bridge_socket = bridge_socket.resolve()
        self.partition_id = partition_id
        self.num_partitions = num_partitions
        self.runtime_port = runtime_port
        self.connection_name = connection_name
        self.max_retries = max_retries
        self.max_wait_time_s = max_wait_time_s
        self.stop_grace_s = stop_grace_s
        self._supernode: Spawned | None = None

    def supernode_argv(self, runtime_port: int) -> list[str]:
        node_config: dict[str, NodeConfigValue] = {
            BRIDGE_SOCKET_KEY: str(self.bridge_socket),
            "partition-id": self.partition_id,
            "num-partitions": self.num_partitions,
        }
        return supernode_argv(
            self.binaries.supernode,
            self.superlink,
            runtime_port,
            node_config,
            max_retries=self.max_retries,
            max_wait_time_s=self.max_wait_time_s,
        )

    def start(self) -> None:
        if self._supernode is not None:
            raise RuntimeError("SuperNode already started")
        self._prepare_dirs()
        (self.flwr_home / "config.toml").write_text(self.superlink.connection_toml(self.connection_name))
        port = self.runtime_port or free_loopback_port()
        self._supernode = self.processes.spawn(
            "supernode", self.supernode_argv(port), self.log_dir / "supernode.log"
        )

    def alive(self) -> bool:
        return self._supernode is not None and self._supernode.alive()

    def stop(self) -> None:
        """End the SuperNode and its ClientApps. Idempotent; never raises."""
        self._terminate(self.stop_grace_s)

"""Flower's server side: argv and config construction (fast) and a real loopback federation (slow)."""

from __future__ import annotations

import contextlib
import math
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import psutil
import pytest

from cotrain.workloads.training.federated.bridge import Arrays, BridgeServer, ConfigValue
from cotrain.workloads.training.federated.local_fleet import (
    DEFAULT_APP_DIR,
    ROUND_COLUMNS,
    FederationError,
    FlowerBinaries,
    LocalFederation,
    RemoteFederation,
    RemoteSuperLink,
    RunSettings,
    flower_env,
    node_config_arg,
    read_rounds,
    superlink_argv,
    supernode_argv,
)
from cotrain.workloads.training.federated.process_tree import marked_processes

# flwr needs Python >= 3.11; on an older interpreter (a JetPack venv) cotrain installs without it.
pytest.importorskip("flwr")
tomllib = pytest.importorskip("tomllib")


def test_superlink_listens_on_loopback_and_installs_nothing() -> None:
    argv = superlink_argv(Path("/venv/bin/flower-superlink"), "127.0.0.1", 9093)

    assert argv[0] == "/venv/bin/flower-superlink"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "9093"
    assert "--disable-runtime-dependency-installation" in argv


def test_remote_supernode_uses_tls_with_the_given_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    link = RemoteSuperLink("fl.example.org:9093", root_certificates=ca)
    fed = RemoteFederation(
        link,
        tmp_path / "node",
        tmp_path / "bridge.sock",
        partition_id=3,
        num_partitions=8,
        binaries=FlowerBinaries.beside(Path("/opt/venv/bin/python")),
        max_retries=5,
    )

    argv = fed.supernode_argv(9201)

    assert argv[0] == "/opt/venv/bin/flower-supernode"
    assert "--insecure" not in argv
    assert argv[argv.index("--root-certificates") + 1] == str(ca.resolve())
    assert argv[argv.index("--superlink") + 1] == "fl.example.org:9093"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"  # the node's own Runtime API stays local
    assert argv[argv.index("--port") + 1] == "9201"
    assert argv[argv.index("--max-retries") + 1] == "5"
    assert argv[argv.index("--node-config") + 1] == (
        f'bridge-socket="{(tmp_path / "bridge.sock").resolve()}" partition-id=3 num-partitions=8'
    )
    conn = tomllib.loads(link.connection_toml("fleet"))
    assert conn["superlink"]["default"] == "fleet"
    assert conn["superlink"]["fleet"] == {
        "address": "fl.example.org:9093",
        "root-certificates": str(ca.resolve()),
    }


def test_remote_superlink_settings_are_checked(tmp_path: Path) -> None:
    insecure = RemoteSuperLink("10.0.0.5:9093", insecure=True)
    assert supernode_argv(Path("sn"), insecure, 9200, {})[1] == "--insecure"
    assert tomllib.loads(insecure.connection_toml("x"))["superlink"]["x"]["insecure"] is True
    assert RemoteSuperLink("fl.example.org:443").tls_args() == []  # the system trust store
    with pytest.raises(ValueError, match="exclude"):
        RemoteSuperLink("h:1", root_certificates=tmp_path / "ca.pem", insecure=True)
    with pytest.raises(ValueError, match="host:port"):
        RemoteSuperLink("fl.example.org")


def test_node_config_parses_back_through_flowers_own_parser() -> None:
    from flwr.common.config import parse_config_args

    config: dict[str, str | int | float | bool] = {
        "bridge-socket": "/run/cotrain dir/b0.sock",
        "partition-id": 1,
        "lr": 0.5,
        "on": True,
    }

    assert parse_config_args([node_config_arg(config)]) == config
    with pytest.raises(ValueError, match="quotes"):
        node_config_arg({"bridge-socket": '/tmp/a"b.sock'})


def test_every_run_config_key_has_a_default_in_the_app(tmp_path: Path) -> None:
    """flwr refuses overrides of keys that the app's pyproject does not declare."""
    declared = tomllib.loads((DEFAULT_APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    run_config = RunSettings(initial_arrays=tmp_path / "init.npz").run_config(
        min_clients=2, rounds_file=tmp_path / "r.csv", arrays_file=tmp_path / "a.npz"
    )

    assert set(run_config) == set(declared)
    assert {k: type(v) for k, v in run_config.items()} == {k: type(v) for k, v in declared.items()}
    with pytest.raises(ValueError, match="below round_timeout_s"):
        RunSettings(tmp_path / "i.npz", round_timeout_s=60, bridge_timeout_s=60).run_config(
            min_clients=1, rounds_file=tmp_path / "r.csv", arrays_file=tmp_path / "a.npz"
        )


def test_rounds_file_columns_match_what_the_server_app_writes() -> None:
    from cotrain.workloads.training.federated.app.server_app import ROUNDS_COLUMNS

    assert ROUNDS_COLUMNS == ROUND_COLUMNS


def test_read_rounds_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "rounds.csv"
    path.write_text(",".join(ROUND_COLUMNS) + "\n1,10.5,0.5,40,nan,nan,0,3.25,1\n2,14.0,0.3")

    rows = read_rounds(path)

    assert len(rows) == 1
    assert rows[0].round == 1 and rows[0].clients == 0 and rows[0].train_failures == 1
    assert math.isnan(rows[0].eval_loss)
    assert read_rounds(tmp_path / "missing.csv") == []


def test_flower_env_is_offline_and_finds_superexec(tmp_path: Path) -> None:
    binaries = FlowerBinaries.beside(Path("/opt/venv/bin/python"))

    env = flower_env(tmp_path / "home", binaries, {"PATH": "/usr/bin", "HOME": "/root"})

    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_HOME"] == str(tmp_path / "home")
    assert env["PATH"] == "/opt/venv/bin:/usr/bin"


# ----------------------------------------------------------------------------- a real federation


class StepHandler:
    """Client `i` adds `step` to every array and reports `num_examples`, so FedAvg's weighted
    mean is predictable; losses are 1/round so the aggregated metrics are too."""

    def __init__(self, step: float, num_examples: int) -> None:
        self.step = step
        self.num_examples = num_examples
        self.fit_inputs: list[Arrays] = []

    def fit(self, arrays: Arrays, config: dict[str, ConfigValue]) -> tuple[Arrays, Mapping[str, float], int]:
        self.fit_inputs.append(arrays)
        loss = 1.0 / int(config["server-round"])
        return [a + self.step for a in arrays], {"train_loss": loss}, self.num_examples

    def evaluate(
        self, arrays: Arrays, config: dict[str, ConfigValue]
    ) -> tuple[float, Mapping[str, float], int]:
        r = int(config["server-round"])
        return 1.0 / r, {"eval_accuracy": 0.1 * r}, self.num_examples


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="cotrain-fed-") as d:
        yield Path(d)


def _listening_addresses(processes: set[psutil.Process]) -> list[tuple[str, int]]:
    found = []
    for proc in processes:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        found += [(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


@pytest.mark.slow
def test_two_supernodes_run_two_fedavg_rounds_on_loopback_and_leave_nothing(short_dir: Path) -> None:
    handlers = [StepHandler(step=1.0, num_examples=10), StepHandler(step=3.0, num_examples=30)]
    sockets = [short_dir / f"b{i}.sock" for i in range(2)]
    initial = short_dir / "initial.npz"
    np.savez(initial, w=np.zeros((2, 3), dtype=np.float32), b=np.zeros(4))
    servers = [BridgeServer(s, h) for s, h in zip(sockets, handlers, strict=True)]
    fed = LocalFederation(short_dir / "fed", sockets, startup_timeout_s=30.0, stop_grace_s=10.0)
    flwr_home = str(fed.flwr_home)
    try:
        for server in servers:
            server.start()
        fed.start()
        t0 = time.monotonic()
        fed.submit(
            RunSettings(initial_arrays=initial, num_rounds=2, round_timeout_s=60.0, bridge_timeout_s=45.0)
        )

        rows = fed.wait_rounds(2, timeout_s=70.0)
        two_rounds_s = time.monotonic() - t0
        listening = _listening_addresses(marked_processes("FLWR_HOME", flwr_home))
        status = fed.status()
    finally:
        stop_start = time.monotonic()
        fed.stop()
        stop_s = time.monotonic() - stop_start
        for server in servers:
            server.stop()
    print(
        f"\n2 rounds took {two_rounds_s:.1f} s from submit; round_s = {[round(r.round_s, 1) for r in rows]};"
        f" stop took {stop_s:.1f} s"
    )

    # Every round had both clients; FedAvg weighted them 10:30, so the global arrays move by
    # (1*10 + 3*30) / 40 = 2.5 per round (an unweighted mean would give 2.0).
    assert [(r.round, r.clients, r.train_failures, r.train_examples) for r in rows] == [
        (1, 2, 0, 40),
        (2, 2, 0, 40),
    ]
    assert [r.train_loss for r in rows] == pytest.approx([1.0, 0.5])
    assert [r.eval_loss for r in rows] == pytest.approx([1.0, 0.5])
    assert [r.eval_accuracy for r in rows] == pytest.approx([0.1, 0.2])
    assert rows[0].t_s < rows[1].t_s and all(r.round_s > 0 for r in rows)
    for handler in handlers:
        assert len(handler.fit_inputs) == 2
        np.testing.assert_allclose(handler.fit_inputs[0][0], np.zeros((2, 3)))
        np.testing.assert_allclose(handler.fit_inputs[1][0], np.full((2, 3), 2.5))
    with np.load(fed.arrays_file) as final:
        assert final.files == ["w", "b"]
        assert final["w"].dtype == np.float32
        np.testing.assert_allclose(final["w"], np.full((2, 3), 5.0))
        np.testing.assert_allclose(final["b"], np.full(4, 5.0))

    assert status.superlink_alive and status.supernodes_alive == (True, True)
    assert status.run_status is not None
    # The SuperLink's HTTP port and each SuperNode's Runtime API (superexecs may add more).
    assert len(listening) >= 3
    assert {ip for ip, _ in listening} == {"127.0.0.1"}
    assert marked_processes("FLWR_HOME", flwr_home) == set(), "a Flower process outlived stop()"
    assert fed.killed == [], "some Flower process needed SIGKILL"
    after = fed.status()
    assert not after.superlink_alive and after.supernodes_alive == (False, False)
    fed.stop()  # idempotent


def test_start_fails_fast_when_the_superlink_dies(short_dir: Path) -> None:
    """A SuperLink that cannot start must not leave the caller waiting for its deadline."""
    fake_bin = short_dir / "bin"
    fake_bin.mkdir()
    for name in ("flower-superlink", "flower-supernode", "flwr"):
        script = fake_bin / name
        script.write_text("#!/bin/sh\necho 'address already in use' >&2\nexit 3\n")
        script.chmod(0o755)
    fed = LocalFederation(
        short_dir / "fed",
        [short_dir / "b0.sock"],
        binaries=FlowerBinaries.beside(fake_bin / "python"),
        startup_timeout_s=30.0,
    )

    start = time.monotonic()
    with pytest.raises(FederationError, match="superlink exited during startup"):
        fed.start()

    assert time.monotonic() - start < 10.0
    assert "address already in use" in (short_dir / "fed" / "logs" / "superlink.log").read_text()


class PausedHandler(StepHandler):
    """A trainer held paused by the controller: every call blocks until the test releases it."""

    def __init__(self) -> None:
        super().__init__(step=1.0, num_examples=10)
        self.release = threading.Event()

    def fit(self, arrays: Arrays, config: dict[str, ConfigValue]) -> tuple[Arrays, Mapping[str, float], int]:
        self.release.wait(60.0)
        return super().fit(arrays, config)


def _wait_for_clientapp(flwr_home: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in marked_processes("FLWR_HOME", flwr_home):
            with contextlib.suppress(psutil.Error):
                if any("flwr-clientapp" in part for part in proc.cmdline()):
                    return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_a_round_without_replies_is_recorded_and_stop_mid_round_leaves_nothing(short_dir: Path) -> None:
    """With every trainer paused past the shim's bridge timeout, each shim answers with an error,
    the round aggregates nothing, and Flower still carries on; so the row must say so
    (clients = 0, NaN losses). The bridge timeout is far below the round timeout, so the error
    replies, not the round timeout, end the phase (deterministic and quick).

    Round 2 is then stopped while its ClientApps wait on the paused trainers, as a Ctrl-C
    would: no Flower process may survive, although the ClientApps sit in a socket wait."""
    handlers = [PausedHandler(), PausedHandler()]
    sockets = [short_dir / f"b{i}.sock" for i in range(2)]
    initial = short_dir / "initial.npz"
    np.savez(initial, w=np.zeros(3))
    servers = [BridgeServer(s, h) for s, h in zip(sockets, handlers, strict=True)]
    fed = LocalFederation(short_dir / "fed", sockets, startup_timeout_s=30.0)
    flwr_home = str(fed.flwr_home)
    try:
        for server in servers:
            server.start()
        fed.start()
        fed.submit(
            RunSettings(initial_arrays=initial, num_rounds=2, round_timeout_s=30.0, bridge_timeout_s=1.0)
        )
        rows = fed.wait_rounds(1, timeout_s=60.0)
        assert _wait_for_clientapp(flwr_home, timeout_s=30.0), "round 2 never reached a ClientApp"
        stop_start = time.monotonic()
        fed.stop()
        print(f"\nstop mid-round took {time.monotonic() - stop_start:.1f} s; SIGKILLed: {fed.killed}")
        left = marked_processes("FLWR_HOME", flwr_home)
    finally:
        for handler in handlers:
            handler.release.set()
        fed.stop()
        for server in servers:
            server.stop()

    (row,) = rows
    assert (row.round, row.clients, row.train_failures, row.train_examples) == (1, 0, 2, 0)
    assert math.isnan(row.train_loss) and math.isnan(row.eval_loss)
    assert row.round_s < 25.0, "the error replies, not the 30 s round timeout, ended the phases"
    assert not fed.arrays_file.exists(), "nothing was aggregated, so no global arrays were written"
    assert left == set(), f"left running after stop(): {left}"
    assert len(fed.rounds()) == 1

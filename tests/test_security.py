"""Security: what listens where, TLS to a remote SuperLink, run-directory
permissions, and power modes and telemetry without root on a Jetson.

All fast: Flower processes are not started (their argv is captured where the runtime would
spawn them); the Jetson is the fake device built from real artefacts.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cotrain.cli import main
from cotrain.config import ConfigError, ExperimentConfig, load_config, parse_config
from cotrain.platform.base import PowerModeError
from cotrain.platform.jetson import JetsonPaths, JetsonPlatform
from cotrain.platform.placement import AffinityPlacer
from cotrain.preflight import preflight
from cotrain.rundir import RunDir
from cotrain.workloads.training.federated import local_fleet
from cotrain.workloads.training.federated.process_tree import ProcessSet, Spawned
from tests.conftest import REPO, TINY
from tests.fake_tools import FakeNvpmodel
from tests.jetson_fakes import build_fake_orin_sysfs
from tests.tls_certs import self_signed_cert

FIXTURES = REPO / "tests" / "data" / "jetson"
AGX_CONF = FIXTURES / "nvpmodel" / "LineageOS__android_device_nvidia_concord__nvpmodel_p3701_0000.conf"
MAXN, MODE_50W = 0, 3
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


# --- run directories ----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Any:
    """Set the umask for one test and put the original back."""
    original = os.umask(0o022)
    os.umask(original)
    yield os.umask
    os.umask(original)


def test_run_directories_are_never_world_writable_even_with_umask_000(tmp_path: Path, umask: Any) -> None:
    umask(0o000)
    run = RunDir(tmp_path / "new" / "deeper" / "run")
    run.prepare()
    for directory in (tmp_path / "new", tmp_path / "new" / "deeper", run.path):
        assert mode(directory) == 0o775, f"{directory}: the umask's group bits, without o+w"
    # What the run writes afterwards (records, checkpoints) is not world-writable either.
    run.requests_csv.write_text("request_id\n")
    run.checkpoints("cl").mkdir(parents=True)
    assert mode(run.requests_csv) == 0o664
    assert mode(run.checkpoints("cl")) == 0o775


def test_workers_inherit_the_tightened_umask(tmp_path: Path, umask: Any) -> None:
    umask(0o000)
    run = RunDir(tmp_path / "run")
    run.prepare()
    record = run.path / "from-a-child.csv"
    subprocess.run([sys.executable, "-c", f"open({str(record)!r}, 'w').write('x')"], check=True)
    assert not mode(record) & stat.S_IWOTH


def test_the_users_umask_is_honoured(tmp_path: Path, umask: Any) -> None:
    umask(0o027)
    run = RunDir(tmp_path / "run")
    run.prepare()
    run.summary.write_text("{}")
    assert (mode(run.path), mode(run.summary)) == (0o750, 0o640)
    assert umask(0o027) == 0o027, "a umask that already denies o+w is left as it is"


# --- what listens where -------------------------------------------------------------------------


class FakePopen:
    pid = 999_999
    returncode = None

    def poll(self) -> None:
        return None


@pytest.fixture
def spawned_argv(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Flower processes are recorded, not started; they "listen" at once."""
    calls: list[tuple[str, list[str]]] = []

    def spawn(self: ProcessSet, name: str, argv: list[str], log_path: Path) -> Spawned:
        calls.append((name, list(argv)))
        return Spawned(name, FakePopen(), log_path)  # type: ignore[arg-type]

    monkeypatch.setattr(ProcessSet, "spawn", spawn)
    monkeypatch.setattr(ProcessSet, "terminate_all", lambda self, grace_s: [])
    monkeypatch.setattr(local_fleet, "_port_open", lambda host, port: True)
    return calls


def make_ca(directory: Path) -> Path:
    """A self-signed CA certificate in PEM, as a fleet operator would hand out."""
    cert, _ = self_signed_cert(directory)
    return cert


def federated(name: str, server: Any) -> dict[str, Any]:
    job = copy.deepcopy(TINY["workloads"]["training"][0])
    return {**job, "name": name, "kind": "federated", "federated": {"server": server, "rounds": 1}}


def federated_experiment(ca: Path) -> ExperimentConfig:
    data = copy.deepcopy(TINY)
    data["workloads"]["training"] = [
        federated("fl-a", "local"),
        federated("fl-b", "local"),
        federated("fl-r", {"address": "fl.example.org:9092", "root_certificates": str(ca)}),
    ]
    return parse_config(data)


def addresses(argv: list[str]) -> list[str]:
    """Every host a Flower process is told to listen on: `--host H`, `--*-address H:P`."""
    found = []
    for flag, value in itertools.pairwise(argv):
        if flag == "--host":
            found.append(value)
        elif flag.startswith("--") and flag.endswith("-address"):
            found.append(value.rsplit(":", 1)[0].strip("[]"))
    return found


def test_the_runtime_starts_flower_on_loopback_only_and_tls_to_a_remote_superlink(
    tmp_path: Path, spawned_argv: list[tuple[str, list[str]]]
) -> None:
    from cotrain.platform import create_platform
    from cotrain.runtime import Runtime

    ca = make_ca(tmp_path)
    config = federated_experiment(ca)
    run_dir = RunDir(tmp_path / "run")
    run_dir.prepare()
    platform = create_platform(config.platform)
    try:
        Runtime(config, run_dir, platform)._start_federations()
    finally:
        platform.restore()

    by_name = {name: argv for name, argv in spawned_argv}
    assert sorted(by_name) == ["superlink", "supernode", "supernode-0", "supernode-1"]
    for name, argv in spawned_argv:
        hosts = addresses(argv)
        assert hosts and set(hosts) <= {"127.0.0.1"}, f"{name} listens beyond loopback: {argv}"
        assert not {"0.0.0.0", "::", "[::]"} & set(argv), argv
        assert "--health-server-address" not in argv, "no extra (plaintext gRPC) listener"
    # The local federation is plaintext, but only between loopback addresses.
    for name in ("supernode-0", "supernode-1"):
        argv = by_name[name]
        assert argv[argv.index("--superlink") + 1].startswith("127.0.0.1:")
        assert "--insecure" in argv
    # The remote SuperLink is reached over TLS with the configured CA, never --insecure.
    remote = by_name["supernode"]
    assert remote[remote.index("--superlink") + 1] == "fl.example.org:9092"
    assert remote[remote.index("--root-certificates") + 1] == str(ca.resolve())
    assert "--insecure" not in remote
    toml = (run_dir.federation / "fl-r" / "flwr-home" / "config.toml").read_text()
    assert f'"root-certificates" = "{ca.resolve()}"' in toml and "insecure" not in toml


SOURCE_DIRS = ("cotrain", "workloads", "controllers", "power_modes")
WILDCARD = re.compile(r"""0\.0\.0\.0|\[::\]|["']::["']|INADDR_ANY|in6addr_any""")


def test_no_source_file_binds_a_wildcard_address() -> None:
    """A `--host 0.0.0.0` or `bind(("", port))` would open a port to the network."""
    offenders = []
    for folder in SOURCE_DIRS:
        for path in (REPO / folder).rglob("*"):
            if path.suffix not in (".py", ".toml", ".yaml") or "__pycache__" in path.parts:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            if WILDCARD.search(text) or re.search(r"""\.bind\(\(\s*["']{2}""", text):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


# --- TLS to a remote SuperLink: config and preflight --------------------------------------------


def config_lines(tmp_path: Path, server: Any) -> list[str]:
    import yaml

    data = copy.deepcopy(TINY)
    data["workloads"]["training"] = [federated("fl", server)]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.lines


@pytest.mark.parametrize(
    ("server", "fragment"),
    [
        (
            {"address": "fl.example.org:9092"},
            "give root_certificates for TLS, or set insecure: true explicitly",
        ),
        (
            {"address": "fl.example.org:9092", "root_certificates": "ca.pem", "insecure": True},
            "root_certificates and insecure: true exclude each other",
        ),
        ({"address": "https://fl.example.org:9092", "insecure": True}, "without a scheme"),
        ({"address": "fl.example.org", "insecure": True}, "must be host:port"),
        ({"address": "fl.example.org:99999", "insecure": True}, "port must be a number in 1..65535"),
    ],
)
def test_a_remote_superlink_needs_tls_or_an_explicit_insecure(
    tmp_path: Path, server: Any, fragment: str
) -> None:
    lines = config_lines(tmp_path, server)
    assert len(lines) == 1, lines
    assert "workloads.training[0].federated.server" in lines[0] and fragment in lines[0], lines[0]


def run_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], server: Any) -> tuple[int, list[str]]:
    import yaml

    data = copy.deepcopy(TINY)
    data["workloads"]["training"] = [federated("fl", server)]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    code = main(["validate", str(path)])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("cotrain: error")]


def test_the_root_certificates_are_checked_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    field = "workloads.training[0].federated.server.root_certificates"
    ca = make_ca(tmp_path)
    assert run_validate(
        tmp_path, capsys, {"address": "fl.example.org:9092", "root_certificates": str(ca)}
    ) == (
        0,
        [],
    )

    missing = tmp_path / "missing.pem"
    code, errors = run_validate(tmp_path, capsys, {"address": "h:9092", "root_certificates": str(missing)})
    assert code == 2 and len(errors) == 1 and f"{field}: cannot read {str(missing)!r}" in errors[0], errors

    garbage = tmp_path / "not-a-cert.pem"
    garbage.write_text("-----BEGIN NOTHING-----\nxyz\n-----END NOTHING-----\n")
    code, errors = run_validate(tmp_path, capsys, {"address": "h:9092", "root_certificates": str(garbage)})
    assert code == 2 and len(errors) == 1 and "is not a PEM certificate bundle" in errors[0], errors
    assert field in errors[0]


# --- Jetson: no root for telemetry, clear refusals for power modes ------------------------------


class Device:
    def __init__(self, tmp_path: Path, deny_switch: str | None = None) -> None:
        self.root = build_fake_orin_sysfs(tmp_path / "root", online_cpus=12)
        self.nvpmodel = FakeNvpmodel(tmp_path / "bin", AGX_CONF, MAXN, deny_switch=deny_switch)
        self.warnings: list[str] = []

    def platform(self, nvpmodel: str | None = None, **kwargs: Any) -> JetsonPlatform:
        paths = JetsonPaths(
            root=self.root,
            nvpmodel=nvpmodel or str(self.nvpmodel.path),
            tegrastats=str(self.root / "no-tegrastats"),
            nvpmodel_conf=AGX_CONF,
        )
        kwargs.setdefault("jtop_factory", None)
        return JetsonPlatform(paths, warn=self.warnings.append, placer=AffinityPlacer(), **kwargs)


@pytest.mark.parametrize("denial", ["Permission denied", "Operation not permitted"])
def test_a_refused_nvpmodel_switch_names_the_mode_and_the_fix(tmp_path: Path, denial: str) -> None:
    device = Device(tmp_path, deny_switch=denial)
    platform = device.platform()
    with pytest.raises(PowerModeError) as caught:
        platform.set_power_mode("MODE_50W")
    message = str(caught.value)
    assert message.startswith("not permitted to switch to MODE_50W"), message
    assert denial in message and "sudo" in message and "group jtop" in message
    assert device.nvpmodel.mode_id == MAXN
    platform.restore()
    assert device.nvpmodel.switches() == [MODE_50W], "one refused attempt, nothing to restore"


class RefusingJtop:
    """jtop connected, but its service refuses the switch (as the real one can)."""

    def start(self) -> None: ...

    def close(self) -> None: ...

    def ok(self) -> bool:
        return True

    @property
    def stats(self) -> dict[str, Any]:
        return {"nvpmodel": "MAXN"}

    @property
    def power(self) -> dict[str, Any]:
        return {}

    @property
    def nvpmodel(self) -> Any:
        return type("NVP", (), {"id": MAXN})()

    @nvpmodel.setter
    def nvpmodel(self, value: int) -> None:
        raise RuntimeError("jtop.service: nvpmodel failed")


def test_a_jtop_refusal_is_a_power_mode_error_not_a_crash(tmp_path: Path) -> None:
    platform = Device(tmp_path).platform(jtop_factory=RefusingJtop)
    assert platform.power_mode_access() is None, "jtop.service switches modes for group members"
    with pytest.raises(PowerModeError, match=r"jtop\.service refused to switch to MODE_50W"):
        platform.set_power_mode("MODE_50W")
    platform.restore()


def test_telemetry_needs_no_root_and_a_missing_jtop_group_is_explained(tmp_path: Path) -> None:
    def not_in_group() -> Any:
        # jetson-stats' client, when /run/jtop.sock (root:jtop 0660) refuses this user
        raise RuntimeError("I can't access jtop.service.\nPlease logout or reboot this board.")

    device = Device(tmp_path)
    platform = device.platform(jtop_factory=not_in_group)
    sample = platform.telemetry()
    platform.restore()
    assert sample.source == "sysfs" and sample.power_w is not None and sample.temperature_c is not None
    assert len(device.warnings) == 1
    assert "add it to group jtop (sudo usermod -aG jtop $USER" in device.warnings[0]
    assert "no root for telemetry" in device.warnings[0]


def fake_nvpmodel_runner(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """nvpmodel as a non-root user sees it: `-q` answers, `-m` is refused."""
    if argv[1:] == ["-q"]:
        return subprocess.CompletedProcess(argv, 0, "NV Power Mode: MAXN\n0\n", "")
    return subprocess.CompletedProcess(argv, 1, "", "NVPM ERROR: Permission denied")


def elf_nvpmodel(tmp_path: Path) -> Path:
    """A plain executable (not a script, not setuid) standing in for /usr/sbin/nvpmodel."""
    source = Path("/bin/true")
    if source.read_bytes()[:4] != b"\x7fELF":
        pytest.skip("needs an ELF /bin/true")
    binary = tmp_path / "sbin" / "nvpmodel"
    binary.parent.mkdir()
    shutil.copy(source, binary)
    binary.chmod(0o755)
    return binary


def power_mode_config(mode: str) -> ExperimentConfig:
    return parse_config({**copy.deepcopy(TINY), "platform": {"power_mode": mode}})


def test_preflight_refuses_a_switch_this_user_may_not_make(tmp_path: Path) -> None:
    device = Device(tmp_path)
    binary = elf_nvpmodel(tmp_path)
    platform = device.platform(str(binary), run=fake_nvpmodel_runner, euid=lambda: 1000)
    try:
        problems = preflight(power_mode_config("MODE_50W"), platform)
        unchanged = preflight(power_mode_config("MAXN"), platform)
    finally:
        platform.restore()
    assert len(problems) == 1, problems
    assert problems[0].startswith("platform.power_mode: this user may not switch to MODE_50W: ")
    assert f"{binary} runs as uid 1000, not root" in problems[0]
    assert "run cotrain with sudo" in problems[0] and "group jtop" in problems[0]
    assert unchanged == [], "staying in the current mode needs no permission"


def test_root_a_setuid_binary_or_a_wrapper_script_may_switch(tmp_path: Path) -> None:
    """Only a certain refusal stops a run: a script may call `sudo -n nvpmodel` itself."""
    device = Device(tmp_path)
    binary = elf_nvpmodel(tmp_path)
    as_root = device.platform(str(binary), run=fake_nvpmodel_runner, euid=lambda: 0)
    script = device.platform(run=fake_nvpmodel_runner, euid=lambda: 1000)
    try:
        assert as_root.power_mode_access() is None
        assert script.power_mode_access() is None
        if os.geteuid() == 0:  # only root can make a root-owned setuid copy
            binary.chmod(0o4755)
            setuid = device.platform(str(binary), run=fake_nvpmodel_runner, euid=lambda: 1000)
            assert setuid.power_mode_access() is None
            setuid.restore()
    finally:
        as_root.restore()
        script.restore()


def test_a_missing_or_unexecutable_nvpmodel_is_named(tmp_path: Path) -> None:
    device = Device(tmp_path)
    missing = device.platform(str(tmp_path / "no-such-nvpmodel"))
    assert "no-such-nvpmodel binary, and jtop.service is not available" in (missing.power_mode_access() or "")
    missing.restore()
    binary = elf_nvpmodel(tmp_path)
    binary.chmod(0o644)
    unexecutable = device.platform(str(binary), run=fake_nvpmodel_runner, euid=lambda: 1000)
    assert f"{binary} is not executable by this user" in (unexecutable.power_mode_access() or "")
    unexecutable.restore()


def test_the_fake_nvpmodel_denial_is_recorded_as_a_call(tmp_path: Path) -> None:
    """The fake really refuses at the command line (not only in cotrain's reading of it)."""
    device = Device(tmp_path, deny_switch="Permission denied")
    done = subprocess.run(
        [str(device.nvpmodel.path), "-m", str(MODE_50W)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1 and "Permission denied" in done.stderr
    assert json.loads(device.nvpmodel.log.read_text().splitlines()[-1]) == ["-m", str(MODE_50W)]
    assert device.nvpmodel.mode_id == MAXN

"""`cotrain run` on a platform: host placement really pins the workloads, and on a (fake) Jetson the
power mode is set, refused when it needs a reboot, and restored after SIGTERM or a worker crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotrain.records import read_jsonl
from tests.conftest import REPO
from tests.fake_tools import FakeNvpmodel, fake_tegrastats
from tests.jetson_fakes import build_fake_orin_sysfs
from tests.test_e2e import COTRAIN, run_cli
from tests.test_jetson_platform import AGX_CONF, MAXN, MODE_50W, ORIN_TEGRASTATS


def events(out: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(out / "events.jsonl"))


def start_run(config: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COTRAIN, "run", str(config), "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_started(proc: subprocess.Popen[str], out: Path) -> None:
    deadline = time.monotonic() + 180
    while not any(e.get("event") == "run_started" for e in events(out)):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.2)  # polling a file another process writes; no assertion depends on timing


def jetson_config(tmp_path: Path, tiny: dict[str, Any], **platform: Any) -> tuple[Path, FakeNvpmodel]:
    root = build_fake_orin_sysfs(tmp_path / "root", online_cpus=12)
    nvpmodel = FakeNvpmodel(tmp_path / "bin", AGX_CONF, MAXN)
    tiny["platform"] = {
        "kind": "jetson",
        "root": str(root),
        "nvpmodel": str(nvpmodel.path),
        "tegrastats": str(fake_tegrastats(tmp_path / "bin", ORIN_TEGRASTATS)),
        "nvpmodel_conf": str(AGX_CONF),
        "jtop": False,
        "telemetry_interval_ms": 100,
        **platform,
    }
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny))
    return config, nvpmodel


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_host_placement_puts_each_workload_on_its_cores(tmp_path: Path, tiny: dict[str, Any]) -> None:
    first, second = sorted(os.sched_getaffinity(0))[:2]
    tiny["workloads"]["inference"]["cpus"] = [first]
    tiny["workloads"]["training"][0]["cpus"] = [second]
    tiny["duration_s"] = 2
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "run"
    result = run_cli("run", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    placed = {e["worker"]: e["affinity_now"] for e in events(out) if e["event"] == "placed"}
    assert placed == {"inference": [first], "train:cl": [second]}
    assert f"inference placed on CPUs [{first}]" in result.stderr


def test_jetson_mode_is_set_and_restored_after_sigterm(tmp_path: Path, tiny: dict[str, Any]) -> None:
    tiny["duration_s"] = 600
    config, nvpmodel = jetson_config(tmp_path, tiny, power_mode="MODE_50W")
    out = tmp_path / "run"
    proc = start_run(config, out)
    try:
        wait_started(proc, out)
        assert nvpmodel.mode_id == MODE_50W
        deadline = time.monotonic() + 60
        while len((out / "telemetry.csv").read_text().splitlines()) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)  # wait for two control ticks of telemetry
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr
    assert nvpmodel.switches() == [MODE_50W, MAXN]
    assert nvpmodel.mode_id == MAXN
    names = [e["event"] for e in events(out)]
    assert names.index("power_mode_set") < names.index("run_started") < names.index("platform_restored")
    telemetry = (out / "telemetry.csv").read_text().splitlines()
    assert telemetry[0].startswith("t_s,source,power_mode")
    assert any(",tegrastats,MODE_50W," in row for row in telemetry[1:])


def test_a_scheduled_power_mode_given_by_its_id_is_applied_under_its_name(
    tmp_path: Path, tiny: dict[str, Any]
) -> None:
    tiny["duration_s"] = 2
    tiny["controller"] = {
        "name": "schedule",
        "period_s": 0.25,
        "steps": [{"at_s": 0.5, "set": {"power_mode": MODE_50W}}],  # nvpmodel's number, not its name
    }
    config, nvpmodel = jetson_config(tmp_path, tiny)
    out = tmp_path / "run"
    result = run_cli("run", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert nvpmodel.switches() == [MODE_50W, MAXN]
    switched = [e["mode"] for e in events(out) if e["event"] == "power_mode_set"]
    assert switched == ["MODE_50W"]
    decisions = (out / "decisions.jsonl").read_text()
    assert "not offered by this platform" not in decisions


def test_jetson_mode_is_restored_when_a_worker_crashes(tmp_path: Path, tiny: dict[str, Any]) -> None:
    tiny["duration_s"] = 600
    tiny["supervision"] = {"max_restarts": 0}  # the crash ends the run (restarts: test_supervision.py)
    config, nvpmodel = jetson_config(tmp_path, tiny, power_mode="MODE_50W")
    out = tmp_path / "run"
    proc = start_run(config, out)
    try:
        wait_started(proc, out)
        pid = json.loads((out / "processes.json").read_text())["train:cl"]
        os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "train:cl died" in stderr and "max_restarts is 0" in stderr
    assert nvpmodel.mode_id == MAXN and nvpmodel.switches() == [MODE_50W, MAXN]
    assert json.loads((out / "summary.json").read_text())["run"]["status"] == "failed"


def test_a_reboot_requiring_initial_mode_is_refused_before_anything_starts(
    tmp_path: Path, tiny: dict[str, Any]
) -> None:
    config, nvpmodel = jetson_config(tmp_path, tiny, power_mode="MODE_30W")
    out = tmp_path / "run"
    result = run_cli("run", str(config), "--out", str(out))
    assert result.returncode == 2
    assert "platform.power_mode: MODE_30W needs a reboot" in result.stderr
    assert nvpmodel.switches() == [] and not out.exists()


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) != 2, reason="the policy file names the modes of a 2-CPU host"
)
def test_host_power_modes_switch_live_under_the_policy_guard(tmp_path: Path, tiny: dict[str, Any]) -> None:
    from cotrain.platform.cgroup import detect_layout

    quota = detect_layout()[0] is not None
    tiny["duration_s"] = 3
    tiny["platform"] = {
        "kind": "host",
        "power_policy": str(REPO / "power_modes" / "policy-host-example.yaml"),
    }
    tiny["controller"] = {
        "name": "schedule",
        "period_s": 0.1,
        "steps": [
            {"at_s": 0.5, "set": {"power_mode": "1core"}},
            {"at_s": 0.7, "set": {"power_mode": "2core"}},  # within the 1 s dwell: held back
            {"at_s": 1.8, "set": {"power_mode": "2core-50pct" if quota else "2core"}},
            {"at_s": 2.9, "set": {"power_mode": "1core-25pct" if quota else "1core"}},
        ],
    }
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "run"
    result = run_cli("run", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    switched = [(e["mode"], e["cpus"]) for e in events(out) if e["event"] == "power_mode_set"]
    assert switched[0] == ("1core", [0])
    assert switched[1][0] == ("2core-50pct" if quota else "2core")
    reasons = " ".join(" ".join(d["notes"]) for d in read_jsonl(out / "decisions.jsonl"))
    assert "held back: 1 s dwell" in reasons
    if quota:
        assert "'1core-25pct' is not in the policy's allowed modes" in reasons
        assert not list(Path("/sys/fs/cgroup/cpu").glob("cotrain-*")), "cotrain's cgroup is removed on exit"

"""Host power-mode emulation: online-core sets through affinity, CPU quota through cotrain's own
child cgroup, and restore back to the state cotrain found."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cotrain.platform.base import PowerModeError
from cotrain.platform.cgroup import PERIOD_US, CgroupLayout, CpuQuotaGroup, detect_layout
from cotrain.platform.host import HostPlatform, host_modes


def fake_v1(root: Path) -> Path:
    cpu = root / "cpu"
    cpu.mkdir(parents=True)
    for name, value in (("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", "100000"), ("cgroup.procs", "")):
        (cpu / name).write_text(value)
    return cpu


def fake_proc(root: Path, pid: int, cgroup_line: str) -> None:
    (root / str(pid) / "task" / str(pid)).mkdir(parents=True)
    (root / str(pid) / "cgroup").write_text(cgroup_line)


def test_modes_go_from_most_to_least_capable() -> None:
    names = [m.name for m in host_modes(2, quota=True)]
    assert names == [
        "2core",
        "2core-75pct",
        "2core-50pct",
        "2core-25pct",
        "1core",
        "1core-75pct",
        "1core-50pct",
        "1core-25pct",
    ]
    assert [m.name for m in host_modes(2, quota=False)] == ["2core", "1core"]


def test_layout_detection_v1_v2_and_missing(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    fake_v1(v1)
    layout, reason = detect_layout(v1)
    assert layout == CgroupLayout(1, v1 / "cpu") and "cpu.cfs_quota_us" in reason
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    layout, _ = detect_layout(v2)
    assert layout == CgroupLayout(2, v2)
    none, reason = detect_layout(tmp_path / "nothing")
    assert none is None and "no cpu controller" in reason


def test_quota_group_moves_only_its_processes_and_restores_them(tmp_path: Path) -> None:
    cpu = fake_v1(tmp_path / "cg")
    (cpu / "user.slice").mkdir()
    (cpu / "user.slice" / "cgroup.procs").write_text("")
    proc = tmp_path / "proc"
    fake_proc(proc, 4242, "3:cpuset:/\n1:cpu,cpuacct:/user.slice\n0::/\n")
    group = CpuQuotaGroup(CgroupLayout(1, cpu), cpu_count=2, proc_root=proc)

    group.add(4242)
    group.set_quota(0.25)

    assert (group.path / "cgroup.procs").read_text() == "4242"
    assert (group.path / "cpu.cfs_quota_us").read_text() == str(round(0.25 * 2 * PERIOD_US))
    group.remove()
    assert (cpu / "user.slice" / "cgroup.procs").read_text() == "4242", "back where it came from"


def test_v2_quota_writes_cpu_max(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    proc = tmp_path / "proc"
    fake_proc(proc, 7, "0::/app\n")
    (root / "app").mkdir()
    group = CpuQuotaGroup(CgroupLayout(2, root), cpu_count=4, proc_root=proc)
    group.add(7)
    group.set_quota(0.5)
    assert (group.path / "cpu.max").read_text() == f"{2 * PERIOD_US} {PERIOD_US}"
    group.set_quota(None)
    assert (group.path / "cpu.max").read_text() == f"max {PERIOD_US}"
    group.remove()
    assert (root / "app" / "cgroup.procs").read_text() == "7"


def test_core_set_mode_repins_workloads_and_restore_returns_to_mode_zero(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_proc(proc, 10, "1:cpu:/\n")
    masks: dict[int, set[int]] = {10: {0, 1}}
    platform = HostPlatform(
        proc_root=proc,
        cgroup_root=tmp_path / "no-cgroups",
        set_affinity=lambda tid, cpus: masks.__setitem__(tid, set(cpus)),
        get_affinity=lambda tid: masks.get(tid, {0, 1}),
    )
    platform.attach(10)
    platform.place(10, [1])

    mode = platform.set_power_mode("1core")

    assert mode.online_cores == 1 and platform.cpu_ids() == (0,)
    assert masks[10] == {0}, "a request outside the mode's cores falls back to the mode's cores"
    with pytest.raises(PowerModeError, match="no power mode 'turbo'"):
        platform.set_power_mode("turbo")
    with pytest.raises(PowerModeError):
        platform.set_power_mode("1core-50pct")  # no cgroup here: quota modes do not exist
    platform.restore()
    assert masks[10] == {0, 1} and platform.current_power_mode() == platform.power_modes()[0]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def cgroup_of(pid: int) -> str:
    return next(
        line
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if ":cpu," in line or line.split(":")[1] == "cpu"
    )


@pytest.mark.skipif(detect_layout()[0] is None, reason="no writable cgroup CPU controller on this host")
def test_real_cgroup_quota_on_this_host(sleeper: subprocess.Popen[bytes]) -> None:
    """On this project's machines (cgroup v1, root) a quota mode really moves the workload."""
    platform = HostPlatform()
    before = cgroup_of(sleeper.pid)
    platform.attach(sleeper.pid)
    quota_mode = next(m for m in platform.power_modes() if m.name.endswith("-50pct"))
    try:
        platform.set_power_mode(quota_mode.name)
        assert f"cotrain-{os.getpid()}" in cgroup_of(sleeper.pid)
    finally:
        platform.restore()
    assert cgroup_of(sleeper.pid) == before
    assert not any(p.name == f"cotrain-{os.getpid()}" for p in Path("/sys/fs/cgroup/cpu").iterdir())

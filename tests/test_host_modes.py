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


def no_children(pid: int) -> list[int]:
    return []


class NoPower:
    """A power reader that is not there, so these tests do not depend on the host's sensors."""

    available = False
    reason = "not in this test"

    def read_w(self) -> float | None:
        return None


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
    group = CpuQuotaGroup(CgroupLayout(1, cpu), cpu_count=2, proc_root=proc, descendants=no_children)

    group.add(4242)
    group.set_quota(0.25)

    assert (group.path / "cgroup.procs").read_text() == "4242\n"
    assert (group.path / "cpu.cfs_quota_us").read_text() == str(round(0.25 * 2 * PERIOD_US))
    group.remove()
    assert (cpu / "user.slice" / "cgroup.procs").read_text() == "4242\n", "back where it came from"


def test_v2_quota_writes_cpu_max(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    proc = tmp_path / "proc"
    fake_proc(proc, 7, "0::/app\n")
    (root / "app").mkdir()
    group = CpuQuotaGroup(CgroupLayout(2, root), cpu_count=4, proc_root=proc, descendants=no_children)
    group.add(7)
    group.set_quota(0.5)
    assert (group.path / "cpu.max").read_text() == f"{2 * PERIOD_US} {PERIOD_US}"
    group.set_quota(None)
    assert (group.path / "cpu.max").read_text() == f"max {PERIOD_US}"
    group.remove()
    assert (root / "app" / "cgroup.procs").read_text() == "7\n"


def test_add_moves_the_descendants_that_already_exist(tmp_path: Path) -> None:
    """Bug: writing a pid to cgroup.procs moves that one process; DataLoader workers started before the
    quota stayed outside it. Each descendant goes in, and back to its own origin."""
    cpu = fake_v1(tmp_path / "cg")
    for name in ("user.slice", "other.slice"):
        (cpu / name).mkdir()
    proc = tmp_path / "proc"
    fake_proc(proc, 100, "1:cpu,cpuacct:/user.slice\n")
    fake_proc(proc, 101, "1:cpu,cpuacct:/user.slice\n")
    fake_proc(proc, 102, "1:cpu,cpuacct:/other.slice\n")
    tree = {100: [101, 102]}
    group = CpuQuotaGroup(CgroupLayout(1, cpu), 2, proc_root=proc, descendants=lambda pid: tree.get(pid, []))

    group.add(100)
    group.remove()

    assert group.members() == [100, 101, 102]  # a fake file keeps every pid written to it
    assert (cpu / "user.slice" / "cgroup.procs").read_text().split() == ["100", "101"]
    assert (cpu / "other.slice" / "cgroup.procs").read_text().split() == ["102"]


def test_remove_empties_the_group_by_what_the_kernel_lists(tmp_path: Path) -> None:
    """Bug: remove moved back only the pids it had recorded; a process forked inside the group after
    `add` stayed there, so the group could not be removed. Unknown pids go to the parent cgroup, and
    a failed rmdir is reported instead of swallowed."""
    cpu = fake_v1(tmp_path / "cg")
    (cpu / "user.slice").mkdir()
    proc = tmp_path / "proc"
    fake_proc(proc, 200, "1:cpu:/user.slice\n")
    group = CpuQuotaGroup(CgroupLayout(1, cpu), 2, proc_root=proc, descendants=no_children)
    group.add(200)
    with (group.path / "cgroup.procs").open("a") as procs:
        procs.write("201\n")  # forked inside the group: the kernel lists it, we never recorded it

    warnings = group.remove()

    assert (cpu / "user.slice" / "cgroup.procs").read_text().split() == ["200"]
    assert (cpu / "cgroup.procs").read_text().split() == ["201"]
    # A fake directory keeps its files, so rmdir fails here (ENOTEMPTY) as a busy cgroup would:
    [warning] = warnings
    assert warning.startswith(f"cannot remove cgroup {group.path}") and "[200, 201]" in warning


def test_remove_falls_back_to_the_parent_and_reports_what_it_could_not_move(tmp_path: Path) -> None:
    """An origin cgroup deleted meanwhile must not strand the process in cotrain's group."""
    cpu = fake_v1(tmp_path / "cg")
    (cpu / "gone.slice").mkdir()
    proc = tmp_path / "proc"
    fake_proc(proc, 300, "1:cpu:/gone.slice\n")
    group = CpuQuotaGroup(CgroupLayout(1, cpu), 2, proc_root=proc, descendants=no_children)
    group.add(300)
    (cpu / "gone.slice").rmdir()

    warnings = group.remove()

    assert (cpu / "cgroup.procs").read_text().split() == ["300"]
    assert any(w.startswith(f"pid 300 went to {cpu}, not back to {cpu / 'gone.slice'}") for w in warnings)


def test_quota_mode_covers_the_descendants_of_every_attached_pid_and_restore_warns(
    tmp_path: Path,
) -> None:
    """Setting a quota mode moves each attached workload's current descendants too, again on each
    switch (a worker started in between is included); restore passes what it could not undo to warn."""
    cpu = fake_v1(tmp_path / "cg")
    proc = tmp_path / "proc"
    for pid in (10, 11, 20, 21):
        fake_proc(proc, pid, "1:cpu:/\n")
    tree: dict[int, list[int]] = {10: [11], 20: []}
    warnings: list[str] = []
    platform = HostPlatform(
        proc_root=proc,
        cgroup_root=tmp_path / "cg",
        set_affinity=lambda tid, cpus: None,
        get_affinity=lambda tid: {0, 1},
        descendants=lambda pid: tree.get(pid, []),
        warn=warnings.append,
        rapl=NoPower(),
        nvml=NoPower(),
    )
    platform.attach(10)
    platform.attach(20)
    group_procs = cpu / f"cotrain-{os.getpid()}" / "cgroup.procs"

    platform.set_power_mode("2core-50pct")
    first = set(group_procs.read_text().split())
    tree[20] = [21]  # a DataLoader worker appears
    platform.set_power_mode("2core-25pct")
    second = set(group_procs.read_text().split())
    platform.restore()

    assert first == {"10", "11", "20"}
    assert second == {"10", "11", "20", "21"}
    assert sorted((cpu / "cgroup.procs").read_text().split()) == ["10", "11", "20", "21"]
    assert len(warnings) == 1 and warnings[0].startswith("cannot remove cgroup")  # fake dir: ENOTEMPTY


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


FAMILY = """
import subprocess, sys
kids = []
for line in sys.stdin:
    kids.append(subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"]))
    print(kids[-1].pid, flush=True)
for kid in kids:
    kid.kill()
    kid.wait()
"""


@pytest.fixture
def family() -> Iterator[subprocess.Popen[str]]:
    """A workload that forks a child for each line it reads; closing its stdin ends all of them."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FAMILY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def fork_child(parent: subprocess.Popen[str]) -> int:
    assert parent.stdin is not None and parent.stdout is not None
    parent.stdin.write("fork\n")
    parent.stdin.flush()
    return int(parent.stdout.readline())


@pytest.mark.skipif(detect_layout()[0] is None, reason="no writable cgroup CPU controller on this host")
def test_real_cgroup_quota_covers_children_and_restore_removes_the_group(
    family: subprocess.Popen[str],
) -> None:
    """A real workload with a child that exists before the quota, and one forked inside the group
    after it: both are capped, both go back, and the group is removed without a warning."""
    early = fork_child(family)
    before = {pid: cgroup_of(pid) for pid in (family.pid, early)}
    warnings: list[str] = []
    platform = HostPlatform(warn=warnings.append, rapl=NoPower(), nvml=NoPower())
    platform.attach(family.pid)
    quota_mode = next(m for m in platform.power_modes() if m.name.endswith("-50pct"))
    group = f"cotrain-{os.getpid()}"
    try:
        platform.set_power_mode(quota_mode.name)
        late = fork_child(family)
        inside = {pid: group in cgroup_of(pid) for pid in (family.pid, early, late)}
    finally:
        platform.restore()

    assert inside == {family.pid: True, early: True, late: True}
    assert {pid: cgroup_of(pid) for pid in (family.pid, early)} == before
    assert group not in cgroup_of(late)
    assert warnings == []
    assert not (Path("/sys/fs/cgroup/cpu") / group).exists()

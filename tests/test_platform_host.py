"""Host placement on a real process: every thread is pinned, and restore puts it back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cotrain.platform import HostPlatform

CHILD = """
import sys, threading
threading.Thread(target=sys.stdin.readline, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def child() -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    assert proc.stdin is not None
    proc.stdin.write("\n\n")
    proc.stdin.close()
    proc.wait(timeout=30)


def tids(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_place_pins_every_thread_and_restore_undoes_it(child: subprocess.Popen[str]) -> None:
    platform = HostPlatform()
    first = platform.cpu_ids()[0]
    assert len(tids(child.pid)) >= 2
    platform.place(child.pid, [first])
    assert all(os.sched_getaffinity(t) == {first} for t in tids(child.pid))
    platform.restore()
    assert all(os.sched_getaffinity(t) == set(platform.cpu_ids()) for t in tids(child.pid))


def test_unavailable_cpus_are_refused(child: subprocess.Popen[str]) -> None:
    platform = HostPlatform()
    with pytest.raises(ValueError, match="not available"):
        platform.place(child.pid, [max(platform.cpu_ids()) + 64])


def test_affinity_calls_go_through_the_injected_functions(tmp_path: Path) -> None:
    (tmp_path / "42" / "task" / "42").mkdir(parents=True)
    (tmp_path / "42" / "task" / "43").mkdir(parents=True)
    calls: list[tuple[int, set[int]]] = []
    platform = HostPlatform(
        proc_root=tmp_path,
        set_affinity=lambda tid, cpus: calls.append((tid, set(cpus))),
        get_affinity=lambda tid: {0, 1},
    )
    platform.place(42, [1])
    assert sorted(calls) == [(42, {1}), (43, {1})]
    calls.clear()
    platform.restore()
    assert sorted(calls) == [(42, {0, 1}), (43, {0, 1})]


def test_telemetry_reports_cpu_and_memory() -> None:
    platform = HostPlatform()
    sample = platform.telemetry()
    assert sample.memory_used_mb is not None and sample.memory_used_mb > 0
    assert sample.per_cpu_util_percent is not None
    power = platform.describe()["telemetry"]
    assert isinstance(power, dict)
    assert (sample.power_w is None) == power["power_w"].startswith(
        "unsupported"
    )  # None only without RAPL/NVML

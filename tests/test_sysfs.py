"""JetsonSysfs against fake Orin trees built from real artefacts (tests/jetson_fakes.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from cotrain.platform.sysfs import ClockState, JetsonSysfs, parse_cpu_list
from tests.jetson_fakes import HANNER_LINE_1, RAIL_VOLTAGE_MV, build_fake_orin_sysfs

# Rounding the current to whole mA at RAIL_VOLTAGE_MV moves a rail by at most half a mA.
RAIL_TOLERANCE_MW = RAIL_VOLTAGE_MV / 1000 / 2


@pytest.fixture
def agx(tmp_path: Path) -> Path:
    return build_fake_orin_sysfs(tmp_path / "agx")


def tegrastats_line_1() -> str:
    return HANNER_LINE_1.read_text().splitlines()[0]


def test_rails_match_the_real_tegrastats_line(agx: Path) -> None:
    """The mW come from the real line itself, so a wrong channel mapping or unit fails here."""
    expected = {name: float(mw) for name, mw in re.findall(r"(V\w+) (\d+)mW/", tegrastats_line_1())}
    assert set(expected) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"}

    power = JetsonSysfs(agx).power()

    assert set(power.rails_mw) == set(expected)
    for name, mw in expected.items():
        assert power.rails_mw[name] == pytest.approx(mw, abs=RAIL_TOLERANCE_MW)
    assert power.total_source == "sum"  # AGX Orin has no VDD_IN
    assert power.total_w == pytest.approx(sum(expected.values()) / 1000, abs=0.01)


def test_cpus_clusters_and_frequencies(agx: Path) -> None:
    sysfs = JetsonSysfs(agx)

    snap = sysfs.snapshot()

    assert snap.cpu_ids == tuple(range(12))
    assert snap.online_cpus == tuple(range(8))  # 30W default: cores 8..11 off (cpu0 has no file)
    assert snap.clusters == ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11))
    assert snap.cpu_freqs[0].cur_mhz == 1728
    assert snap.cpu_freqs[1].cur_mhz == 1036
    assert (snap.cpu_freqs[4].min_mhz, snap.cpu_freqs[4].max_mhz) == (729.6, 1728)
    assert snap.cpu_freqs[9].cur_mhz is None  # offline: no current frequency


def test_gpu_emc_temperatures_and_model(agx: Path) -> None:
    snap = JetsonSysfs(agx).snapshot()

    assert snap.gpu is not None
    assert snap.gpu.name == "ga10b"
    assert (snap.gpu.cur_mhz, snap.gpu.min_mhz, snap.gpu.max_mhz) == (305, 0, 612)
    assert snap.gpu.load_pct == 39  # read from /sys/devices/gpu.0, the device node has no `load`
    assert snap.gpu.tpc_pg_mask == 240
    assert snap.emc_cap_mhz == 0
    assert snap.temperatures_c == {
        "cpu": 43.906,
        "soc2": 40.406,
        "soc0": 41.187,
        "gpu": 40.093,
        "tj": 43.906,
        "soc1": 40.437,
    }
    assert snap.board_model == "NVIDIA Jetson AGX Orin Developer Kit"


def test_orin_nx_uses_vdd_in_as_the_total(tmp_path: Path) -> None:
    """VDD_IN is the whole module input; adding its sub-rails to it would count them twice.
    The mW here are test inputs (the fixtures hold no Orin NX reading)."""
    root = build_fake_orin_sysfs(
        tmp_path, board="orin-nx-16gb", rails_mw={"VDD_IN": 7000, "VDD_CPU_GPU_CV": 2000, "VDD_SOC": 1500}
    )
    sysfs = JetsonSysfs(root)

    power = sysfs.power()

    assert power.total_source == "VDD_IN"
    assert power.total_w == pytest.approx(7.0)
    assert sysfs.clusters() == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert sysfs.online_cpus() == (0, 1, 2, 3)
    assert sysfs.board_model() == "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"
    assert sysfs.cpu_freq(0).cur_mhz is None  # no source for it, so the fake leaves it out


def test_orin_nx_without_readings_has_no_rails(tmp_path: Path) -> None:
    sysfs = JetsonSysfs(build_fake_orin_sysfs(tmp_path, board="orin-nx-16gb"))

    power = sysfs.power()

    assert (power.rails_mw, power.total_w) == ({}, None)
    assert sysfs.temperatures_c() == {}


def test_missing_files_read_as_none_or_empty(agx: Path) -> None:
    for relative in (
        "sys/class/devfreq",
        "sys/bus/i2c/devices",
        "sys/devices/virtual/thermal",
        "sys/kernel/nvpmodel_emc_cap",
        "sys/firmware/devicetree/base/model",
        "sys/devices/system/cpu/cpu4/cpufreq",
    ):
        target = agx / relative
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    sysfs = JetsonSysfs(agx)

    snap = sysfs.snapshot()

    assert snap.gpu is None
    assert snap.power.rails_mw == {} and snap.power.total_w is None
    assert snap.temperatures_c == {}
    assert snap.emc_cap_mhz is None
    assert snap.board_model is None
    assert snap.cpu_freqs[4].cur_mhz is None and snap.cpu_freqs[4].max_mhz is None
    assert snap.online_cpus == tuple(range(8))
    assert JetsonSysfs(agx / "nowhere").snapshot().cpu_ids == ()


def test_unreadable_and_offline_sensors_are_skipped(agx: Path) -> None:
    zone = agx / "sys/devices/virtual/thermal/thermal_zone9"
    zone.mkdir()
    (zone / "type").write_text("cv0-thermal\n")
    (zone / "temp").write_text("-256000\n")  # the no-sensor value some Orin zones read
    hwmon = agx / "sys/bus/i2c/devices/1-0040/hwmon/hwmon3"
    (hwmon / "in4_label").write_text("NC\n")
    (hwmon / "in4_input").write_text("5000\n")
    (hwmon / "curr4_input").write_text("100\n")
    (hwmon / "in1_input").write_text("garbage\n")

    sysfs = JetsonSysfs(agx)

    assert "cv0" not in sysfs.temperatures_c()
    assert set(sysfs.rails_mw()) == {"VDD_CPU_CV", "VIN_SYS_5V0"}


def test_cluster_fallbacks(agx: Path) -> None:
    """cluster_id missing: the package id gives the cluster (pre-5.16 kernels). Topology gone
    (an offline CPU): its cpufreq policy puts it with its siblings."""
    cpus = agx / "sys/devices/system/cpu"
    for cpu in range(4):
        (cpus / f"cpu{cpu}/topology/cluster_id").unlink()
    shutil.rmtree(cpus / "cpu5/topology")

    assert JetsonSysfs(agx).clusters() == ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11))


def test_gpu_found_only_through_a_gpu_of_node(agx: Path) -> None:
    other = agx / "sys/devices/15880000.nvdla0"
    (other / "of_node").mkdir(parents=True)
    (other / "of_node/name").write_text("nvdla0\x00")
    (agx / "sys/class/devfreq/15880000.nvdla0").symlink_to("../../devices/15880000.nvdla0")

    node = JetsonSysfs(agx).gpu_node()

    assert node is not None
    assert node.devfreq_dir == (agx / "sys/devices/17000000.ga10b/devfreq/17000000.ga10b").resolve()


def test_clock_state_round_trip(agx: Path) -> None:
    sysfs = JetsonSysfs(agx)
    before = sysfs.read_clock_state()
    cpus = agx / "sys/devices/system/cpu"
    gpu = agx / "sys/devices/17000000.ga10b/devfreq/17000000.ga10b"
    # What a power-mode change does: cores 8..11 on, CPU caps lowered, GPU cap raised
    for cpu in (8, 9, 10, 11):
        (cpus / f"cpu{cpu}/online").write_text("1\n")
    (cpus / "cpu0/cpufreq/scaling_max_freq").write_text("1113600\n")
    (cpus / "cpu0/cpufreq/scaling_min_freq").write_text("1113600\n")
    (cpus / "cpu3/online").write_text("0\n")
    (gpu / "max_freq").write_text("816000000\n")
    (gpu / "min_freq").write_text("612000000\n")
    assert sysfs.read_clock_state() != before

    report = sysfs.write_clock_state(before)

    assert report.ok, report.failed
    assert sysfs.read_clock_state() == before
    assert cpus / "cpu8/online" in report.written
    assert cpus / "cpu1/cpufreq/scaling_max_freq" not in report.written  # unchanged: not written


def test_restore_orders_writes_so_min_never_exceeds_max(agx: Path) -> None:
    sysfs = JetsonSysfs(agx)
    gpu = agx / "sys/devices/17000000.ga10b/devfreq/17000000.ga10b"
    target = ClockState(cpu_ids=(), online_cpus=(), gpu_min_hz=816000000, gpu_max_hz=1300500000)

    report = sysfs.write_clock_state(target)  # raising both: max must go first

    assert report.written == (gpu / "max_freq", gpu / "min_freq")
    lower = ClockState(cpu_ids=(), online_cpus=(), gpu_min_hz=0, gpu_max_hz=408000000)
    assert sysfs.write_clock_state(lower).written == (gpu / "min_freq", gpu / "max_freq")


def test_cpu0_is_never_taken_offline(agx: Path) -> None:
    sysfs = JetsonSysfs(agx)
    state = ClockState(cpu_ids=(0, 1), online_cpus=())

    report = sysfs.write_clock_state(state)

    assert report.ok
    assert not (agx / "sys/devices/system/cpu/cpu0/online").exists()
    assert sysfs.is_online(0) and not sysfs.is_online(1)


def test_a_refused_write_is_reported_not_raised(agx: Path) -> None:
    """Tests run as root, where chmod 0o444 does not stop a write. A directory in place of the
    file fails for root too (EISDIR), standing in for EACCES/EBUSY on a real board. The other
    writes still happen."""
    sysfs = JetsonSysfs(agx)
    before = sysfs.read_clock_state()
    gpu = agx / "sys/devices/17000000.ga10b/devfreq/17000000.ga10b"
    (gpu / "max_freq").unlink()
    (gpu / "max_freq").mkdir()
    (agx / "sys/devices/system/cpu/cpu2/online").write_text("0\n")

    report = sysfs.write_clock_state(before)

    assert [f.path for f in report.failed] == [gpu / "max_freq"]
    assert report.failed[0].value == "612000000"
    assert "IsADirectoryError" in report.failed[0].error
    assert not report.ok
    assert sysfs.is_online(2)


def test_restore_does_not_create_missing_nodes(agx: Path) -> None:
    """A node this JetPack lacks is an error, never a new regular file."""
    sysfs = JetsonSysfs(agx)
    state = sysfs.read_clock_state()
    (agx / "sys/devices/system/cpu/cpu7/cpufreq/scaling_min_freq").unlink()

    report = sysfs.write_clock_state(state)

    assert [f.path.name for f in report.failed] == ["scaling_min_freq"]
    assert not (agx / "sys/devices/system/cpu/cpu7/cpufreq/scaling_min_freq").exists()


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0 1 2 3", (0, 1, 2, 3)), ("0-3,8", (0, 1, 2, 3, 8)), ("", ()), ("x", ())],
)
def test_parse_cpu_list(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpu_list(text) == cpus

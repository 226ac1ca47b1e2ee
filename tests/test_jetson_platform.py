"""The Jetson backend against a fake device built from real artefacts: the real AGX Orin 64GB
nvpmodel.conf, a fake sysfs tree, a fake `nvpmodel` that prompts for reboots, a fake
`tegrastats` replaying real lines, and a fake jtop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cotrain.platform.base import PowerModeError, RebootRequired
from cotrain.platform.jetson import JetsonPaths, JetsonPlatform
from cotrain.platform.placement import AffinityPlacer
from tests.conftest import REPO
from tests.fake_tools import FakeNvpmodel, fake_tegrastats
from tests.jetson_fakes import build_fake_orin_sysfs

FIXTURES = REPO / "tests" / "data" / "jetson"
AGX_CONF = FIXTURES / "nvpmodel" / "LineageOS__android_device_nvidia_concord__nvpmodel_p3701_0000.conf"
ORIN_TEGRASTATS = FIXTURES / "tegrastats" / "Hanner123__LLM_PIPELINE__tegrastats.log.txt"
MAXN, MODE_15W, MODE_30W, MODE_50W = 0, 1, 2, 3


class Device:
    """A fake AGX Orin: sysfs tree, nvpmodel, tegrastats, and the warnings the platform gave."""

    def __init__(self, tmp_path: Path, mode_id: int = MAXN, prompt_always: bool = False) -> None:
        self.root = build_fake_orin_sysfs(
            tmp_path / "root", online_cpus=12 if mode_id in (MAXN, MODE_50W) else 8
        )
        self.nvpmodel = FakeNvpmodel(tmp_path / "bin", AGX_CONF, mode_id, prompt_always=prompt_always)
        self.tegrastats = fake_tegrastats(tmp_path / "bin", ORIN_TEGRASTATS)
        self.warnings: list[str] = []

    def platform(self, *, jtop: Any = None, tegrastats: bool = False) -> JetsonPlatform:
        paths = JetsonPaths(
            root=self.root,
            nvpmodel=str(self.nvpmodel.path),
            tegrastats=str(self.tegrastats) if tegrastats else str(self.root / "no-tegrastats"),
            nvpmodel_conf=AGX_CONF,
        )
        return JetsonPlatform(
            paths,
            jtop_factory=jtop,
            warn=self.warnings.append,
            placer=AffinityPlacer(),
            tegrastats_interval_ms=50,
        )


def cpu_max_khz(root: Path, cpu: int) -> str:
    return (root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_max_freq").read_text().strip()


def test_modes_and_the_current_mode_come_from_the_conf_and_nvpmodel(tmp_path: Path) -> None:
    device = Device(tmp_path, mode_id=MAXN)
    platform = device.platform()
    modes = {m.name: m for m in platform.power_modes()}
    assert list(modes) == ["MAXN", "MODE_15W", "MODE_30W", "MODE_50W"]
    assert not modes["MODE_50W"].needs_reboot, "MAXN and 50W share TPC mask 0 on the AGX Orin 64GB"
    assert modes["MODE_30W"].needs_reboot and modes["MODE_15W"].needs_reboot
    current = platform.current_power_mode()
    assert current is not None and current.name == "MAXN"
    platform.restore()


def test_a_live_switch_is_applied_and_restored_with_the_clocks(tmp_path: Path) -> None:
    device = Device(tmp_path, mode_id=MAXN)
    platform = device.platform()
    before = cpu_max_khz(device.root, 0)

    info = platform.set_power_mode("MODE_50W")
    (device.root / "sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq").write_text(
        "1497600\n"
    )  # the mode's cap
    platform.restore()

    assert info.name == "MODE_50W"
    assert device.nvpmodel.switches() == [MODE_50W, MAXN], "switched, then switched back"
    assert device.nvpmodel.mode_id == MAXN
    assert cpu_max_khz(device.root, 0) == before, "clock limits written back as found"


def test_a_reboot_requiring_switch_is_refused_before_nvpmodel_is_asked(tmp_path: Path) -> None:
    device = Device(tmp_path, mode_id=MAXN)
    platform = device.platform()
    with pytest.raises(RebootRequired, match=r"MAXN to MODE_30W .*TPC 0 -> 240.*never reboots"):
        platform.set_power_mode(MODE_30W)
    assert device.nvpmodel.switches() == []
    assert device.nvpmodel.mode_id == MAXN
    platform.restore()
    assert device.nvpmodel.switches() == [], "nothing changed, nothing to restore"


def test_an_unexpected_reboot_prompt_is_never_answered_and_never_hangs(tmp_path: Path) -> None:
    """Defence in depth: if nvpmodel prompts although the masks agree, stdin is closed, the prompt
    gets EOF, and the switch is reported as refused."""
    device = Device(tmp_path, mode_id=MAXN, prompt_always=True)
    platform = device.platform()
    with pytest.raises(RebootRequired, match="prompt left unanswered"):
        platform.set_power_mode("MODE_50W")
    assert ["REBOOTED"] not in device.nvpmodel.calls()
    assert device.nvpmodel.mode_id == MAXN
    platform.restore()


def test_unknown_modes_are_named(tmp_path: Path) -> None:
    platform = Device(tmp_path).platform()
    with pytest.raises(PowerModeError, match="does not exist here; available: 0=MAXN"):
        platform.set_power_mode("TURBO")
    platform.restore()


class DeadJtop:
    def __call__(self) -> Any:
        raise ConnectionRefusedError(
            "The jtop.service is not active. Please run: sudo systemctl restart jtop.service"
        )


def test_jtop_down_falls_back_to_tegrastats_with_one_warning(tmp_path: Path) -> None:
    device = Device(tmp_path)
    platform = device.platform(jtop=DeadJtop(), tegrastats=True)
    try:
        assert platform.telemetry_source == "tegrastats"
        assert platform._tegrastats is not None and platform._tegrastats.wait_for_sample(30) is not None
        sample = platform.telemetry()
    finally:
        platform.restore()
    assert len(device.warnings) == 1
    assert "jtop unavailable" in device.warnings[0] and "tegrastats" in device.warnings[0]
    assert sample.source == "tegrastats"
    assert sample.power_w is not None and sample.power_w > 0
    assert sample.gpu_util_percent is not None and sample.power_mode == "MAXN"


def test_no_jtop_and_no_tegrastats_falls_back_to_sysfs_with_one_warning(tmp_path: Path) -> None:
    device = Device(tmp_path)
    platform = device.platform(jtop=None)
    sample = platform.telemetry()
    platform.restore()
    assert platform.telemetry_source == "sysfs" and len(device.warnings) == 1
    assert sample.source == "sysfs"
    assert sample.rails_mw == pytest.approx(
        {"VDD_GPU_SOC": 2798, "VDD_CPU_CV": 799, "VIN_SYS_5V0": 3315}, abs=3
    )
    assert sample.power_w == pytest.approx((2798 + 799 + 3315) / 1000, abs=0.01)
    assert sample.gpu_freq_mhz == pytest.approx(305)


class FakeJtop:
    """The subset of jtop cotrain uses, switching modes through a FakeNvpmodel like the service does."""

    def __init__(self, nvpmodel: FakeNvpmodel) -> None:
        self._nvp = nvpmodel
        self.closed = False

    def start(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def ok(self) -> bool:
        return True

    @property
    def stats(self) -> dict[str, Any]:
        return {"CPU1": 10, "CPU2": 30, "CPU3": "OFF", "GPU": 55.0, "Temp tj": 48.5, "nvpmodel": "MAXN"}

    @property
    def power(self) -> dict[str, Any]:
        return {"tot": {"power": 12_345}}

    @property
    def nvpmodel(self) -> Any:
        return type("NVP", (), {"id": self._nvp.mode_id})()

    @nvpmodel.setter
    def nvpmodel(self, value: int) -> None:
        import json

        self._nvp.state.write_text(json.dumps({"mode": value}))


def test_jtop_is_preferred_for_telemetry_and_modes(tmp_path: Path) -> None:
    device = Device(tmp_path)
    jtop = FakeJtop(device.nvpmodel)
    platform = device.platform(jtop=lambda: jtop)
    sample = platform.telemetry()
    platform.set_power_mode("MODE_50W")
    assert device.nvpmodel.mode_id == MODE_50W
    platform.restore()
    assert device.nvpmodel.mode_id == MAXN and jtop.closed
    assert device.warnings == []
    assert sample.source == "jtop" and sample.power_w == pytest.approx(12.345)
    assert sample.cpu_util_percent == pytest.approx(20.0) and sample.temperature_c == 48.5
    assert device.nvpmodel.switches() == [], "jtop, not the CLI, switched modes"


def test_a_failed_restore_is_reported_and_can_be_retried(tmp_path: Path) -> None:
    device = Device(tmp_path, mode_id=MAXN)
    platform = device.platform()
    platform.set_power_mode("MODE_50W")
    # nvpmodel now prompts for every switch: the restore's switch back is refused
    FakeNvpmodel(tmp_path / "bin", AGX_CONF, MODE_50W, prompt_always=True)

    platform.restore()

    assert device.nvpmodel.mode_id == MODE_50W
    assert any("could not restore power mode MAXN" in w for w in device.warnings)
    FakeNvpmodel(tmp_path / "bin", AGX_CONF, MODE_50W)  # the tool behaves again
    platform.restore()
    assert device.nvpmodel.mode_id == MAXN, "the second restore tried again and succeeded"


def test_tegrastats_dying_mid_run_falls_back_to_sysfs_with_a_warning(tmp_path: Path) -> None:
    import os
    import signal

    device = Device(tmp_path)
    platform = device.platform(jtop=DeadJtop(), tegrastats=True)
    try:
        reader = platform._tegrastats
        assert reader is not None and reader.wait_for_samples(1, 30)
        os.killpg(reader._proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        assert reader.wait_for_exit(30)
        sample = platform.telemetry()
    finally:
        platform.restore()
    assert sample.source == "sysfs" and platform.telemetry_source == "sysfs"
    assert any("tegrastats stopped" in w for w in device.warnings)


def test_modes_are_ranked_by_capability_not_file_order() -> None:
    """Orin NX 16GB lists MAXN, 10W, 15W, 25W: the guard must see 25W above 15W above 10W."""
    from cotrain.platform.base import PowerModeInfo, by_capability
    from cotrain.platform.jetson import capability
    from cotrain.power_modes.nvpmodel import parse_nvpmodel

    conf = parse_nvpmodel(
        (
            FIXTURES / "nvpmodel" / "LineageOS__android_device_nvidia_concord__nvpmodel_p3767_0000.conf"
        ).read_text()
    )
    infos = tuple(PowerModeInfo(m.id, m.name, m.online_cores, rank=capability(m)) for m in conf.modes)
    assert by_capability(infos) == ("MAXN", "25W", "15W", "10W")


def test_clusters_fall_back_to_the_conf_when_sysfs_has_no_topology(tmp_path: Path) -> None:
    import shutil

    device = Device(tmp_path)
    for topology in (device.root / "sys/devices/system/cpu").glob("cpu*/topology"):
        shutil.rmtree(topology)
    for cpufreq in (device.root / "sys/devices/system/cpu").glob("cpu*/cpufreq"):
        for name in ("related_cpus", "affected_cpus"):
            (cpufreq / name).unlink(missing_ok=True)
    platform = device.platform()
    assert all(len(c) == 1 for c in platform.sysfs.clusters()), "sysfs alone finds no grouping"
    assert platform.clusters() == ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11))
    platform.restore()


def test_modes_carry_their_clocks_and_uncapped_clocks_read_as_the_highest_cap(tmp_path: Path) -> None:
    from cotrain.power_modes.nvpmodel import parse_nvpmodel

    conf = {m.name: m for m in parse_nvpmodel(AGX_CONF.read_text()).modes}
    modes = {m.name: m for m in Device(tmp_path).platform().power_modes()}
    fifty = conf["MODE_50W"]
    assert modes["MODE_50W"].cpu_mhz == max(v for v in fifty.cpu_max_mhz.values() if v is not None)
    assert modes["MODE_50W"].gpu_mhz == fifty.gpu_max_mhz
    highest_gpu = max(m.gpu_max_mhz for m in conf.values() if m.gpu_max_mhz is not None)
    assert conf["MAXN"].gpu_max_mhz is None and modes["MAXN"].gpu_mhz == highest_gpu
    assert all(m.cpu_mhz and m.gpu_mhz and m.emc_mhz for m in modes.values())


def test_adaptive_gets_the_switchable_modes_of_a_jetson_and_none_of_a_host(tmp_path: Path) -> None:
    import yaml

    from cotrain.config import parse_config
    from cotrain.controllers.adaptive import AdaptivePolicy
    from cotrain.controllers.capabilities import searchable_modes
    from cotrain.platform.host import HostPlatform
    from cotrain.rundir import RunDir
    from cotrain.runtime import Runtime, mode_infos, power_rules_for
    from tests.conftest import TINY

    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["controller"] = {"name": "adaptive"}
    data["platform"] = {"kind": "jetson"}
    config = parse_config(data)
    platform = Device(tmp_path, mode_id=MAXN).platform()
    rules = power_rules_for(config, platform)
    table = searchable_modes(mode_infos(platform.power_modes()), rules)
    assert [m.name for m in table] == ["MAXN", "MODE_50W"], "15W and 30W need a reboot from MAXN"
    runtime = Runtime(config, RunDir(tmp_path / "run"), platform)
    inner = runtime.policy.policy.policy  # PowerModeGuard(Bounded(adaptive))
    assert isinstance(inner, AdaptivePolicy) and set(inner.table.index) == {"MAXN", "MODE_50W"}
    platform.restore()

    host_data = yaml.safe_load(yaml.safe_dump(TINY))
    host_data["controller"] = {"name": "adaptive"}
    host_config = parse_config(host_data)
    host = HostPlatform()
    assert searchable_modes(mode_infos(host.power_modes()), power_rules_for(host_config, host)) == ()

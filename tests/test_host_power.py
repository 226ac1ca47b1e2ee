"""Host power: RAPL energy counters on a fake powercap tree, NVML through a stub module, and what
HostPlatform reports from them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from cotrain.platform.host import HostPlatform
from cotrain.platform.host_power import NvmlReader, RaplReader


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def domain(root: Path, name: str, label: str, energy_uj: int, max_range_uj: int = 262_143_328_850) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "name").write_text(f"{label}\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return path


def set_energy(path: Path, energy_uj: int) -> None:
    (path / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """Two packages, as on a two-socket server, plus what must not be summed: a core subdomain
    (inside package 0), the psys platform domain (contains both packages) and the MMIO duplicate."""
    root = tmp_path / "powercap"
    domain(root, "intel-rapl:0", "package-0", 1_000_000, max_range_uj=10_000_000)
    domain(root, "intel-rapl:1", "package-1", 5_000_000)
    domain(root, "intel-rapl:0:0", "core", 0)
    domain(root, "intel-rapl:2", "psys", 0)
    domain(root, "intel-rapl-mmio:0", "package-0", 0)
    (root / "intel-rapl").mkdir()  # the control type directory, no counter
    return root


def test_rapl_turns_two_readings_into_watts_over_the_package_domains(powercap: Path) -> None:
    """Trap: summing subdomains or psys (counted twice), or reporting the first reading, which has no
    interval, as a power."""
    clock = FakeClock()
    reader = RaplReader(powercap, clock=clock)

    first = reader.read_w()
    set_energy(powercap / "intel-rapl:0", 3_000_000)  # +2 J
    set_energy(powercap / "intel-rapl:1", 9_000_000)  # +4 J
    set_energy(powercap / "intel-rapl:0:0", 1_000_000_000)
    set_energy(powercap / "intel-rapl:2", 1_000_000_000)
    clock.now_s += 0.5
    second = reader.read_w()

    assert reader.available and reader.reason == "RAPL package energy (intel-rapl:0, intel-rapl:1)"
    assert first is None
    assert second == pytest.approx((2 + 4) / 0.5)


def test_rapl_handles_a_counter_wrap(powercap: Path) -> None:
    """Trap: a counter that passed max_energy_range_uj and restarted at 0 read as a huge negative power."""
    clock = FakeClock()
    reader = RaplReader(powercap, clock=clock)
    set_energy(powercap / "intel-rapl:0", 9_000_000)
    reader.read_w()

    set_energy(powercap / "intel-rapl:0", 500_000)  # wrapped at 10 J: 1 J to the top, then 0.5 J
    set_energy(powercap / "intel-rapl:1", 5_000_000)  # idle package
    clock.now_s += 1.5
    watts = reader.read_w()

    assert watts == pytest.approx(1.5 / 1.5)


def test_rapl_says_why_it_is_unavailable(tmp_path: Path) -> None:
    """A VM has no powercap; a powercap without package domains or with unreadable counters (root only
    since Linux 5.10) must say so rather than report 0 W."""
    missing = RaplReader(tmp_path / "no-powercap")
    empty_root = tmp_path / "empty"
    (empty_root / "intel-rapl").mkdir(parents=True)
    empty = RaplReader(empty_root)
    locked_root = tmp_path / "locked"
    (domain(locked_root, "intel-rapl:0", "package-0", 0) / "energy_uj").unlink()  # as unreadable
    locked = RaplReader(locked_root)

    assert not missing.available and "no " in missing.reason and "no-powercap" in missing.reason
    assert not empty.available and "no intel-rapl:N package domain" in empty.reason
    assert not locked.available and "intel-rapl:0 energy_uj" in locked.reason
    assert "not readable" in locked.reason
    assert missing.read_w() is None and locked.read_w() is None


class StubNvml:
    """The pynvml calls NvmlReader makes, with NVML's units (mW)."""

    def __init__(self, power_mw: list[int | None], init_error: Exception | None = None) -> None:
        self.power_mw = power_mw
        self.init_error = init_error
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.power_mw)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return index

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        mw = self.power_mw[handle]
        if mw is None:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return mw


def test_nvml_sums_the_gpus_that_report_power() -> None:
    """Trap: mW read as W, or a GPU without a power sensor breaking every reading."""
    nvml = StubNvml([75_500, None, 24_500])
    reader = NvmlReader(nvml)

    watts = reader.read_w()
    nvml.power_mw[2] = 30_000
    later = reader.read_w()
    reader.close()
    reader.close()

    assert watts == pytest.approx(100.0) and later == pytest.approx(105.5)
    assert nvml.shutdowns == 1 and not reader.available and reader.read_w() is None


def test_nvml_reasons() -> None:
    """Unavailable NVML says why: no driver, no GPU, no GPU with a power sensor. Where a GPU is left out
    of the sum, the reason says which."""
    no_driver = NvmlReader(StubNvml([], init_error=RuntimeError("NVML Shared Library Not Found")))
    no_gpu_nvml = StubNvml([])
    no_gpu = NvmlReader(no_gpu_nvml)
    partial = NvmlReader(StubNvml([None, 1000]))

    assert not no_driver.available and "NVML Shared Library Not Found" in no_driver.reason
    no_driver.close()
    assert "NVML Shared Library Not Found" in no_driver.reason, "close() keeps the reason it never started"
    assert not no_gpu.available and "none of 0 GPU(s)" in no_gpu.reason and no_gpu_nvml.shutdowns == 1
    assert partial.available and partial.reason == (
        "NVML power of 1 GPU(s); GPU(s) [0] report no power and are left out"
    )


def test_nvml_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError

    reader = NvmlReader()

    assert not reader.available and reader.reason.startswith("pynvml is not importable")


class FakePower:
    def __init__(self, reason: str, watts: list[float | None] | None = None) -> None:
        self.available = watts is not None
        self.reason = reason
        self.watts = list(watts or [])
        self.reads = 0

    def read_w(self) -> float | None:
        self.reads += 1
        return self.watts.pop(0) if self.watts else None


def test_host_platform_reports_rapl_plus_nvml() -> None:
    """power_w is the sum of both sources, after a priming read; describe() says what it covers."""
    rapl = FakePower("RAPL package energy (intel-rapl:0)", [None, 40.0, None])
    nvml = FakePower("NVML power of 1 GPU(s)", [70.0, 80.0, 90.0])
    platform = HostPlatform(rapl=rapl, nvml=nvml)

    sample = platform.telemetry()
    partial = platform.telemetry()
    described = platform.describe()["telemetry"]

    assert (rapl.reads, nvml.reads) == (3, 3)  # one priming read each in the constructor
    assert sample.power_w == pytest.approx(120.0)
    assert partial.power_w is None, "RAPL had no reading: a GPU-only figure would look like a drop"
    assert isinstance(described, dict)
    assert described["power_w"] == (
        "RAPL package energy (intel-rapl:0) + NVML power of 1 GPU(s) "
        "(CPU packages and GPUs only: less than power at the wall)"
    )


def test_host_platform_names_what_is_missing() -> None:
    """Trap: a 0 W reading, or a vague 'unsupported', where a source is missing."""
    only_gpu = HostPlatform(rapl=FakePower("no /sys/class/powercap"), nvml=FakePower("NVML x", [5.0, 6.0]))
    neither = HostPlatform(rapl=FakePower("no /sys/class/powercap"), nvml=FakePower("no driver"))

    gpu_text = only_gpu.describe()["telemetry"]
    none_text = neither.describe()["telemetry"]

    assert only_gpu.telemetry().power_w == 6.0 and neither.telemetry().power_w is None
    assert isinstance(gpu_text, dict) and isinstance(none_text, dict)
    assert gpu_text["power_w"].endswith("; RAPL unavailable: no /sys/class/powercap")
    assert none_text["power_w"] == (
        "unsupported: RAPL unavailable: no /sys/class/powercap; NVML unavailable: no driver"
    )


def test_default_readers_describe_this_host_truthfully() -> None:
    """HostPlatform() uses the real readers: its statement matches what they find here."""
    rapl, nvml = RaplReader(), NvmlReader()
    text = HostPlatform().describe()["telemetry"]
    nvml.close()

    assert isinstance(text, dict)
    if not rapl.available and not nvml.available:
        assert (
            text["power_w"]
            == f"unsupported: RAPL unavailable: {rapl.reason}; NVML unavailable: {nvml.reason}"
        )
    else:
        assert not text["power_w"].startswith("unsupported")

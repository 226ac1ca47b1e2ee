"""tegrastats: the pure line parser on real captured output, and the live reader on a fake binary.

Fixtures are third-party captures in tests/data/jetson/ (provenance in tests/data/SOURCES.md).
Lines of formats we have no fixture for are quoted verbatim from public repositories, each with
its source: DataDog/datadog-agent pkg/collector/corechecks/nvidia/jetson/jetson_test.go
("DATADOG"), lesomnus/tegra-exporter stats/parse_test.go ("TEGRA_EXPORTER"), and others named
where they are used.
"""

from __future__ import annotations

import errno
import json
import math
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotrain.platform.tegrastats import (
    CpuCore,
    TegrastatsSample,
    parse_tegrastats_line,
    parse_tegrastats_lines,
    sample_json,
    total_power_mw,
)
from cotrain.platform.tegrastats_reader import TegrastatsReader, TegrastatsUnavailable

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "data" / "jetson"
TEGRASTATS = FIXTURES / "tegrastats"
JP6_AGX_ORIN = TEGRASTATS / "Hanner123__LLM_PIPELINE__tegrastats.log.txt"
NANO = TEGRASTATS / "SumantBagri__CSC2231_Project__tegrastats.txt.first50.txt"
JP7_AGX_ORIN = TEGRASTATS / "rbonghi__jetson_stats__test_06_tegra_parse__orin_jp7.txt"

# (file, lines, samples): every line of every fixture is a sample.
FIXTURE_COUNTS = {JP6_AGX_ORIN.name: (15, 15), NANO.name: (50, 50), JP7_AGX_ORIN.name: (1, 1)}


def fixture_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def parse(line: str) -> TegrastatsSample:
    sample = parse_tegrastats_line(line)
    assert sample is not None, line
    return sample


# --- every fixture file --------------------------------------------------------------------


def test_the_fixture_directory_holds_the_files_we_count() -> None:
    """A new fixture file must be counted below, not silently ignored."""
    assert sorted(p.name for p in TEGRASTATS.iterdir()) == sorted(FIXTURE_COUNTS)


@pytest.mark.parametrize("name", sorted(FIXTURE_COUNTS))
def test_every_fixture_line_is_a_sample(name: str) -> None:
    """All three real formats (JP6 AGX Orin, JP7 AGX Orin, Nano): no sample line is lost."""
    lines = fixture_lines(TEGRASTATS / name)

    samples, skipped = parse_tegrastats_lines(lines)

    assert (len(lines), len(samples)) == FIXTURE_COUNTS[name]
    assert skipped == 0
    assert all(s.cpu and s.rails_mw and s.temperatures_c for s in samples)


def test_non_sample_lines_are_counted_not_parsed() -> None:
    """A log captured from a terminal carries a prompt, blank lines and ^C around the samples."""
    lines = ["nvidia@orin:~$ tegrastats --interval 1000", "", *fixture_lines(JP6_AGX_ORIN), "^C", "   "]

    samples, skipped = parse_tegrastats_lines(lines)

    assert len(samples) == 15
    assert skipped == 4


def test_orin_telemetry_csv_rows_are_not_tegrastats_lines() -> None:
    """The orin-telemetry CSVs are derived from tegrastats ("Used RAM (MB)" headers), not raw lines."""
    paths = sorted((REPO / "cotrain" / "sim" / "data" / "orin-telemetry").glob("*.csv"))
    assert paths, "no orin-telemetry CSVs: this test would check nothing"
    for path in paths:
        lines = fixture_lines(path)
        samples, skipped = parse_tegrastats_lines(lines)
        assert samples == [], path.name
        assert skipped == len(lines)


# --- exact values, one test per real format ------------------------------------------------


def test_jetpack6_agx_orin_line() -> None:
    """JP6 AGX Orin: leading timestamp, 4 `off` cores, `GR3D_FREQ 39%@[305,0]`, lowercase temps,
    `xmW/ymW` rails, and no VDD_IN, so the total is the sum of the rails."""
    line = fixture_lines(JP6_AGX_ORIN)[1]

    s = parse(line)

    assert s.timestamp == "07-21-2025 16:33:43"
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb, s.swap_total_mb) == (17955, 62841, 0, 31420)
    assert len(s.cpu) == 12
    assert s.cpu[0] == CpuCore(load_pct=20.0, freq_mhz=1728.0)
    assert s.cpu[7] == CpuCore(load_pct=1.0, freq_mhz=729.0)
    assert s.cpu[8:] == (None, None, None, None)
    assert (s.emc_load_pct, s.emc_freq_mhz) == (12.0, 204.0)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (40.0, 305.0)
    assert s.temperatures_c["cpu"] == 43.625
    assert s.temperatures_c["tj"] == 43.625
    assert dict(s.rails_mw) == {"VDD_GPU_SOC": 2797.0, "VDD_CPU_CV": 799.0, "VIN_SYS_5V0": 3215.0}
    assert dict(s.rails_avg_mw) == {"VDD_GPU_SOC": 2798.0, "VDD_CPU_CV": 799.0, "VIN_SYS_5V0": 3265.0}
    assert s.total_power_w == pytest.approx((2797 + 799 + 3215) / 1000)
    assert s.engines["NVDLA0"].off and s.engines["APE"].freq_mhz == 174.0


def test_jetpack7_agx_orin_line() -> None:
    """JP7 AGX Orin: three values per rail and `x/y` temperatures; the first is instantaneous."""
    line = fixture_lines(JP7_AGX_ORIN)[0]

    s = parse(line)

    assert s.timestamp == "07-25-2026 09:08:28"
    assert (s.ram_used_mb, s.ram_total_mb) == (20642, 62817)
    assert (s.swap_used_mb, s.swap_total_mb) == (None, None)  # JP7 prints no SWAP here
    assert s.cpu == tuple(CpuCore(load, 2201.0) for load in (23, 10, 4, 14, 30, 18, 10, 10, 33, 7, 5, 27))
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (12.0, 1300.0)
    assert (s.emc_load_pct, s.emc_freq_mhz) == (3.0, 3199.0)
    assert dict(s.temperatures_c) == {"cpu": 52.968, "soc2": 48.406, "soc0": 49.531, "gpu": 47.625}
    assert dict(s.rails_mw) == {"VDD_GPU_SOC": 5139.0, "VDD_CPU_CV": 3268.0, "VIN_SYS_5V0": 5500.0}
    assert s.rails_max_mw["VDD_CPU_CV"] == 3268.0
    assert s.total_power_w == pytest.approx(13.907)


def test_jetpack7_three_rail_values_are_cur_avg_max() -> None:
    """JP7 trap: in the fixture all three values are equal, so it cannot tell which is current.
    TEGRA_EXPORTER's two consecutive Thor lines can: the rail read 8710, then
    `7953mW/8332mW/8710mW`; 8332 is the mean of the two, 8710 the maximum, 7953 the reading."""
    before = (
        "07-23-2026 15:29:26 RAM 9101/125811MB (lfb 19x4MB) SWAP 0/2048MB (cached 0MB) CPU [39%@2160,"
        "20%@2160,16%@1944,15%@1944,17%@972,15%@972,19%@2214,22%@2214,13%@2430,20%@2430,26%@972,19%@972,"
        "15%@1836,22%@1836] EMC_FREQ 7%@3200 GR3D_FREQ @[314,314,314] NVENC0_FREQ @1556 NVENC1_FREQ @1556 "
        "NVDEC0_FREQ @1556 NVDEC1_FREQ @1556 NVJPG0_FREQ @1556 VIC 59%@423 OFA_FREQ @1556 PVA0_FREQ off "
        "APE 300 cpu@34.843C/34.843C tj@35.906C/35.906C soc012@34.437C/34.437C gpu@35.906C/35.906C "
        "soc345@34.406C/34.406C VDD_GPU 4925mW/4925mW/4925mW VDD_CPU_SOC_MSS 8710mW/8710mW/8710mW "
        "VIN_SYS_5V0 6767mW/6767mW/6767mW"
    )
    after = (
        "07-23-2026 15:29:27 RAM 9091/125811MB (lfb 19x4MB) SWAP 0/2048MB (cached 0MB) CPU [40%@972,"
        "16%@972,18%@972,20%@972,13%@972,11%@972,15%@972,19%@972,10%@972,15%@972,28%@972,11%@972,11%@972,"
        "15%@972] EMC_FREQ 7%@3200 GR3D_FREQ @[314,314,314] NVENC0_FREQ @1556 NVENC1_FREQ @1556 "
        "NVDEC0_FREQ @1556 NVDEC1_FREQ @1556 NVJPG0_FREQ @1556 VIC 59%@423 OFA_FREQ @1556 PVA0_FREQ off "
        "APE 300 cpu@34.312C/34.843C tj@35.906C/35.906C soc012@34.093C/34.437C gpu@35.906C/35.906C "
        "soc345@34.437C/34.437C VDD_GPU 4925mW/4925mW/4925mW VDD_CPU_SOC_MSS 7953mW/8332mW/8710mW "
        "VIN_SYS_5V0 6667mW/6717mW/6767mW"
    )

    s0, s1 = parse(before), parse(after)

    assert s0.rails_mw["VDD_CPU_SOC_MSS"] == 8710.0
    assert s1.rails_mw["VDD_CPU_SOC_MSS"] == 7953.0
    assert s1.rails_avg_mw["VDD_CPU_SOC_MSS"] == pytest.approx((8710 + 7953) / 2, abs=0.5)
    assert s1.rails_max_mw["VDD_CPU_SOC_MSS"] == 8710.0
    assert s1.temperatures_c["cpu"] == 34.312  # `cur/max`: the max stayed at the earlier 34.843
    # Thor prints the GPC clocks with no load; the engines print `@freq` with no load either.
    assert (s1.gpu_load_pct, s1.gpu_freq_mhz) == (None, 314.0)
    assert s1.engines["NVENC0"].freq_mhz == 1556.0
    assert (s1.engines["VIC"].load_pct, s1.engines["VIC"].freq_mhz) == (59.0, 423.0)
    assert len(s1.cpu) == 14
    assert s1.total_power_w == pytest.approx((4925 + 7953 + 6667) / 1000)  # no VIN on this Thor


def test_nano_line_uses_pom_5v_in_as_the_total() -> None:
    """Jetson Nano: `POM_5V_*` rails with no unit and `IRAM x/ykB(lfb ..)`. POM_5V_IN already
    contains POM_5V_GPU and POM_5V_CPU, so adding them would count them twice."""
    line = fixture_lines(NANO)[1]

    s = parse(line)

    assert s.timestamp is None
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb, s.swap_total_mb) == (958, 3964, 0, 4096)
    assert s.cpu == (CpuCore(3.0, 1479.0), CpuCore(0.0, 1479.0), CpuCore(7.0, 1479.0), CpuCore(19.0, 1479.0))
    assert (s.emc_load_pct, s.emc_freq_mhz) == (0.0, 1600.0)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0.0, 76.0)
    assert dict(s.rails_mw) == {"POM_5V_IN": 1537.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 472.0}
    assert dict(s.rails_avg_mw) == {"POM_5V_IN": 1228.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 295.0}
    assert "IRAM" not in s.rails_mw
    assert s.total_power_w == pytest.approx(1.537)
    assert dict(s.temperatures_c) == {
        "PLL": 24.5, "CPU": 27.5, "PMIC": 50.0, "GPU": 28.5, "AO": 29.0, "thermal": 28.0,
    }  # fmt: skip
    assert s.hottest_c == 29.0  # AO; not PMIC's constant 50


def test_hottest_temperature_leaves_out_pmic_and_the_thermal_average() -> None:
    """Bug: the board temperature was the max over every zone, so the constant `PMIC@100C` of TX2 and
    Xavier (and `PMIC@50C` on the Nano) was reported as the hottest sensor on every line."""
    tx2 = parse(
        "RAM 2344/7852MB (lfb 1154x4MB) CPU [1%@345,off] PLL@37.5C MCPU@37.5C PMIC@100C Tboard@32C "
        "GPU@35C BCPU@37.5C thermal@36.5C Tdiode@34.25C VDD_IN 3056/3056"
    )  # DATADOG tx2Sample
    xavier = parse(
        "RAM 721/31927MB (lfb 7291x4MB) CPU [2%@1190] AO@37.5C GPU@37.5C Tdiode@40C PMIC@100C "
        "AUX@36C CPU@37.5C thermal@36.9C Tboard@37C GPU 0/0"
    )  # DATADOG agXSample
    only_placeholders = parse("RAM 1/2MB CPU [1%@100] PMIC@100C thermal@41.6C CV0@-256C")

    assert (tx2.hottest_c, xavier.hottest_c) == (37.5, 40.0)
    assert max(tx2.temperatures_c.values()) == 100.0  # the raw reading is still there
    assert only_placeholders.hottest_c is None and dict(only_placeholders.temperatures_c) == {
        "PMIC": 100.0,
        "thermal": 41.6,
    }


# --- formats we have no fixture for ------------------------------------------------------


def test_tx2_line() -> None:
    """TX2 (DATADOG tx2Sample): `VDD_SYS_*` rails without units, `BCPU@..C`, offline cores in the
    middle of the list, and VDD_IN as the total (not the sum, which would count it twice)."""
    line = (
        "RAM 2344/7852MB (lfb 1154x4MB) SWAP 0/3926MB (cached 0MB) CPU [1%@345,off,off,1%@345,0%@345,2%@345] "
        "EMC_FREQ 4%@1600 GR3D_FREQ 0%@624 APE 150 PLL@37.5C MCPU@37.5C PMIC@100C Tboard@32C GPU@35C "
        "BCPU@37.5C thermal@36.5C Tdiode@34.25C VDD_SYS_GPU 152/152 VDD_SYS_SOC 687/687 VDD_4V0_WIFI 0/0 "
        "VDD_IN 3056/3056 VDD_SYS_CPU 152/152 VDD_SYS_DDR 883/883"
    )

    s = parse(line)

    assert s.cpu == (
        CpuCore(1.0, 345.0),
        None,
        None,
        CpuCore(1.0, 345.0),
        CpuCore(0.0, 345.0),
        CpuCore(2.0, 345.0),
    )
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0.0, 624.0)
    assert s.temperatures_c["BCPU"] == 37.5
    assert s.rails_mw["VDD_SYS_GPU"] == 152.0
    assert len(s.rails_mw) == 6
    assert s.total_power_w == pytest.approx(3.056)


def test_agx_xavier_line_rails_share_names_with_temperatures() -> None:
    """AGX Xavier (DATADOG agXSample): rails named `GPU`, `CPU`, `SOC`, `CV`, `VDDRQ`, `SYS5V`
    beside temperatures `GPU@..C`/`CPU@..C`, `MTS fg 0% bg 0%`, and no input rail: the total is
    the sum of the six separate supplies."""
    line = (
        "RAM 721/31927MB (lfb 7291x4MB) SWAP 0/15963MB (cached 0MB) CPU [2%@1190,0%@1190,0%@1190,0%@1190,"
        "off,off,off,off] EMC_FREQ 0%@665 GR3D_FREQ 0%@318 APE 150 MTS fg 0% bg 0% AO@37.5C GPU@37.5C "
        "Tdiode@40C PMIC@100C AUX@36C CPU@37.5C thermal@36.9C Tboard@37C GPU 0/0 CPU 311/311 SOC 932/932 "
        "CV 0/0 VDDRQ 621/621 SYS5V 1482/1482"
    )

    s = parse(line)

    assert dict(s.rails_mw) == {"GPU": 0, "CPU": 311, "SOC": 932, "CV": 0, "VDDRQ": 621, "SYS5V": 1482}
    assert (s.temperatures_c["GPU"], s.temperatures_c["CPU"]) == (37.5, 37.5)
    assert s.cpu[4:] == (None,) * 4
    assert s.total_power_w == pytest.approx((311 + 932 + 621 + 1482) / 1000)
    assert "MTS" not in s.engines


def test_xavier_jetpack4_line_without_clocks() -> None:
    """AGX Xavier, JetPack 4 (an earlier DATADOG jetson_test.go agXSample): `EMC_FREQ 0%` and
    `GR3D_FREQ 0%` carry a load and no clock."""
    line = (
        "RAM 4083/31919MB (lfb 6179x4MB) SWAP 0/15959MB (cached 0MB) CPU [0%@1190,0%@1190,0%@1190,1%@1190,"
        "off,off,off,off] EMC_FREQ 0% GR3D_FREQ 0% AO@42C GPU@42C Tdiode@44.75C PMIC@100C AUX@41.5C "
        "CPU@42C thermal@41.6C Tboard@41C GPU 0/16 CPU 310/432 SOC 931/953 CV 0/0 VDDRQ 466/488 "
        "SYS5V 1522/1559"
    )

    s = parse(line)

    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0.0, None)
    assert (s.emc_load_pct, s.emc_freq_mhz) == (0.0, None)
    assert (s.rails_mw["GPU"], s.rails_avg_mw["GPU"]) == (0.0, 16.0)


def test_xavier_nx_line_uses_vdd_in() -> None:
    """Xavier NX (DATADOG xavierNxSample): VDD_IN with VDD_CPU_GPU_CV and VDD_SOC, no units."""
    line = (
        "RAM 4412/7772MB (lfb 237x4MB) SWAP 139/3886MB (cached 2MB) CPU [9%@1190,6%@1190,6%@1190,5%@1190,"
        "4%@1190,8%@1267] EMC_FREQ 10%@1600 GR3D_FREQ 62%@306 APE 150 MTS fg 0% bg 0% AO@41.5C GPU@43C "
        "PMIC@100C AUX@41.5C CPU@43.5C thermal@42.55C VDD_IN 4067/4067 VDD_CPU_GPU_CV 738/738 "
        "VDD_SOC 1353/1353"
    )

    s = parse(line)

    assert (s.swap_used_mb, s.swap_total_mb) == (139, 3886)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (62.0, 306.0)
    assert s.cpu[5] == CpuCore(8.0, 1267.0)
    assert s.total_power_w == pytest.approx(4.067)


def test_orin_nx_jetpack5_line_with_vdd_in_in_mw() -> None:
    """Orin NX on JetPack 5 (DATADOG voltageUnitSample): `mW` rails with VDD_IN, `VIC_FREQ 729`
    as a bare clock, upper-case `CV0@..C` temperatures."""
    line = (
        "RAM 6334/15388MB (lfb 1770x4MB) SWAP 491/7694MB (cached 0MB) CPU [6%@729,9%@729,5%@729,16%@729,"
        "off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@611 VIC_FREQ 729 APE 174 CV0@45.812C CPU@47.937C "
        "SOC2@46.093C SOC0@46.968C CV1@46.406C GPU@45.875C tj@48.875C SOC1@48.875C CV2@45.75C "
        "VDD_IN 5299mW/5299mW VDD_CPU_GPU_CV 773mW/773mW VDD_SOC 1424mW/1424mW"
    )

    s = parse(line)

    assert dict(s.rails_mw) == {"VDD_IN": 5299.0, "VDD_CPU_GPU_CV": 773.0, "VDD_SOC": 1424.0}
    assert s.total_power_w == pytest.approx(5.299)  # not 7.496: VDD_IN contains the other two
    assert s.engines["VIC"].freq_mhz == 729.0
    assert s.temperatures_c["CV0"] == 45.812
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0.0, 611.0)


def test_agx_orin_jetpack5_line_with_nc_channels_and_dead_sensors() -> None:
    """AGX Orin, JetPack 5, from a setup README quoting `sudo tegrastats` (code-index id
    40952187782; repository not identified): `NC 0mW/0mW` twice (unwired INA3221 channels),
    `GPU@-256C` (sensor off), `GR3D2_FREQ`, and the 4th rail VDDQ_VDD2_1V8AO, which is fed from
    VIN_SYS_5V0 and so is left out of the sum."""
    line = (
        "04-24-2023 00:01:24 RAM 1282/62795MB (lfb 15152x4MB) SWAP 0/31398MB (cached 0MB) CPU [0%@729,"
        "0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 "
        "GR3D_FREQ 0%@0 GR3D2_FREQ 0%@0 VIC_FREQ 729 APE 174 CV0@-256C CPU@42.593C Tboard@32C "
        "SOC2@39.343C Tdiode@33.25C SOC0@39.375C CV1@-256C GPU@-256C tj@42.593C SOC1@40.468C CV2@-256C "
        "VDD_GPU_SOC 2399mW/2399mW VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 4032mW/4032mW NC 0mW/0mW "
        "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW"
    )

    s = parse(line)

    assert "NC" not in s.rails_mw
    assert s.rails_mw["VDDQ_VDD2_1V8AO"] == 301.0
    assert s.total_power_w == pytest.approx((2399 + 400 + 4032) / 1000)
    assert "GPU" not in s.temperatures_c and "CV0" not in s.temperatures_c
    assert s.temperatures_c["tj"] == 42.593
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0.0, 0.0)
    assert s.engines["GR3D2"].load_pct == 0.0


def test_jetpack6_line_with_runs_of_spaces_and_no_emc() -> None:
    """JP6 AGX Orin (DATADOG r36Sample, orinSample): runs of spaces between fields, and a line
    with `GR3D_FREQ 0%` and no EMC_FREQ at all."""
    spaced = (
        "RAM 29114/30697MB (lfb 3x4MB)    SWAP 4915/15348MB (cached 1MB) CPU [3%@729,4%@729,0%@729,1%@729,"
        "0%@2201,100%@2201,1%@2201,0%@2201,100%@2201,0%@2201,0%@2201,0%@2201] EMC_FREQ 1%@2133 "
        "GR3D_FREQ 0%@[305,305] NVENC      off  NVDEC    off NVJPG off NVJPG1    off         VIC        off"
        "          OFA           off          NVDLA0    off       NVDLA1     off          PVA0_FREQ off"
        "         APE           174        cpu@53.062C soc2@48.25C soc0@48.843C  gpu@47.812C tj@53.062C "
        "soc1@48.968C    VDD_GPU_SOC 3205mW/3205mW VDD_CPU_CV 4405mW/4405mW VIN_SYS_5V0 4767mW/4767mW"
    )
    no_emc = (
        "RAM 2448/62840MB (lfb 2x4MB) SWAP 0/31420MB (cached 0MB) CPU [0%@2201,0%@2201,0%@2201,0%@2201,"
        "0%@2201,0%@2201,0%@2201,0%@2201,0%@2201,0%@2201,0%@2201,0%@2201] GR3D_FREQ 0% cpu@42C "
        "soc2@37.843C soc0@39.187C gpu@37.75C tj@42C soc1@37.937C VDD_GPU_SOC 4940mW/4940mW "
        "VDD_CPU_CV 988mW/988mW VIN_SYS_5V0 4442mW/4442mW"
    )

    a, b = parse(spaced), parse(no_emc)

    assert a.cpu[5] == CpuCore(100.0, 2201.0)
    assert a.engines["NVENC"].off and a.engines["APE"].freq_mhz == 174.0
    assert a.rails_mw["VIN_SYS_5V0"] == 4767.0
    assert (b.emc_load_pct, b.emc_freq_mhz) == (None, None)
    assert (b.gpu_load_pct, b.gpu_freq_mhz) == (0.0, None)
    assert b.temperatures_c["tj"] == 42.0


def test_tx1_l4t28_line_with_one_clock_for_all_cores() -> None:
    """TX1 on L4T 28 (hordiales/jetson-tx1-dev SCRIPTS.md): lower-case `cpu [a%,b%]@408` with
    the clock after the bracket, and `EMC`/`GR3D` without `_FREQ`."""
    line = (
        "RAM 3468/3983MB (lfb 48x4MB) SWAP 873/8192MB (cached 295MB) cpu [17%,13%,29%,5%]@408 "
        "EMC 1%@408 APE 25 GR3D 3%@76"
    )

    s = parse(line)

    assert s.cpu == (CpuCore(17.0, 408.0), CpuCore(13.0, 408.0), CpuCore(29.0, 408.0), CpuCore(5.0, 408.0))
    assert (s.emc_load_pct, s.emc_freq_mhz) == (1.0, 408.0)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (3.0, 76.0)
    assert s.rails_mw == {} and s.total_power_w is None


def test_thor_line_without_gpu_load() -> None:
    """Thor, L4T 38 (TEGRA_EXPORTER): `GR3D_FREQ @[0,0,0]`, `NVENC0_FREQ @0`, and VDD_GPU /
    VDD_CPU_SOC_MSS / VIN_SYS_5V0 rails with no input rail."""
    line = (
        "05-17-2026 10:00:32 RAM 4208/125773MB (lfb 31x4MB) SWAP 0/2048MB (cached 0MB) CPU [1%@972,0%@972,"
        "0%@972,0%@972,1%@972,0%@972,1%@972,1%@972,0%@972,0%@972,3%@972,0%@972,0%@972,1%@972] "
        "EMC_FREQ 0%@665 GR3D_FREQ @[0,0,0] NVENC0_FREQ @0 NVENC1_FREQ @0 NVDEC0_FREQ @0 NVDEC1_FREQ @0 "
        "NVJPG0_FREQ @0 VIC off OFA_FREQ @0 PVA0_FREQ off APE 300 cpu@34.468C tj@34.5C soc012@33.781C "
        "soc345@34.5C VDD_GPU 0mW/0mW VDD_CPU_SOC_MSS 4165mW/4165mW VIN_SYS_5V0 4126mW/4126mW"
    )

    s = parse(line)

    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (None, 0.0)
    assert s.engines["NVENC0"].freq_mhz == 0.0
    assert s.total_power_w == pytest.approx((0 + 4165 + 4126) / 1000)


@pytest.mark.parametrize(
    ("fragment", "load_pct", "freq_mhz"),
    [
        ("GR3D_FREQ 0%@[305,0]", 0.0, 305.0),  # JP6 per-GPC list, one GPC gated
        ("GR3D_FREQ 0%@114", 0.0, 114.0),
        ("GR3D_FREQ 0%", 0.0, None),
        ("GR3D_FREQ @[1000,1000,1000]", None, 1000.0),  # Thor (rbonghi/jetson_stats test_06)
        ("GR3D_FREQ 0%@[0,1300]", 0.0, 1300.0),  # the highest GPC clock, not the first
    ],
)
def test_gpu_load_and_clock_variants(fragment: str, load_pct: float | None, freq_mhz: float | None) -> None:
    """Every GR3D_FREQ shape seen in the wild; a per-GPC list gives its highest clock."""
    s = parse(f"RAM 1/2MB {fragment}")

    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (load_pct, freq_mhz)


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        ("CPU [off,off]", (None, None)),
        ("CPU [23%@729,off]", (CpuCore(23.0, 729.0), None)),
        ("CPU [12%]", (CpuCore(12.0, None),)),
        ("CPU [6%@1420, off, off, off]", (CpuCore(6.0, 1420.0), None, None, None)),  # hand-spaced
        ("CPU []", ()),
    ],
)
def test_cpu_list_variants(cpu: str, expected: tuple[CpuCore | None, ...]) -> None:
    """`off` is an offline core (None); the clock is optional; spaces inside the list are tolerated."""
    assert parse(f"RAM 1/2MB {cpu}").cpu == expected


def test_timestamp_prefixes() -> None:
    """Timestamps tegrastats prints (`MM-DD-YYYY hh:mm:ss`) and a bracketed logger prefix are kept;
    a shell prompt before RAM is not a timestamp."""
    assert parse("11-10-2023 14:41:04 RAM 1/2MB").timestamp == "11-10-2023 14:41:04"
    assert parse("[2018-08-23 16:30:36] : RAM 1/2MB").timestamp == "2018-08-23 16:30:36"
    assert parse("nvidia@orin:~$ RAM 1/2MB").timestamp is None


def test_lines_that_are_not_samples() -> None:
    """No `RAM x/yMB`, no sample: prompts, blank lines, jtop's CSV headers, IRAM on its own."""
    for line in ["", "   ", "nvidia@orin:~$ tegrastats", "Used RAM (MB),Total RAM (MB)", "IRAM 0/252kB"]:
        assert parse_tegrastats_line(line) is None


def test_total_power_prefers_the_input_rail_and_skips_sums() -> None:
    """An input rail is the total on its own; without one, a `sum of shunts`-style rail is skipped."""
    assert total_power_mw({"VDD_IN": 5000.0, "VDD_CPU_GPU_CV": 2000.0, "VDD_SOC": 1000.0}) == 5000.0
    assert total_power_mw({"VIN": 23000.0, "VIN_SYS_5V0": 6000.0}) == 23000.0  # Thor's board input
    assert total_power_mw({"GPU": 100.0, "CPU": 200.0, "SUM_OF_SHUNTS": 300.0}) == 300.0
    assert total_power_mw({}) is None


# --- sample_json -----------------------------------------------------------------------------


def test_sample_json_has_exactly_the_acceptance_keys() -> None:
    """The acceptance format: these keys, plain JSON types, instantaneous rails, null offline cores."""
    s = parse(fixture_lines(JP6_AGX_ORIN)[1])

    out = sample_json(s)

    assert set(out) == {"ram_used_mb", "ram_total_mb", "cpu", "gpu_load_pct", "gpu_freq_mhz", "rails_mw"}
    assert json.loads(json.dumps(out)) == out
    assert (out["ram_used_mb"], out["ram_total_mb"]) == (17955, 62841)
    assert isinstance(out["ram_used_mb"], int)
    cpu = out["cpu"]
    assert isinstance(cpu, list)
    assert cpu[0] == {"load_pct": 20.0, "freq_mhz": 1728.0}
    assert cpu[8:] == [None] * 4
    assert all(isinstance(c["load_pct"], float) for c in cpu if c is not None)
    assert (out["gpu_load_pct"], out["gpu_freq_mhz"]) == (40.0, 305.0)
    assert out["rails_mw"] == {"VDD_GPU_SOC": 2797.0, "VDD_CPU_CV": 799.0, "VIN_SYS_5V0": 3215.0}


def test_sample_json_nulls() -> None:
    """A line without GPU clock or load gives JSON nulls, not missing keys."""
    out = sample_json(parse("RAM 1/2MB CPU [12%]"))

    assert out["gpu_load_pct"] is None and out["gpu_freq_mhz"] is None
    assert out["cpu"] == [{"load_pct": 12.0, "freq_mhz": None}]
    assert out["rails_mw"] == {}


# --- arbitrary input -------------------------------------------------------------------------

REAL_TOKENS = sorted(
    {
        tok
        for path in (JP6_AGX_ORIN, NANO, JP7_AGX_ORIN)
        for line in fixture_lines(path)
        for tok in line.split()
    }
    | {"GR3D_FREQ", "@[1,2", "]", "[", "0%@[", "CPU", "off", "VDD_IN", "/", "mW", "-256C", "@", "%@"}
)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    """Any text gives a sample or None, never an exception."""
    result = parse_tegrastats_line(text)

    assert result is None or isinstance(result, TegrastatsSample)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(REAL_TOKENS) | st.text(max_size=8), max_size=40))
def test_shuffled_real_tokens_parse_to_finite_json(tokens: list[str]) -> None:
    """Real tokens in any order, mixed with junk, still give a sample whose JSON is finite."""
    s = parse("RAM 5/10MB " + " ".join(tokens))

    out = sample_json(s)

    json.dumps(out, allow_nan=False)
    assert (s.ram_used_mb, s.ram_total_mb) == (5, 10)
    assert all(math.isfinite(v) for v in s.rails_mw.values())
    assert all(core is None or isinstance(core, CpuCore) for core in s.cpu)


# --- the live reader -------------------------------------------------------------------------

FAKE_TEGRASTATS = """#!{python}
import signal, sys, time
args = sys.argv[1:]
interval_s = int(args[args.index("--interval") + 1]) / 1000
with open({argv_file!r}, "w") as f:
    f.write(" ".join(args))
{setup}
lines = {lines!r}
n = 0
while {keep_going}:
    print(lines[n % len(lines)], flush=True)
    n += 1
    time.sleep(interval_s)
{finish}
"""


def fake_tegrastats(
    tmp_path: Path,
    lines: list[str],
    *,
    keep_going: str = "True",
    setup: str = "",
    finish: str = "",
) -> Path:
    """A stand-in `tegrastats` that prints real lines every --interval ms, then does `finish`."""
    path = tmp_path / "tegrastats"
    path.write_text(
        FAKE_TEGRASTATS.format(
            python=sys.executable,
            argv_file=str(tmp_path / "argv.txt"),
            setup=setup,
            lines=lines,
            keep_going=keep_going,
            finish=finish,
        )
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def readers() -> Iterator[Callable[..., TegrastatsReader]]:
    """Make readers that are always stopped at teardown, so a failed test leaks no process."""
    made: list[TegrastatsReader] = []

    def make(*args: Any, **kwargs: Any) -> TegrastatsReader:
        made.append(TegrastatsReader(*args, **kwargs))
        return made[-1]

    yield make
    for reader in made:
        reader.stop()


def stop_within(reader: TegrastatsReader, timeout_s: float) -> None:
    stopper = threading.Thread(target=reader.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=timeout_s)
    assert not stopper.is_alive(), "stop() hung"


def test_reader_streams_and_parses_samples(tmp_path: Path, readers: Callable[..., TegrastatsReader]) -> None:
    """Samples from the running process arrive, parse, and the interval reaches the binary."""
    binary = fake_tegrastats(tmp_path, fixture_lines(JP6_AGX_ORIN))

    with readers(binary, interval_ms=20) as reader:
        arrived = reader.wait_for_samples(3, timeout_s=30)
        nxt = reader.wait_for_sample(timeout_s=30)
        alive = reader.alive

    assert arrived and nxt is not None
    assert nxt.ram_total_mb == 62841 and len(nxt.cpu) == 12
    assert reader.latest() is not None
    assert alive and not reader.alive
    assert reader.error is None  # we stopped it; that is not an error
    assert (tmp_path / "argv.txt").read_text() == "--interval 20"


def test_reader_passes_the_documented_popen_arguments(
    tmp_path: Path, readers: Callable[..., TegrastatsReader]
) -> None:
    """The process is started as `<binary> --interval <ms>`, stdout piped, stdin closed, text mode."""
    binary = fake_tegrastats(tmp_path, fixture_lines(NANO))
    calls: list[tuple[list[str], dict[str, Any]]] = []

    def recording_popen(argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        calls.append((argv, kwargs))
        return subprocess.Popen(argv, **kwargs)

    with readers(binary, interval_ms=250, popen=recording_popen) as reader:
        sample = reader.wait_for_sample(timeout_s=30)

    assert sample is not None and sample.ram_total_mb == 3964
    [(argv, kwargs)] = calls
    assert argv == [str(binary), "--interval", "250"]
    assert kwargs["stdin"] is subprocess.DEVNULL and kwargs["stdout"] is subprocess.PIPE
    assert kwargs["text"] is True
    assert kwargs["start_new_session"] is True and callable(kwargs["preexec_fn"])


def test_missing_binary_raises_a_clear_error_at_start(
    tmp_path: Path, readers: Callable[..., TegrastatsReader]
) -> None:
    """A wrong path fails loudly at start, naming the path, instead of reading nothing."""
    reader = readers(tmp_path / "no-such-tegrastats")

    with pytest.raises(TegrastatsUnavailable, match="no-such-tegrastats"):
        reader.start()
    assert not reader.alive
    assert reader.wait_for_sample(timeout_s=30) is None  # returns at once: nothing is running


def test_binary_that_is_not_executable_raises(
    tmp_path: Path, readers: Callable[..., TegrastatsReader]
) -> None:
    """A file without the execute bit (a copied log, say) is reported, not hung on."""
    binary = tmp_path / "tegrastats"
    binary.write_text("RAM 1/2MB\n")

    with pytest.raises(TegrastatsUnavailable, match="ermission"), readers(binary):
        pass


def test_process_death_is_detected_with_its_code_and_last_words(
    tmp_path: Path, readers: Callable[..., TegrastatsReader]
) -> None:
    """tegrastats never exits on its own; when it does, `alive` drops and `error` says why."""
    lines = fixture_lines(JP6_AGX_ORIN)[:2]
    binary = fake_tegrastats(
        tmp_path,
        lines,
        keep_going="n < 2",
        finish='print("tegrastats: lost the sensors", file=sys.stderr, flush=True); sys.exit(3)',
    )
    reader = readers(binary, interval_ms=10)

    reader.start()
    exited = reader.wait_for_exit(timeout_s=30)
    started = time.monotonic()
    after_exit = reader.wait_for_sample(timeout_s=60)
    waited_s = time.monotonic() - started

    assert exited and not reader.alive
    assert reader.returncode == 3
    assert reader.error is not None and "code 3" in reader.error and "lost the sensors" in reader.error
    assert reader.samples_read == 2 and reader.lines_skipped == 1
    latest = reader.latest()
    assert latest is not None and latest.ram_used_mb == 17955  # the second line
    assert after_exit is None and waited_s < 30  # no waiting on a dead process
    stop_within(reader, timeout_s=30)
    assert reader.error is not None  # stop() does not hide an earlier death


def test_stop_kills_a_process_that_ignores_sigterm(
    tmp_path: Path, readers: Callable[..., TegrastatsReader]
) -> None:
    """stop() escalates to SIGKILL after its timeout, so it never hangs on a stuck binary."""
    binary = fake_tegrastats(
        tmp_path,
        fixture_lines(JP7_AGX_ORIN),
        setup="signal.signal(signal.SIGTERM, signal.SIG_IGN)",
        keep_going="n < 1",
        finish="while True:\n    signal.pause()",
    )
    reader = readers(binary, interval_ms=10, stop_timeout_s=0.5)
    reader.start()
    assert reader.wait_for_samples(1, timeout_s=30)  # the handler is installed by now

    stop_within(reader, timeout_s=30)

    assert reader.wait_for_exit(timeout_s=30)
    assert reader.returncode == -signal.SIGKILL
    assert not reader.alive and reader.error is None


def test_stop_does_not_hang_on_a_grandchild_holding_the_pipe(
    tmp_path: Path, readers: Callable[..., TegrastatsReader]
) -> None:
    """A wrapper script's child keeps stdout open after the wrapper dies; the whole process group
    is signalled, so the reader thread still sees end-of-file."""
    binary = tmp_path / "tegrastats"
    line = fixture_lines(NANO)[0]
    binary.write_text(f"#!/bin/sh\necho '{line}'\nsleep 600\n")
    binary.chmod(0o755)
    reader = readers(binary, stop_timeout_s=5)
    reader.start()
    assert reader.wait_for_samples(1, timeout_s=30)

    stop_within(reader, timeout_s=60)

    assert reader.wait_for_exit(timeout_s=30)
    assert reader.error is None and not reader.alive


def test_stop_is_idempotent_and_safe_before_start(
    tmp_path: Path, readers: Callable[..., TegrastatsReader]
) -> None:
    """stop() before start, and twice, is a no-op rather than an error."""
    reader = readers(fake_tegrastats(tmp_path, fixture_lines(NANO)), interval_ms=10)

    reader.stop()
    reader.start()
    stop_within(reader, timeout_s=30)
    stop_within(reader, timeout_s=30)

    assert not reader.alive and reader.error is None
    with pytest.raises(RuntimeError, match="twice"):
        reader.start()


def test_interval_must_be_positive() -> None:
    """`--interval 0` would make tegrastats spin; refuse it before starting anything."""
    with pytest.raises(ValueError, match="interval_ms"):
        TegrastatsReader("tegrastats", interval_ms=0)


# --- the child must not outlive cotrain ------------------------------------------------------


def _run_reader_until_killed(binary: str, ready: Any) -> None:
    """The body of a spawned stand-in for cotrain: start a reader, report, then wait to be killed."""
    reader = TegrastatsReader(binary, interval_ms=10)
    reader.start()
    ready.put(reader.wait_for_samples(1, timeout_s=30))
    threading.Event().wait()


def _ended_within(proc: psutil.Process, timeout_s: float) -> bool:
    """Poll until `proc` is gone or a zombie (a container's init may never reap it), or time out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


def _quiet_tegrastats(tmp_path: Path, pid_file: Path) -> Path:
    """A fake that records its pid, prints one sample and then stays silent, as tegrastats does
    between samples of a long --interval. Silent, it never writes to the dead pipe, so no EPIPE
    or SIGPIPE ends it: only a signal can."""
    return fake_tegrastats(
        tmp_path,
        fixture_lines(NANO)[:1],
        setup=f"open({str(pid_file)!r}, 'w').write(str(__import__('os').getpid()))",
        keep_going="n < 1",
        finish="while True:\n    signal.pause()",
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_tegrastats_ends_when_cotrain_is_sigkilled(tmp_path: Path) -> None:
    """Bug: the child runs in its own session, so a SIGKILLed cotrain (OOM killer, `kill -9`) left
    tegrastats running forever. The kernel's parent-death signal now ends it."""
    pid_file = tmp_path / "tegrastats.pid"
    binary = _quiet_tegrastats(tmp_path, pid_file)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    helper = ctx.Process(target=_run_reader_until_killed, args=(str(binary), ready), daemon=True)
    helper.start()
    child: psutil.Process | None = None
    try:
        assert ready.get(timeout=120) is True, "the helper's reader read no sample"
        child = psutil.Process(int(pid_file.read_text()))
        assert child.ppid() == helper.pid

        os.kill(helper.pid, signal.SIGKILL)
        helper.join(timeout=30)

        assert helper.exitcode == -signal.SIGKILL
        assert _ended_within(child, timeout_s=30), "tegrastats outlived the process that started it"
    finally:
        if child is not None and child.is_running():
            child.kill()
        if helper.is_alive():
            helper.kill()
        ready.close()


def test_a_reader_started_from_a_short_lived_thread_keeps_running(
    tmp_path: Path, readers: Callable[..., TegrastatsReader]
) -> None:
    """Trap: the parent-death signal follows the thread that forked the child, not the process. Forked
    from the thread that calls start(), tegrastats would get SIGTERM as soon as that thread ended."""
    reader = readers(fake_tegrastats(tmp_path, fixture_lines(NANO)), interval_ms=10)
    starter = threading.Thread(target=reader.start)
    starter.start()
    starter.join(timeout=30)
    assert not starter.is_alive()

    more = reader.wait_for_samples(reader.samples_read + 5, timeout_s=30)

    assert more and reader.alive and reader.error is None


class _RefusingProcess:
    """A process that cannot be signalled (EPERM: it changed credentials) and whose output pipe we own."""

    pid = 4_000_000

    def __init__(self) -> None:
        read_fd, self.write_fd = os.pipe()
        self.stdout = os.fdopen(read_fd, encoding="utf-8")

    def poll(self) -> int | None:
        return None

    def wait(self, timeout: float | None = None) -> int:
        raise subprocess.TimeoutExpired("tegrastats", timeout or 0)

    def send_signal(self, sig: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")


def test_stop_never_raises_when_the_process_refuses_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: PermissionError from killpg and then send_signal escaped stop(), so the restore path that
    calls it was cut short. Now stop() finishes and `error` says what it could not do."""
    proc = _RefusingProcess()

    def refuse(pid: int, sig: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "killpg", refuse)
    reader = TegrastatsReader("tegrastats", popen=lambda *a, **k: proc, stop_timeout_s=0.01)
    reader.start()

    reader.stop()  # the reader thread stays blocked on the pipe: join times out after 0.01 s

    error = reader.error
    assert error is not None
    assert "cannot send SIGTERM" in error and "cannot send SIGKILL" in error and "not permitted" in error
    os.close(proc.write_fd)  # end-of-file: now the reader thread can finish
    assert reader.wait_for_exit(timeout_s=30)
    proc.stdout.close()

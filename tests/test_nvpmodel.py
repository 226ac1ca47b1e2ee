"""nvpmodel.conf parsing, tested on real files (tests/data/jetson/nvpmodel/) and on small
snippets modelled on other real files, each naming its source. Each test's docstring names the
trap it guards."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotrain.power_modes.nvpmodel import (
    NvpmodelConf,
    NvpmodelParseError,
    PowerMode,
    main,
    masks_need_reboot,
    modes_json,
    parse_nvpmodel,
)

FIXTURES = Path(__file__).resolve().parent / "data" / "jetson" / "nvpmodel"
AGX_64 = "LineageOS__android_device_nvidia_concord__nvpmodel_p3701_0000.conf"
AGX_32 = "LineageOS__android_device_nvidia_concord__nvpmodel_p3701_0004.conf"
NANO = "rageer-git__jetson-nano-image-maker__nvpmodel.conf"
OASIS = "The-OASIS-Project__dawn__nvpmodel.conf"


def fixture(name: str) -> NvpmodelConf:
    return parse_nvpmodel((FIXTURES / name).read_text(encoding="utf-8"))


def names(modes: list[PowerMode] | tuple[PowerMode, ...]) -> list[str]:
    return [m.name for m in modes]


# --- every real file ----------------------------------------------------------------------------

REAL_FILES = sorted(FIXTURES.glob("*.conf"))


def test_the_real_files_are_there() -> None:
    """Trap: a missing fixture directory turning the parametrised test below into zero tests."""
    assert {AGX_64, AGX_32, NANO, OASIS} <= {p.name for p in REAL_FILES}, f"fixtures missing in {FIXTURES}"


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name[-28:])
def test_every_real_file_parses_without_dropping_a_line(path: Path) -> None:
    """Trap: any of the real formats (old Nano, Orin, user-edited) tripping the parser or losing lines."""
    conf = parse_nvpmodel(path.read_text(encoding="utf-8"))

    assert conf.modes and conf.skipped == ()
    assert conf.default_mode is not None
    assert all(0 < m.online_cores <= len(conf.core_ids) for m in conf.modes)
    assert json.loads(json.dumps(modes_json(conf))) == modes_json(conf)


def test_agx_orin_64gb_matches_the_anchor_table() -> None:
    """Trap: unit mix-ups (CPU kHz vs GPU/EMC Hz), -1 and EMC 0 meaning uncapped, and per-mode core counts."""
    conf = fixture(AGX_64)

    got = {m.name: (m.id, m.online_cores, m.cpu_max_mhz, m.gpu_max_mhz, m.emc_max_mhz) for m in conf.modes}

    uncapped = {"CPU_A78_0": None, "CPU_A78_1": None, "CPU_A78_2": None}
    assert conf.default_id == 2
    assert got == {
        "MAXN": (0, 12, uncapped, None, None),
        "MODE_15W": (1, 4, {"CPU_A78_0": 1113.6}, 408.0, 2133.0),
        "MODE_30W": (2, 8, {"CPU_A78_0": 1728.0, "CPU_A78_1": 1728.0}, 612.0, None),
        "MODE_50W": (3, 12, dict.fromkeys(uncapped, 1497.6), 816.0, None),
    }


def test_agx_orin_64gb_reboot_truth_from_the_tpc_masks() -> None:
    """Trap: believing MAXN/50W switch live from the default. The masks say: MAXN and 50W share mask 0,
    so they switch live between themselves, but the default MODE_30W has mask 240, so from it every
    other mode needs a reboot."""
    conf = fixture(AGX_64)
    default = conf.mode(conf.default_id or 0)

    needs = [m.name for m in conf.modes if m.needs_reboot_from(default)]

    assert {m.name: m.tpc_pg_mask for m in conf.modes} == {
        "MAXN": 0,
        "MODE_15W": 248,
        "MODE_30W": 240,
        "MODE_50W": 0,
    }
    assert needs == ["MAXN", "MODE_15W", "MODE_50W"]
    assert not conf.mode("MAXN").needs_reboot_from(conf.mode("MODE_50W"))
    assert not conf.mode("MODE_50W").needs_reboot_from(conf.mode("MAXN"))


def test_param_header_without_space_after_angle_bracket() -> None:
    """Trap: `<PARAM TYPE=CLOCK NAME=EMC >` (no space after `<`) in NVIDIA's own Orin files."""
    conf = fixture(AGX_64)

    emc = conf.params["EMC"]

    assert emc.type == "CLOCK"
    assert emc.args == {"MAX_FREQ": ("/sys/kernel/nvpmodel_emc_cap/emc_iso_cap",) * 2}
    assert conf.mode("MODE_15W").settings["EMC"] == {"MAX_FREQ": 2133000000}


def test_commented_out_pm_config_in_the_header_is_ignored() -> None:
    """Trap: the format comment holds `# < PM_CONFIG DEFAULT=default_mode >`, which is not a default."""
    text = (FIXTURES / AGX_64).read_text(encoding="utf-8")
    assert "# < PM_CONFIG DEFAULT=default_mode >" in text

    conf = parse_nvpmodel(text)

    assert conf.default_id == 2


def test_knext_paths_are_alternates_of_their_arg() -> None:
    """Trap: `MAX_FREQ_KNEXT` treated as a separate arg; modes only ever name `MAX_FREQ`."""
    conf = fixture(OASIS)

    gpu, emc = conf.params["GPU"], conf.params["EMC"]

    assert set(gpu.args) == {"FREQ_TABLE", "MAX_FREQ", "MIN_FREQ"}
    assert gpu.args["MAX_FREQ"] == (
        "/sys/devices/17000000.ga10b/devfreq/17000000.ga10b/max_freq",
        "/sys/devices/platform/17000000.gpu/devfreq_dev/max_freq",
    )
    assert emc.args["MAX_FREQ"] == (
        "/sys/kernel/nvpmodel_emc_cap/emc_iso_cap",
        "/sys/kernel/nvpmodel_clk_cap/emc",
    )
    assert conf.params["TPC_POWER_GATING"].args["TPC_PG_MASK"][1] == "/sys/devices/platform/gpu.0/tpc_pg_mask"


def test_jetson_nano_old_format_with_wrapped_paths() -> None:
    """Trap: the Nano file's paths wrapped by long runs of spaces (`…frequenc      ies`), a single
    `CPU_A57` clock, double spaces in `CPU_A57 MIN_FREQ  0`, and no TPC mask at all."""
    conf = fixture(NANO)

    cpu, gpu = conf.params["CPU_A57"], conf.params["GPU"]
    maxn, low = conf.mode("MAXN"), conf.mode("5W")

    assert cpu.args["FREQ_TABLE"][1] == "/sys/devices/system/cpu/cpu0/cpufreq/scaling_available_frequencies"
    assert gpu.args["FREQ_TABLE"][1] == "/sys/devices/17000000.gv11b/devfreq/devfreq0/available_frequencies"
    assert (maxn.online_core_ids, maxn.cpu_max_mhz, maxn.gpu_max_mhz) == (
        (0, 1, 2, 3),
        {"CPU_A57": None},
        None,
    )
    assert (low.online_core_ids, low.cpu_max_mhz) == ((0, 1), {"CPU_A57": 918.0})
    assert (low.gpu_max_mhz, low.emc_max_mhz, low.tpc_pg_mask) == (640.0, 1600.0, None)
    assert low.settings["CPU_A57"]["MIN_FREQ"] == 0
    assert not low.needs_reboot_from(maxn)


def test_user_edited_single_mode_file() -> None:
    """Trap: a user-edited Orin NX file with one made-up mode (MODE_28_1_W), EMC -1 and a GPU cap
    above NVIDIA's modes; nothing about it may be assumed from mode names."""
    conf = fixture(OASIS)

    (mode,) = conf.modes

    assert (conf.default_id, mode.id, mode.name) == (0, 0, "MODE_28_1_W")
    assert mode.online_core_ids == tuple(range(8))
    assert mode.cpu_max_mhz == {"CPU_A78_0": 1497.6, "CPU_A78_1": 1497.6}
    assert (mode.gpu_max_mhz, mode.emc_max_mhz, mode.tpc_pg_mask, mode.fbp_pg_mask) == (918.0, None, 240, 2)
    assert mode.settings["PVA0_AXI"] == {"MAX_FREQ": -1}


def test_cores_no_mode_names_are_not_counted() -> None:
    """Trap: NVIDIA's AGX Orin 32GB file defines CORE_0..CORE_11 (copied from the 12-core module),
    but the module has 8 cores and no mode names CORE_8..11: MAXN must be 8 cores, not 12."""
    conf = fixture(AGX_32)

    assert len(conf.params["CPU_ONLINE"].args) == 12
    assert conf.core_ids == tuple(range(8))
    assert conf.mode("MAXN").online_cores == 8


# --- snippets modelled on other real files -------------------------------------------------------

# Modelled on dev10110/gatekeeper-exp-xavier nvpmodel.conf (commit dee856ba, NVIDIA 2019-2022,
# Xavier NX): CPU_DENVER_0/1/2 clocks, a 3-field HWMON param, TPC mask 1, DEFAULT=5.
XAVIER_NX = """\
# < PARAM TYPE=HWMON NAME=PARAM_NAME >
# ARG1_NAME ARG1_PATH ARG1_PATH_VAL
< PARAM TYPE=FILE NAME=CPU_ONLINE >
CORE_0 /sys/devices/system/cpu/cpu0/online
CORE_1 /sys/devices/system/cpu/cpu1/online
CORE_2 /sys/devices/system/cpu/cpu2/online
CORE_3 /sys/devices/system/cpu/cpu3/online
CORE_4 /sys/devices/system/cpu/cpu4/online
CORE_5 /sys/devices/system/cpu/cpu5/online

< PARAM TYPE=FILE NAME=TPC_POWER_GATING >
TPC_PG_MASK /sys/devices/gpu.0/tpc_pg_mask

< PARAM TYPE=FILE NAME=GPU_POWER_CONTROL_ENABLE >
GPU_PWR_CNTL_EN /sys/devices/gpu.0/power/control

< PARAM TYPE=CLOCK NAME=CPU_DENVER_0 >
MAX_FREQ /sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq
MAX_FREQ_KNEXT /sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq

< PARAM TYPE=CLOCK NAME=CPU_DENVER_1 >
MAX_FREQ /sys/devices/system/cpu/cpu2/cpufreq/scaling_max_freq

< PARAM TYPE=CLOCK NAME=GPU >
MAX_FREQ /sys/devices/17000000.gv11b/devfreq/17000000.gv11b/max_freq

< PARAM TYPE=CLOCK NAME=EMC >
MAX_FREQ /sys/kernel/nvpmodel_emc_cap/emc_iso_cap

< PARAM TYPE=HWMON NAME=VDDIN_OC_LIMIT >
WARN /sys/devices/platform/c250000.i2c/i2c-7/7-0040/hwmon curr1_max
CRIT /sys/devices/platform/c250000.i2c/i2c-7/7-0040/hwmon curr1_crit

< POWER_MODEL ID=3 NAME=MODE_10W_2CORE >
CPU_ONLINE CORE_0 1
CPU_ONLINE CORE_1 1
CPU_ONLINE CORE_2 0
CPU_ONLINE CORE_3 0
CPU_ONLINE CORE_4 0
CPU_ONLINE CORE_5 0
TPC_POWER_GATING TPC_PG_MASK 1
GPU_POWER_CONTROL_ENABLE GPU_PWR_CNTL_EN on
CPU_DENVER_0 MAX_FREQ 1497600
GPU MAX_FREQ 803250000
EMC MAX_FREQ 1600000000
DLA0_CORE MAX_FREQ 1100800000
VDDIN_OC_LIMIT WARN 3000
VDDIN_OC_LIMIT CRIT 5000

< POWER_MODEL ID=5 NAME=MODE_10W_DESKTOP >
CPU_ONLINE CORE_0 1
CPU_ONLINE CORE_1 1
CPU_ONLINE CORE_2 1
CPU_ONLINE CORE_3 1
CPU_ONLINE CORE_4 0
CPU_ONLINE CORE_5 0
TPC_POWER_GATING TPC_PG_MASK 1
CPU_DENVER_0 MAX_FREQ 1907200
CPU_DENVER_1 MAX_FREQ 1907200
GPU MAX_FREQ 510000000

# mandatory section to configure the default power mode
< PM_CONFIG DEFAULT=5 >
"""
XAVIER_NX = XAVIER_NX.replace("1100800000\n", "1100800000 \n")  # the real line ends with a space


def test_xavier_nx_hwmon_params_with_three_fields() -> None:
    """Trap: `TYPE=HWMON` arg lines have 3 fields (dir, attribute); joining them like a wrapped path
    would invent `…/hwmoncurr1_max`. Also Denver clock names and an undefined param (DLA0_CORE)."""
    conf = parse_nvpmodel(XAVIER_NX)

    hwmon = conf.params["VDDIN_OC_LIMIT"]
    low, desktop = conf.mode(3), conf.mode("MODE_10W_DESKTOP")

    assert hwmon.type == "HWMON"
    assert hwmon.args["WARN"] == ("/sys/devices/platform/c250000.i2c/i2c-7/7-0040/hwmon",)
    assert hwmon.hwmon_attrs == {"WARN": "curr1_max", "CRIT": "curr1_crit"}
    assert low.settings["VDDIN_OC_LIMIT"] == {"WARN": 3000, "CRIT": 5000}
    assert low.settings["DLA0_CORE"] == {"MAX_FREQ": 1100800000}
    assert (low.online_cores, low.cpu_max_mhz, low.gpu_max_mhz) == (2, {"CPU_DENVER_0": 1497.6}, 803.25)
    assert desktop.cpu_max_mhz == {"CPU_DENVER_0": 1907.2, "CPU_DENVER_1": 1907.2}
    assert (conf.default_id, desktop.tpc_pg_mask, desktop.emc_max_mhz) == (5, 1, None)
    assert conf.cpu_clock_names == ("CPU_DENVER_0", "CPU_DENVER_1")


# Modelled on the TX2 /etc/nvpmodel.conf of L4T 28 (NVIDIA 2017), as quoted in a 2017 blog post
# ("NVPModel – NVIDIA Jetson TX2", author hoony9x) held in the code index: modes never list
# CORE_0, because cpu0 cannot go offline; CPU_A57 on cpu0 and CPU_DENVER on cpu1.
TX2_L4T28 = """\
< PARAM TYPE=FILE NAME=CPU_ONLINE >
CORE_0 /sys/devices/system/cpu/cpu0/online
CORE_1 /sys/devices/system/cpu/cpu1/online
CORE_2 /sys/devices/system/cpu/cpu2/online
CORE_3 /sys/devices/system/cpu/cpu3/online
CORE_4 /sys/devices/system/cpu/cpu4/online
CORE_5 /sys/devices/system/cpu/cpu5/online
< PARAM TYPE=CLOCK NAME=CPU_A57 >
MAX_FREQ /sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq
< PARAM TYPE=CLOCK NAME=CPU_DENVER >
MAX_FREQ /sys/devices/system/cpu/cpu1/cpufreq/scaling_max_freq
< PARAM TYPE=CLOCK NAME=GPU >
MAX_FREQ /sys/devices/17000000.gp10b/devfreq/17000000.gp10b/max_freq
< POWER_MODEL ID=0 NAME=MAXN >
CPU_ONLINE CORE_1 1
CPU_ONLINE CORE_2 1
CPU_ONLINE CORE_3 1
CPU_ONLINE CORE_4 1
CPU_ONLINE CORE_5 1
CPU_A57 MAX_FREQ -1
CPU_DENVER MAX_FREQ -1
GPU MAX_FREQ -1
< POWER_MODEL ID=1 NAME=MAXQ >
CPU_ONLINE CORE_1 0
CPU_ONLINE CORE_2 0
CPU_ONLINE CORE_3 1
CPU_ONLINE CORE_4 1
CPU_ONLINE CORE_5 1
CPU_A57 MAX_FREQ 1200000
GPU MAX_FREQ 850000000
< PM_CONFIG DEFAULT=1 >
"""


def test_tx2_modes_that_never_name_core_0() -> None:
    """Trap: counting only the cores a mode names would make TX2 MAXN 5 cores; cpu0 is always online."""
    conf = parse_nvpmodel(TX2_L4T28)

    maxn, maxq = conf.mode("MAXN"), conf.mode("MAXQ")

    assert conf.core_ids == (0, 1, 2, 3, 4, 5)
    assert maxn.online_cores == 6
    assert maxq.online_core_ids == (0, 3, 4, 5)
    assert maxn.cpu_max_mhz == {"CPU_A57": None, "CPU_DENVER": None}
    assert (maxq.cpu_max_mhz, maxq.gpu_max_mhz) == ({"CPU_A57": 1200.0}, 850.0)


# Modelled on the 2017 TX2 format quoted in the same post: raw sysfs writes, `PM_STATUS`.
TX2_2017_RAW = """\
< POWER_MODEL ID=0 NAME=MAXN >
/sys/devices/system/cpu/cpu1/online 1
/sys/kernel/nvpmodel_emc_cap/emc_iso_cap 0
< POWER_MODEL ID=3 NAME=MAXP_CORE_ARM >
/sys/devices/system/cpu/cpu1/online 0
< PM_STATUS DEFAULT=3 >
"""


def test_pre_param_tx2_format_is_skipped_not_fatal() -> None:
    """Trap: a format we cannot interpret (raw sysfs writes, `PM_STATUS`) crashing the parser; the
    modes and default are still known, and every unused line is recorded."""
    conf = parse_nvpmodel(TX2_2017_RAW)

    assert [(m.id, m.name) for m in conf.modes] == [(0, "MAXN"), (3, "MAXP_CORE_ARM")]
    assert conf.default_id == 3
    assert [s.line for s in conf.skipped] == [2, 3, 5]
    assert all(m.settings == {} and m.online_cores == 0 for m in conf.modes)


# Modelled on a public script that writes a TX2 nvpmodel.conf with a single `ID=17` mode followed by
# `< PM_CONFIG DEFAULT=17 >` and `< FAN_CONFIG DEFAULT=quiet >` (repository not recorded in the index).
TX2_ID_17 = """\
< PARAM TYPE=FILE NAME=CPU_ONLINE >
CORE_0 /sys/devices/system/cpu/cpu0/online
CORE_1 /sys/devices/system/cpu/cpu1/online
< PARAM TYPE=CLOCK NAME=CPU_A57 >
MAX_FREQ /sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq
MIN_FREQ_KNEXT /sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq
< PARAM TYPE=CLOCK NAME=CPU_DENVER >
MAX_FREQ /sys/devices/system/cpu/cpu1/cpufreq/scaling_max_freq
< POWER_MODEL ID=17 NAME=MODE_17 >
CPU_ONLINE CORE_0 1
CPU_ONLINE CORE_1 1
CPU_A57 MIN_FREQ 0
CPU_A57 MAX_FREQ 800000
GPU_POWER_CONTROL_ENABLE GPU_PWR_CNTL_EN on


< PM_CONFIG DEFAULT=17 >
< FAN_CONFIG DEFAULT=quiet >
"""


def test_non_contiguous_mode_id_and_fan_config() -> None:
    """Trap: assuming ids are 0..n-1 (a lone `ID=17`), and FAN_CONFIG mistaken for a mode or a default."""
    conf = parse_nvpmodel(TX2_ID_17)

    mode = conf.mode(17)

    assert (conf.default_id, conf.fan_default, len(conf.modes)) == (17, "quiet", 1)
    assert (mode.name, mode.cpu_max_mhz, mode.online_cores) == ("MODE_17", {"CPU_A57": 800.0}, 2)
    assert conf.params["CPU_A57"].args["MIN_FREQ"] == (
        "/sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq",
    )
    assert modes_json(conf)["modes"][0]["id"] == 17


def test_fan_section_body_does_not_leak_into_the_mode_before_it() -> None:
    """Trap: fan lines after a mode being read as that mode's settings (a header ends every section)."""
    text = TX2_ID_17.replace(
        "< PM_CONFIG DEFAULT=17 >\n< FAN_CONFIG DEFAULT=quiet >\n",
        "< FAN_CONFIG DEFAULT=cool >\nFAN_PROFILE PWM 255\n< FAN_MODEL ID=0 NAME=quiet >\nFAN TARGET 80\n"
        "< PM_CONFIG DEFAULT=17 >\n",
    )

    conf = parse_nvpmodel(text)

    assert set(conf.mode(17).settings) == {"CPU_ONLINE", "CPU_A57", "GPU_POWER_CONTROL_ENABLE"}
    assert conf.fan_default == "cool"
    assert [s.text for s in conf.skipped] == [
        "FAN_PROFILE PWM 255",
        "< FAN_MODEL ID=0 NAME=quiet >",
        "FAN TARGET 80",
    ]


# Modelled on airlanggawicaksono/EarlyExitMonoRepo nvpmodel.conf (commit 4d491e8f, a user-edited
# Orin Nano file): one CPU clock per core (CPU_A78_0..5 on cpu0..cpu5), a single DYNAMIC_MODE.
ORIN_NANO_PER_CORE = """\
< PARAM TYPE=FILE NAME=CPU_ONLINE >
CORE_0 /sys/devices/system/cpu/cpu0/online
CORE_1 /sys/devices/system/cpu/cpu1/online
CORE_2 /sys/devices/system/cpu/cpu2/online
CORE_3 /sys/devices/system/cpu/cpu3/online
< PARAM TYPE=CLOCK NAME=CPU_A78_0 >
MAX_FREQ /sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq
< PARAM TYPE=CLOCK NAME=CPU_A78_1 >
MAX_FREQ /sys/devices/system/cpu/cpu1/cpufreq/scaling_max_freq
< POWER_MODEL ID=0 NAME=DYNAMIC_MODE >
CPU_ONLINE CORE_0 1
CPU_ONLINE CORE_1 1
CPU_ONLINE CORE_2 1
CPU_ONLINE CORE_3 0
CPU_A78_0 MAX_FREQ 518400
CPU_A78_1 MAX_FREQ 518400
GPU MAX_FREQ 306000000
EMC MAX_FREQ 3199000000
< PM_CONFIG DEFAULT=0 >
"""


def test_user_file_with_a_clock_per_core_and_undefined_gpu_param() -> None:
    """Trap: a user file that sets GPU and EMC without defining them; caps must still be read."""
    conf = parse_nvpmodel(ORIN_NANO_PER_CORE)

    (mode,) = conf.modes

    assert mode.online_core_ids == (0, 1, 2)
    assert mode.cpu_max_mhz == {"CPU_A78_0": 518.4, "CPU_A78_1": 518.4}
    assert (mode.gpu_max_mhz, mode.emc_max_mhz) == (306.0, 3199.0)


# --- robustness and errors -----------------------------------------------------------------------


def test_unknown_params_sections_and_line_shapes_are_recorded_not_fatal() -> None:
    """Trap: crashing on lines the parser does not know; each must land in `skipped` with a reason."""
    text = (
        "stray words before any section\n"
        "< PARAM TYPE=FILE NAME=CPU_ONLINE >\nCORE_0 /sys/devices/system/cpu/cpu0/online\nLONELY\n"
        "< CHG_MODEL LIMIT=80 NAME=eighty >\nwhatever is here\n"
        "< POWER_MODEL ID=0 NAME=ONLY >  # inline comment\n"
        "CPU_ONLINE CORE_0 1\nNEW_PARAM NEW_ARG some_value\ntoo few\nfour tokens are here\n"
    )

    conf = parse_nvpmodel(text)

    assert conf.mode("ONLY").settings["NEW_PARAM"] == {"NEW_ARG": "some_value"}
    assert [s.line for s in conf.skipped] == [1, 4, 5, 6, 10, 11]
    assert conf.default_id is None and modes_json(conf)["default_id"] is None


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("< POWER_MODEL ID=0 NAME=A\nCPU X 1\n", 1, "not closed"),
        ("< >\n", 1, "empty section header"),
        ("< POWER_MODEL NAME=A >\n", 1, "no ID="),
        ("< POWER_MODEL ID=x NAME=A >\n", 1, "non-negative integer"),
        ("< POWER_MODEL ID=\u00b2 NAME=A >\n", 1, "non-negative integer"),  # isdigit() but not int()
        ("< POWER_MODEL ID=0 NAME=A >\n\n< POWER_MODEL ID=0 NAME=B >\n", 3, "used twice (first at line 1)"),
        (
            "< PARAM TYPE=CLOCK NAME=GPU >\n< POWER_MODEL ID=0 NAME=A >\nGPU MAX_FREQ fast\n",
            3,
            "integer >= -1",
        ),
        ("< PARAM TYPE=CLOCK NAME=GPU >\n< POWER_MODEL ID=0 NAME=A >\nGPU MAX_FREQ -2\n", 3, "integer >= -1"),
        ("< POWER_MODEL ID=0 NAME=A >\n< PM_CONFIG DEFAULT=4 >\n", 2, "names no POWER_MODEL"),
        ("< POWER_MODEL ID=0 NAME=A >\n< PM_CONFIG >\n", 2, "no DEFAULT="),
        ("< POWER_MODEL ID=0 NAME=A >\n< PM_CONFIG DEFAULT=0 >\n< PM_CONFIG DEFAULT=0 >\n", 3, "second"),
        ("< PARAM TYPE=FILE NAME=X >\n< PARAM TYPE=FILE NAME=X >\n", 2, "defined twice"),
        ("< PARAM TYPE=FILE NAME=X junk >\n", 1, "KEY=VALUE"),
        ("# only comments\n\n", 2, "no POWER_MODEL"),
        ("", 1, "no POWER_MODEL"),
    ],
)
def test_malformed_files_name_the_line(text: str, line: int, fragment: str) -> None:
    """Trap: a file nvpmodel could not apply being half-parsed silently, or the error not saying where."""
    with pytest.raises(NvpmodelParseError) as info:
        parse_nvpmodel(text)

    assert info.value.line == line
    assert fragment in str(info.value) and str(info.value).startswith(f"line {line}: ")


def test_a_repeated_mode_name_keeps_both_modes_and_warns() -> None:
    """Bug: a user who copied a mode block and changed only its ID got no modes at all (a parse error).
    nvpmodel selects by id, so both modes work on the device: keep both, warn, and let a lookup by
    name find the first."""
    text = (
        "< POWER_MODEL ID=0 NAME=MODE_15W >\nGPU MAX_FREQ 408000000\n"
        "< POWER_MODEL ID=1 NAME=MODE_15W >\nGPU MAX_FREQ 612000000\n"
        "< PM_CONFIG DEFAULT=1 >\n"
    )

    conf = parse_nvpmodel(text)

    assert [(m.id, m.name, m.gpu_max_mhz) for m in conf.modes] == [
        (0, "MODE_15W", 408.0),
        (1, "MODE_15W", 612.0),
    ]
    assert conf.mode("MODE_15W").id == 0 and conf.mode(1).gpu_max_mhz == 612.0
    assert conf.default_id == 1
    [warning] = conf.skipped
    assert (warning.line, warning.text) == (3, "< POWER_MODEL ID=1 NAME=MODE_15W >")
    assert "NAME=MODE_15W is used twice (first at line 1, ID=0)" in warning.reason
    assert [m["id"] for m in modes_json(conf)["modes"]] == [0, 1]


def test_default_may_name_a_mode_by_name() -> None:
    """Trap: rejecting `DEFAULT=MAXN`; nvpmodel's own verbose output pairs names and ids."""
    conf = parse_nvpmodel("< POWER_MODEL ID=4 NAME=MAXN >\n< PM_CONFIG DEFAULT=MAXN >\n")

    assert conf.default_id == 4


_REAL_LINES = (FIXTURES / AGX_64).read_text(encoding="utf-8").splitlines()
_GARBAGE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["<", ">", "< >", "<PARAM", "< POWER_MODEL ID=9 NAME=Z >", "GPU MAX_FREQ x", "#", "="]),
    st.builds(
        " ".join, st.lists(st.sampled_from(["CPU_ONLINE", "CORE_0", "-1", "<", "ID=", "x=y"]), max_size=4)
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_REAL_LINES)), _GARBAGE), max_size=6))
def test_random_garbage_parses_or_raises_parse_error(insertions: list[tuple[int, str]]) -> None:
    """Trap: any input making the parser raise something other than NvpmodelParseError (IndexError,
    ValueError from int(), KeyError on lookups)."""
    lines = list(_REAL_LINES)
    for position, garbage in insertions:
        lines.insert(position, garbage)

    text = "\n".join(lines)
    try:
        conf = parse_nvpmodel(text)
    except NvpmodelParseError as exc:
        # Line numbers count as str.splitlines does: garbage may hold \r, \x0b, \u2028...
        assert 1 <= exc.line <= max(len(text.splitlines()), 1)
    else:
        assert conf.modes
        json.dumps(modes_json(conf))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_raises_parse_error(text: str) -> None:
    """Trap: unicode line separators, NULs or lone brackets escaping as other exceptions."""
    with contextlib.suppress(NvpmodelParseError):
        parse_nvpmodel(text)


# --- the data model and the JSON view ------------------------------------------------------------


ACCEPTANCE_KEYS = {"id", "name", "online_cores", "cpu_max_mhz", "gpu_max_mhz", "tpc_pg_mask"}
VERBOSE_EXTRAS = {"emc_max_mhz", "fbp_pg_mask", "online_core_ids", "needs_reboot_from_default"}


def test_modes_json_has_exactly_the_acceptance_keys_and_nulls() -> None:
    """Trap: a missing, renamed or extra key (the check wants exactly these), 0 instead of null for
    uncapped, or a clock a mode does not set showing up in its cpu_max_mhz."""
    data = modes_json(fixture(AGX_64))

    maxn, low = data["modes"][0], data["modes"][1]

    assert data["default_id"] == 2 and set(data) == {"default_id", "modes"}
    assert all(set(m) == ACCEPTANCE_KEYS for m in data["modes"])
    assert maxn["cpu_max_mhz"] == {"CPU_A78_0": None, "CPU_A78_1": None, "CPU_A78_2": None}
    assert (maxn["gpu_max_mhz"], maxn["tpc_pg_mask"]) == (None, 0)
    assert low["cpu_max_mhz"] == {"CPU_A78_0": 1113.6}
    assert '"gpu_max_mhz": null' in json.dumps(maxn)


def test_verbose_modes_json_adds_the_extras() -> None:
    """Trap: the extras leaking into the default output, or vanishing from the verbose one."""
    conf = fixture(AGX_64)

    data = modes_json(conf, verbose=True)

    assert set(data) == {"default_id", "modes"}
    assert all(set(m) == ACCEPTANCE_KEYS | VERBOSE_EXTRAS for m in data["modes"])
    maxn, low = data["modes"][0], data["modes"][1]
    assert (maxn["emc_max_mhz"], low["emc_max_mhz"], low["fbp_pg_mask"]) == (None, 2133.0, None)
    assert low["online_core_ids"] == [0, 1, 2, 3]
    assert [m["needs_reboot_from_default"] for m in data["modes"]] == [True, True, False, True]
    assert [{k: m[k] for k in ACCEPTANCE_KEYS} for m in data["modes"]] == modes_json(conf)["modes"]
    no_default = parse_nvpmodel("< POWER_MODEL ID=0 NAME=A >\n")
    assert modes_json(no_default, verbose=True)["modes"][0]["needs_reboot_from_default"] is None


@pytest.mark.parametrize(
    ("target", "current", "reboot"),
    [
        ((0, None), (0, None), False),
        ((240, 2), (252, 2), True),
        ((240, 2), (240, 1), True),
        ((None, None), (240, 2), False),
        ((0, None), (None, None), True),
    ],
)
def test_reboot_rule(
    target: tuple[int | None, int | None], current: tuple[int | None, int | None], reboot: bool
) -> None:
    """Trap: a mode that writes no mask being flagged, or an unknown current mask being assumed equal."""
    assert masks_need_reboot(*target, *current) is reboot


def test_mode_lookup_by_id_or_name() -> None:
    """Trap: looking up `2` as a name, or a miss returning None instead of saying what exists."""
    conf = fixture(AGX_64)

    assert conf.mode(2).name == "MODE_30W"
    assert conf.mode("MODE_50W").id == 3
    with pytest.raises(KeyError, match=r"MAXN \(0\)"):
        conf.mode("MODE_60W")


def test_command_line_prints_json_and_reports_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trap: the acceptance check's entry point printing something other than modes_json, or a bad file
    crashing instead of naming file and line."""
    bad = tmp_path / "bad.conf"
    bad.write_text("< POWER_MODEL ID=0 NAME=A\n", encoding="utf-8")

    ok_rc = main([str(FIXTURES / AGX_64)])
    out = capsys.readouterr().out
    bad_rc = main([str(bad)])
    err = capsys.readouterr().err

    assert ok_rc == 0 and json.loads(out) == modes_json(fixture(AGX_64))
    assert bad_rc == 2 and err.startswith(f"{bad}:1: section header is not closed")

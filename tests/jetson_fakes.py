"""A fake Orin sysfs tree, laid out from real artefacts, for `JetsonSysfs(root=...)` tests.

Every value comes from a file in `tests/data/jetson/` (paths shortened below; provenance in
`tests/data/SOURCES.md`), and the comment next to it names the file. Where no artefact gives a
value, the fake leaves the file out rather than invent one; a reader must tolerate missing files
anyway. Two exceptions are marked ASSUMPTION.

Short names for the sources:
- P3701: nvpmodel/LineageOS__..._nvpmodel_p3701_0000.conf (AGX Orin; default mode ID 2, 30W)
- P3767: nvpmodel/LineageOS__..._nvpmodel_p3767_0000.conf (Orin NX 16GB; default mode ID 2, 15W)
- HANNER: line 1 of tegrastats/Hanner123__LLM_PIPELINE__tegrastats.log.txt (AGX Orin 64GB,
  JetPack 6, 8 CPUs online and 4 "off", i.e. the 30W default mode), 07-21-2025 16:33:42
- PATHS: SYSFS_PATHS.md
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "data" / "jetson"
HANNER_LINE_1 = FIXTURES / "tegrastats" / "Hanner123__LLM_PIPELINE__tegrastats.log.txt"

# ASSUMPTION: no artefact gives an INA3221 bus voltage. 5000 mV is the nominal of VIN_SYS_5V0
# (the "5V0" in its name); the fake uses it on every channel and derives the current from the
# tegrastats mW, rounded to whole mA, so a reading is within 2.5 mW of the tegrastats value.
RAIL_VOLTAGE_MV = 5000


@dataclass(frozen=True)
class FakeBoard:
    model: str
    clusters: tuple[tuple[int, ...], ...]
    default_online: int  # CPUs online in the default nvpmodel mode
    cpu_min_khz: int
    cpu_max_khz: int
    cpu_cur_mhz: tuple[int, ...] | None  # per online CPU, as tegrastats prints it
    gpu_min_hz: int
    gpu_max_hz: int
    gpu_cur_mhz: int | None
    gpu_load_pct: int | None
    tpc_pg_mask: int
    emc_cap_hz: int
    rail_labels: tuple[str, ...]  # INA3221 channels 1, 2, 3
    rails_mw: Mapping[str, int] | None
    temps_c: Mapping[str, float] | None  # thermal zone name -> °C


BOARDS: dict[str, FakeBoard] = {
    "agx-orin-64gb": FakeBoard(
        # PATHS (jetson_stats test comment "Jetson AGX Orin Developer Kit"); the brief's exact string
        model="NVIDIA Jetson AGX Orin Developer Kit",
        # P3701: CPU_A78_0/1/2 clock cpu0, cpu4, cpu8 (one per cluster) of cpu0..11
        clusters=((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)),
        default_online=8,  # P3701 MODE_30W: CORE_0..7 = 1, CORE_8..11 = 0; HANNER: 4 "off"
        cpu_min_khz=729600,  # P3701 MODE_30W: CPU_A78_* MIN_FREQ 729600
        cpu_max_khz=1728000,  # P3701 MODE_30W: CPU_A78_* MAX_FREQ 1728000
        cpu_cur_mhz=(1728, 1036, 1036, 1036, 1420, 729, 729, 729),  # HANNER: CPU [7%@1728,31%@1036,...]
        gpu_min_hz=0,  # P3701 MODE_30W: GPU MIN_FREQ 0 (a real devfreq clamps it to its lowest OPP)
        gpu_max_hz=612000000,  # P3701 MODE_30W: GPU MAX_FREQ 612000000
        gpu_cur_mhz=305,  # HANNER: GR3D_FREQ 39%@[305,0]
        gpu_load_pct=39,  # HANNER: GR3D_FREQ 39%
        tpc_pg_mask=240,  # P3701 MODE_30W: TPC_PG_MASK 240
        emc_cap_hz=0,  # P3701 MODE_30W: EMC MAX_FREQ 0 (uncapped; only MODE_15W caps EMC there, 2133000000)
        rail_labels=("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"),  # PATHS; HANNER, in this order
        rails_mw={"VDD_GPU_SOC": 2798, "VDD_CPU_CV": 799, "VIN_SYS_5V0": 3315},  # HANNER
        # HANNER: cpu@43.906C soc2@40.406C soc0@41.187C gpu@40.093C tj@43.906C soc1@40.437C
        temps_c={"cpu": 43.906, "soc2": 40.406, "soc0": 41.187, "gpu": 40.093, "tj": 43.906, "soc1": 40.437},
    ),
    "orin-nx-16gb": FakeBoard(
        # Linux DT bindings (arm/tegra.yaml) name p3768-0000+p3767-0000 "Jetson Orin NX Engineering
        # Reference Developer Kit"; captured boards report it with the "NVIDIA " prefix
        model="NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
        clusters=((0, 1, 2, 3), (4, 5, 6, 7)),  # P3767: cpu0..7; CPU_A78_0/1 clock cpu0 and cpu4
        default_online=4,  # P3767 mode 15W: CORE_0..3 = 1, CORE_4..7 = 0
        cpu_min_khz=729600,  # P3767 15W: CPU_A78_0 MIN_FREQ 729600
        cpu_max_khz=1651200,  # P3767 15W: CPU_A78_0 MAX_FREQ 1651200
        cpu_cur_mhz=None,  # no Orin NX tegrastats in the fixtures
        gpu_min_hz=0,  # P3767 15W: GPU MIN_FREQ 0
        gpu_max_hz=612000000,  # P3767 15W: GPU MAX_FREQ 612000000
        gpu_cur_mhz=None,  # no Orin NX tegrastats in the fixtures
        gpu_load_pct=None,
        tpc_pg_mask=252,  # P3767 15W: TPC_PG_MASK 252
        emc_cap_hz=0,  # P3767 15W: EMC MAX_FREQ 0
        rail_labels=("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"),  # PATHS: Orin NX/Nano rails
        rails_mw=None,  # no Orin NX reading in the fixtures: labels only unless rails_mw is given
        temps_c=None,
    ),
}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _link(path: Path, target: str) -> None:
    """Relative links, as sysfs uses, so they resolve inside the fake root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def build_fake_orin_sysfs(
    root: Path,
    *,
    board: str = "agx-orin-64gb",
    online_cpus: int | None = None,
    gpu_freq_mhz: int | None = None,
    gpu_load_pct: int | None = None,
    rails_mw: Mapping[str, int] | None = None,
    temps_c: Mapping[str, float] | None = None,
    emc_cap_hz: int | None = None,
) -> Path:
    """Lay out `board`'s sysfs under `root` and return `root`. Keyword arguments override the
    board's defaults (which are its default nvpmodel mode and, for AGX Orin, the HANNER line)."""
    spec = BOARDS[board]
    n_online = spec.default_online if online_cpus is None else online_cpus
    _cpus(root, spec, n_online)
    _gpu(root, spec, spec.gpu_cur_mhz if gpu_freq_mhz is None else gpu_freq_mhz, gpu_load_pct)
    # P3701/P3767: <PARAM TYPE=CLOCK NAME=EMC> MAX_FREQ /sys/kernel/nvpmodel_emc_cap/emc_iso_cap
    cap_hz = spec.emc_cap_hz if emc_cap_hz is None else emc_cap_hz
    _write(root / "sys/kernel/nvpmodel_emc_cap/emc_iso_cap", str(cap_hz))
    _rails(root, spec, spec.rails_mw if rails_mw is None else rails_mw)
    _thermal(root, spec.temps_c if temps_c is None else temps_c)
    # /proc/device-tree is a link to the firmware tree; DT strings end in NUL
    _write(root / "sys/firmware/devicetree/base/model", spec.model + "\x00")
    _link(root / "proc/device-tree", "../sys/firmware/devicetree/base")
    return root


def _cpus(root: Path, spec: FakeBoard, n_online: int) -> None:
    """Per-CPU cpufreq directories (not links to shared policies) so each CPU carries the
    frequency tegrastats printed for it. An offline CPU has no `topology/` (the kernel removes it
    on unplug) and no current frequency; its policy's related_cpus still names its cluster."""
    for cluster_id, cluster in enumerate(spec.clusters):
        for cpu in cluster:
            base = root / f"sys/devices/system/cpu/cpu{cpu}"
            online = cpu < n_online
            if cpu != 0:  # cpu0 has no `online` file on many kernels
                _write(base / "online", "1" if online else "0")
            freq = base / "cpufreq"
            _write(freq / "scaling_min_freq", str(spec.cpu_min_khz))
            _write(freq / "scaling_max_freq", str(spec.cpu_max_khz))
            _write(freq / "related_cpus", " ".join(map(str, cluster)))
            if not online:
                continue
            _write(freq / "affected_cpus", " ".join(str(c) for c in cluster if c < n_online))
            if spec.cpu_cur_mhz is not None and cpu < len(spec.cpu_cur_mhz):
                _write(freq / "scaling_cur_freq", str(spec.cpu_cur_mhz[cpu] * 1000))
            _write(base / "topology/cluster_id", str(cluster_id))
            _write(base / "topology/physical_package_id", str(cluster_id))


def _gpu(root: Path, spec: FakeBoard, cur_mhz: int | None, load_pct: int | None) -> None:
    # P3701/P3767: GPU FREQ paths /sys/devices/17000000.ga10b/devfreq/17000000.ga10b/{min,max}_freq
    device = root / "sys/devices/17000000.ga10b"
    devfreq = device / "devfreq/17000000.ga10b"
    _write(devfreq / "min_freq", str(spec.gpu_min_hz))
    _write(devfreq / "max_freq", str(spec.gpu_max_hz))
    if cur_mhz is not None:
        _write(devfreq / "cur_freq", str(cur_mhz * 1_000_000))
    _link(devfreq / "device", "../..")
    # PATHS: jtop matches of_node/name "ga10b" and follows /sys/class/devfreq/* links
    _write(device / "of_node/name", "ga10b\x00")
    _link(root / "sys/class/devfreq/17000000.ga10b", "../../devices/17000000.ga10b/devfreq/17000000.ga10b")
    # P3701/P3767: TPC_PG_MASK /sys/devices/gpu.0/tpc_pg_mask; PATHS: `load` is per mille
    _write(root / "sys/devices/gpu.0/tpc_pg_mask", str(spec.tpc_pg_mask))
    load = spec.gpu_load_pct if load_pct is None else load_pct
    if load is not None:
        _write(root / "sys/devices/gpu.0/load", str(load * 10))


def _rails(root: Path, spec: FakeBoard, rails_mw: Mapping[str, int] | None) -> None:
    # PATHS: 1-0040 and a hwmon index other than 0 (it varies, so readers must glob it)
    chip = root / "sys/bus/i2c/devices/1-0040"
    _write(chip / "name", "ina3221")
    hwmon = chip / "hwmon/hwmon3"
    for channel, label in enumerate(spec.rail_labels, start=1):
        _write(hwmon / f"in{channel}_label", label)
        if rails_mw is not None and label in rails_mw:
            _write(hwmon / f"in{channel}_input", str(RAIL_VOLTAGE_MV))
            _write(hwmon / f"curr{channel}_input", str(round(rails_mw[label] * 1000 / RAIL_VOLTAGE_MV)))


def _thermal(root: Path, temps_c: Mapping[str, float] | None) -> None:
    # Zone names from HANNER. ASSUMPTION: the "-thermal" suffix; jtop's temperature.py cuts zone
    # types at "-", which implies L4T names them "cpu-thermal" and so on.
    for index, (name, celsius) in enumerate((temps_c or {}).items()):
        zone = root / f"sys/devices/virtual/thermal/thermal_zone{index}"
        _write(zone / "type", f"{name}-thermal")
        _write(zone / "temp", str(round(celsius * 1000)))

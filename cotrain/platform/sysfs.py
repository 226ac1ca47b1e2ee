"""Jetson state through sysfs: typed reads, and the clock writes cotrain undoes on exit.

Every path is taken relative to an injected `root` (default `/`), so tests point it at a fake
tree (`tests/jetson_fakes.py`) instead of switching on an environment variable.

Reads never raise for a missing or unreadable file: JetPack releases move and drop nodes (the
`_KNEXT` paths in nvpmodel.conf exist because of that), an offline CPU answers EBUSY, and some
thermal zones return errors. A value that cannot be read is None (or absent from a mapping).

Units follow the files and are converted once, here: cpufreq is in kHz, devfreq and the EMC cap in
Hz, INA3221 in mV and mA, thermal zones in milli-°C. Sources for each path are in
`tests/data/jetson/SYSFS_PATHS.md`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# of_node names of NVIDIA integrated GPUs, as jtop accepts them; anything containing "gpu" also
# counts (JetPack 6 names the node gpu@17000000).
GPU_NODE_NAMES = frozenset({"ga10b", "gv11b", "gp10b", "gb10b"})
# A thermal zone with no sensor behind it reads -256 °C (jtop calls it TEMPERATURE_OFFLINE).
OFFLINE_TEMPERATURE_C = -256.0
# INA3221 channel 7 is the sum of the shunts, not a rail (jtop skips it too).
INA3221_SUM_CHANNEL = 7
# Rails that measure the module's whole input; the other rails are parts of it.
TOTAL_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")

_CPU_DIR = re.compile(r"^cpu(\d+)$")
_IN_LABEL = re.compile(r"^in(\d+)_label$")


@dataclass(frozen=True)
class CpuFreq:
    """One CPU's cpufreq state in MHz; None where the file is missing or the CPU is offline."""

    cur_mhz: float | None
    min_mhz: float | None
    max_mhz: float | None


@dataclass(frozen=True)
class GpuNode:
    """Where the integrated GPU lives: its devfreq node (clocks) and its device node (status)."""

    name: str
    devfreq_dir: Path
    device_dir: Path


@dataclass(frozen=True)
class GpuState:
    name: str
    cur_mhz: float | None
    min_mhz: float | None
    max_mhz: float | None
    load_pct: float | None
    tpc_pg_mask: int | None


@dataclass(frozen=True)
class PowerReading:
    """Per-rail power and the board total.

    `total_source` says how the total was made: a whole-input rail's name, or "sum".
    """

    rails_mw: Mapping[str, float]
    total_w: float | None
    total_source: str | None


@dataclass(frozen=True)
class SysfsSnapshot:
    board_model: str | None
    cpu_ids: tuple[int, ...]
    online_cpus: tuple[int, ...]
    clusters: tuple[tuple[int, ...], ...]
    cpu_freqs: Mapping[int, CpuFreq]
    gpu: GpuState | None
    emc_cap_mhz: float | None
    power: PowerReading
    temperatures_c: Mapping[str, float]


@dataclass(frozen=True)
class ClockState:
    """The clock settings cotrain may change, as raw file values, so a restore writes back exactly
    what it read (no kHz -> MHz -> kHz round trip). CPUs whose limits could not be read (offline
    CPUs answer EBUSY) are absent from the mappings and are left alone on restore."""

    cpu_ids: tuple[int, ...]
    online_cpus: tuple[int, ...]
    cpu_min_khz: Mapping[int, int] = field(default_factory=dict)
    cpu_max_khz: Mapping[int, int] = field(default_factory=dict)
    gpu_min_hz: int | None = None
    gpu_max_hz: int | None = None


@dataclass(frozen=True)
class WriteFailure:
    path: Path
    value: str
    error: str


@dataclass(frozen=True)
class WriteReport:
    """What `write_clock_state` did. A failed write is reported here, never raised, so one
    refused file (no root, a node this JetPack lacks) does not stop the rest of a restore."""

    written: tuple[Path, ...]
    failed: tuple[WriteFailure, ...]

    @property
    def ok(self) -> bool:
        return not self.failed


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Both CPU list forms sysfs uses: "0 1 2 3" (cpufreq) and "0-3,8" (topology, cpu/online)."""
    cpus: set[int] = set()
    for part in re.split(r"[\s,]+", text.strip()):
        if not part:
            continue
        first, _, last = part.partition("-")
        try:
            cpus.update(range(int(first), int(last or first) + 1))
        except ValueError:
            return ()
    return tuple(sorted(cpus))


class JetsonSysfs:
    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root

    # -- low-level -------------------------------------------------------------------------

    def _path(self, relative: str) -> Path:
        return self.root / relative.lstrip("/")

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text().replace("\x00", "").strip()
        except (OSError, UnicodeDecodeError):
            return None

    @classmethod
    def _read_int(cls, path: Path) -> int | None:
        text = cls._read(path)
        if text is None:
            return None
        try:
            return int(text)
        except ValueError:
            return None

    @staticmethod
    def _write(path: Path, value: str) -> str | None:
        """Write without O_CREAT: a node that does not exist is an error, never a new file."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc.strerror or exc}"
        return None

    # -- CPUs ------------------------------------------------------------------------------

    def _cpu_dir(self, cpu: int) -> Path:
        return self._path(f"sys/devices/system/cpu/cpu{cpu}")

    def cpu_ids(self) -> tuple[int, ...]:
        base = self._path("sys/devices/system/cpu")
        try:
            entries = list(base.iterdir())
        except OSError:
            return ()
        ids = (_CPU_DIR.match(e.name) for e in entries if e.is_dir())
        return tuple(sorted(int(m.group(1)) for m in ids if m))

    def is_online(self, cpu: int) -> bool:
        """A CPU without an `online` file is online: cpu0 cannot be hot-unplugged on many kernels,
        so it has no such file, and kernels built without hotplug have none at all."""
        value = self._read(self._cpu_dir(cpu) / "online")
        return value is None or value == "1"

    def online_cpus(self) -> tuple[int, ...]:
        return tuple(c for c in self.cpu_ids() if self.is_online(c))

    def cpu_freq(self, cpu: int) -> CpuFreq:
        cpufreq = self._cpu_dir(cpu) / "cpufreq"

        def mhz(name: str) -> float | None:
            khz = self._read_int(cpufreq / name)
            return None if khz is None else khz / 1000

        return CpuFreq(mhz("scaling_cur_freq"), mhz("scaling_min_freq"), mhz("scaling_max_freq"))

    def cpu_freqs(self) -> dict[int, CpuFreq]:
        return {c: self.cpu_freq(c) for c in self.cpu_ids()}

    def clusters(self) -> tuple[tuple[int, ...], ...]:
        """CPUs grouped by cluster, each group sorted, groups ordered by their first CPU.

        Order of preference, per CPU:
        1. `topology/cluster_id` (kernels from 5.16): the cluster as the device tree's cpu-map
           states it. A value of -1 means "unknown" and falls through.
        2. `topology/physical_package_id`: on older arm64 device-tree kernels (JetPack 5's 5.10)
           the package id *is* the cpu-map cluster. Newer kernels report the whole SoC as one
           package, which is why it comes second.
        3. `cpufreq/related_cpus`, else `affected_cpus`: the CPUs that share a clock policy. It is
           last because the policy need not be the cluster: the Orin NX "super" nvpmodel.conf
           lists one clock per core, so policies can be per core and would split a cluster.
           It is still the only hint for an offline CPU, whose `topology/` the kernel removes;
           such a CPU joins the topology cluster of any CPU its policy names.
        A CPU with no hint at all forms a group of its own.
        """
        by_key: dict[tuple[str, int], list[int]] = {}
        unplaced: list[int] = []
        for cpu in self.cpu_ids():
            topology = self._cpu_dir(cpu) / "topology"
            cluster = self._read_int(topology / "cluster_id")
            package = self._read_int(topology / "physical_package_id")
            if cluster is not None and cluster >= 0:
                by_key.setdefault(("cluster", cluster), []).append(cpu)
            elif package is not None and package >= 0:
                by_key.setdefault(("package", package), []).append(cpu)
            else:
                unplaced.append(cpu)
        groups = [set(g) for g in by_key.values()]
        for cpu in unplaced:
            siblings = set(self._policy_cpus(cpu)) | {cpu}
            home = next((g for g in groups if g & siblings), None)
            if home is None:
                groups.append(siblings & (set(unplaced) | {cpu}))
            else:
                home.add(cpu)
        merged = {tuple(sorted(g)) for g in groups}
        return tuple(sorted(merged))

    def _policy_cpus(self, cpu: int) -> tuple[int, ...]:
        cpufreq = self._cpu_dir(cpu) / "cpufreq"
        for name in ("related_cpus", "affected_cpus"):
            text = self._read(cpufreq / name)
            if text:
                return parse_cpu_list(text)
        return ()

    # -- GPU -------------------------------------------------------------------------------

    def gpu_node(self) -> GpuNode | None:
        """Find the integrated GPU the way jtop does: the first `/sys/class/devfreq/*` whose
        `device/of_node/name` is a known GPU name or contains "gpu". Following the symlinks
        gives the real devfreq node, wherever this JetPack puts it (devfreq/ or devfreq_dev/)."""
        base = self._path("sys/class/devfreq")
        try:
            entries = sorted(base.iterdir())
        except OSError:
            return None
        for entry in entries:
            name = self._read(entry / "device" / "of_node" / "name")
            if name is None or not (name in GPU_NODE_NAMES or "gpu" in name):
                continue
            try:
                return GpuNode(name, entry.resolve(strict=True), (entry / "device").resolve(strict=True))
            except OSError:
                continue
        return None

    def _gpu_status_file(self, node: GpuNode | None, name: str) -> Path | None:
        """Status files (`load`, `tpc_pg_mask`) sit on the GPU device that jtop reads, or on the
        `gpu.0` node that nvpmodel writes (`/sys/devices/gpu.0`, KNEXT `/sys/devices/platform/gpu.0`)."""
        candidates = [node.device_dir / name] if node else []
        candidates += [
            self._path(f"sys/devices/gpu.0/{name}"),
            self._path(f"sys/devices/platform/gpu.0/{name}"),
        ]
        return next((p for p in candidates if p.is_file()), None)

    def gpu(self) -> GpuState | None:
        node = self.gpu_node()
        if node is None:
            return None

        def mhz(name: str) -> float | None:
            hz = self._read_int(node.devfreq_dir / name)
            return None if hz is None else hz / 1e6

        load_file = self._gpu_status_file(node, "load")
        load = self._read_int(load_file) if load_file else None
        mask_file = self._gpu_status_file(node, "tpc_pg_mask")
        return GpuState(
            name=node.name,
            cur_mhz=mhz("cur_freq"),
            min_mhz=mhz("min_freq"),
            max_mhz=mhz("max_freq"),
            load_pct=None if load is None else load / 10,  # the file counts per mille
            tpc_pg_mask=self._read_int(mask_file) if mask_file else None,
        )

    # -- EMC, power, temperatures, board ---------------------------------------------------

    def emc_cap_mhz(self) -> float | None:
        """The EMC (memory clock) cap nvpmodel set. 0 means no cap: nvpmodel writes 0 for the
        uncapped modes (MAXN, 30W, 50W on AGX Orin) and e.g. 2133000000 Hz for 15W."""
        for relative in ("sys/kernel/nvpmodel_emc_cap/emc_iso_cap", "sys/kernel/nvpmodel_clk_cap/emc"):
            hz = self._read_int(self._path(relative))
            if hz is not None:
                return hz / 1e6
        return None

    def _ina3221_hwmon_dirs(self) -> list[Path]:
        devices = self._path("sys/bus/i2c/devices")
        try:
            chips = sorted(devices.iterdir())
        except OSError:
            return []
        dirs: list[Path] = []
        for chip in chips:
            if "ina3221" in (self._read(chip / "name") or ""):
                dirs += sorted((chip / "hwmon").glob("hwmon*"))  # the index varies between boots
        return dirs

    def rails_mw(self) -> dict[str, float]:
        """mW per INA3221 channel label (V in mV x I in mA / 1000). Unconnected channels (labels
        containing "NC") and the sum-of-shunts channel are skipped, as jtop skips them."""
        rails: dict[str, float] = {}
        for hwmon in self._ina3221_hwmon_dirs():
            for label_file in sorted(hwmon.glob("in*_label")):
                match = _IN_LABEL.match(label_file.name)
                label = self._read(label_file)
                if not match or not label or "NC" in label or label.lower().startswith("sum"):
                    continue
                channel = int(match.group(1))
                if channel == INA3221_SUM_CHANNEL:
                    continue
                voltage_mv = self._read_int(hwmon / f"in{channel}_input")
                current_ma = self._read_int(hwmon / f"curr{channel}_input")
                if voltage_mv is not None and current_ma is not None:
                    rails.setdefault(label, voltage_mv * current_ma / 1000)
        return rails

    def power(self) -> PowerReading:
        """Total power: the whole-input rail (VDD_IN on Orin NX/Nano, POM_5V_IN on Nano/TX) when
        there is one, because the other rails are parts of it and adding them would count twice.
        AGX Orin has no such rail, so the total is the sum of its rails, as jtop reports it (and as
        the simulator's calibration sums them, cotrain/sim/calibration.py)."""
        rails = self.rails_mw()
        for name in TOTAL_INPUT_RAILS:
            if name in rails:
                return PowerReading(rails, rails[name] / 1000, name)
        if not rails:
            return PowerReading(rails, None, None)
        return PowerReading(rails, sum(rails.values()) / 1000, "sum")

    def temperatures_c(self) -> dict[str, float]:
        """°C per thermal zone type. A "-thermal" suffix is dropped so that names match what
        tegrastats prints (cpu, gpu, soc0, tj). Zones that cannot be read, or read the -256 °C
        no-sensor value, are left out; a repeated type gets its zone directory as a suffix."""
        temps: dict[str, float] = {}
        zones = self._path("sys/devices/virtual/thermal").glob("thermal_zone*")
        for zone in sorted(zones, key=lambda p: (len(p.name), p.name)):
            kind = self._read(zone / "type")
            milli_c = self._read_int(zone / "temp")
            if not kind or milli_c is None or milli_c / 1000 <= OFFLINE_TEMPERATURE_C:
                continue
            name = kind.removesuffix("-thermal")
            temps[name if name not in temps else f"{name}@{zone.name}"] = milli_c / 1000
        return temps

    def board_model(self) -> str | None:
        for relative in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
            model = self._read(self._path(relative))
            if model:
                return model
        return None

    def snapshot(self) -> SysfsSnapshot:
        return SysfsSnapshot(
            board_model=self.board_model(),
            cpu_ids=self.cpu_ids(),
            online_cpus=self.online_cpus(),
            clusters=self.clusters(),
            cpu_freqs=self.cpu_freqs(),
            gpu=self.gpu(),
            emc_cap_mhz=self.emc_cap_mhz(),
            power=self.power(),
            temperatures_c=self.temperatures_c(),
        )

    # -- clock state: read, and write back -------------------------------------------------

    def read_clock_state(self) -> ClockState:
        cpus = self.cpu_ids()
        mins: dict[int, int] = {}
        maxs: dict[int, int] = {}
        for cpu in cpus:
            cpufreq = self._cpu_dir(cpu) / "cpufreq"
            low = self._read_int(cpufreq / "scaling_min_freq")
            high = self._read_int(cpufreq / "scaling_max_freq")
            if low is not None:
                mins[cpu] = low
            if high is not None:
                maxs[cpu] = high
        node = self.gpu_node()
        return ClockState(
            cpu_ids=cpus,
            online_cpus=tuple(c for c in cpus if self.is_online(c)),
            cpu_min_khz=mins,
            cpu_max_khz=maxs,
            gpu_min_hz=self._read_int(node.devfreq_dir / "min_freq") if node else None,
            gpu_max_hz=self._read_int(node.devfreq_dir / "max_freq") if node else None,
        )

    def write_clock_state(self, state: ClockState) -> WriteReport:
        """Put the clocks back as `state` has them, in an order every step of which is valid:

        1. bring online the CPUs that were online (an offline CPU's cpufreq answers EBUSY);
        2. per CPU, then the GPU: raise max before min, or lower min before max, so min <= max
           holds after each write (older devfreq kernels reject min > max with EINVAL);
        3. take offline the CPUs that were offline, last, and never cpu0.
        A file that already holds the value is not written, so a restore after no change needs
        no privileges.
        """
        written: list[Path] = []
        failed: list[WriteFailure] = []

        def put(path: Path, value: int) -> None:
            text = str(value)
            if self._read(path) == text:
                return
            error = self._write(path, text)
            if error is None:
                written.append(path)
            else:
                failed.append(WriteFailure(path, text, error))

        online = set(state.online_cpus)
        for cpu in state.cpu_ids:
            if cpu != 0 and cpu in online and not self.is_online(cpu):
                put(self._cpu_dir(cpu) / "online", 1)
        for cpu in state.cpu_ids:
            cpufreq = self._cpu_dir(cpu) / "cpufreq"
            self._put_limits(
                put,
                cpufreq / "scaling_min_freq",
                state.cpu_min_khz.get(cpu),
                cpufreq / "scaling_max_freq",
                state.cpu_max_khz.get(cpu),
            )
        node = self.gpu_node()
        if node is not None:
            self._put_limits(
                put,
                node.devfreq_dir / "min_freq",
                state.gpu_min_hz,
                node.devfreq_dir / "max_freq",
                state.gpu_max_hz,
            )
        for cpu in state.cpu_ids:
            if cpu != 0 and cpu not in online and self.is_online(cpu):
                put(self._cpu_dir(cpu) / "online", 0)
        return WriteReport(tuple(written), tuple(failed))

    def _put_limits(
        self,
        put: Callable[[Path, int], None],
        min_path: Path,
        min_value: int | None,
        max_path: Path,
        max_value: int | None,
    ) -> None:
        current_max = self._read_int(max_path)
        lowering_max = max_value is not None and current_max is not None and max_value < current_max
        steps: Iterable[tuple[Path, int | None]] = (
            ((min_path, min_value), (max_path, max_value))
            if lowering_max
            else ((max_path, max_value), (min_path, min_value))
        )
        for path, value in steps:
            if value is not None:
                put(path, value)

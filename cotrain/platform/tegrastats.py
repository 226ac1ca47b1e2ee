"""Parse tegrastats output: one pure function from a printed line to a typed sample.

tegrastats prints one line per interval, and its layout changes with every board and JetPack:
the rail names differ per board (VDD_IN on Orin NX/Nano and Xavier NX, POM_5V_IN on the Nano,
GPU/CPU/SOC/CV/VDDRQ/SYS5V on AGX Xavier, no input rail at all on AGX Orin), rails carry `mW`
or no unit, and JetPack 7 prints three values per rail and two per temperature. So the parser
does not expect an order or a fixed set of fields. It finds RAM, SWAP and the CPU list by
pattern, then walks the remaining tokens and recognises three shapes: `name@<t>C` is a
temperature, `NAME a/b[/c]` is a rail, `NAME <load>%@<freq>` (and its variants) is an engine.
Anything else is skipped, so a field it has never seen costs that field, never the sample.

What the values mean, from captured lines (see tests/test_tegrastats.py for the sources):
- rails `cur/avg` in mW; JetPack 7 prints `cur/avg/max`. In two consecutive JP7 lines a rail
  went 8710 → `7953mW/8332mW/8710mW`: 8332 is the mean of 8710 and 7953 and 8710 the maximum,
  so the first value is the instantaneous one on every format.
- temperatures `name@cur C`; JetPack 7 prints `name@cur C/max C`. The first is current.
- `GR3D_FREQ 12%@[1300,1300]` (Orin, JP6+) lists one clock per GPC; Thor prints
  `GR3D_FREQ @[314,314,314]` with no load at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Rails that measure the whole module's input, in order of preference. When one is printed
# it already contains every other rail, so it is the total on its own (see `total_power_mw`).
# VDD_IN: TX1/TX2, Xavier NX, Orin NX/Nano. POM_5V_IN: Jetson Nano. VIN: Thor's board input.
TOTAL_RAIL_NAMES: tuple[str, ...] = ("VDD_IN", "POM_5V_IN", "VIN")

_NUM = r"\d{1,12}(?:\.\d{1,6})?"  # bounded, so int()/float() never see a pathological string
_RAM_RE = re.compile(r"\bRAM\s+(\d{1,12})/(\d{1,12})([kKMG]?)B")
_SWAP_RE = re.compile(r"\bSWAP\s+(\d{1,12})/(\d{1,12})([kKMG]?)B")
# `CPU [a,b,...]` with an optional shared clock after the bracket (`cpu [17%,13%]@408` on TX1).
_CPU_RE = re.compile(rf"\b[Cc][Pp][Uu]\s*\[([^\[\]]*)\](?:@({_NUM}))?")
_CORE_RE = re.compile(rf"({_NUM})%(?:@({_NUM}))?")
_TIMESTAMP_RE = re.compile(r"\[?\s*(\d[\d\-/:.T ]*\d)\s*\]?\s*:?")
_BRACKET_RE = re.compile(r"\[([^\[\]]*)\]")
_TEMP_RE = re.compile(rf"([A-Za-z][A-Za-z0-9_\-]*)@(-?{_NUM})C(?:/(-?{_NUM})C)?")
_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]*")
_RAIL_RE = re.compile(rf"({_NUM})(mW)?(?:/({_NUM})(?:mW)?)?(?:/({_NUM})(?:mW)?)?")
_BARE_NUM_RE = re.compile(_NUM)
_ENGINE_RE = re.compile(rf"(?:({_NUM})%)?(?:@(?:\[({_NUM}(?:,{_NUM})*)\]|({_NUM})))?")
# Rails fed from another printed rail. On AGX Orin, VDDQ_VDD2_1V8AO (DRAM, 1.8 V) appears to be
# generated from the 5 V system supply that VIN_SYS_5V0 measures (a third-party parser says so;
# NVIDIA does not document it), so the sum leaves it out, as the three-rail totals the
# simulator is calibrated on do (cotrain/sim/calibration.py). jtop adds it; the difference is
# 0.3-0.8 W in the captures. Unverified on hardware.
SUB_RAIL_NAMES: tuple[str, ...] = ("VDDQ_VDD2_1V8AO",)
_RAIL_PREFIXES = ("VDD_", "VIN", "POM_")
_NOT_CONNECTED = "NC"  # an unwired INA3221 channel: AGX Orin on JetPack 5 prints `NC 0mW/0mW` twice
_NOT_FIELDS = frozenset({"RAM", "SWAP", "IRAM"})
# tegrastats prints -256C for a thermal zone whose sensor is powered off (CV0 on Xavier NX).
_MIN_REAL_TEMPERATURE_C = -100.0
# Temperatures that measure nothing on their own, left out of `TegrastatsSample.hottest_c`:
# - PMIC: a fixed value, not a reading. Every captured line prints the same number for it
#   (`PMIC@50C` on the Nano fixture, `PMIC@100C` on TX2/Xavier lines), whatever the load.
# - thermal: tegrastats' average over the other zones, so it is never the hottest real one.
PLACEHOLDER_TEMPERATURE_NAMES: frozenset[str] = frozenset({"pmic", "thermal"})


@dataclass(frozen=True)
class CpuCore:
    """One online core: load relative to its current clock, and that clock when printed."""

    load_pct: float
    freq_mhz: float | None


@dataclass(frozen=True)
class EngineReading:
    """An engine or clock domain: `NVENC 115`, `VIC 36%@115`, `NVDLA0 off`, `APE 174`.

    A bare number is a clock in MHz, as NVIDIA documents it for APE, NVENC and NVDEC.
    """

    load_pct: float | None
    freq_mhz: float | None
    off: bool = False


def _frozen(d: dict[str, float]) -> Mapping[str, float]:
    return MappingProxyType(d)


@dataclass(frozen=True)
class TegrastatsSample:
    """One tegrastats line. Fields the line did not print are None (or empty mappings).

    `cpu` has one entry per core slot, in order; None is a core printed as `off` (or an entry
    that could not be read). Rail and temperature names are kept as printed, case included,
    because they differ per board and are the only way to tell the boards apart.
    """

    timestamp: str | None
    ram_used_mb: int
    ram_total_mb: int
    swap_used_mb: int | None
    swap_total_mb: int | None
    cpu: tuple[CpuCore | None, ...]
    emc_load_pct: float | None
    emc_freq_mhz: float | None
    gpu_load_pct: float | None
    gpu_freq_mhz: float | None
    temperatures_c: Mapping[str, float]
    rails_mw: Mapping[str, float]
    rails_avg_mw: Mapping[str, float]
    rails_max_mw: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    engines: Mapping[str, EngineReading] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def total_power_w(self) -> float | None:
        """Module power in W from the instantaneous rails; None when no rail was printed."""
        total_mw = total_power_mw(self.rails_mw)
        return None if total_mw is None else total_mw / 1000.0

    @property
    def hottest_c(self) -> float | None:
        """The board's hottest real sensor in °C; None when the line printed none.

        Leaves out PLACEHOLDER_TEMPERATURE_NAMES (any case): PMIC's constant would otherwise be
        the maximum on every Nano (50) and TX2/Xavier (100) line, and `thermal` is an average.
        Powered-off zones (-256C) were already dropped by the parser.
        """
        real = [
            c for name, c in self.temperatures_c.items() if name.lower() not in PLACEHOLDER_TEMPERATURE_NAMES
        ]
        return max(real) if real else None


def total_power_mw(rails_mw: Mapping[str, float]) -> float | None:
    """The module's power: its input rail when printed, otherwise the sum of the rails.

    An input rail (VDD_IN, POM_5V_IN, VIN) already contains the others: on an Orin Nano,
    VDD_IN includes VDD_CPU_GPU_CV and VDD_SOC, so adding them would count them twice. The AGX
    boards print no input rail (AGX Orin: VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, sometimes
    VDDQ_VDD2_1V8AO; AGX Xavier: GPU, CPU, SOC, CV, VDDRQ, SYS5V); their rails are separate
    supplies, so the sum is the best figure there is. It leaves out the carrier board and the
    regulators' losses, so it reads lower than power at the wall. Like jtop, the sum skips
    a rail named as a sum or total (the INA3221 "sum of shunts" channel), and it skips the
    rails in SUB_RAIL_NAMES, which another printed rail already contains.
    """
    for name in TOTAL_RAIL_NAMES:
        if name in rails_mw:
            return rails_mw[name]
    parts = [mw for name, mw in rails_mw.items() if not _is_aggregate(name) and name not in SUB_RAIL_NAMES]
    return sum(parts) if parts else None


def _is_aggregate(name: str) -> bool:
    upper = name.upper()
    return "SUM" in upper or "TOTAL" in upper


def _to_mb(value: str, unit_prefix: str) -> int:
    scale = {"k": 1 / 1024, "K": 1 / 1024, "": 1.0, "M": 1.0, "G": 1024.0}[unit_prefix]
    return round(int(value) * scale)


def _parse_cores(entries: str, shared_freq: str | None) -> tuple[CpuCore | None, ...]:
    if not entries.strip():
        return ()
    cores: list[CpuCore | None] = []
    for raw in entries.split(","):
        m = _CORE_RE.fullmatch(raw.strip())
        if m is None:  # "off" (a hot-unplugged core), or something unreadable
            cores.append(None)
            continue
        freq = m.group(2) or shared_freq
        cores.append(CpuCore(load_pct=float(m.group(1)), freq_mhz=None if freq is None else float(freq)))
    return tuple(cores)


def _parse_timestamp(prefix: str) -> str | None:
    """The text before RAM when it looks like a date (`07-21-2025 16:33:42`); else None."""
    m = _TIMESTAMP_RE.fullmatch(prefix.strip())
    return None if m is None else m.group(1)


def _is_rail_name(name: str) -> bool:
    return name.startswith(_RAIL_PREFIXES)


def _parse_rail(name: str, value: str) -> tuple[float, float | None, float | None] | None:
    """`a/b[/c]` with or without mW, or a single `a mW`: (cur, avg, max); None if not a rail."""
    m = _RAIL_RE.fullmatch(value)
    if m is None:
        return None
    cur, has_unit, avg, peak = m.group(1), m.group(2), m.group(3), m.group(4)
    if avg is None and not has_unit and not _is_rail_name(name):
        return None  # a bare number after an engine name is a clock (`APE 174`), not power
    return float(cur), None if avg is None else float(avg), None if peak is None else float(peak)


def _parse_engine(value: str) -> EngineReading | None:
    if value.lower() == "off":
        return EngineReading(load_pct=None, freq_mhz=None, off=True)
    if _BARE_NUM_RE.fullmatch(value):
        return EngineReading(load_pct=None, freq_mhz=float(value))  # `APE 174`: a clock
    m = _ENGINE_RE.fullmatch(value)
    if m is None:
        return None
    load, gpc_list, freq = m.group(1), m.group(2), m.group(3)
    if load is None and gpc_list is None and freq is None:
        return None  # the pattern is all optional, so it also matches "" and "@"
    freq_mhz: float | None = None
    if gpc_list is not None:
        # One clock per GPC. Take the highest: a power-gated GPC reads 0 (`[305,0]` on an AGX
        # Orin at 30W), and the GPU's work runs at the clock of the GPCs that are on.
        freq_mhz = max(float(f) for f in gpc_list.split(","))
    elif freq is not None:
        freq_mhz = float(freq)
    return EngineReading(load_pct=None if load is None else float(load), freq_mhz=freq_mhz)


def _engine_name(name: str) -> str:
    """`GR3D_FREQ` → `GR3D`, `NVENC0_FREQ` → `NVENC0`: old JetPacks print `GR3D` and `EMC`."""
    return name.removesuffix("_FREQ") or name


def parse_tegrastats_line(line: str) -> TegrastatsSample | None:
    """One sample from one line, or None when the line is not a sample (no `RAM x/yMB`).

    Never raises: unknown tokens are skipped.
    """
    ram = _RAM_RE.search(line)
    if ram is None:
        return None
    swap = _SWAP_RE.search(line)
    # Squeeze spaces out of bracketed lists (`[6%@1420, off]`) so each list is one token.
    body = _BRACKET_RE.sub(lambda m: "[" + "".join(m.group(1).split()) + "]", line[ram.end() :])
    cpu = _CPU_RE.search(body)
    cores: tuple[CpuCore | None, ...] = ()
    if cpu is not None:
        cores = _parse_cores(cpu.group(1), cpu.group(2))
        body = body[: cpu.start()] + " " + body[cpu.end() :]

    temperatures: dict[str, float] = {}
    rails: dict[str, float] = {}
    rails_avg: dict[str, float] = {}
    rails_max: dict[str, float] = {}
    engines: dict[str, EngineReading] = {}
    tokens = body.split()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        temp = _TEMP_RE.fullmatch(token)
        if temp is not None:
            value_c = float(temp.group(2))
            if value_c > _MIN_REAL_TEMPERATURE_C:
                temperatures.setdefault(temp.group(1), value_c)
            i += 1
            continue
        if i + 1 < len(tokens) and _NAME_RE.fullmatch(token) and token not in _NOT_FIELDS:
            rail = _parse_rail(token, tokens[i + 1])
            if rail is not None:
                cur, avg, peak = rail
                if token == _NOT_CONNECTED:
                    i += 2
                    continue
                rails.setdefault(token, cur)
                if avg is not None:
                    rails_avg.setdefault(token, avg)
                if peak is not None:
                    rails_max.setdefault(token, peak)
                i += 2
                continue
            engine = _parse_engine(tokens[i + 1])
            if engine is not None:
                engines.setdefault(_engine_name(token), engine)
                i += 2
                continue
        i += 1

    gpu = engines.get("GR3D")
    emc = engines.get("EMC")
    return TegrastatsSample(
        timestamp=_parse_timestamp(line[: ram.start()]),
        ram_used_mb=_to_mb(ram.group(1), ram.group(3)),
        ram_total_mb=_to_mb(ram.group(2), ram.group(3)),
        swap_used_mb=None if swap is None else _to_mb(swap.group(1), swap.group(3)),
        swap_total_mb=None if swap is None else _to_mb(swap.group(2), swap.group(3)),
        cpu=cores,
        emc_load_pct=None if emc is None else emc.load_pct,
        emc_freq_mhz=None if emc is None else emc.freq_mhz,
        gpu_load_pct=None if gpu is None else gpu.load_pct,
        gpu_freq_mhz=None if gpu is None else gpu.freq_mhz,
        temperatures_c=_frozen(temperatures),
        rails_mw=_frozen(rails),
        rails_avg_mw=_frozen(rails_avg),
        rails_max_mw=_frozen(rails_max),
        engines=MappingProxyType(engines),
    )


def parse_tegrastats_lines(lines: Iterable[str]) -> tuple[list[TegrastatsSample], int]:
    """Every sample in `lines`, and how many lines were not samples (blank lines included)."""
    samples: list[TegrastatsSample] = []
    skipped = 0
    for line in lines:
        sample = parse_tegrastats_line(line)
        if sample is None:
            skipped += 1
        else:
            samples.append(sample)
    return samples, skipped


def sample_json(sample: TegrastatsSample) -> dict[str, object]:
    """The acceptance format: plain JSON types, instantaneous rails, None for offline cores."""
    return {
        "ram_used_mb": sample.ram_used_mb,
        "ram_total_mb": sample.ram_total_mb,
        "cpu": [
            None if core is None else {"load_pct": core.load_pct, "freq_mhz": core.freq_mhz}
            for core in sample.cpu
        ],
        "gpu_load_pct": sample.gpu_load_pct,
        "gpu_freq_mhz": sample.gpu_freq_mhz,
        "rails_mw": {name: float(mw) for name, mw in sample.rails_mw.items()},
    }

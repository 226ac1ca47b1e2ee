"""The Orin power-mode space: every (online cores, CPU, GPU, EMC frequency) the board offers.

Why the whole grid and not the four nvpmodel modes: PowerTrain and Fulcrum (docs/references.md)
search thousands of custom modes, because the best mode for a workload and a budget is rarely a
named one. A custom mode is what nvpmodel would write: some cores online, and a max clock for CPU,
GPU and memory. The grid is the product of the board's core count (`power_modes/boards/*.yaml`)
and the frequency steps of its clocks below; the named modes come from the same board table.

Frequency steps of the AGX Orin (p3701-0000) clocks, and where each list comes from:
- CPU: cpufreq steps of 76.8 MHz from 115.2 to 2188.8 MHz, plus the 2201.6 MHz top (29 steps).
  Every CPU frequency in the real telemetry fits this grid (orin-telemetry `CPU Frequency`:
  729 ... 2201 MHz; tegrastats fixture: 729, 960, 1036, 1420, 1728, 2201), and so do the
  nvpmodel caps (1113.6, 1497.6, 1728) and min (729.6) in the board's nvpmodel.conf.
- GPU (ga10b devfreq, JetPack 6): 306, 408, ..., 1224 MHz in 102 MHz steps, and 1300.5 MHz. The
  nvpmodel GPU caps 408 / 612 / 816 MHz are steps of this table, and the JetPack 6 tegrastats
  fixture shows the GPU at 305 MHz (306 truncated). (JetPack 5 tables seen in public profiling
  scripts use 114.75 + 102k MHz instead; those do not contain the nvpmodel caps.)
- EMC: 204, 665.6, 2133, 3199 MHz (the 15W cap is 2133; tegrastats shows EMC at 204 and 3199).

GPU TPCs: the AGX Orin GPU has 2048 CUDA cores (CCGrid'23) = 16 SMs = 8 TPCs. A named mode
may power-gate TPCs (`tpc_pg_mask`, one bit per gated TPC): 30W gates 4 (mask 240), 15W gates 5
(mask 248). Changing the mask needs a reboot, so the DVFS grid keeps all 8 TPCs, and the two
gated named modes are added to the space as they are.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cotrain.power_modes.boards import Board, BoardMode, load_board

DEFAULT_BOARD = "agx-orin-64gb"


@dataclass(frozen=True)
class ClockTables:
    """The frequency steps (MHz) of a board's clocks, ascending, and its GPU's TPC count."""

    cpu_mhz: tuple[float, ...]
    gpu_mhz: tuple[float, ...]
    emc_mhz: tuple[float, ...]
    gpu_tpcs: int


_AGX_ORIN = ClockTables(
    cpu_mhz=(*(round(115.2 + 76.8 * k, 1) for k in range(28)), 2201.6),
    gpu_mhz=(306.0, 408.0, 510.0, 612.0, 714.0, 816.0, 918.0, 1020.0, 1122.0, 1224.0, 1300.5),
    emc_mhz=(204.0, 665.6, 2133.0, 3199.0),
    gpu_tpcs=8,
)

CLOCK_TABLES: Mapping[str, ClockTables] = MappingProxyType({"agx-orin-64gb": _AGX_ORIN})


@dataclass(frozen=True, order=True)
class SimMode:
    """One power mode of the simulated device: what is online and how fast it is clocked."""

    cores: int
    cpu_mhz: float
    gpu_mhz: float
    emc_mhz: float
    gpu_tpcs: int = 8

    @property
    def name(self) -> str:
        """A stable name, e.g. `c12-cpu2201.6-gpu1300.5-emc3199`; gated TPCs add `-tpc4`."""
        base = f"c{self.cores}-cpu{self.cpu_mhz:g}-gpu{self.gpu_mhz:g}-emc{self.emc_mhz:g}"
        return base if self.gpu_tpcs == _AGX_ORIN.gpu_tpcs else f"{base}-tpc{self.gpu_tpcs}"


@dataclass(frozen=True)
class ModeSpace:
    """Every mode of a board, and the board's named nvpmodel modes mapped onto them."""

    board: str
    tables: ClockTables
    modes: tuple[SimMode, ...]
    named: Mapping[str, SimMode]  # nvpmodel name (MAXN, MODE_15W, ...) -> mode
    default_name: str  # the board's default nvpmodel mode

    @functools.cached_property
    def _by_name(self) -> Mapping[str, SimMode]:
        return {m.name: m for m in self.modes}

    def __len__(self) -> int:
        return len(self.modes)

    def __contains__(self, mode: object) -> bool:
        return isinstance(mode, SimMode) and mode.name in self._by_name

    @functools.cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(self._by_name) | frozenset(self.named) | frozenset(_short_aliases(self.named))

    def names(self) -> frozenset[str]:
        """Every name `resolve` accepts: the modes' own names and the nvpmodel names."""
        return self._names

    def resolve(self, name: str) -> SimMode:
        """A mode by its own name, its nvpmodel name (`MODE_30W`) or the short form (`30W`)."""
        if name in self._by_name:
            return self._by_name[name]
        named = {**self.named, **_short_aliases(self.named)}
        if name in named:
            return named[name]
        raise KeyError(f"{self.board}: no mode {name!r}; named modes: {', '.join(self.named)}")

    def label(self, mode: SimMode) -> str:
        """The nvpmodel name of `mode` if it is a named mode, else its own name."""
        for name, named in self.named.items():
            if named == mode:
                return name
        return mode.name


def _short_aliases(named: Mapping[str, SimMode]) -> dict[str, SimMode]:
    return {n.removeprefix("MODE_"): m for n, m in named.items() if n.startswith("MODE_")}


def _cap(steps: tuple[float, ...], cap_mhz: float | None) -> float:
    """The clock a cap leaves: the highest step at or below it (cpufreq and devfreq round down)."""
    if cap_mhz is None:
        return steps[-1]
    allowed = [s for s in steps if s <= cap_mhz + 0.05]
    if not allowed:
        raise ValueError(f"cap {cap_mhz} MHz is below the lowest step {steps[0]} MHz")
    return allowed[-1]


def named_mode(mode: BoardMode, tables: ClockTables) -> SimMode:
    """A board table's nvpmodel mode as a SimMode: its caps, online cores and ungated TPCs."""
    cpu_caps = [c for c in mode.cpu_max_mhz.values()]
    cpu_cap = None if not cpu_caps or any(c is None for c in cpu_caps) else min(c for c in cpu_caps if c)
    gated = bin(mode.tpc_pg_mask or 0).count("1")
    return SimMode(
        cores=mode.online_cores,
        cpu_mhz=_cap(tables.cpu_mhz, cpu_cap),
        gpu_mhz=_cap(tables.gpu_mhz, mode.gpu_max_mhz),
        emc_mhz=_cap(tables.emc_mhz, mode.emc_max_mhz),
        gpu_tpcs=tables.gpu_tpcs - gated,
    )


def build_mode_space(board: Board, tables: ClockTables) -> ModeSpace:
    """The DVFS grid (all cores counts 1..N, every step of every clock, all TPCs) plus the named
    modes that gate TPCs, which no DVFS setting reaches."""
    grid = [
        SimMode(cores=n, cpu_mhz=c, gpu_mhz=g, emc_mhz=e, gpu_tpcs=tables.gpu_tpcs)
        for n in range(1, board.core_count + 1)
        for c in tables.cpu_mhz
        for g in tables.gpu_mhz
        for e in tables.emc_mhz
    ]
    named = {m.name: named_mode(m, tables) for m in board.modes}
    in_grid = set(grid)
    extra = sorted({m for m in named.values() if m not in in_grid})
    return ModeSpace(
        board=board.board,
        tables=tables,
        modes=(*grid, *extra),
        named=MappingProxyType(named),
        default_name=board.default_mode.name,
    )


@functools.lru_cache(maxsize=4)
def mode_space(board: str = DEFAULT_BOARD) -> ModeSpace:
    """The mode space of a board table by name. Only boards with known clock tables are offered."""
    if board not in CLOCK_TABLES:
        raise KeyError(f"no clock tables for board {board!r}; the simulator knows: {', '.join(CLOCK_TABLES)}")
    return build_mode_space(load_board(board), CLOCK_TABLES[board])


def maxn(space: ModeSpace | None = None) -> SimMode:
    """The board's MAXN mode: the reference mode every calibrated speed is relative to."""
    return (space or mode_space()).resolve("MAXN")

"""Board tables: each Orin module's power modes as data, derived from NVIDIA's nvpmodel.conf.

Why tables and not parsing at run time: the controller, the simulator and the tests need a
board's modes on machines that have no /etc/nvpmodel.conf. Why a generator: hand-typed tables
drift from the real files. `python -m cotrain.power_modes.boards --regenerate` rewrites
`boards/<board>.yaml` from the real files in `tests/data/jetson/nvpmodel/`, and
tests/test_boards.py fails when a committed table differs from what the generator derives.

CPU clusters: on Orin, cpufreq has one policy per cluster, and nvpmodel.conf defines one CLOCK
param per policy on the cluster's first core (AGX: CPU_A78_0/1/2 on cpu0/cpu4/cpu8). A cluster
therefore runs from the core its clock param names up to the core before the next clock param's,
or to the last managed core. That gives 3 clusters of 4 on the AGX Orin 64GB, 4+4 on the AGX
32GB and Orin NX 16GB, and 4+2 on the Orin NX 8GB and Orin Nano 8GB (6 cores). The rule assumes
contiguous clusters, true on Orin; it is not used for TX2, whose clusters interleave.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from cotrain.power_modes.nvpmodel import NvpmodelConf, Param, masks_need_reboot, parse_nvpmodel

REPO_ROOT = Path(__file__).resolve().parent.parent
# The real nvpmodel.conf files live with the tests (a source checkout); `--fixtures` names another folder.
DEFAULT_FIXTURES = REPO_ROOT / "tests" / "data" / "jetson" / "nvpmodel"
BOARDS_DIR = Path(__file__).resolve().parent / "boards"


@dataclass(frozen=True)
class BoardSource:
    """Which real file describes which module. Provenance: tests/data/SOURCES.md."""

    name: str
    display_name: str
    module_id: str
    file: str
    repo: str
    path: str
    commit: str


_LINEAGE = "LineageOS/android_device_nvidia_concord"
_LINEAGE_COMMIT = "ca8f5dca8bbb182174c9ad64ba88ad83849e9d78"


def _lineage(name: str, display: str, module: str) -> BoardSource:
    stem = f"nvpmodel_{module.replace('-', '_')}.conf"
    return BoardSource(
        name=name,
        display_name=display,
        module_id=module,
        file=f"LineageOS__android_device_nvidia_concord__{stem}",
        repo=_LINEAGE,
        path=f"nvpmodel/{stem}",
        commit=_LINEAGE_COMMIT,
    )


BOARD_SOURCES: tuple[BoardSource, ...] = (
    _lineage("agx-orin-64gb", "Jetson AGX Orin 64GB", "p3701-0000"),
    _lineage("agx-orin-32gb", "Jetson AGX Orin 32GB", "p3701-0004"),
    _lineage("orin-nx-16gb", "Jetson Orin NX 16GB", "p3767-0000"),
    _lineage("orin-nx-8gb", "Jetson Orin NX 8GB", "p3767-0001"),
    _lineage("orin-nano-8gb", "Jetson Orin Nano 8GB", "p3767-0003"),
)

_MODEL = ConfigDict(extra="forbid")


@pydantic_dataclass(frozen=True, config=_MODEL)
class Cluster:
    """A CPU cluster: the cores that share one cpufreq policy, named by its nvpmodel CLOCK param."""

    name: str
    core_ids: tuple[int, ...]


@pydantic_dataclass(frozen=True, config=_MODEL)
class BoardMode:
    """One power mode. Caps in MHz, `None` = uncapped; a cluster absent from cpu_max_mhz is not set."""

    id: int
    name: str
    online_core_ids: tuple[int, ...]
    online_cores: int
    cpu_max_mhz: dict[str, float | None]
    gpu_max_mhz: float | None
    emc_max_mhz: float | None
    tpc_pg_mask: int | None
    fbp_pg_mask: int | None
    needs_reboot_from_default: bool

    def needs_reboot_from(self, other: BoardMode) -> bool:
        """True when a GPU power-gating mask changes (see nvpmodel.masks_need_reboot)."""
        return masks_need_reboot(self.tpc_pg_mask, self.fbp_pg_mask, other.tpc_pg_mask, other.fbp_pg_mask)


@pydantic_dataclass(frozen=True, config=_MODEL)
class Board:
    """A module's power-mode table, as committed in boards/<name>.yaml."""

    board: str
    display_name: str
    module_id: str
    source_file: str
    source_repo: str
    source_path: str
    source_commit: str
    core_count: int
    clusters: tuple[Cluster, ...]
    gpu_node: str | None
    default_mode_id: int
    modes: tuple[BoardMode, ...]

    @property
    def name(self) -> str:
        return self.board

    @property
    def default_mode(self) -> BoardMode:
        return self.mode(self.default_mode_id)

    def mode(self, id_or_name: int | str) -> BoardMode:
        """The mode with this id (int) or name (str). Raises KeyError naming the known modes."""
        for mode in self.modes:
            if (isinstance(id_or_name, int) and mode.id == id_or_name) or mode.name == id_or_name:
                return mode
        known = ", ".join(f"{m.name} ({m.id})" for m in self.modes)
        raise KeyError(f"{self.board}: no power mode {id_or_name!r}; known: {known}")

    def cluster_of(self, core_id: int) -> Cluster:
        for cluster in self.clusters:
            if core_id in cluster.core_ids:
                return cluster
        raise KeyError(f"{self.board}: no core {core_id}")


_BOARD = TypeAdapter(Board)


# --- deriving a table from a real file ----------------------------------------------------------


def derive_clusters(conf: NvpmodelConf) -> tuple[Cluster, ...]:
    """Contiguous clusters starting at each CPU clock param's core (see the module docstring)."""
    starts = sorted((_first_cpu(conf.params[name]), name) for name in conf.cpu_clock_names)
    if not starts or not conf.core_ids:
        raise ValueError("the file has no CPU clock params or no CPU_ONLINE cores")
    if starts[0][0] > min(conf.core_ids):
        raise ValueError(f"cores below cpu{starts[0][0]} belong to no CPU clock param")
    clusters = []
    for i, (start, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else max(conf.core_ids) + 1
        clusters.append(Cluster(name=name, core_ids=tuple(c for c in conf.core_ids if start <= c < end)))
    return tuple(clusters)


def _first_cpu(param: Param) -> int:
    for path in param.args.get("MAX_FREQ", ()):
        parts = path.split("/")
        for part in parts:
            if part.startswith("cpu") and part[3:].isdecimal():
                return int(part[3:])
    raise ValueError(f"CPU clock {param.name} names no /sys/devices/system/cpu/cpuN path")


def gpu_node(conf: NvpmodelConf) -> str | None:
    """The GPU's devfreq device (e.g. `17000000.ga10b`), from the GPU clock's primary MAX_FREQ path."""
    gpu = conf.params.get("GPU")
    paths = gpu.args.get("MAX_FREQ", ()) if gpu else ()
    if not paths:
        return None
    parts = paths[0].split("/")
    return parts[parts.index("devfreq") + 1] if "devfreq" in parts[:-2] else None


def derive_board(source: BoardSource, text: str) -> Board:
    """The table for one module, from the text of its nvpmodel.conf."""
    conf = parse_nvpmodel(text)
    if conf.default_id is None:
        raise ValueError(f"{source.file}: no PM_CONFIG DEFAULT")
    default = conf.mode(conf.default_id)
    modes = tuple(
        BoardMode(
            id=m.id,
            name=m.name,
            online_core_ids=m.online_core_ids,
            online_cores=m.online_cores,
            cpu_max_mhz=dict(m.cpu_max_mhz),
            gpu_max_mhz=m.gpu_max_mhz,
            emc_max_mhz=m.emc_max_mhz,
            tpc_pg_mask=m.tpc_pg_mask,
            fbp_pg_mask=m.fbp_pg_mask,
            needs_reboot_from_default=m.needs_reboot_from(default),
        )
        for m in conf.modes
    )
    return Board(
        board=source.name,
        display_name=source.display_name,
        module_id=source.module_id,
        source_file=source.file,
        source_repo=source.repo,
        source_path=source.path,
        source_commit=source.commit,
        core_count=len(conf.core_ids),
        clusters=derive_clusters(conf),
        gpu_node=gpu_node(conf),
        default_mode_id=conf.default_id,
        modes=modes,
    )


def board_to_data(board: Board) -> dict[str, Any]:
    """Plain data for YAML, in a fixed key order (tuples become lists)."""
    data: dict[str, Any] = _BOARD.dump_python(board, mode="json")
    return data


def render_board_yaml(board: Board) -> str:
    header = (
        f"# {board.display_name} ({board.module_id}) power modes.\n"
        f"# GENERATED by `python -m cotrain.power_modes.boards --regenerate` from\n"
        f"# {board.source_repo} {board.source_path} @ {board.source_commit[:12]}.\n"
        "# Do not edit: tests/test_boards.py checks this file against the generator.\n"
        "# Caps in MHz; null = uncapped. A cluster missing from cpu_max_mhz is not set by the mode.\n"
    )
    body = yaml.safe_dump(board_to_data(board), sort_keys=False, default_flow_style=None, width=100)
    return header + body


def derive_all(fixtures: Path = DEFAULT_FIXTURES) -> dict[str, str]:
    """board name -> the YAML text the generator derives from the fixture folder."""
    return {
        s.name: render_board_yaml(derive_board(s, (fixtures / s.file).read_text(encoding="utf-8")))
        for s in BOARD_SOURCES
    }


# --- loading the committed tables ---------------------------------------------------------------


def list_boards() -> list[str]:
    """Names of the committed board tables, sorted."""
    folder = resources.files("cotrain.power_modes").joinpath("boards")
    return sorted(item.name[: -len(".yaml")] for item in folder.iterdir() if item.name.endswith(".yaml"))


def load_board(name: str) -> Board:
    """A committed board table by name (`agx-orin-64gb`) or module id (`p3701-0000`)."""
    names = list_boards()
    by_module = {s.module_id: s.name for s in BOARD_SOURCES}
    resolved = by_module.get(name, name)
    if resolved not in names:
        raise KeyError(f"unknown board {name!r}; known: {', '.join(names)}")
    text = resources.files("cotrain.power_modes").joinpath("boards", f"{resolved}.yaml").read_text("utf-8")
    return board_from_data(yaml.safe_load(text), source=f"boards/{resolved}.yaml")


def board_from_data(data: Mapping[str, Any], source: str = "<board>") -> Board:
    """Validate plain data into a Board, checking what the rest of the code relies on."""
    try:
        board = _BOARD.validate_python(data)
    except ValidationError as exc:
        raise ValueError(f"{source}: {exc}") from None
    problems = check_board(board)
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))
    return board


def check_board(board: Board) -> list[str]:
    """Invariants of a table: one default that exists, unique modes, cores within range."""
    problems = []
    ids = [m.id for m in board.modes]
    names = [m.name for m in board.modes]
    if len(set(ids)) != len(ids) or len(set(names)) != len(names):
        problems.append("mode ids and names must be unique")
    if board.default_mode_id not in ids:
        problems.append(f"default_mode_id {board.default_mode_id} is not a mode")
    cores = sorted(c for cluster in board.clusters for c in cluster.core_ids)
    if cores != list(range(board.core_count)):
        problems.append(f"clusters must cover cores 0..{board.core_count - 1} exactly once, got {cores}")
    clusters = {c.name for c in board.clusters}
    for m in board.modes:
        if m.online_cores != len(m.online_core_ids) or not set(m.online_core_ids) <= set(cores):
            problems.append(f"mode {m.name}: online cores must be a subset of the board's cores")
        if not set(m.cpu_max_mhz) <= clusters:
            problems.append(f"mode {m.name}: cpu_max_mhz names an unknown cluster")
    return problems


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cotrain.power_modes.boards",
        description="Derive boards/*.yaml from nvpmodel.conf files.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--regenerate", action="store_true", help="rewrite boards/*.yaml")
    action.add_argument("--check", action="store_true", help="exit 1 if a committed table differs")
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES, help="folder of nvpmodel files")
    args = parser.parse_args(argv)
    derived = derive_all(args.fixtures)
    stale = [n for n, text in derived.items() if _read(BOARDS_DIR / f"{n}.yaml") != text]
    if args.check:
        for name in stale:
            print(f"boards/{name}.yaml differs from what {args.fixtures} derives", file=sys.stderr)
        return 1 if stale else 0
    BOARDS_DIR.mkdir(exist_ok=True)
    for name in stale:
        (BOARDS_DIR / f"{name}.yaml").write_text(derived[name], encoding="utf-8")
        print(f"wrote boards/{name}.yaml")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


if __name__ == "__main__":
    raise SystemExit(main())

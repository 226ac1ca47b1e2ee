"""Board tables are data derived from the real nvpmodel.conf files: they must equal what the
generator derives today, and every table must hold the invariants the controller relies on."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace
from pathlib import Path
from typing import Any

import pytest

from cotrain.power_modes import boards
from cotrain.power_modes.boards import (
    BOARD_SOURCES,
    Board,
    board_from_data,
    board_to_data,
    check_board,
    derive_all,
    derive_board,
    derive_clusters,
    list_boards,
    load_board,
)
from cotrain.power_modes.nvpmodel import parse_nvpmodel

FIXTURES = Path(__file__).resolve().parent / "data" / "jetson" / "nvpmodel"
BOARD_NAMES = [s.name for s in BOARD_SOURCES]


@pytest.fixture(scope="module")
def derived() -> dict[str, str]:
    return derive_all(FIXTURES)


@pytest.mark.parametrize("name", BOARD_NAMES)
def test_committed_table_equals_what_the_generator_derives(name: str, derived: dict[str, str]) -> None:
    """Trap: a hand edit, or a parser change, making the committed table drift from the real file.
    Fix with `python -m cotrain.power_modes.boards --regenerate`."""
    committed = (Path(boards.__file__).parent / "boards" / f"{name}.yaml").read_text(encoding="utf-8")

    assert committed == derived[name]


def test_every_committed_table_has_a_source_and_vice_versa() -> None:
    """Trap: a stale YAML left after a board leaves the generator, or a board never generated."""
    assert list_boards() == sorted(BOARD_NAMES)


def test_check_mode_of_the_generator_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """Trap: `--check` reporting drift when there is none (or the CLI not running at all)."""
    assert boards.main(["--check", "--fixtures", str(FIXTURES)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", BOARD_NAMES)
def test_board_invariants(name: str) -> None:
    """Trap: a table the controller cannot trust: a default that is not a mode, repeated ids, online
    cores outside the board, clusters that miss or repeat a core, caps on unknown clusters."""
    board = load_board(name)

    ids = [m.id for m in board.modes]
    cores = sorted(c for cluster in board.clusters for c in cluster.core_ids)

    assert check_board(board) == []
    assert board.default_mode.id == board.default_mode_id
    assert len(set(ids)) == len(ids)
    assert cores == list(range(board.core_count))
    assert all(
        set(m.online_core_ids) <= set(cores) and m.online_cores == len(m.online_core_ids) for m in board.modes
    )
    assert all(set(m.cpu_max_mhz) <= {c.name for c in board.clusters} for m in board.modes)
    assert board.default_mode.needs_reboot_from_default is False
    assert board.gpu_node == "17000000.ga10b"


@pytest.mark.parametrize("name", BOARD_NAMES)
def test_reboot_flag_agrees_with_the_masks(name: str) -> None:
    """Trap: needs_reboot_from_default computed from something other than the TPC/FBP masks."""
    board = load_board(name)
    default = board.default_mode

    for mode in board.modes:
        differs = (mode.tpc_pg_mask, mode.fbp_pg_mask) != (default.tpc_pg_mask, default.fbp_pg_mask)
        assert mode.needs_reboot_from_default is differs
        assert mode.needs_reboot_from(default) is differs


@pytest.mark.parametrize(
    ("name", "default", "reboot_from_default"),
    [
        ("agx-orin-64gb", "MODE_30W", {"MAXN", "MODE_15W", "MODE_50W"}),
        ("agx-orin-32gb", "MODE_30W", {"MAXN", "MODE_15W", "MODE_40W"}),
        ("orin-nx-16gb", "15W", {"MAXN", "25W"}),
        ("orin-nx-8gb", "15W", {"MAXN", "20W"}),
        ("orin-nano-8gb", "15W", {"7W"}),
    ],
)
def test_which_modes_need_a_reboot_from_the_default(
    name: str, default: str, reboot_from_default: set[str]
) -> None:
    """Trap: assuming most modes switch live. From NVIDIA's defaults, only the Orin NX 10W/15W pair
    shares a TPC mask; everything else needs a reboot."""
    board = load_board(name)

    assert board.default_mode.name == default
    assert {m.name for m in board.modes if m.needs_reboot_from_default} == reboot_from_default


@pytest.mark.parametrize(
    ("name", "core_count", "clusters"),
    [
        (
            "agx-orin-64gb",
            12,
            {"CPU_A78_0": (0, 1, 2, 3), "CPU_A78_1": (4, 5, 6, 7), "CPU_A78_2": (8, 9, 10, 11)},
        ),
        ("agx-orin-32gb", 8, {"CPU_A78_0": (0, 1, 2, 3), "CPU_A78_1": (4, 5, 6, 7)}),
        ("orin-nx-16gb", 8, {"CPU_A78_0": (0, 1, 2, 3), "CPU_A78_1": (4, 5, 6, 7)}),
        ("orin-nx-8gb", 6, {"CPU_A78_0": (0, 1, 2, 3), "CPU_A78_1": (4, 5)}),
        ("orin-nano-8gb", 6, {"CPU_A78_0": (0, 1, 2, 3), "CPU_A78_1": (4, 5)}),
    ],
)
def test_clusters_follow_the_cpu_clock_params(
    name: str, core_count: int, clusters: dict[str, tuple[int, ...]]
) -> None:
    """Trap: assuming 4-core clusters everywhere (the 6-core modules have a 2-core second cluster), or
    counting the AGX 32GB file's unused CORE_8..11 as cores."""
    board = load_board(name)

    assert board.core_count == core_count
    assert {c.name: c.core_ids for c in board.clusters} == clusters
    assert board.cluster_of(core_count - 1).name == list(clusters)[-1]


def test_agx_orin_64gb_table_values() -> None:
    """Trap: the table losing what the parser found (per-cluster caps, EMC cap, masks)."""
    board = load_board("agx-orin-64gb")

    low = board.mode("MODE_15W")

    assert (board.module_id, board.default_mode_id) == ("p3701-0000", 2)
    assert low.online_core_ids == (0, 1, 2, 3)
    assert low.cpu_max_mhz == {"CPU_A78_0": 1113.6}
    assert (low.gpu_max_mhz, low.emc_max_mhz, low.tpc_pg_mask, low.fbp_pg_mask) == (408.0, 2133.0, 248, None)
    assert board.mode(0).cpu_max_mhz == {"CPU_A78_0": None, "CPU_A78_1": None, "CPU_A78_2": None}


def test_load_by_module_id_and_unknown_names() -> None:
    """Trap: only marketing names working, or an unknown board failing without listing the known ones."""
    assert load_board("p3767-0001").board == "orin-nx-8gb"
    with pytest.raises(KeyError, match="agx-orin-64gb"):
        load_board("xavier-nx")
    with pytest.raises(KeyError, match=r"MAXN \(0\)"):
        load_board("agx-orin-64gb").mode("MODE_60W")


def table_data(name: str = "agx-orin-64gb") -> dict[str, Any]:
    return board_to_data(load_board(name))


def test_loader_rejects_unknown_keys() -> None:
    """Trap: a typo in a table (or a stale field) silently ignored."""
    data = table_data()
    data["modes"][0]["gpu_max_mhzz"] = 1.0

    with pytest.raises(ValueError, match="gpu_max_mhzz"):
        board_from_data(data)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d.update(default_mode_id=9), "default_mode_id 9 is not a mode"),
        (lambda d: d["modes"][1].update(id=0), "unique"),
        (lambda d: d["clusters"][1].update(core_ids=[3, 4, 5, 6, 7]), "exactly once"),
        (lambda d: d["modes"][0].update(online_core_ids=[0, 12], online_cores=2), "subset"),
        (lambda d: d["modes"][0]["cpu_max_mhz"].update(CPU_X=1.0), "unknown cluster"),
    ],
)
def test_loader_rejects_broken_invariants(edit: Any, fragment: str) -> None:
    """Trap: a table that parses but breaks what the controller assumes."""
    data = table_data()
    edit(data)

    with pytest.raises(ValueError, match=fragment):
        board_from_data(data)


def test_round_trip_through_plain_data() -> None:
    """Trap: dumping and loading a table changing it (tuples vs lists, float keys)."""
    board = load_board("orin-nx-16gb")

    assert board_from_data(board_to_data(board)) == board


def test_clusters_need_a_cpu_clock_for_the_first_core() -> None:
    """Trap: a file whose first CPU clock is on cpu4 leaving cores 0-3 in no cluster without an error."""
    text = (
        "< PARAM TYPE=FILE NAME=CPU_ONLINE >\nCORE_0 /sys/devices/system/cpu/cpu0/online\n"
        "CORE_4 /sys/devices/system/cpu/cpu4/online\n"
        "< PARAM TYPE=CLOCK NAME=CPU_A78_1 >\n"
        "MAX_FREQ /sys/devices/system/cpu/cpu4/cpufreq/scaling_max_freq\n"
        "< POWER_MODEL ID=0 NAME=A >\nCPU_ONLINE CORE_4 1\n"
    )

    with pytest.raises(ValueError, match="cpu4"):
        derive_clusters(parse_nvpmodel(text))


def test_generator_needs_a_default_mode() -> None:
    """Trap: a table written without a default, which every board must have."""
    text = (
        (FIXTURES / BOARD_SOURCES[0].file).read_text(encoding="utf-8").replace("< PM_CONFIG DEFAULT=2 >", "")
    )
    source = replace(BOARD_SOURCES[0], name="x")

    with pytest.raises(ValueError, match="no PM_CONFIG"):
        derive_board(source, text)


def test_board_is_frozen() -> None:
    """Trap: a caller mutating a shared table."""
    board: Board = load_board("orin-nano-8gb")

    with pytest.raises(FrozenInstanceError):
        board.core_count = 1  # type: ignore[misc]

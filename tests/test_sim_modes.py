"""The simulator's Orin mode space, built from the committed board table."""

from __future__ import annotations

import pytest

from cotrain.power_modes.boards import load_board
from cotrain.sim.modes import CLOCK_TABLES, SimMode, maxn, mode_space


def test_the_mode_space_is_every_cores_cpu_gpu_emc_combination_thousands_of_them() -> None:
    space = mode_space()
    tables = CLOCK_TABLES["agx-orin-64gb"]
    grid = 12 * len(tables.cpu_mhz) * len(tables.gpu_mhz) * len(tables.emc_mhz)
    assert (len(tables.cpu_mhz), len(tables.gpu_mhz), len(tables.emc_mhz)) == (29, 11, 4)
    assert len(space) == grid + 2  # plus 15W and 30W, whose gated TPCs no DVFS setting reaches
    assert len(space) > 10_000
    assert len({m.name for m in space.modes}) == len(space)  # names are unique


def test_every_named_nvpmodel_mode_of_the_board_is_inside_the_space() -> None:
    space = mode_space()
    board = load_board("agx-orin-64gb")
    assert set(space.named) == {m.name for m in board.modes}
    for name, mode in space.named.items():
        assert mode in space, name
        assert space.resolve(name) == mode
        assert space.resolve(mode.name) == mode
        assert space.label(mode) == name


def test_named_modes_carry_the_board_tables_caps_cores_and_tpc_gating() -> None:
    space = mode_space()
    assert space.resolve("MAXN") == SimMode(12, 2201.6, 1300.5, 3199.0, 8) == maxn(space)
    assert space.resolve("15W") == SimMode(4, 1113.6, 408.0, 2133.0, 3)  # mask 248 gates 5 TPCs
    assert space.resolve("MODE_30W") == SimMode(8, 1728.0, 612.0, 3199.0, 4)  # mask 240 gates 4
    assert space.resolve("50W") == SimMode(12, 1497.6, 816.0, 3199.0, 8)
    assert space.default_name == "MODE_30W"


def test_mode_names_are_stable_strings() -> None:
    assert SimMode(12, 2201.6, 1300.5, 3199.0).name == "c12-cpu2201.6-gpu1300.5-emc3199"
    assert SimMode(4, 1113.6, 408.0, 2133.0, 3).name == "c4-cpu1113.6-gpu408-emc2133-tpc3"
    space = mode_space()
    some = space.modes[1234]
    assert space.resolve(some.name) == some


def test_unknown_names_and_boards_fail_with_the_known_ones() -> None:
    with pytest.raises(KeyError, match="MAXN"):
        mode_space().resolve("MODE_99W")
    with pytest.raises(KeyError, match="agx-orin-64gb"):
        mode_space("orin-nano-8gb")

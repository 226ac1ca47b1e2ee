"""Power-mode policy files: strict validation with file:line and field path, checks against a board,
and the run-time filter that never offers a mode needing a reboot unless allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotrain.config import ConfigError
from cotrain.power_modes import policy as policy_module
from cotrain.power_modes.boards import list_boards, load_board
from cotrain.power_modes.nvpmodel import parse_nvpmodel
from cotrain.power_modes.policy import (
    PowerModePolicy,
    allowed_modes,
    check_policy_against,
    load_power_policy,
    parse_power_policy,
)

EXAMPLE = Path(policy_module.__file__).parent / "policy-example.yaml"
FIXTURES = Path(__file__).resolve().parent / "data" / "jetson" / "nvpmodel"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "power.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def errors_for(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_power_policy(path)
    return info.value.lines


# --- the shipped example ------------------------------------------------------------------------


def test_shipped_example_loads_and_fits_its_board() -> None:
    """Trap: the example drifting from the board table (a renamed mode, a reboot-needing pair)."""
    policy = load_power_policy(EXAMPLE)

    assert policy == PowerModePolicy(
        board="agx-orin-64gb", allowed_modes=["MAXN", "MODE_50W"], power_budget_w=40.0, min_dwell_s=30.0
    )
    assert check_policy_against(policy, load_board("agx-orin-64gb")) == []


def test_defaults() -> None:
    """Trap: defaults that allow reboots or zero dwell by accident."""
    policy = PowerModePolicy()

    assert (policy.allowed_modes, policy.power_budget_w, policy.min_dwell_s) == ([], None, 30.0)
    assert policy.allow_reboot_modes is False


# --- validation with file:line ------------------------------------------------------------------


def test_unknown_key_names_file_line_and_path(tmp_path: Path) -> None:
    """Trap: a typo (`min_dwel_s`) silently ignored, so the default dwell applies unnoticed."""
    lines = errors_for(tmp_path, "allowed_modes: [MAXN]\nmin_dwel_s: 10\n")

    assert lines == [f"{tmp_path / 'power.yaml'}:2: min_dwel_s: unknown key; did you mean 'min_dwell_s'?"]


def test_wrong_type_is_not_coerced(tmp_path: Path) -> None:
    """Trap: `power_budget_w: "40"` accepted as 40 (strict models do not coerce strings)."""
    (line,) = errors_for(tmp_path, 'power_budget_w: "40"\n')

    assert line.startswith(f"{tmp_path / 'power.yaml'}:1: power_budget_w: ")
    assert "valid number" in line and "'40'" in line


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("power_budget_w: 0\n", "power_budget_w: Input should be greater than 0 (got 0)"),
        ("min_dwell_s: -1\n", "min_dwell_s: Input should be greater than or equal to 0 (got -1)"),
        ("allow_reboot_modes: yes please\n", "allow_reboot_modes: Input should be a valid boolean"),
        ("allowed_modes: [MAXN, MAXN]\n", "allowed_modes: modes must be listed once, repeated: 'MAXN'"),
        ("allowed_modes: [-1]\n", "allowed_modes: mode ids are >= 0, got -1"),
        ("allowed_modes: [1.5]\n", "allowed_modes[0]"),
    ],
)
def test_out_of_range_values_name_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    """Trap: a nonsense budget, dwell or mode entry accepted and acted on at run time."""
    lines = errors_for(tmp_path, text)

    assert any(f"{tmp_path / 'power.yaml'}:1: {fragment}" in line for line in lines), lines


def test_bad_yaml_and_bad_top_level(tmp_path: Path) -> None:
    """Trap: a YAML syntax error or a list at the top level escaping as a traceback."""
    assert errors_for(tmp_path, "allowed_modes: [MAXN\n")[0].startswith(
        f"{tmp_path / 'power.yaml'}:2:1: not valid YAML: expected ',' or ']'"
    )
    assert errors_for(tmp_path, "- MAXN\n") == [
        f"{tmp_path / 'power.yaml'}: the top level must be a mapping of keys to values"
    ]
    assert "min_dwell_s: duplicate key" in errors_for(tmp_path, "min_dwell_s: 1\nmin_dwell_s: 2\n")[0]


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """Trap: an OSError traceback instead of a one-line message naming the file."""
    with pytest.raises(ConfigError) as info:
        load_power_policy(tmp_path / "nope.yaml")

    assert info.value.lines[0].startswith(f"{tmp_path / 'nope.yaml'}: cannot read power policy")


def test_unknown_board_names_its_line(tmp_path: Path) -> None:
    """Trap: a misspelt board making the mode check silently skipped."""
    lines = errors_for(tmp_path, "allowed_modes: [MAXN]\nboard: agx-orin-128gb\n")

    known = ", ".join(list_boards())
    assert lines == [f"{tmp_path / 'power.yaml'}:2: board: unknown board 'agx-orin-128gb'; known: {known}"]


def test_board_check_errors_point_at_the_list_entry(tmp_path: Path) -> None:
    """Trap: an unknown mode or a reboot-needing pair reported without the entry's line."""
    text = "board: agx-orin-64gb\nallowed_modes:\n  - MAXN\n  - MODE_60W\n  - 2\n"

    lines = errors_for(tmp_path, text)

    where = tmp_path / "power.yaml"
    assert lines[0].startswith(
        f"{where}:4: allowed_modes[1]: unknown power mode name 'MODE_60W'; known: MAXN (0)"
    )
    assert lines[1].startswith(f"{where}:5: allowed_modes[2]: MODE_30W (TPC mask 240) and MAXN (TPC mask 0)")
    assert "needs a reboot" in lines[1] and "allow_reboot_modes: true" in lines[1]
    assert len(lines) == 2


# --- checks against a board or a parsed file ----------------------------------------------------


def test_reboot_modes_are_errors_unless_allowed() -> None:
    """Trap: a policy mixing modes with different TPC masks, so a live switch would hang on nvpmodel's
    YES prompt (or reboot the board mid-run)."""
    board = load_board("agx-orin-64gb")

    strict = PowerModePolicy(allowed_modes=["MODE_30W", "MAXN", 3])
    lenient = PowerModePolicy(allowed_modes=["MODE_30W", "MAXN", 3], allow_reboot_modes=True)

    errors = check_policy_against(strict, board)
    assert [e.split(":")[0] for e in errors] == ["allowed_modes[1]", "allowed_modes[2]"]
    assert "MAXN (TPC mask 0) and MODE_30W (TPC mask 240)" in errors[0]
    assert check_policy_against(lenient, board) == []


def test_unknown_and_repeated_modes_against_a_parsed_file() -> None:
    """Trap: an id that only exists on another board, or one mode listed by name and by id, passing."""
    conf = parse_nvpmodel(
        (FIXTURES / "LineageOS__android_device_nvidia_concord__nvpmodel_p3767_0000.conf").read_text(
            encoding="utf-8"
        )
    )

    errors = check_policy_against(PowerModePolicy(allowed_modes=[7, "10W", 1, "15W"]), conf)

    assert errors == [
        "allowed_modes[0]: unknown power mode id 7; known: MAXN (0), 10W (1), 15W (2), 25W (3)",
        "allowed_modes[2]: 10W (1) is listed twice (by name and id)",
    ]


def test_fbp_mask_is_named_in_the_explanation() -> None:
    """Trap: an explanation that hides the FBP mask on boards that have one."""
    errors = check_policy_against(PowerModePolicy(allowed_modes=["15W", "MAXN"]), load_board("orin-nx-16gb"))

    assert errors == [errors[0]] and "MAXN (TPC mask 240, FBP 2) and 15W (TPC mask 252, FBP 2)" in errors[0]


# --- the run-time filter ------------------------------------------------------------------------


def test_allowed_modes_offers_only_live_switches() -> None:
    """Trap: offering MAXN/50W while the board sits in its default MODE_30W (different TPC mask)."""
    board = load_board("agx-orin-64gb")
    example = load_power_policy(EXAMPLE)

    from_maxn = allowed_modes(example, board, "MAXN")
    from_default = allowed_modes(example, board, 2)
    everything = allowed_modes(PowerModePolicy(allow_reboot_modes=True), board, 2)

    assert [m.name for m in from_maxn] == ["MAXN", "MODE_50W"]
    assert from_default == []
    assert [m.id for m in everything] == [0, 1, 2, 3]


def test_empty_list_means_every_mode_reachable_live() -> None:
    """Trap: an empty allowed list meaning 'nothing', or 'everything including reboot modes'."""
    nx = load_board("orin-nx-16gb")

    assert [m.name for m in allowed_modes(PowerModePolicy(), nx, "15W")] == ["10W", "15W"]
    assert [m.name for m in allowed_modes(PowerModePolicy(), nx, nx.mode("MAXN"))] == ["MAXN", "25W"]


def test_allowed_modes_works_on_a_parsed_file_and_rejects_unknown_current() -> None:
    """Trap: the filter only working on board tables, or an unknown current mode treated as 'any'."""
    conf = parse_nvpmodel(
        (FIXTURES / "LineageOS__android_device_nvidia_concord__nvpmodel_p3701_0000.conf").read_text(
            encoding="utf-8"
        )
    )

    modes = allowed_modes(PowerModePolicy(allowed_modes=["MODE_50W", 0, "MODE_404"]), conf, conf.mode(3))

    assert [m.name for m in modes] == ["MAXN", "MODE_50W"]
    with pytest.raises(KeyError, match="MODE_404"):
        allowed_modes(PowerModePolicy(), conf, "MODE_404")


@settings(max_examples=100, deadline=None)
@given(
    board_name=st.sampled_from(list_boards()),
    picks=st.lists(st.integers(0, 3), max_size=4, unique=True),
    current_index=st.integers(0, 3),
    allow_reboot=st.booleans(),
)
def test_filter_never_offers_a_reboot_switch_unless_allowed(
    board_name: str, picks: list[int], current_index: int, allow_reboot: bool
) -> None:
    """Trap: any combination of list and current mode letting a reboot-needing switch through."""
    board = load_board(board_name)
    ids = [m.id for m in board.modes]
    listed_ids: list[int | str] = list(dict.fromkeys(ids[i % len(ids)] for i in picks))
    policy = PowerModePolicy(allowed_modes=listed_ids, allow_reboot_modes=allow_reboot)
    current = board.modes[current_index % len(board.modes)]

    offered = allowed_modes(policy, board, current)

    listed = set(policy.allowed_modes) or set(ids)
    assert {m.id for m in offered} <= listed
    if not allow_reboot:
        assert not any(m.needs_reboot_from(current) for m in offered)
    else:
        assert {m.id for m in offered} == listed


def test_parse_power_policy_without_a_document_still_names_fields() -> None:
    """Trap: data built in code (no YAML lines) producing messages without the field path."""
    with pytest.raises(ConfigError) as info:
        parse_power_policy({"board": "agx-orin-64gb", "allowed_modes": ["MODE_15W", "MAXN"]})

    (line,) = info.value.lines
    assert line.startswith("<power policy>: allowed_modes[1]: MAXN (TPC mask 0) and MODE_15W (TPC mask 248)")

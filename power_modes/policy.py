"""Which power modes the controller may use, and how: a small validated YAML config.

Why a separate file from the experiment config: it describes the device's owner's limits (a
power budget, modes that must not be used, never rebooting a board mid-run), which hold for
every experiment on that device.

The reboot rule: a switch between modes with different GPU power-gating masks needs a reboot
(nvpmodel asks for YES, jtop refuses unless forced; see `nvpmodel.masks_need_reboot`). Unless
`allow_reboot_modes` is true, the modes a policy lists must therefore share their masks, and at
run time `allowed_modes` offers only the listed modes reachable from the current one without a
reboot. On the AGX Orin 64GB, MAXN and MODE_50W (TPC mask 0) switch live between themselves,
but not from the default MODE_30W (mask 240): a board must be put in one of them first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cotrain.config import ConfigError, describe_error, read_yaml_file
from cotrain.power_modes.boards import list_boards, load_board
from cotrain.yaml_source import YamlDocument


class PowerModePolicy(BaseModel):
    """Limits on the power modes a controller may choose. Unknown keys are errors; no coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    board: str | None = Field(
        None, description="board table this policy is for (see list_boards); checked on load when set"
    )
    allowed_modes: list[int | str] = Field(
        default_factory=list, description="mode names or ids; empty = every mode"
    )
    power_budget_w: float | None = Field(None, gt=0, le=1000, description="whole-board power budget")
    min_dwell_s: float = Field(30.0, ge=0, le=86_400, description="least time between two mode switches")
    allow_reboot_modes: bool = Field(False, description="allow switches that need a reboot")

    @field_validator("allowed_modes")
    @classmethod
    def _entries_are_sane(cls, value: list[int | str]) -> list[int | str]:
        for entry in value:
            if isinstance(entry, int) and entry < 0:
                raise ValueError(f"mode ids are >= 0, got {entry}")
            if isinstance(entry, str) and not entry.strip():
                raise ValueError("mode names must not be empty")
        repeated = sorted({repr(e) for e in value if value.count(e) > 1})
        if repeated:
            raise ValueError(f"modes must be listed once, repeated: {', '.join(repeated)}")
        return value


# --- checking a policy against a board or an nvpmodel.conf --------------------------------------


class ModeLike(Protocol):
    """What the checks need from a mode: `nvpmodel.PowerMode` and `boards.BoardMode` both fit."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def tpc_pg_mask(self) -> int | None: ...
    @property
    def fbp_pg_mask(self) -> int | None: ...
    def needs_reboot_from(self, other: Any) -> bool: ...


M = TypeVar("M", bound=ModeLike)
M_co = TypeVar("M_co", bound=ModeLike, covariant=True)


class ModeTable(Protocol[M_co]):
    """An `NvpmodelConf` or a `Board`."""

    @property
    def modes(self) -> tuple[M_co, ...]: ...


def _find(table: ModeTable[M], entry: int | str) -> M | None:
    for mode in table.modes:
        if (isinstance(entry, int) and mode.id == entry) or (isinstance(entry, str) and mode.name == entry):
            return mode
    return None


def _known(table: ModeTable[ModeLike]) -> str:
    return ", ".join(f"{m.name} ({m.id})" for m in table.modes)


def _masks(mode: ModeLike) -> str:
    fbp = "" if mode.fbp_pg_mask is None else f", FBP {mode.fbp_pg_mask}"
    return f"TPC mask {mode.tpc_pg_mask}{fbp}"


def _issues(policy: PowerModePolicy, table: ModeTable[ModeLike]) -> list[tuple[tuple[str | int, ...], str]]:
    """(pydantic-style location, message) for each problem, so callers can add file and line."""
    issues: list[tuple[tuple[str | int, ...], str]] = []
    listed: list[tuple[int, ModeLike]] = []
    for index, entry in enumerate(policy.allowed_modes):
        mode = _find(table, entry)
        kind = "id" if isinstance(entry, int) else "name"
        if mode is None:
            issues.append(
                (("allowed_modes", index), f"unknown power mode {kind} {entry!r}; known: {_known(table)}")
            )
        elif any(mode is other for _, other in listed):
            issues.append(
                (("allowed_modes", index), f"{mode.name} ({mode.id}) is listed twice (by name and id)")
            )
        else:
            listed.append((index, mode))
    if not policy.allow_reboot_modes and listed:
        _, first = listed[0]
        for index, mode in listed[1:]:
            if mode.needs_reboot_from(first) or first.needs_reboot_from(mode):
                issues.append(
                    (
                        ("allowed_modes", index),
                        f"{mode.name} ({_masks(mode)}) and {first.name} ({_masks(first)}) have different "
                        "GPU power-gating masks, so switching between them needs a reboot (nvpmodel asks "
                        "for YES, jtop refuses unless forced); set allow_reboot_modes: true or list only "
                        "modes with the same masks",
                    )
                )
    return sorted(issues, key=lambda issue: issue[0][1] if len(issue[0]) > 1 else -1)


def _dotted(loc: Sequence[str | int]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in loc).replace(".[", "[")


def check_policy_against(policy: PowerModePolicy, board_or_conf: ModeTable[ModeLike]) -> list[str]:
    """Problems with using this policy on this board (or nvpmodel.conf), each `field.path: message`.

    Unknown mode names or ids; a mode listed twice; with allow_reboot_modes false, listed modes
    whose masks differ from the first listed mode's (a switch among them needs a reboot).
    """
    return [f"{_dotted(loc)}: {message}" for loc, message in _issues(policy, board_or_conf)]


def allowed_modes(policy: PowerModePolicy, conf: ModeTable[M], current_mode: M | int | str) -> list[M]:
    """The modes the controller may switch to now, in the table's order.

    The listed modes (all modes when the list is empty; unknown entries are ignored, as
    `check_policy_against` reports them), minus, unless allow_reboot_modes, those that need a
    reboot from `current_mode`. The current mode is included when it is listed. Raises KeyError
    if `current_mode` is not in the table.
    """
    current = current_mode if not isinstance(current_mode, int | str) else _find(conf, current_mode)
    if current is None:
        raise KeyError(f"current mode {current_mode!r} is not in the table; known: {_known(conf)}")
    if policy.allowed_modes:
        wanted = {id(m) for e in policy.allowed_modes if (m := _find(conf, e)) is not None}
        candidates = [m for m in conf.modes if id(m) in wanted]
    else:
        candidates = list(conf.modes)
    if policy.allow_reboot_modes:
        return candidates
    return [m for m in candidates if m is current or not m.needs_reboot_from(current)]


# --- loading ------------------------------------------------------------------------------------


def parse_power_policy(
    data: Any, *, doc: YamlDocument | None = None, source: str = "<power policy>"
) -> PowerModePolicy:
    """Validate already-loaded data; when it names a board, check the modes against that board.

    Raises ConfigError with one `file:line: field.path: message` line per problem.
    """
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of keys to values"])
    if "workloads" in data:
        raise ConfigError(
            [f"{source}: this is an experiment, not a power-mode policy: cotrain validate {source}"]
        )
    try:
        policy = PowerModePolicy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            [describe_error(dict(e), doc, source, PowerModePolicy) for e in exc.errors()]
        ) from None
    if policy.board is None:
        return policy
    if policy.board not in list_boards():
        message = f"unknown board {policy.board!r}; known: {', '.join(list_boards())}"
        raise ConfigError([_locate(("board",), message, doc, source)])
    problems = _issues(policy, load_board(policy.board))
    if problems:
        raise ConfigError([_locate(loc, message, doc, source) for loc, message in problems])
    return policy


def _locate(loc: tuple[str | int, ...], message: str, doc: YamlDocument | None, source: str) -> str:
    path, line = doc.locate(loc) if doc is not None else (_dotted(loc), None)
    where = f"{source}:{line}" if line is not None else source
    return f"{where}: {path}: {message}"


def load_power_policy(path: str | Path) -> PowerModePolicy:
    """Read and validate a power-mode policy file. Errors name the file, line and field path."""
    path = Path(path)
    doc = read_yaml_file(path, "power policy")
    return parse_power_policy(doc.data, doc=doc, source=str(path))

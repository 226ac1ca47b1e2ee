"""A pure parser for NVIDIA's nvpmodel.conf, the file that defines a Jetson's power modes.

Why our own parser: the controller must know, before it switches, what a mode does (which cores
go offline, which clocks are capped) and whether the switch needs a reboot. jtop only parses the
verbose output of `nvpmodel -p`, which needs a Jetson and root. This parser needs only the text,
so it runs in tests and on a laptop.

The format (from the comment block NVIDIA puts at the top of every file):

    < PARAM TYPE=FILE|CLOCK|HWMON NAME=PARAM_NAME >    defines a parameter and its sysfs paths
    ARG_NAME /sys/path                                 (HWMON: ARG_NAME /sys/dir attribute_file)
    < POWER_MODEL ID=0 NAME=MAXN >                     starts a mode
    PARAM_NAME ARG_NAME VALUE                          one write per line
    < PM_CONFIG DEFAULT=2 >                            the default mode id

Traps seen in real files, each handled here (see tests/test_nvpmodel.py):

- `<PARAM TYPE=CLOCK NAME=EMC >`: no space after `<`.
- The header comment contains `# < PM_CONFIG DEFAULT=default_mode >`; comments start with `#`.
- `-1` means INT_MAX, i.e. uncapped. For EMC, `0` also means uncapped: `emc_iso_cap` 0 is
  "no cap", and every MAXN mode writes it.
- `ARG_KNEXT` lines give an alternate path for `ARG` (the path on newer kernels). They are
  merged into `Param.args[ARG]`, primary path first; modes only ever name `ARG`.
- `TYPE=HWMON` argument lines have 3 fields: a hwmon directory and an attribute file in it.
- Mode ids need not be contiguous (user files define `ID=17`).
- `< FAN_CONFIG DEFAULT=cool >` and `< FAN_MODEL … >` sections: a header always ends the
  current section, so fan lines never leak into a power mode. They are recorded as skipped.
- The Jetson Nano file has paths wrapped by long runs of spaces
  (`…/scaling_available_frequenc      ies`). sysfs paths never contain spaces, so the pieces
  of a path are joined back.
- Units: CPU caps are in kHz (cpufreq), GPU and EMC caps in Hz (devfreq, clk). We report MHz.

Unknown parameters, unknown section kinds and unknown line shapes are kept or recorded in
`NvpmodelConf.skipped`; they never crash the parser. What nvpmodel itself could not apply is
an error (`NvpmodelParseError`, naming the 1-based line): an unterminated `<` header, a mode
without an integer ID or a NAME, a repeated mode id, a CLOCK value that is not an integer >= -1,
a default that names no mode, or a file without any POWER_MODEL.

A repeated mode NAME is not an error: nvpmodel selects modes by id (`nvpmodel -m <id>`), so a
block copied and given a new ID still works on the device. Both modes are kept, the second
header is recorded in `skipped`, and a lookup by that name finds the first.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNCAPPED = -1
"""nvpmodel's INT_MAX marker: the cap is lifted."""

_INT = re.compile(r"^-?\d+$")
_CPU_ONLINE_PATH = re.compile(r"/cpu(\d+)/online$")
_TRAILING_NUMBER = re.compile(r"(\d+)$")
_INLINE_COMMENT = re.compile(r"\s#")
_KNEXT = "_KNEXT"


class NvpmodelParseError(ValueError):
    """A file nvpmodel itself could not apply. `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Param:
    """A `< PARAM >` definition.

    `args` maps an argument name to its sysfs paths: the primary path first, then any `_KNEXT`
    alternates. For `TYPE=HWMON` the paths are hwmon directories (nvpmodel picks the `hwmonN`
    inside) and `hwmon_attrs` names the attribute file written in each.
    """

    name: str
    type: str
    args: Mapping[str, tuple[str, ...]]
    hwmon_attrs: Mapping[str, str] = field(default_factory=dict)
    line: int = 0


def masks_need_reboot(
    target_tpc: int | None, target_fbp: int | None, current_tpc: int | None, current_fbp: int | None
) -> bool:
    """Whether moving to a mode with the target GPU power-gating masks needs a reboot.

    The GPU's TPC (and FBP) power-gating masks can only change while the GPU is not in use, so
    `nvpmodel -m` asks the user to type YES and reboots when the mask changes, and jtop (and
    NVIDIA's own nvpmodel indicator) refuse such a switch unless forced. A target that sets no
    mask writes nothing, so it never needs a reboot. A target that sets a mask while the current
    mask is unknown (None) is treated as needing one: we cannot prove it does not.
    """

    def differs(target: int | None, current: int | None) -> bool:
        return target is not None and target != current

    return differs(target_tpc, current_tpc) or differs(target_fbp, current_fbp)


@dataclass(frozen=True)
class PowerMode:
    """One `< POWER_MODEL >` with what it does, in MHz.

    `settings` is every write the mode makes, as in the file: param -> arg -> value (an int
    where the value is an integer, else the string, e.g. `on`/`auto`).
    `cpu_max_mhz` has one key per CPU clock param the mode sets MAX_FREQ for (kHz / 1000),
    `None` where uncapped. `online_core_ids` are the cores left online: a core the mode does not
    mention keeps its state, which is online (cores boot online, and cpu0 cannot go offline;
    old TX2 files never list CORE_0), so only an explicit 0 takes a core offline.
    """

    id: int
    name: str
    settings: Mapping[str, Mapping[str, int | str]]
    online_core_ids: tuple[int, ...]
    online_cores: int
    cpu_max_mhz: Mapping[str, float | None]
    gpu_max_mhz: float | None
    emc_max_mhz: float | None
    tpc_pg_mask: int | None
    fbp_pg_mask: int | None
    line: int = 0

    def needs_reboot_from(self, other: PowerMode) -> bool:
        """True when switching from `other` to this mode changes a GPU power-gating mask.

        See `masks_need_reboot`: nvpmodel asks for YES and reboots, jtop refuses unless forced.
        """
        return masks_need_reboot(self.tpc_pg_mask, self.fbp_pg_mask, other.tpc_pg_mask, other.fbp_pg_mask)


@dataclass(frozen=True)
class SkippedLine:
    """A line the parser did not use, or used with a caveat (a repeated mode name), and why. Kept so
    a reader can see nothing was lost or changed silently."""

    line: int
    text: str
    reason: str


@dataclass(frozen=True)
class NvpmodelConf:
    """A parsed nvpmodel.conf.

    `core_ids` are the CPU cores the file manages: the cores any mode names in CPU_ONLINE, plus
    the CPU_ONLINE param's lower-numbered cores that no mode names (cpu0 in TX2 files). Param
    cores above the highest one any mode names are dropped: NVIDIA's AGX Orin 32GB file defines
    CORE_8..11, copied from the 12-core module, but no mode touches them. If no mode names
    CPU_ONLINE, all of the param's cores count.
    """

    default_id: int | None
    params: Mapping[str, Param]
    modes: tuple[PowerMode, ...]
    core_ids: tuple[int, ...] = ()
    fan_default: str | None = None
    skipped: tuple[SkippedLine, ...] = ()

    def mode(self, id_or_name: int | str) -> PowerMode:
        """The mode with this id (int) or name (str); for a repeated name, the first mode with it.
        Raises KeyError naming the known modes."""
        for mode in self.modes:
            if (isinstance(id_or_name, int) and mode.id == id_or_name) or mode.name == id_or_name:
                return mode
        known = ", ".join(f"{m.name} ({m.id})" for m in self.modes)
        raise KeyError(f"no power mode {id_or_name!r}; known: {known}")

    @property
    def default_mode(self) -> PowerMode | None:
        return None if self.default_id is None else self.mode(self.default_id)

    @property
    def cpu_clock_names(self) -> tuple[str, ...]:
        """CLOCK params that drive CPU cpufreq policies, in file order."""
        return tuple(name for name, p in self.params.items() if _is_cpu_clock(name, p))


# --- parsing ------------------------------------------------------------------------------------


@dataclass
class _ModeDraft:
    id: int
    name: str
    line: int
    settings: dict[str, dict[str, int | str]] = field(default_factory=dict)


@dataclass
class _ParamDraft:
    name: str
    type: str
    line: int
    primary: dict[str, list[str]] = field(default_factory=dict)
    knext: dict[str, list[str]] = field(default_factory=dict)
    hwmon_attrs: dict[str, str] = field(default_factory=dict)

    def freeze(self) -> Param:
        names = list(dict.fromkeys([*self.primary, *self.knext]))
        args = {n: (*self.primary.get(n, []), *self.knext.get(n, [])) for n in names}
        return Param(self.name, self.type, args, dict(self.hwmon_attrs), self.line)


@dataclass
class _State:
    params: dict[str, _ParamDraft] = field(default_factory=dict)
    modes: list[_ModeDraft] = field(default_factory=list)
    default: tuple[str, int] | None = None
    fan_default: str | None = None
    skipped: list[SkippedLine] = field(default_factory=list)
    section: _ParamDraft | _ModeDraft | str | None = None  # str: a section whose body we skip


def parse_nvpmodel(text: str) -> NvpmodelConf:
    """Parse the text of an nvpmodel.conf. Raises NvpmodelParseError naming the line."""
    state = _State()
    lines = text.splitlines()
    for number, raw in enumerate(lines, start=1):
        line = _strip_comment(raw)
        if not line:
            continue
        if line.startswith("<"):
            _header(state, number, line)
        else:
            _body(state, number, line)
    if not state.modes:
        raise NvpmodelParseError(max(len(lines), 1), "no POWER_MODEL section (a file needs at least one)")
    return _finish(state)


def _strip_comment(raw: str) -> str:
    stripped = raw.strip()
    if stripped.startswith("#"):
        return ""
    return _INLINE_COMMENT.split(stripped, maxsplit=1)[0].strip()


def _header(state: _State, number: int, line: str) -> None:
    if not line.endswith(">"):
        raise NvpmodelParseError(number, f"section header is not closed with '>': {line!r}")
    tokens = line[1:-1].split()
    if not tokens:
        raise NvpmodelParseError(number, "empty section header '< >'")
    kind = tokens[0].upper()
    if kind not in ("PARAM", "POWER_MODEL", "PM_CONFIG", "PM_STATUS", "FAN_CONFIG"):
        state.section = kind
        state.skipped.append(SkippedLine(number, line, f"unknown section {kind}: ignored with its body"))
        return
    attrs = _attributes(number, kind, tokens[1:])
    if kind == "PARAM":
        name, ptype = _required(number, kind, attrs, "NAME"), _required(number, kind, attrs, "TYPE")
        if name in state.params:
            raise NvpmodelParseError(
                number, f"PARAM {name} is defined twice (first at line {state.params[name].line})"
            )
        state.section = state.params[name] = _ParamDraft(name, ptype.upper(), number)
    elif kind == "POWER_MODEL":
        mode = _new_mode(state, number, line, attrs)
        state.modes.append(mode)
        state.section = mode
    elif kind in ("PM_CONFIG", "PM_STATUS"):  # PM_STATUS: the 2017 TX2 spelling
        if state.default is not None:
            raise NvpmodelParseError(number, f"second {kind} (the first is at line {state.default[1]})")
        state.default = (_required(number, kind, attrs, "DEFAULT"), number)
        state.section = kind
    else:  # FAN_CONFIG: the default fan profile; any body lines belong to the fan, not to a mode
        state.fan_default = attrs.get("DEFAULT")
        state.section = kind


def _attributes(number: int, kind: str, tokens: Sequence[str]) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key or not value:
            raise NvpmodelParseError(number, f"{kind} header: expected KEY=VALUE, got {token!r}")
        key = key.upper()
        if key in attrs:
            raise NvpmodelParseError(number, f"{kind} header: {key} is given twice")
        attrs[key] = value
    return attrs


def _required(number: int, kind: str, attrs: Mapping[str, str], key: str) -> str:
    if key not in attrs:
        raise NvpmodelParseError(number, f"{kind} header has no {key}=")
    return attrs[key]


def _new_mode(state: _State, number: int, line: str, attrs: Mapping[str, str]) -> _ModeDraft:
    raw_id = _required(number, "POWER_MODEL", attrs, "ID")
    name = _required(number, "POWER_MODEL", attrs, "NAME")
    if not raw_id.isdecimal():
        raise NvpmodelParseError(number, f"POWER_MODEL ID must be a non-negative integer, got {raw_id!r}")
    mode_id = int(raw_id)
    for other in state.modes:
        if other.id == mode_id:
            raise NvpmodelParseError(
                number, f"POWER_MODEL ID={mode_id} is used twice (first at line {other.line})"
            )
    for other in state.modes:
        if other.name == name:
            reason = (
                f"POWER_MODEL NAME={name} is used twice (first at line {other.line}, ID={other.id}): "
                f"kept as ID={mode_id}, but a lookup by name finds ID={other.id}"
            )
            state.skipped.append(SkippedLine(number, line, reason))
            break
    return _ModeDraft(mode_id, name, number)


def _body(state: _State, number: int, line: str) -> None:
    section = state.section
    tokens = line.split()
    if isinstance(section, _ParamDraft):
        _param_arg(state, section, number, line, tokens)
    elif isinstance(section, _ModeDraft):
        _mode_setting(state, section, number, line, tokens)
    else:
        where = f"in the body of {section}" if section else "before any section"
        state.skipped.append(SkippedLine(number, line, f"line {where}: ignored"))


def _param_arg(state: _State, param: _ParamDraft, number: int, line: str, tokens: list[str]) -> None:
    hwmon = param.type == "HWMON"
    if len(tokens) < (3 if hwmon else 2):
        shape = "ARG_NAME HWMON_DIR ATTRIBUTE" if hwmon else "ARG_NAME PATH"
        state.skipped.append(SkippedLine(number, line, f"PARAM {param.name}: expected {shape}"))
        return
    arg = tokens[0]
    if hwmon:
        path, attr = tokens[1], "".join(tokens[2:])
    else:
        path, attr = "".join(tokens[1:]), ""  # rejoin a path wrapped by runs of spaces
    target = param.primary
    if arg.endswith(_KNEXT) and len(arg) > len(_KNEXT):
        arg, target = arg[: -len(_KNEXT)], param.knext
    target.setdefault(arg, []).append(path)
    if hwmon:
        param.hwmon_attrs.setdefault(arg, attr)


def _mode_setting(state: _State, mode: _ModeDraft, number: int, line: str, tokens: list[str]) -> None:
    if len(tokens) != 3:
        state.skipped.append(
            SkippedLine(number, line, f"POWER_MODEL {mode.name}: expected PARAM_NAME ARG_NAME VALUE")
        )
        return
    name, arg, raw = tokens
    value: int | str = int(raw) if _INT.match(raw) else raw
    param = state.params.get(name)
    if param is not None and param.type == "CLOCK" and not (isinstance(value, int) and value >= UNCAPPED):
        raise NvpmodelParseError(
            number, f"{name} {arg}: a CLOCK value must be an integer >= -1 (-1 = uncapped), got {raw!r}"
        )
    mode.settings.setdefault(name, {})[arg] = value  # a repeated write: the last one wins, as in nvpmodel


def _finish(state: _State) -> NvpmodelConf:
    params = {name: draft.freeze() for name, draft in state.params.items()}
    core_of_arg = _core_ids_by_arg(params.get("CPU_ONLINE"))
    core_ids = _managed_cores(core_of_arg, state.modes)
    modes = tuple(_derive_mode(draft, params, core_of_arg, core_ids) for draft in state.modes)
    return NvpmodelConf(
        default_id=_resolve_default(state.default, modes),
        params=params,
        modes=modes,
        core_ids=core_ids,
        fan_default=state.fan_default,
        skipped=tuple(state.skipped),
    )


def _resolve_default(default: tuple[str, int] | None, modes: Sequence[PowerMode]) -> int | None:
    if default is None:
        return None
    raw, number = default
    for mode in modes:
        if (raw.isdecimal() and mode.id == int(raw)) or mode.name == raw:
            return mode.id
    known = ", ".join(f"{m.name} ({m.id})" for m in modes)
    raise NvpmodelParseError(number, f"DEFAULT={raw} names no POWER_MODEL; known: {known}")


def _core_ids_by_arg(param: Param | None) -> dict[str, int]:
    """CPU_ONLINE arg name -> core id, from the sysfs path (`…/cpu5/online`), else the name (`CORE_5`)."""
    cores: dict[str, int] = {}
    if param is None:
        return cores
    for arg, paths in param.args.items():
        core = _core_id(arg, paths)
        if core is not None:
            cores[arg] = core
    return cores


def _core_id(arg: str, paths: Sequence[str] = ()) -> int | None:
    for path in paths:
        match = _CPU_ONLINE_PATH.search(path)
        if match:
            return int(match.group(1))
    match = _TRAILING_NUMBER.search(arg)
    return int(match.group(1)) if match else None


def _managed_cores(core_of_arg: Mapping[str, int], modes: Sequence[_ModeDraft]) -> tuple[int, ...]:
    named: set[int] = set()
    for mode in modes:
        for arg in mode.settings.get("CPU_ONLINE", {}):
            core = core_of_arg.get(arg, _core_id(arg))
            if core is not None:
                named.add(core)
    if not named:
        return tuple(sorted(set(core_of_arg.values())))
    top = max(named)
    return tuple(sorted(named | {c for c in core_of_arg.values() if c <= top}))


def _derive_mode(
    draft: _ModeDraft, params: Mapping[str, Param], core_of_arg: Mapping[str, int], core_ids: Sequence[int]
) -> PowerMode:
    offline = {
        core
        for arg, value in draft.settings.get("CPU_ONLINE", {}).items()
        if value == 0 and (core := core_of_arg.get(arg, _core_id(arg))) is not None
    }
    online = tuple(c for c in core_ids if c not in offline)
    cpu_max_mhz: dict[str, float | None] = {}
    for name, args in draft.settings.items():
        cap_khz = args.get("MAX_FREQ")
        if _is_cpu_clock(name, params.get(name)) and isinstance(cap_khz, int):
            cpu_max_mhz[name] = _mhz(cap_khz, per_mhz=1_000)
    return PowerMode(
        id=draft.id,
        name=draft.name,
        settings={name: dict(args) for name, args in draft.settings.items()},
        online_core_ids=online,
        online_cores=len(online),
        cpu_max_mhz=cpu_max_mhz,
        gpu_max_mhz=_mhz(_int_setting(draft, "GPU", "MAX_FREQ"), per_mhz=1_000_000),
        emc_max_mhz=_mhz(_int_setting(draft, "EMC", "MAX_FREQ"), per_mhz=1_000_000, zero_uncapped=True),
        tpc_pg_mask=_int_setting(draft, "TPC_POWER_GATING", "TPC_PG_MASK"),
        fbp_pg_mask=_int_setting(draft, "FBP_POWER_GATING", "FBP_PG_MASK"),
        line=draft.line,
    )


def _is_cpu_clock(name: str, param: Param | None) -> bool:
    """A CLOCK param on a cpufreq policy; an undefined `CPU_*` name (a user-edited file) counts too."""
    if param is None:
        return name.startswith("CPU_") and name != "CPU_ONLINE"
    if param.type != "CLOCK":
        return False
    paths = [p for ps in param.args.values() for p in ps]
    return name.startswith("CPU_") or any("/cpufreq/" in p for p in paths)


def _int_setting(draft: _ModeDraft, param: str, arg: str) -> int | None:
    value = draft.settings.get(param, {}).get(arg)
    return value if isinstance(value, int) else None


def _mhz(value: int | None, *, per_mhz: int, zero_uncapped: bool = False) -> float | None:
    """A cap in the file's unit as MHz; None when absent or uncapped (-1, and 0 where that means no cap)."""
    if value is None or value < 0 or (zero_uncapped and value == 0):
        return None
    return value / per_mhz


# --- the acceptance-check view ------------------------------------------------------------------


def modes_json(conf: NvpmodelConf, verbose: bool = False) -> dict[str, Any]:
    """The modes as plain JSON data: the format the acceptance check reads.

    The top level has exactly `default_id` (null only for a file without PM_CONFIG) and `modes`.
    Each mode has exactly the keys the check specifies: id, name, online_cores, cpu_max_mhz (CPU
    clock name as in the file -> MHz or null), gpu_max_mhz and tpc_pg_mask. `verbose` adds
    emc_max_mhz, fbp_pg_mask, online_core_ids and needs_reboot_from_default (null without a
    default mode), for people, not for the check.
    """
    default = conf.default_mode
    modes: list[dict[str, Any]] = []
    for m in conf.modes:
        mode: dict[str, Any] = {
            "id": m.id,
            "name": m.name,
            "online_cores": m.online_cores,
            "cpu_max_mhz": dict(m.cpu_max_mhz),
            "gpu_max_mhz": m.gpu_max_mhz,
            "tpc_pg_mask": m.tpc_pg_mask,
        }
        if verbose:
            mode["emc_max_mhz"] = m.emc_max_mhz
            mode["fbp_pg_mask"] = m.fbp_pg_mask
            mode["online_core_ids"] = list(m.online_core_ids)
            mode["needs_reboot_from_default"] = None if default is None else m.needs_reboot_from(default)
        modes.append(mode)
    return {"default_id": conf.default_id, "modes": modes}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m cotrain.power_modes.nvpmodel FILE`: print modes_json(FILE). Exit 2 on a bad file."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m cotrain.power_modes.nvpmodel NVPMODEL_CONF", file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        conf = parse_nvpmodel(path.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except NvpmodelParseError as exc:
        print(f"{path}:{exc.line}: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(modes_json(conf), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

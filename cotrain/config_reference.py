"""The experiment file's JSON Schema and its Markdown reference, both derived from the models.

Why derived and not written: a hand-kept reference drifts from the code the day a field is added.
`cotrain config schema` prints pydantic's own JSON Schema of `ExperimentConfig`; `cotrain config
reference` prints the Markdown of `docs/config.md`, and a test fails when the committed file
differs from what the models give. Every field must carry a `description` (another test), so a
new key cannot reach users undocumented.

The reference walks the models from the top: one section per model, in the order a reader meets
them in a file, each with the YAML paths it is used at and one row per key (type, default,
allowed range, unit, description). A unit comes from the key's suffix (`_ms`, `_s`, `_per_s`,
`_w`, ...), which is the naming rule of the whole code base.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from cotrain.config import ExperimentConfig
from cotrain.power_modes.policy import PowerModePolicy

UNIT_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("_deg_per_s", "degrees/s"),
    ("_per_s", "1/s"),
    ("_ms", "ms"),
    ("_s", "s"),
    ("_w", "W"),
    ("_mhz", "MHz"),
    ("_mb", "MB"),
    ("_deg", "degrees"),
    ("_percent", "%"),
)
"""Longest suffix first: `rotate_deg_per_s` is degrees per second, not seconds."""

REGENERATE = "cotrain config reference > docs/config.md"


def experiment_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12, as pydantic writes it) of an experiment file."""
    schema: dict[str, Any] = ExperimentConfig.model_json_schema()
    schema.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
    schema.setdefault("title", "cotrain experiment")
    return schema


def schema_json() -> str:
    return json.dumps(experiment_schema(), indent=2, sort_keys=False) + "\n"


def unit_of(key: str) -> str:
    for suffix, unit in UNIT_SUFFIXES:
        if key.endswith(suffix):
            return unit
    return ""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every config model an annotation can hold (through unions, lists, dicts, Annotated)."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for model in _models_in(arg):
            if model not in found:
                found.append(model)
    return found


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def _tag(model: type[BaseModel]) -> str | None:
    """`kind: synthetic`, `process: poisson`, `name: adaptive`: the discriminator a model answers to."""
    for key in ("kind", "process", "name"):
        info = model.model_fields.get(key)
        if info is not None and typing.get_origin(info.annotation) is Literal:
            values = typing.get_args(info.annotation)
            if len(values) == 1:
                return f"{key}: {values[0]}"
    return None


def _link(model: type[BaseModel]) -> str:
    tag = _tag(model)
    label = f"`{tag}`" if tag else model.__name__
    return f"[{label}](#{_anchor(model)})"


def type_text(annotation: Any) -> str:
    """A short, readable type: `int`, `"off" \\| "yield"`, `list of int`, a link to a section."""
    if annotation is type(None):
        return "null"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return _link(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_text(a) for a in args)
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"map of {type_text(args[0])} to {type_text(args[1])}"
    if inspect.isclass(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        factory = typing.cast(Callable[[], Any], info.default_factory)
        value = factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "its defaults"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def allowed_text(info: FieldInfo) -> str:
    """The range the model enforces (`1 ≤ x ≤ 4096`, `> 0`), and patterns and lengths."""
    low = high = ""
    parts: list[str] = []
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"{item.ge} ≤"
        elif isinstance(item, annotated_types.Gt):
            low = f"{item.gt} <"
        elif isinstance(item, annotated_types.Le):
            high = f"≤ {item.le}"
        elif isinstance(item, annotated_types.Lt):
            high = f"< {item.lt}"
        elif isinstance(item, annotated_types.MinLen) and item.min_length > 0:
            parts.append(f"at least {item.min_length} long")
        elif hasattr(item, "pattern") and getattr(item, "pattern", None):
            parts.append(f"matches `{item.pattern}`")
    if low or high:
        parts.insert(0, " ".join(p for p in (low, "x", high) if p))
    return "; ".join(parts)


def _cell(text: str, *, escape_bars: bool = True) -> str:
    """A table cell: one line, `|` escaped, and `<name>` shown as text rather than read as HTML."""
    text = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text.replace("\n", " "))
    return text.replace("|", "\\|") if escape_bars else text


@dataclass
class Section:
    model: type[BaseModel]
    paths: list[str] = field(default_factory=list)


def sections(root: type[BaseModel]) -> list[Section]:
    """Every model reachable from `root`, depth first in field order, with the paths it is used at.

    The config models hold no cycles, so the walk descends at every use and records each path."""
    found: dict[type[BaseModel], Section] = {}

    def walk(model: type[BaseModel], path: str) -> None:
        section = found.setdefault(model, Section(model))
        if path and path not in section.paths:
            section.paths.append(path)
        items = list(model.model_fields.items())
        if model is root:  # what runs comes first; the controller's knobs refer back to it
            items.sort(key=lambda item: item[0] != "workloads")
        for key, info in items:
            child_path = f"{path}.{key}" if path else key
            shape = typing.get_origin(_strip(info.annotation))
            if shape is list:
                child_path += "[]"
            elif shape is dict:
                child_path += ".<name>"
            for child in _models_in(info.annotation):
                walk(child, child_path)

    walk(root, "")
    return list(found.values())


def _strip(annotation: Any) -> Any:
    """The annotation without Optional and Annotated, to tell a list field from a scalar one."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _strip(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return _strip(rest[0])
    return annotation


def _doc(model: type[BaseModel]) -> str:
    text = inspect.getdoc(model) or ""
    inherited = any(text == (inspect.getdoc(base) or "") for base in model.__mro__[1:] if base is not model)
    if model.__doc__ is None or inherited:
        return ""
    return " ".join(text.split())


def _rows(model: type[BaseModel]) -> Iterator[str]:
    yield "| key | type | default | allowed | unit | description |"
    yield "|---|---|---|---|---|---|"
    for key, info in model.model_fields.items():
        cells = (
            f"`{key}`",
            type_text(info.annotation),
            default_text(info),
            allowed_text(info),
            unit_of(key),
            info.description or "",
        )
        typed = _cell(cells[1], escape_bars=False)  # type_text escapes its own separators
        yield "| " + " | ".join([_cell(cells[0]), typed, *(_cell(c) for c in cells[2:])]) + " |"


def _section_markdown(section: Section, level: str) -> list[str]:
    model = section.model
    tag = _tag(model)
    where = f"`{section.paths[0]}`" if section.paths else "The top level"
    title = where + (f" with `{tag}`" if tag else "")
    lines = [f'<a id="{_anchor(model)}"></a>', "", f"{level} {title}", ""]
    if len(section.paths) > 1:
        lines += ["Also at: " + ", ".join(f"`{p}`" for p in section.paths[1:]), ""]
    doc = _doc(model)
    if doc:
        lines += [doc, ""]
    lines += [*_rows(model), ""]
    return lines


def reference_markdown() -> str:
    """The whole of `docs/config.md`."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from cotrain/config.py by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "An experiment is one YAML file. Keys are checked strictly: an unknown key, a wrong type",
        '(`"8"` for `8`) or a value out of range is an error that names the file, the line and the',
        "key, and nothing starts. `cotrain validate FILE` checks a file; `cotrain config schema`",
        "prints the JSON Schema of the whole file for editors and other tools.",
        "",
        "Units are in the key names: `_ms` milliseconds, `_s` seconds, `_per_s` per second, `_w`",
        "watts. YAML 1.1 reads an unquoted `off`, `on`, `yes` or `no` as a boolean: write",
        '`policy: "off"`. It reads `1e3` and `1.0e3` as strings: write `1000` or `1.0e+3`.',
        "",
        "## Experiment file",
        "",
    ]
    for section in sections(ExperimentConfig):
        lines += _section_markdown(section, "###")
    lines += [
        "## Power-mode policy file",
        "",
        "Named by `platform.power_policy`; checked on its own by `cotrain validate --policy FILE`.",
        "",
    ]
    for section in sections(PowerModePolicy):
        lines += _section_markdown(section, "###")
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def undocumented_fields() -> list[str]:
    """`Model.key` for every key without a description; the reference needs none of these."""
    missing = []
    for root in (ExperimentConfig, PowerModePolicy):
        for section in sections(root):
            for key, info in section.model.model_fields.items():
                if not info.description:
                    missing.append(f"{section.model.__name__}.{key}")
    return missing

"""Fuzzed configs give an error naming the field, or a valid config: never a traceback.

Property-based tests (hypothesis) of the path a config takes from a YAML file: `load_config`, the
in-process entry point `cotrain validate` and `cotrain run` use, and `cotrain validate` itself.
Inputs are valid experiments (TINY and every shipped experiments/*.yaml) with random mutations
(a value replaced by a random JSON-ish value, a key deleted, an unknown key added), and raw YAML
text (random text and bytes, truncated experiments, non-mapping documents, aliases, deep nesting).

Only `ConfigError` may escape `load_config`, and each of its lines must read
`<file>:<line>: <field path>: <message>`. Any other exception fails the test, with hypothesis'
minimal falsifying example. Runs are derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from cotrain import config as config_module
from cotrain.cli import main
from cotrain.config import ConfigError, ExperimentConfig, dump_config, load_config
from tests.conftest import REPO, TINY

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- what a valid config looks like -------------------------------------------------------------


def _model_classes(root: type[BaseModel]) -> list[type[BaseModel]]:
    """Every pydantic model declared in cotrain/config.py (the config schema), subclasses included."""
    seen: list[type[BaseModel]] = []
    todo = [root]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        todo += cls.__subclasses__()
    return [c for c in seen if c.__module__ == config_module.__name__]


FIELD_NAMES: frozenset[str] = frozenset(
    name for cls in _model_classes(config_module.StrictModel) for name in cls.model_fields
)
TOP_LEVEL_FIELDS: frozenset[str] = frozenset(ExperimentConfig.model_fields)
# Literal values that select a union member or a mode: mutating into them reaches other models.
TAGS = [
    "synthetic", "imagefolder", "digits", "constant", "poisson", "trace", "bursty", "schedule",
    "static", "ladder", "host", "jetson", "sgd", "continual", "federated", "local", "inference",
    "drop_late", "queue_full", "off", "yield", "train", "test", "all",
]  # fmt: skip


def _services_base() -> dict[str, Any] | None:
    """TINY with its service moved into `workloads.services`, where the schema has that list."""
    if "services" not in config_module.WorkloadsConfig.model_fields:
        return None
    data = copy.deepcopy(TINY)
    service = data["workloads"].pop("inference")
    data["workloads"]["services"] = [
        {**copy.deepcopy(service), "name": "hi", "priority": 1},
        {**copy.deepcopy(service), "name": "lo", "priority": 0},
    ]
    try:
        config_module.parse_config(data)
    except ConfigError:  # the feature is not finished (or named differently): fuzz without it
        return None
    return data


def _bases() -> list[tuple[str, dict[str, Any]]]:
    bases = [("TINY", copy.deepcopy(TINY))]
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        bases.append((path.name, yaml.safe_load(path.read_text(encoding="utf-8"))))
    services = _services_base()
    if services is not None:
        bases.append(("TINY+services", services))
    return bases


BASES = _bases()


# --- random values ------------------------------------------------------------------------------

nasty_ints = st.sampled_from(
    [0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**100, -(10**100), 10**4000]
)
ints = st.one_of(st.integers(-10, 10), st.integers(), nasty_ints)
nasty_floats = st.sampled_from(
    [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324, 0.5, 1e-9, 1e20]
)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), nasty_floats)
NASTY_STRINGS = [
    "", " ", "8", "1e3", "0x10", "true", "no", "null", "~", ".inf", "-", "a: b", "- x", "[1", "{",
    "ü", "日本語", "🙂", "\x00", "a\x00b", "\u2028", "\ufeff", "\t", "\n", "x" * 300,
    "resnet18/fp32@64", "mobilenet_v3_small/int8@32", "no/such/dir", "/dev/null", "/proc/self/mem",
]  # fmt: skip
nasty_strings = st.sampled_from(NASTY_STRINGS)
strings = st.one_of(
    st.text(max_size=16), nasty_strings, st.sampled_from(TAGS), st.sampled_from(sorted(FIELD_NAMES))
)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, strings)
# YAML mapping keys need not be strings: `1: x`, `null: x`, `1.5: x`, `true: x` are all legal.
keys = st.one_of(
    st.sampled_from(sorted(FIELD_NAMES)),
    st.text(max_size=12),
    nasty_strings,
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, width=16),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
    max_leaves=12,
)


# --- mutations of a valid config ----------------------------------------------------------------


def _locations(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield prefix, node
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _locations(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _locations(child, (*prefix, i))


def _at(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


@st.composite
def mutated_configs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """(base name, a valid base config after 1-3 random replace / delete / add-key mutations)."""
    name, base = draw(st.sampled_from(BASES))
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        locations = list(_locations(data))
        operation = draw(st.sampled_from(["replace", "delete", "add"]))
        if operation == "add":
            path = draw(st.sampled_from([p for p, node in locations if isinstance(node, (dict, list))]))
            node = _at(data, path)
            if isinstance(node, dict):
                node[draw(keys)] = draw(values)
            else:
                node.insert(draw(st.integers(0, len(node))), draw(values))
            continue
        paths = [p for p, _ in locations if p]
        if not paths:  # everything was deleted already
            continue
        path = draw(st.sampled_from(paths))
        parent = _at(data, path[:-1])
        if operation == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return name, data


def to_yaml(data: Any, flow: bool | None = False, allow_unicode: bool = True) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=flow, allow_unicode=allow_unicode)


@contextlib.contextmanager
def config_file(content: str | bytes) -> Iterator[Path]:
    """A temporary `exp.yaml` holding `content` (hypothesis examples cannot use `tmp_path`)."""
    with tempfile.TemporaryDirectory(prefix="cotrain-fuzz-") as tmp:
        path = Path(tmp) / "exp.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        yield path


# --- the property -------------------------------------------------------------------------------

LOCATED = re.compile(r"(?P<line>\d+): (?P<rest>.*)", re.DOTALL)
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _starts_with_a_key(rest: str, data: Any) -> bool:
    """`rest` (`workloads.training[0].lr: msg`) starts with a top-level key followed by `.`, `[` or `:`.

    A key the document gives that is not a field (an unknown key) counts: the error names it. A key
    that is not a string (`1: x`, `null: x`) may be written as an index, `[1]: Keys should be strings`.
    """
    top_keys = list(data) if isinstance(data, dict) else []
    names = TOP_LEVEL_FIELDS | {str(k) for k in top_keys} | {"''" for k in top_keys if k == ""}
    if rest.startswith("[") and any(not isinstance(k, str) for k in top_keys):
        return True
    return any(rest.startswith(name) and rest[len(name) : len(name) + 1] in (".", "[", ":") for name in names)


def assert_names_fields(exc: ConfigError, path: Path, data: Any) -> None:
    """Every line is `<file>:<line>: <field path>: <message>`, the path starting at a top-level key;
    `<file>:<line>:<column>: not valid YAML: <message>` for a syntax error; or, for a file that is
    no mapping at all, `<file>: <message>`.

    `data` is what was written (None for raw text, whose keys are not known here).
    """
    assert exc.lines, "a ConfigError must carry at least one message"
    assert str(exc) == "\n".join(exc.lines)
    # Lines as YAML counts them: besides \n and \r it breaks at NEL, LS and PS (U+0085/2028/2029).
    text = path.read_bytes().decode("utf-8", errors="replace")
    n_lines = max(1, len(re.split("\r\n|[\n\r\x85\u2028\u2029]", text.rstrip("\r\n\x85\u2028\u2029"))))
    prefix = f"{path}:"
    for line in exc.lines:
        assert isinstance(line, str) and line.strip(), exc.lines
        assert "Traceback" not in line, line
        assert line.startswith(prefix), f"message does not name the file: {line!r}"
        syntax = re.match(r"(\d+):(\d+): not valid YAML: \S", line[len(prefix) :])
        if syntax is not None:  # a YAML syntax error: the line and column of the problem
            assert 1 <= int(syntax[1]) <= n_lines + 1 and int(syntax[2]) >= 1, line
            continue
        located = LOCATED.match(line, len(prefix))
        if located is None:
            # File-level problems (unreadable, not YAML, not a mapping) have no field and no line.
            assert not isinstance(data, dict), f"no line and field for a mapping: {line!r}"
            assert line[len(prefix) :].startswith(" ") and line[len(prefix) :].strip(), line
            continue
        assert 1 <= int(located["line"]) <= n_lines, f"line number out of range: {line!r}"
        rest = located["rest"]
        if rest.startswith("<top level>: "):
            # A cross-field check on the whole experiment: its message must name the fields.
            message = rest[len("<top level>: ") :]
            assert set(WORD.findall(message)) & FIELD_NAMES, f"no field named: {line!r}"
        elif data is not None:
            assert _starts_with_a_key(rest, data), f"the path is not a key of the config: {line!r}"
            assert ": " in rest, f"no message after the path: {line!r}"
        else:
            # Raw text: the keys are unknown here, but there must be `<path>: <message>`.
            assert re.match(r"\S.*?: \S", rest, re.DOTALL), f"no path and message: {line!r}"


def check_loads_or_names_the_field(content: str | bytes, data: Any = None) -> ExperimentConfig | None:
    """The property: load_config returns a config, or raises a ConfigError naming the fields.

    Any other exception propagates and fails the test.
    """
    with config_file(content) as path:
        try:
            config = load_config(path)
        except ConfigError as exc:
            assert_names_fields(exc, path, data)
            return None
    assert isinstance(config, ExperimentConfig)
    # `cotrain run` writes the resolved config into the run directory: that must work too.
    assert isinstance(dump_config(config), str)
    return config


def test_every_base_config_is_valid() -> None:
    """The fuzz starts from valid configs, or every mutation would only test the same error."""
    assert len(BASES) >= 2
    for name, data in BASES:
        assert check_loads_or_names_the_field(to_yaml(data), data) is not None, name


@settings(FUZZ, max_examples=150)
@given(mutated_configs(), st.booleans(), st.booleans())
def test_mutated_configs_load_or_name_the_field(
    case: tuple[str, dict[str, Any]], flow: bool, allow_unicode: bool
) -> None:
    _, data = case
    check_loads_or_names_the_field(to_yaml(data, flow=flow, allow_unicode=allow_unicode), data)


@settings(FUZZ, max_examples=4)
@given(st.sampled_from(BASES), values)
def test_any_value_in_any_single_field(base: tuple[str, dict[str, Any]], value: Any) -> None:
    """Every field of a base in turn (not sampled) gets the same random value: none is left out."""
    _, data = base
    for path, _node in list(_locations(data)):
        if not path:
            continue
        mutated = copy.deepcopy(data)
        _at(mutated, path[:-1])[path[-1]] = value
        check_loads_or_names_the_field(to_yaml(mutated), mutated)


# --- raw YAML text ------------------------------------------------------------------------------

shipped_texts = [p.read_text(encoding="utf-8") for p in sorted((REPO / "experiments").glob("*.yaml"))]
base_texts = shipped_texts + [to_yaml(data) for _, data in BASES]


@st.composite
def truncated_yaml(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(base_texts))
    return text[: draw(st.integers(0, len(text)))]


@st.composite
def spliced_yaml(draw: st.DrawFn) -> str:
    """A valid experiment with a random chunk of text inserted or a range of characters removed."""
    text = draw(st.sampled_from(base_texts))
    start = draw(st.integers(0, len(text)))
    end = draw(st.integers(start, min(len(text), start + 40)))
    return text[:start] + draw(st.text(max_size=12) | nasty_strings | st.just("")) + text[end:]


@st.composite
def nested_yaml(draw: st.DrawFn) -> str:
    """Deeply nested flow or block collections, as a document or under a real key."""
    depth = draw(st.integers(1, 700))
    style = draw(st.sampled_from(["flow-list", "flow-map", "block-list"]))
    if style == "flow-list":
        body = "[" * depth + "]" * depth
    elif style == "flow-map":
        body = "{a: " * depth + "1" + "}" * depth
    else:
        body = "\n" + "".join("  " * (i + 1) + "-\n" for i in range(depth))
    return draw(st.sampled_from(["", "duration_s: ", "workloads: "])) + body + "\n"


non_mapping_documents = st.one_of(
    st.lists(values, max_size=4), scalars, st.recursive(scalars, st.lists, max_leaves=6)
).map(lambda v: to_yaml(v))
yaml_oddities = st.sampled_from(
    [
        "",
        "\n",
        "---\n",
        "--- |\n  text\n",
        "---\nname: a\n---\nname: b\n",
        "...\n",
        "# only a comment\n",
        "~\n",
        "!!python/object/apply:os.system ['true']\n",
        "!!binary aGVsbG8=\n",
        "name: !!binary aGVsbG8=\nduration_s: 1\n",
        "duration_s: !!timestamp 2024-01-01\n",
        "? [a, b]\n: 1\n",
        "? {a: 1}\n: 1\n",
        "a: &x 1\nb: *x\n",
        "a: *undefined\n",
        "a: &x [*x]\n",
        "&x [*x]\n",
        "duration_s: &x {a: *x}\n",
        "<<: {duration_s: 1}\n",
        "duration_s: 1\nduration_s: 2\n",
        "workloads: {training: [{name: a}, {name: a, name: b}]}\n",
        "\t- tab\n",
        "\ufeffduration_s: 1\n",
        "duration_s: 1e3\n",
        "duration_s: 0x10\n",
        "duration_s: .nan\n",
        "duration_s: -.inf\n",
        "duration_s: 1_000\n",
        "duration_s: 10000000000000000000000000000000000000000000000000000\n",
        "seed: " + "9" * 5000 + "\n",  # beyond Python's int-from-string digit limit
        "%YAML 1.1\n---\nduration_s: 1\n",
        "%TAG ! tag:example.com,2000:\n---\nduration_s: !foo 1\n",
    ]
)
raw_texts = st.one_of(
    st.text(max_size=200),
    truncated_yaml(),
    spliced_yaml(),
    non_mapping_documents,
    yaml_oddities,
    nested_yaml(),
)


@settings(FUZZ, max_examples=200)
@given(raw_texts)
def test_raw_yaml_text_loads_or_gives_a_config_error(text: str) -> None:
    check_loads_or_names_the_field(text)


@settings(FUZZ, max_examples=40)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.sampled_from(base_texts).map(lambda t: t.encode("utf-16")),
        st.sampled_from(base_texts).map(lambda t: t.encode("latin-1", errors="replace") + b"\xe9\xff\n"),
    )
)
def test_raw_bytes_load_or_give_a_config_error(content: bytes) -> None:
    """A file that is not UTF-8 at all (a checkpoint passed by mistake) is a bad config too."""
    check_loads_or_names_the_field(content)


# --- the CLI in-process -------------------------------------------------------------------------


def run_validate(content: str | bytes) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with config_file(content) as path, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["validate", str(path)])
        except SystemExit as exc:  # argparse and friends: still an exit code, not a traceback
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_clean_exit(code: int, out: str, err: str) -> None:
    """`ok` and exit 0, or `cotrain: error: ...` lines and exit 2; a traceback is never printed."""
    assert code in (0, 2), (code, out, err)
    assert "Traceback" not in out + err, out + err
    if code == 0:
        assert ": ok (" in out, out
    else:
        assert "cotrain: error: " in err, err


cli_inputs = st.one_of(
    mutated_configs().map(lambda case: to_yaml(case[1])),
    raw_texts,
    st.binary(max_size=64),
)


@settings(FUZZ, max_examples=12)
@given(cli_inputs)
@example(to_yaml(TINY))
@example(to_yaml({**TINY, "duration_s": -1}))
@example(to_yaml({**TINY, "platform": {"power_policy": "a\x00b"}}))  # a path no file can have
def test_cli_validate_exits_0_or_2_without_a_traceback(content: str | bytes) -> None:
    assert_clean_exit(*run_validate(content))


TRACE_CONTENTS = [
    "",
    "0\n0.5\n1\n",
    "arrival_s\n0\n1\n",
    "arrival_s\n",
    "arrival_s,other\n1,2,3\n",
    "arrival_s\nnan\ninf\n",
    "1e999\n",
    'arrival_s\n"' + "1" * 200_000 + '"\n',  # a field beyond the csv module's size limit
]
referenced_contents = st.one_of(
    st.sampled_from(TRACE_CONTENTS),
    st.text(max_size=100),
    raw_texts,
    st.binary(max_size=64),
)


@settings(FUZZ, max_examples=10)
@given(st.sampled_from(["arrivals.path", "platform.power_policy"]), referenced_contents)
@example("arrivals.path", TRACE_CONTENTS[-1])
@example("platform.power_policy", b"\xff\xfe\n")
def test_cli_validate_with_fuzzed_referenced_files(field: str, content: str | bytes) -> None:
    """Files a config points at (an arrival trace, a power policy) are read by preflight: their
    problems are reported against the field too."""
    with tempfile.TemporaryDirectory(prefix="cotrain-fuzz-") as tmp:
        referenced = Path(tmp) / "referenced"
        if isinstance(content, bytes):
            referenced.write_bytes(content)
        else:
            referenced.write_text(content, encoding="utf-8")
        data = copy.deepcopy(TINY)
        if field == "arrivals.path":
            data["workloads"]["inference"]["arrivals"] = {"process": "trace", "path": str(referenced)}
        else:
            data["platform"] = {"power_policy": str(referenced)}
        code, out, err = run_validate(to_yaml(data))
    assert_clean_exit(code, out, err)
    if code == 2:
        assert field.split(".")[-1] in err, err


# --- inputs fuzzing found, kept as fixed cases --------------------------------------------------

FOUND: dict[str, tuple[str | bytes, Any]] = {
    "self-referencing-alias": ("a: &x [*x]\n", None),
    "nesting-deeper-than-the-recursion-limit": ("[" * 1000 + "]" * 1000 + "\n", None),
    "not-utf-8": (b"\x80\x02}q\x00.", None),  # the start of a pickle: a checkpoint given by mistake
    "empty-top-level-key": (to_yaml({**TINY, "": 1}), {**TINY, "": 1}),
}


@pytest.mark.parametrize(("content", "data"), list(FOUND.values()), ids=list(FOUND))
def test_inputs_found_by_fuzzing(content: str | bytes, data: Any) -> None:
    check_loads_or_names_the_field(content, data)

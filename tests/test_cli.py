"""CLI conventions: --version, help with defaults and examples, --force, `platform info`, and the
configuration reference generated from the models (schema, docs/config.md, no undocumented key)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cotrain.cli import build_parser, main
from cotrain.config_reference import REGENERATE, experiment_schema, reference_markdown, undocumented_fields
from tests.conftest import REPO, TINY

COTRAIN = [sys.executable, "-m", "cotrain"]


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cotrain {version('cotrain')}"


def _leaf_parsers(parser: argparse.ArgumentParser, path: str = "cotrain") -> list[tuple[str, Any]]:
    """Every runnable subcommand's parser (those that set a func)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _leaf_parsers(sub, f"{path} {name}")
    if parser.get_default("func") is not None:
        found.append((path, parser))
    return found


def test_every_subcommand_help_has_an_example_and_shows_its_defaults() -> None:
    leaves = _leaf_parsers(build_parser())
    assert len(leaves) >= 12
    for path, parser in leaves:
        text = parser.format_help()
        assert "example:\n  cotrain " in text, f"{path} --help has no example"
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                flat = " ".join(text.split())  # argparse wraps long help lines
                assert f"(default: {action.default})" in flat, f"{path} {action.option_strings[0]}"


def test_the_exit_codes_are_in_the_top_level_help() -> None:
    text = build_parser().format_help()
    assert "130 forced stop by a second signal" in text and "2 bad input" in text


def test_run_refuses_to_replace_a_previous_run_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records of a finished run are kept: repeating a command must not delete them silently."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text('{"run": {"status": "completed"}}', encoding="utf-8")
    (out / "requests.csv").write_text("request_id\n0\n", encoding="utf-8")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    started: list[bool] = []

    def fake_run(self: Any) -> dict[str, Any]:
        started.append(True)
        raise KeyboardInterrupt  # ends cmd_run right after the directory was prepared

    monkeypatch.setattr("cotrain.runtime.Runtime.run", fake_run)

    assert main(["run", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cotrain: error: output directory {str(out)!r} holds a previous run; give --force" in err
    assert (out / "requests.csv").read_text(encoding="utf-8") == "request_id\n0\n", "nothing was touched"
    assert not started

    assert main(["run", str(config), "--out", str(out), "--force"]) == 130
    assert "replacing the previous run" in capsys.readouterr().err
    assert started and not (out / "requests.csv").exists(), "--force cleared the previous run"


def test_platform_info_prints_a_table_and_json(tmp_path: Path) -> None:
    table = subprocess.run([*COTRAIN, "platform", "info"], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "cotrain platform: host" in table.stdout
    assert re.search(r"│ cpus\s+│ \d", table.stdout), table.stdout
    assert "software.extra federated" in table.stdout and "{" not in table.stdout
    raw = subprocess.run(
        [*COTRAIN, "platform", "info", "--json"], capture_output=True, text=True, timeout=120
    )
    info = json.loads(raw.stdout)
    assert info["platform"] == "host" and info["cpus"] and "telemetry_now" in info
    assert info["software"]["python"] == ".".join(map(str, sys.version_info[:3]))


def test_config_schema_is_valid_json_schema_that_every_shipped_experiment_meets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json.loads(json.dumps(experiment_schema()))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)  # raises SchemaError on an invalid schema
    validator = validator_class(schema)
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        validator.validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**TINY, "duration_s": -1})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**TINY, "unknown": 1})


def test_docs_config_md_is_what_the_models_generate() -> None:
    committed = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == reference_markdown(), f"docs/config.md is stale: run `{REGENERATE}`"


def test_every_config_key_has_a_description() -> None:
    assert undocumented_fields() == []


def test_the_reference_names_keys_that_were_documented_nowhere() -> None:
    text = reference_markdown()
    for key in ("stats_period_s", "telemetry_interval_ms", "cpu_quota", "min_improvement", "partition_id"):
        row = next((line for line in text.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, key
        description = row.rstrip(" |").rsplit(" | ", 1)[-1]
        assert len(description) > 10, row
    assert "| `eval_samples` |" in text
    assert "| `max_queue_delay_ms` | float | `10.0` | 0 ≤ x ≤ 60000 | ms |" in text


def test_the_readme_minimal_experiment_is_the_shipped_file_and_validates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"experiments/minimal\.yaml[^\n]*\n+```yaml\n(.*?)```", readme, re.DOTALL)
    assert block is not None, "README shows experiments/minimal.yaml in a yaml block"
    minimal = REPO / "experiments" / "minimal.yaml"
    assert block.group(1) == minimal.read_text(encoding="utf-8")
    assert len(block.group(1).splitlines()) <= 16
    assert main(["validate", str(minimal)]) == 0


def test_the_readme_stays_a_front_door() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "../" not in readme, "a clone has nothing beside it: the README must not point outside it"

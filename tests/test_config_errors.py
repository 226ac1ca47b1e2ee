"""Config errors a person understands, each checked on a real file through the CLI.

Every message keeps the `file:line: path: message` shape and exit 2; these cases add what makes
it actionable: a suggestion for a typo, the line and column of a YAML syntax error, the YAML 1.1
readings that surprise (`off` as false, `1e3` as text), the line of a field preflight names, a
policy file checked on its own, and an optional extra that is missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotrain.cli import main
from cotrain.extras import FEDERATED, missing_reason
from tests.conftest import REPO, TINY


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Any) -> None:
        raise AssertionError("a run was started although the input is bad")

    monkeypatch.setattr("cotrain.runtime.Runtime.run", refuse)


def errors(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line.removeprefix("cotrain: error: ") for line in err.splitlines() if "error:" in line]


def tiny_text() -> str:
    return yaml.safe_dump(TINY, sort_keys=False)


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_an_unknown_key_suggests_the_key_that_was_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tiny_text().replace("  checkpoint_every_steps: 20", "  checkpoint_evry_steps: 20")
    path = write(tmp_path, text)
    code, lines = errors(capsys, "validate", str(path))
    assert code == 2
    assert lines == [
        f"{path}:{line_of(text, 'checkpoint_evry_steps')}: workloads.training[0].checkpoint_evry_steps: "
        "unknown key; did you mean 'checkpoint_every_steps'?"
    ]


def test_an_unknown_key_far_from_any_lists_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tiny_text().replace("  batching:\n", "  batching:\n      zzz: 1\n")
    path = write(tmp_path, text)
    code, (line,) = errors(capsys, "validate", str(path))
    assert code == 2
    assert line == (
        f"{path}:{line_of(text, 'zzz')}: workloads.inference.batching.zzz: "
        "unknown key; known here: max_batch_size, max_queue_delay_ms"
    )


def test_an_unknown_controller_name_suggests_the_name_that_was_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not pydantic's "Input tag 'adaptiv' found using 'name' does not match any of the expected tags"."""
    text = tiny_text().replace("name: static", "name: adaptiv")
    path = write(tmp_path, text)
    code, (line,) = errors(capsys, "validate", str(path))
    assert code == 2
    assert line.startswith(f"{path}:{line_of(text, 'adaptiv')}: controller.name: unknown name 'adaptiv'; ")
    assert "did you mean 'adaptive'?" in line and "(one of: static, schedule, ladder," in line


def test_a_union_without_its_tag_key_says_which_key_and_spots_the_wrong_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`arrivals: {kind: poisson}`: pydantic says "Unable to extract tag using discriminator 'process'"."""
    text = tiny_text().replace("process: poisson", "kind: poisson")
    path = write(tmp_path, text)
    code, (line,) = errors(capsys, "validate", str(path))
    assert code == 2
    assert line == (
        f"{path}:{line_of(text, 'kind: poisson')}: workloads.inference.arrivals: needs process: one of "
        "constant, poisson, trace, bursty, schedule; did you mean process: poisson (not kind:)?"
    )
    assert "discriminator" not in line


def test_a_dataset_kind_typo_inside_a_list_is_suggested(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tiny_text()
    at = text.index("kind: synthetic", text.index("training:"))
    text = text[:at] + "kind: synthetc" + text[at + len("kind: synthetic") :]
    path = write(tmp_path, text)
    code, (line,) = errors(capsys, "validate", str(path))
    assert code == 2
    assert line.startswith(f"{path}:{line_of(text, 'synthetc')}: workloads.training[0].dataset.kind: ")
    assert "did you mean 'synthetic'?" in line


def test_a_yaml_syntax_error_names_the_line_and_column_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "name: t\nduration_s: 3\nworkloads:\n  inference:\n    model: {name: resnet18\n    slo_ms: 5\n"
    path = write(tmp_path, text)
    code, lines = errors(capsys, "validate", str(path))
    assert code == 2
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith(f"{path}:6:11: not valid YAML: ")
    assert "started at line 5, column 12" in lines[0], "the flow mapping left open is named too"


def test_an_unquoted_off_is_explained_as_yaml_reading_it_as_false(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tiny_text().replace("    batch_size: 8\n", "    batch_size: 8\n    interleave: {policy: off}\n")
    path = write(tmp_path, text)
    code, (line,) = errors(capsys, "validate", str(path))
    assert code == 2
    assert line.startswith(
        f"{path}:{line_of(text, 'policy: off')}: workloads.training[0].interleave.policy: "
    )
    assert "YAML reads an unquoted off as the boolean false" in line
    assert 'write "off" in quotes' in line
    quoted = write(tmp_path, text.replace("policy: off", 'policy: "off"'), "quoted.yaml")
    assert main(["validate", str(quoted)]) == 0


def test_an_exponent_without_a_dot_is_explained_as_yaml_reading_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tiny_text().replace("rate_per_s: 30", "rate_per_s: 1e3")
    path = write(tmp_path, text)
    code, (line,) = errors(capsys, "validate", str(path))
    assert code == 2
    assert line.startswith(f"{path}:{line_of(text, '1e3')}: workloads.inference.arrivals.rate_per_s: ")
    assert (
        "YAML reads 1e3 as text (its floats need a dot and a signed exponent): write 1000 or 1.0e+3" in line
    )
    for fixed in ("1000", "1.0e+3"):
        assert main(["validate", str(write(tmp_path, text.replace("1e3", fixed), "fixed.yaml"))]) == 0


def test_a_quoted_value_gets_no_yaml_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A string in quotes was read as written: the hint would mislead."""
    text = tiny_text().replace("rate_per_s: 30", "rate_per_s: '1e3'")
    code, (line,) = errors(capsys, "validate", str(write(tmp_path, text)))
    assert code == 2 and "valid number" in line and "YAML reads" not in line


def test_preflight_errors_carry_the_line_of_the_field_they_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tiny_text()
    at = text.index("name: mobilenet_v3_small")
    text = text[:at] + "name: resnet9000" + text[at + len("name: mobilenet_v3_small") :]
    path = write(tmp_path, text)
    code, (line,) = errors(capsys, "validate", str(path))
    assert code == 2
    assert line.startswith(
        f"{path}:{line_of(text, 'resnet9000')}: workloads.inference.model.name: "
        "unknown torchvision classification model 'resnet9000'"
    )


def test_a_missing_cpu_is_named_with_the_line_of_its_list_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tiny_text().replace("    batch_size: 8\n", "    batch_size: 8\n    cpus: [0, 4095]\n")
    path = write(tmp_path, text)
    code, (line,) = errors(capsys, "run", str(path), "--out", str(tmp_path / "run"))
    assert code == 2
    assert line.startswith(f"{path}:{line_of(text, '4095')}: workloads.training[0].cpus: CPU(s) [4095]")
    assert not (tmp_path / "run").exists()


def test_validate_policy_checks_a_policy_file_on_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = REPO / "power_modes" / "policy-example.yaml"
    assert main(["validate", "--policy", str(good)]) == 0
    assert capsys.readouterr().out.startswith(f"{good}: ok (power-mode policy: MAXN, MODE_50W; budget 40 W")
    text = "board: agx-orin-64gb\nallowed_modes: [MAXN, MODE_30W]\nmin_dwel_s: 10\n"
    path = write(tmp_path, text, "policy.yaml")
    code, lines = errors(capsys, "validate", "--policy", str(path))
    assert code == 2
    assert lines == [f"{path}:3: min_dwel_s: unknown key; did you mean 'min_dwell_s'?"]
    fixed = write(tmp_path, text.replace("min_dwel_s", "min_dwell_s"), "policy.yaml")
    code, (line,) = errors(capsys, "validate", "--policy", str(fixed))
    assert code == 2 and line.startswith(f"{fixed}:2: allowed_modes[1]: MODE_30W (TPC mask 240")


def test_a_policy_given_as_an_experiment_and_the_reverse_say_which_command_to_use(
    capsys: pytest.CaptureFixture[str],
) -> None:
    policy = str(REPO / "power_modes" / "policy-example.yaml")
    experiment = str(REPO / "experiments" / "quickstart.yaml")
    assert errors(capsys, "validate", policy) == (
        2,
        [f"{policy}: this is a power-mode policy, not an experiment: cotrain validate --policy {policy}"],
    )
    assert errors(capsys, "validate", "--policy", experiment) == (
        2,
        [f"{experiment}: this is an experiment, not a power-mode policy: cotrain validate {experiment}"],
    )


def test_a_federated_config_without_flower_is_refused_with_the_install_command(tmp_path: Path) -> None:
    """flwr really absent from the interpreter (blocked before import), not a mocked check."""
    code = (
        "import sys; sys.modules['flwr'] = None; from cotrain.cli import main; "
        f"sys.exit(main(['validate', {str(REPO / 'experiments' / 'federated-demo.yaml')!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("cotrain: error: ")]
    demo = REPO / "experiments" / "federated-demo.yaml"
    text = demo.read_text(encoding="utf-8")
    kinds = [i for i, line in enumerate(text.splitlines(), 1) if "kind: federated" in line]
    assert lines == [
        f"cotrain: error: {demo}:{n}: workloads.training[{i}].kind: federated training jobs "
        "(kind: federated) need flwr, which is not installed: pip install 'cotrain[federated]'"
        for i, n in enumerate(kinds)
    ]


def test_an_old_python_is_told_the_federated_extra_needs_311() -> None:
    reason = missing_reason(FEDERATED, python=(3, 10))
    assert reason is not None and "needs Python >= 3.11 (this is 3.10)" in reason


def test_an_explicit_jtop_without_jetson_stats_is_refused_with_the_install_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cotrain import extras

    monkeypatch.setattr(extras, "installed", lambda extra: extra.module != "jtop")
    data = {**TINY, "platform": {"kind": "jetson", "root": str(tmp_path / "no-device"), "jtop": True}}
    path = write(tmp_path, yaml.safe_dump(data, sort_keys=False))
    code, lines = errors(capsys, "validate", str(path))
    assert code == 2
    jtop_lines = [line for line in lines if "platform.jtop" in line]
    assert jtop_lines and "pip install 'cotrain[jetson]'" in jtop_lines[0]
    assert "or set jtop: false" in jtop_lines[0]

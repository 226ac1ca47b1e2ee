"""Bad configs fail before anything starts: exit code 2, a message naming the field path, the
file and the line. Good configs (every shipped experiment) validate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cotrain.cli import main
from cotrain.config import ConfigError, load_config, parse_config
from tests.conftest import REPO, TINY


def write(tmp_path: Path, data: Any, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8"
    )
    return path


def errors_for(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.lines


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_experiment_validates(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(path)]) == 0
    assert ": ok (" in capsys.readouterr().out


def test_unknown_key_names_path_file_and_line(tmp_path: Path) -> None:
    text = yaml.safe_dump(TINY, sort_keys=False).replace(
        "    batching:\n", "    batching:\n      max_bach_size: 8\n"
    )
    lines = errors_for(tmp_path, text)
    assert len(lines) == 1
    line_no = text.splitlines().index("      max_bach_size: 8") + 1
    assert (
        lines[0] == f"{tmp_path / 'exp.yaml'}:{line_no}: workloads.inference.batching.max_bach_size: "
        "unknown key; did you mean 'max_batch_size'?"
    )


def test_wrong_type_is_not_coerced(tmp_path: Path, tiny: dict[str, Any]) -> None:
    tiny["workloads"]["inference"]["batching"]["max_batch_size"] = "8"
    (line,) = errors_for(tmp_path, yaml.safe_dump(tiny))
    assert "workloads.inference.batching.max_batch_size" in line
    assert "valid integer" in line and "'8'" in line


def test_out_of_range_value_names_the_list_index(tmp_path: Path, tiny: dict[str, Any]) -> None:
    tiny["workloads"]["training"][0]["num_workers"] = -1
    (line,) = errors_for(tmp_path, yaml.safe_dump(tiny))
    assert "workloads.training[0].num_workers: Input should be greater than or equal to 0 (got -1)" in line


def test_union_tags_do_not_appear_in_the_path(tmp_path: Path, tiny: dict[str, Any]) -> None:
    tiny["workloads"]["inference"]["dataset"]["num_samples"] = 0
    (line,) = errors_for(tmp_path, yaml.safe_dump(tiny))
    assert ": workloads.inference.dataset.num_samples: " in line


def test_unknown_union_tag_is_named(tmp_path: Path, tiny: dict[str, Any]) -> None:
    tiny["workloads"]["inference"]["arrivals"]["process"] = "gaussian"
    (line,) = errors_for(tmp_path, yaml.safe_dump(tiny))
    assert "workloads.inference.arrivals" in line and "constant" in line and "poisson" in line


def test_missing_required_field_points_at_its_parent(tmp_path: Path, tiny: dict[str, Any]) -> None:
    del tiny["workloads"]["inference"]["slo_ms"]
    (line,) = errors_for(tmp_path, yaml.safe_dump(tiny))
    assert line.endswith("workloads.inference.slo_ms: required field is missing")


def test_every_problem_is_reported_at_once(tmp_path: Path, tiny: dict[str, Any]) -> None:
    tiny["duration_s"] = 0
    tiny["workloads"]["training"][0]["lr"] = 0
    lines = errors_for(tmp_path, yaml.safe_dump(tiny))
    assert len(lines) == 2


def test_duplicate_keys_are_errors_not_last_wins(tmp_path: Path) -> None:
    (line,) = errors_for(tmp_path, "duration_s: 3\nduration_s: 5\n")
    assert line.endswith("exp.yaml:2: duration_s: duplicate key (first at line 1)")


def test_malformed_yaml_and_non_mapping(tmp_path: Path) -> None:
    assert "not valid YAML" in errors_for(tmp_path, "a: [1, 2\n")[0]
    assert "top level must be a mapping" in errors_for(tmp_path, "- 1\n- 2\n")[0]


def test_cross_field_checks(tmp_path: Path, tiny: dict[str, Any]) -> None:
    tiny["workloads"]["inference"]["queue_capacity"] = 2
    assert (
        "queue_capacity (2) must be >= batching.max_batch_size (4)"
        in errors_for(tmp_path, yaml.safe_dump(tiny))[0]
    )
    tiny = yaml.safe_load(yaml.safe_dump(TINY))
    tiny["workloads"]["training"].append(dict(tiny["workloads"]["training"][0]))
    assert "repeated: cl" in errors_for(tmp_path, yaml.safe_dump(tiny))[0]
    tiny = yaml.safe_load(yaml.safe_dump(TINY))
    tiny["controller"] = {
        "name": "schedule",
        "steps": [{"at_s": 1, "set": {"training": {"nope": {"paused": True}}}}],
    }
    assert "unknown training job(s) nope" in errors_for(tmp_path, yaml.safe_dump(tiny))[0]


def test_overrides_are_validated_too(tmp_path: Path) -> None:
    path = write(tmp_path, TINY)
    assert load_config(path, {"duration_s": 7.5}).duration_s == 7.5
    with pytest.raises(ConfigError, match="duration_s"):
        load_config(path, {"duration_s": -1})


# --- the CLI: exit code 2, nothing started ------------------------------------------------------


def test_validate_exit_codes(
    tmp_path: Path, tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(write(tmp_path, tiny))]) == 0
    tiny["workloads"]["inference"]["slo_ms"] = -5
    assert main(["validate", str(write(tmp_path, tiny))]) == 2
    err = capsys.readouterr().err
    assert "workloads.inference.slo_ms" in err and err.startswith("cotrain: error: ")
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2


def test_missing_dataset_directory_fails_before_any_process_starts(
    tmp_path: Path, tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    tiny["workloads"]["training"][0]["dataset"] = {"kind": "imagefolder", "root": str(tmp_path / "nope")}
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, tiny)), "--out", str(out)]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1
    assert "workloads.training[0].dataset.root" in err_lines[0] and "does not exist" in err_lines[0]
    assert not out.exists(), "nothing may be created or started for a bad config"


def test_unknown_model_and_missing_weights_fail_preflight(
    tmp_path: Path, tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    tiny["workloads"]["inference"]["model"] = {"name": "resnet19"}
    tiny["workloads"]["training"][0]["model"]["weights"] = str(tmp_path / "w.pt")
    assert main(["validate", str(write(tmp_path, tiny))]) == 2
    err = capsys.readouterr().err
    assert "workloads.inference.model.name: unknown torchvision classification model 'resnet19'" in err
    assert "workloads.training[0].model.weights" in err


def test_non_run_output_directory_is_refused(tmp_path: Path, tiny: dict[str, Any]) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not touch")
    assert main(["run", str(write(tmp_path, tiny)), "--out", str(out)]) == 2
    assert (out / "thesis.tex").read_text() == "do not touch"


# --- fuzzing: an error naming a field, or a valid config; never a traceback ---------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=8)
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = [p for p in _paths(TINY) if p]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS), scalars, st.booleans())
def test_fuzzed_configs_never_crash_the_loader(path: tuple[Any, ...], value: Any, add_key: bool) -> None:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    node = data
    for key in path[:-1]:
        node = node[key]
    if add_key and isinstance(node, dict):
        node["zz_unknown"] = value
    else:
        node[path[-1]] = value
    try:
        parse_config(data, source="fuzz.yaml")
    except ConfigError as exc:
        assert exc.lines and all(line.startswith("fuzz.yaml") for line in exc.lines)


def test_a_continual_job_cannot_deploy_into_a_variant_ladder(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["workloads"]["inference"]["variants"] = ["mobilenet_v3_small/fp32@32", "mobilenet_v3_small/int8@32"]
    data["workloads"]["training"][0]["kind"] = "continual"
    assert "deploying into a ladder is not supported" in errors_for(tmp_path, yaml.safe_dump(data))[0]


def test_a_ladder_entry_this_machine_cannot_run_is_a_preflight_error(
    tmp_path: Path, tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    tiny["workloads"]["inference"]["variants"] = ["mobilenet_v3_small/fp32@32", "resnet19/fp32@32"]
    assert main(["validate", str(write(tmp_path, tiny))]) == 2
    assert "workloads.inference.variants" in capsys.readouterr().err

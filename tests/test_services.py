"""Several inference services in one run: config, per-service records and summaries."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotrain.config import ConfigError, load_config
from cotrain.records import read_csv_rows
from cotrain.summary import compute_summary, inference_summary
from tests.conftest import TINY
from tests.test_e2e import run_cli


def two_services(duration_s: float = 3) -> dict[str, Any]:
    """TINY with its inference service split into a high- and a low-priority one."""
    config = copy.deepcopy(TINY)
    inference = config["workloads"].pop("inference")
    config["duration_s"] = duration_s
    config["workloads"]["services"] = [
        {**copy.deepcopy(inference), "name": "low", "priority": 0, "min_throughput_per_s": 5.0},
        {**copy.deepcopy(inference), "name": "high", "priority": 10, "instances": 2},
    ]
    return config


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def errors(tmp_path: Path, data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    return "\n".join(info.value.lines)


def test_services_parse_and_the_controller_acts_on_the_highest_priority(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, two_services()))
    services = config.workloads.inference_services()
    assert [(s.name, s.worker, s.priority) for s in services] == [
        ("low", "inference:low", 0),
        ("high", "inference:high", 10),
    ]
    primary = config.workloads.primary_inference()
    assert primary is not None and primary.name == "high" and primary.config.instances == 2


def test_service_config_errors_name_the_field(tmp_path: Path) -> None:
    both = two_services()
    both["workloads"]["inference"] = copy.deepcopy(TINY["workloads"]["inference"])
    assert "either inference (one service) or services" in errors(tmp_path, both)

    dupes = two_services()
    dupes["workloads"]["services"][1]["name"] = "low"
    assert "service names must be unique, repeated: low" in errors(tmp_path, dupes)

    bad = two_services()
    bad["workloads"]["services"][0]["instances"] = 0
    assert "workloads.services[0].instances" in errors(tmp_path, bad)

    bad = two_services()
    bad["workloads"]["services"][1]["variants"] = ["resnet18/fp16@64"]
    assert "workloads.services[1].variants[0]" in errors(tmp_path, bad)

    bad = two_services()
    bad["workloads"]["services"][0]["device"] = "tpu"
    assert "workloads.services[0].device" in errors(tmp_path, bad)


def test_a_continual_job_cannot_deploy_into_one_of_several_services(tmp_path: Path) -> None:
    config = two_services()
    config["workloads"]["training"][0]["kind"] = "continual"
    assert "set continual.deploy_to: null" in errors(tmp_path, config)


def test_cuda_where_there_is_none_is_a_clear_preflight_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = two_services()
    config["workloads"]["services"][0]["device"] = "cuda"
    result = run_cli("validate", str(write(tmp_path, config)))
    assert result.returncode == 2
    assert "workloads.services[0].device: cuda is not available" in result.stderr


@pytest.mark.slow
def test_two_services_run_side_by_side_with_their_own_records_and_summaries(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("run", str(write(tmp_path, two_services(duration_s=4))), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary == compute_summary(out), "the summary is recomputable from the records"
    assert set(summary["services"]) == {"low", "high"}
    single_keys = set(inference_summary([], 100.0, None))  # what a single-service run's `inference` has
    assert single_keys <= set(summary["services"]["low"]), "the same keys as one service has"
    assert set(summary["services"]["low"]) == set(summary["inference"]) - {"service"}
    assert summary["inference"]["service"] == "high"  # the controller's service is the summary's
    for name in ("low", "high"):
        rows = read_csv_rows(out / "services" / name / "requests.csv")
        req = summary["services"][name]["requests"]
        assert req["arrived"] == len(rows) > 0
        assert req["served"] + req["failed"] + req["shed"] == req["arrived"]
        assert sorted(int(r["request_id"]) for r in rows) == list(range(len(rows)))
    assert summary["services"]["low"]["min_throughput_per_s"] == 5.0
    assert summary["services"]["low"]["floor_met"] is not None
    for name in ("low", "high"):  # each service's own queue and arrival rate, once per tick
        queue = read_csv_rows(out / "services" / name / "queue.csv")
        reported = [r for r in queue if r["queue_depth"] != ""]
        assert len(queue) >= 4 and reported, "a row per control tick (0.5 s over 4 s)"
        assert all(int(r["queue_depth"]) >= 0 for r in reported)
        assert any(float(r["arrival_rate_per_s"]) > 0 for r in reported)
        assert all((r["queue_depth"] == "") == (r["arrival_rate_per_s"] == "") for r in queue)
    processes = json.loads((out / "processes.json").read_text())
    assert {"inference:low", "inference:high"} <= set(processes)
    assert not (out / "requests.csv").exists()

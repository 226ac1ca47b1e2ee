"""End to end on real processes: the continual demo deploys to the live service, and the
federated demo runs FedAvg rounds over loopback while the service keeps serving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotrain.records import read_csv_rows, read_jsonl
from tests.conftest import REPO
from tests.test_e2e import check_accounting, run_cli


def shortened(name: str, tmp_path: Path, edit: Any) -> Path:
    data = yaml.safe_load((REPO / "experiments" / name).read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_continual_demo_deploys_retrained_models_without_failing_a_request(tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["workloads"]["training"][0]["continual"]["window_s"] = 6

    out = tmp_path / "run"
    result = run_cli(
        "run", str(shortened("continual-demo.yaml", tmp_path, edit)), "--duration", "26", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    summary = check_accounting(out)
    cl = summary["training"]["cl"]
    assert cl["kind"] == "continual" and cl["windows"] >= 2
    assert cl["deployments"] >= 1
    assert summary["inference"]["requests"]["failed"] == 0
    versions = {int(r["model_version"]) for r in read_csv_rows(out / "requests.csv")}
    assert max(versions) >= 1, "requests were served by a deployed version"
    swaps = [e for e in read_jsonl(out / "events.jsonl") if e["event"] == "model_swapped"]
    assert swaps and all(e["prepare_ms"] >= 0 for e in swaps)


@pytest.mark.slow
def test_federated_demo_completes_rounds_with_two_clients_beside_inference(tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        for job in data["workloads"]["training"]:
            job["federated"]["local_steps"] = 3  # a round is then mostly Flower's own round trip

    out = tmp_path / "run"
    result = run_cli(
        # With 3 local steps a round takes about 15 s here (two clients, a SuperLink and the
        # ClientApp processes on 2 cores), and the first about 18 s after the run starts on a
        # slow day (2026-12-02); 70 s leaves room for one on a loaded machine.
        "run",
        str(shortened("federated-demo.yaml", tmp_path, edit)),
        "--duration",
        "70",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    summary = check_accounting(out)
    assert summary["federation"]["rounds_completed"] >= 1
    assert summary["federation"]["clients_last_round"] == 2 or summary["federation"]["rounds_completed"] >= 2
    for job in ("fl-a", "fl-b"):
        assert summary["training"][job]["kind"] == "federated"
        assert summary["training"][job]["rounds_completed"] >= 1
    events = [e["event"] for e in read_jsonl(out / "events.jsonl")]
    assert "federation_started" in events and "federation_stopped" in events
    assert json.loads((out / "summary.json").read_text())["inference"]["requests"]["failed"] == 0

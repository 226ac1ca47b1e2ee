"""`cotrain bench overhead` writes overhead.json with per-request figures (the target itself is
checked by running the benchmark, not by a timed test)."""

from __future__ import annotations

import json
from pathlib import Path

from cotrain.cli import main


def test_overhead_bench_writes_its_figures(tmp_path: Path) -> None:
    assert (
        main(["bench", "overhead", "--out", str(tmp_path / "b"), "--requests", "200", "--rate", "500"]) == 0
    )
    result = json.loads((tmp_path / "b" / "overhead.json").read_text())
    o = result["overhead_ms"]
    assert result["requests"] == 200
    assert 0 < o["p50"] <= o["p99"] <= o["max"]
    assert o["p99"] < 1000, "a figure in milliseconds, not seconds"

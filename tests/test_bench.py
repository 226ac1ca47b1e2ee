"""`cotrain bench`: rows read back from run records, the oracle's pick, and the files it writes.

The runs themselves are replaced by a fake that writes the records a run would (summary.json,
decisions.jsonl, telemetry.csv) from a made-up device model, so the bookkeeping is tested in
milliseconds; a real bench over real processes is `experiments/bench-cpu.yaml`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotrain.bench import (
    BenchError,
    bench_figures,
    best_static,
    oracle_grid,
    plot_bench,
    row_from_run,
    run_bench,
)
from cotrain.cli import main
from cotrain.config import parse_config
from tests.conftest import TINY


def scenario(**bench: Any) -> Any:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["bench"] = {"oracle": {"max_batch_size": [2, 4, 8], "gate_policy": ["off", "yield"]}, **bench}
    return parse_config(data)


def fake_device(data: dict[str, Any]) -> tuple[float | None, float | None, float, float]:
    """(slo_attainment, p99 ms, training samples/s, inference busy share) of a made-up device for
    one configuration: inference alone is busy a tenth of the time, training alone does 100/s."""
    inference = data["workloads"].get("inference")
    training = data["workloads"].get("training") or []
    if inference is None:
        return None, None, 100.0, 0.0
    b = inference["batching"]["max_batch_size"]
    if not training:
        return 1.0, 40.0, 0.0, 0.1
    gate = training[0].get("interleave", {}).get("policy", "off")
    p99 = 60.0 + 20 * b + (80 if gate == "off" else 0)
    attainment = 1.0 if p99 <= 200 else 0.9
    return attainment, p99, 50.0 + 5 * b - (12 if gate == "yield" else 0), 0.4 - 0.02 * b


def fake_run(data: dict[str, Any], out: Path, duration_s: float) -> None:
    out.mkdir(parents=True)
    attainment, p99, samples, busy = fake_device(data)
    summary: dict[str, Any] = {"run": {"duration_s": 10.0}, "training": {"cl": {"samples_per_s": samples}}}
    if attainment is not None:
        summary["inference"] = {"slo_ms": 200.0, "slo_attainment": attainment, "latency_ms": {"p99": p99}}
    (out / "summary.json").write_text(json.dumps(summary))
    knobs = [{"inference": {"max_batch_size": n}} for n in (1, 2, 2, 3)]
    if data["controller"]["name"] == "static":
        knobs = knobs[:1]
    (out / "decisions.jsonl").write_text("".join(json.dumps({"knobs": k}) + "\n" for k in knobs))
    (out / "telemetry.csv").write_text("t_s,power_w\n0.5,4.0\n1.0,6.0\n1.5,\n")
    # two requests per batch, ten batches spread over the 10 s run: busy * 10 s in all
    lines = ["request_id,start_s,end_s"]
    for k in range(10):
        start, end = 100.0 + k, 100.0 + k + busy
        lines += [f"{2 * k},{start},{end}", f"{2 * k + 1},{start},{end}"]
    (out / "requests.csv").write_text("\n".join(lines) + "\n")


def test_rows_come_from_the_run_records(tmp_path: Path) -> None:
    data = {"controller": {"name": "aimd"}, "workloads": {"inference": {"batching": {"max_batch_size": 4}}}}
    data["workloads"]["training"] = [{"interleave": {"policy": "yield"}}]
    fake_run(data, tmp_path / "r", 1.0)
    row = row_from_run("aimd", tmp_path / "r", 0.99)
    assert row.configs_profiled == 3  # four decisions, three distinct knob settings
    assert row.power_w == 5.0 and row.meets_slo and row.latency_ms_p99 == 140.0
    assert row.training_samples_per_s == 58.0


def test_the_oracle_grid_covers_every_static_configuration() -> None:
    grid = oracle_grid(scenario())
    assert len(grid) == 6
    seen = {
        (
            d["workloads"]["inference"]["batching"]["max_batch_size"],
            d["workloads"]["training"][0]["interleave"]["policy"],
        )
        for _, d in grid
    }
    assert seen == {(b, g) for b in (2, 4, 8) for g in ("off", "yield")}
    assert all(d["controller"]["name"] == "static" and "bench" not in d for _, d in grid)
    for _, d in grid:
        parse_config(d)  # every grid point is itself a valid experiment


def test_a_bench_writes_json_markdown_and_plots_with_an_oracle_row(tmp_path: Path) -> None:
    result = run_bench(scenario(), tmp_path / "out", "tiny.yaml", run_one=fake_run)
    rows = {r["controller"]: r for r in result["rows"]}
    assert list(rows) == [
        "static",
        "naive",
        "sequential",
        "aimd",
        "adaptive",
        "training-alone",
        "inference-alone",
        "oracle",
    ]
    keys = {"controller", "slo_attainment", "latency_ms_p99", "training_samples_per_s", "configs_profiled"}
    assert keys | {"meets_slo", "power_w", "limit_ratio", "oracle_ratio", "repeats"} <= set(rows["oracle"])
    # Meeting the SLO (p99 <= 200 ms): b=2 off (180 ms, 60/s), b=2 and b=4 with yield (100 and
    # 140 ms, 48/s and 58/s). b=4 off and both b=8 break it, although they train faster.
    assert rows["oracle"]["detail"] == "best static: b=2, gate off"
    assert rows["oracle"]["training_samples_per_s"] == 60.0 and rows["oracle"]["configs_profiled"] == 6
    on_disk = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert "| oracle (best static: b=2, gate off) |" in (tmp_path / "out" / "bench.md").read_text()
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["bench-p99.png", "bench-training.png"]
    assert all((tmp_path / "out" / p).stat().st_size > 5_000 for p in pngs)


def test_every_row_has_its_limit_ratio_and_oracle_ratio(tmp_path: Path) -> None:
    result = run_bench(scenario(), tmp_path / "out", "tiny.yaml", run_one=fake_run)
    rows = {r["controller"]: r for r in result["rows"]}
    # the oracle (b=2, gate off) trains 60/s while inference is busy 0.36 of the run; alone,
    # training does 100/s: 60 / (100 x 0.64)
    assert rows["oracle"]["inference_busy"] == pytest.approx(0.36)
    assert rows["oracle"]["limit_ratio"] == pytest.approx(60 / 64, abs=1e-4)
    assert rows["oracle"]["oracle_ratio"] == 1.0
    assert rows["training-alone"]["limit_ratio"] == 1.0 and rows["training-alone"]["inference_busy"] is None
    assert rows["inference-alone"]["limit_ratio"] is None and rows["inference-alone"]["oracle_ratio"] == 0.0
    assert rows["inference-alone"]["slo_attainment"] == 1.0
    static_b = parse_config(yaml.safe_load(yaml.safe_dump(TINY))).workloads.inference
    assert static_b is not None
    b = static_b.batching.max_batch_size
    assert rows["static"]["oracle_ratio"] == pytest.approx((50 + 5 * b) / 60, abs=1e-4)
    assert result["oracle_grid_size"] == 6 and len(result["oracle_grid"]) == 6
    assert "limit ratio" in (tmp_path / "out" / "bench.md").read_text()


def test_repeats_run_every_row_k_times_interleaved_and_report_medians(tmp_path: Path) -> None:
    order: list[str] = []
    draws = iter([0.8, 1.0, 1.3] * 100)

    def noisy_run(data: dict[str, Any], out: Path, duration_s: float) -> None:
        fake_run(data, out, duration_s)
        order.append(str(out.relative_to(tmp_path / "out" / "runs")))
        summary = json.loads((out / "summary.json").read_text())
        summary["training"]["cl"]["samples_per_s"] *= next(draws)
        (out / "summary.json").write_text(json.dumps(summary))

    result = run_bench(
        scenario(), tmp_path / "out", "tiny.yaml", run_one=noisy_run, controllers=["static"], repeats=3
    )
    rows_per_round = 1 + 2 + 6  # static, the two reference rows, the grid
    assert len(order) == 3 * rows_per_round
    rounds = [order[i * rows_per_round : (i + 1) * rows_per_round] for i in range(3)]
    assert [r[0] for r in rounds] == ["static/rep-1", "training-alone/rep-2", "inference-alone/rep-3"]
    for i, r in enumerate(rounds):
        assert all(p.endswith(f"rep-{i + 1}") for p in r) and len(set(p.split("/")[0] for p in r)) == 9
    rows = {r["controller"]: r for r in result["rows"]}
    alone = rows["training-alone"]
    assert len(alone["repeats"]) == 3 and result["repeats"] == 3
    draws_seen = sorted(x["training_samples_per_s"] for x in alone["repeats"])
    assert alone["training_samples_per_s"] == draws_seen[1], "the median of the three"
    assert alone["training_samples_per_s_range"] == [draws_seen[0], draws_seen[2]]
    assert rows["oracle"]["configs_profiled"] == 6
    assert "ran 3 times, interleaved" in (tmp_path / "out" / "bench.md").read_text()


def test_the_oracle_grid_is_the_product_of_every_declared_knob() -> None:
    config = scenario(
        oracle={
            "max_batch_size": [2, 4],
            "gate_policy": ["off"],
            "max_queue_delay_ms": [5.0, 50.0],
            "num_workers": [0, 1],
            "threads": [1],
            "cpus": [[0], [0, 1]],
        }
    )
    assert config.bench is not None and config.bench.oracle.size() == 16
    grid = oracle_grid(config)
    assert len(grid) == 16
    points = set()
    for label, d in grid:
        service = d["workloads"]["inference"]
        job = d["workloads"]["training"][0]
        points.add(
            (
                service["batching"]["max_batch_size"],
                service["batching"]["max_queue_delay_ms"],
                job["num_workers"],
                tuple(job["cpus"]),
            )
        )
        assert job["threads"] == 1 and "delay" in label and "workers" in label
        parse_config(d)
    assert len(points) == 16


def test_best_static_falls_back_to_the_safest_when_nothing_meets_the_slo(tmp_path: Path) -> None:
    rows = []
    for i, attainment in enumerate((0.5, 0.8, 0.7)):
        out = tmp_path / str(i)
        out.mkdir()
        (out / "summary.json").write_text(json.dumps({"inference": {"slo_attainment": attainment}}))
        rows.append(row_from_run(str(i), out, 0.99))
    best = best_static(rows)
    assert best is not None and best.controller == "1" and not best.meets_slo


def test_unknown_controllers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="unknown controller"):
        run_bench(scenario(), tmp_path, "x", run_one=fake_run, controllers=["nope"])


def test_a_bad_scenario_exits_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["bench"] = {"oracle": {"max_batch_size": [0]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["bench", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "bench.oracle.max_batch_size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_simulated_bench_runs_every_controller_and_searches_modes_for_its_oracle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _thin_sim_bench(tmp_path, monkeypatch, every_nth_mode=4, duration_s=30)
    code = main(["bench", path, "--platform", "sim", "--out", str(tmp_path / "out")])
    assert code == 0
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert result["platform"] == "sim"
    rows = {r["controller"]: r for r in result["rows"]}
    assert list(rows) == [
        "static",
        "naive",
        "sequential",
        "aimd",
        "adaptive",
        "training-alone",
        "inference-alone",
        "gradient-search",
        "random-search",
        "oracle",
    ]
    limits = [r["limit_ratio"] for r in rows.values() if r["controller"] != "inference-alone"]
    assert all(0 < x <= 1.0 + 1e-9 for x in limits), "no row beats training alone in the fastest mode"
    assert rows["oracle"]["oracle_ratio"] == 1.0 and result["oracle_grid_size"] == 2
    keys = {"controller", "slo_attainment", "latency_ms_p99", "training_samples_per_s", "configs_profiled"}
    assert all(keys | {"meets_slo", "power_w"} <= set(r) for r in rows.values())
    oracle = rows["oracle"]
    # two batch sizes over the oracle's 89 coarse modes, then a local search over the full mode space
    assert oracle["configs_profiled"] > 2 * 89
    assert oracle["meets_slo"], "some static configuration of the Orin meets a 1 s SLO at 100 img/s"
    meeting = [r for r in rows.values() if r["meets_slo"] and r["controller"] in ("static", "naive")]
    assert all(oracle["training_samples_per_s"] >= r["training_samples_per_s"] for r in meeting)
    assert rows["gradient-search"]["configs_profiled"] == rows["random-search"]["configs_profiled"] == 15
    assert rows["adaptive"]["configs_profiled"] <= 10
    assert "held-out time MAPE" in (tmp_path / "out" / "calibration.txt").read_text()
    assert "simulator's optimum" in (tmp_path / "out" / "bench.md").read_text()


def _thin_sim_bench(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, every_nth_mode: int, duration_s: float
) -> str:
    """bench-orin-sim.yaml, shortened, with a thinner oracle (every nth of its coarse modes, one
    local search, two batch sizes, gate off) to keep a test quick; returns the scenario's path."""
    from cotrain.config import load_config
    from cotrain.sim import bench as sim_bench
    from tests.conftest import REPO

    coarse = sim_bench.oracle_modes
    monkeypatch.setattr(sim_bench, "oracle_modes", lambda space: coarse(space)[::every_nth_mode])
    monkeypatch.setattr(sim_bench, "ORACLE_REFINE", 1)
    config = load_config(REPO / "experiments" / "bench-orin-sim.yaml", {"duration_s": duration_s})
    data = yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json")))
    data["bench"]["oracle"] = {"max_batch_size": [16, 32], "gate_policy": ["off"]}
    data["bench"]["run_duration_s"] = duration_s
    return _write(tmp_path, data)


def _write(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


# --- the charts, inspected as objects --------------------------------------------------------------------


def bench_result(platform: str = "sim", budget_w: float | None = 30.0) -> dict[str, Any]:
    """bench.json as the simulated bench writes it: every row with its mean power."""
    rows = [
        {"controller": "static", "meets_slo": True, "training_samples_per_s": 40.0, "latency_ms_p99": 150.0},
        {
            "controller": "adaptive",
            "meets_slo": True,
            "training_samples_per_s": 55.0,
            "latency_ms_p99": 190.0,
        },
        {"controller": "naive", "meets_slo": True, "training_samples_per_s": 60.0, "latency_ms_p99": None},
    ]
    for row, power_w in zip(rows, (25.0, 34.0, None), strict=True):
        row["power_w"] = power_w
    return {
        "scenario": "experiments/bench-orin-sim.yaml",
        "platform": platform,
        "slo_ms": 200.0,
        "power_budget_w": budget_w,
        "rows": rows,
    }


def titles(fig: Any) -> str:
    return " ".join(ax.get_title() for ax in fig.axes)


def legend_labels(fig: Any) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_bench_charts_name_the_scenario_and_the_platform(tmp_path: Path) -> None:
    result = run_bench(scenario(), tmp_path / "out", "tiny.yaml", run_one=fake_run, show_progress=False)

    real = bench_figures(result)
    simulated = bench_figures(bench_result())

    assert all("tiny.yaml on host" in titles(fig) for fig in real.values())
    assert all("bench-orin-sim.yaml on simulated AGX Orin" in titles(fig) for fig in simulated.values())
    assert "power" not in " ".join(real)  # a bench with no power budget gets no power chart


def test_a_power_budget_adds_a_power_chart_with_the_budget_as_a_line(tmp_path: Path) -> None:
    result = bench_result(budget_w=30.0)

    figures = bench_figures(result)
    written = plot_bench(result, tmp_path)

    assert sorted(p.name for p in written) == ["bench-p99.png", "bench-power.png", "bench-training.png"]
    (ax,) = figures["bench-power.png"].axes
    budget = [line for line in ax.get_lines() if line.get_label() == "power budget 30 W"]
    assert len(budget) == 1 and list(budget[0].get_ydata()) == [30.0, 30.0]
    assert [b.get_height() for b in ax.patches] == [25.0, 34.0, 0.0]
    assert [t.get_text() for t in ax.texts] == ["25", "34", "-"]  # no measurement reads "-", not 0
    assert legend_labels(figures["bench-power.png"]) == [
        "within the power budget",
        "over the power budget",
        "not measured",
        "power budget 30 W",
    ]
    assert "bench-power.png" not in bench_figures(bench_result(budget_w=None))


def test_no_legend_entry_for_a_category_no_bar_has() -> None:
    """Every row meets the SLO: the old legend still offered red for a row that misses it."""
    figures = bench_figures(bench_result())

    assert legend_labels(figures["bench-training.png"]) == ["meets the SLO"]
    assert legend_labels(figures["bench-p99.png"]) == ["meets the SLO", "SLO 200 ms"]


def test_drawn_scenarios_are_reproducible_and_vary_what_a_deployment_varies() -> None:
    from cotrain.sim.draws import draw_scenarios
    from cotrain.sim.scenario import SimScenario
    from tests.conftest import REPO

    base = SimScenario(duration_s=120.0)
    traces = REPO / "experiments" / "traces"
    a = draw_scenarios(base, 30, seed=7, traces_dir=traces)
    b = draw_scenarios(base, 30, seed=7, traces_dir=traces)
    assert [d.describe() for d in a] == [d.describe() for d in b]
    assert [d.describe() for d in a] != [d.describe() for d in draw_scenarios(base, 30, 8, traces)]
    assert {d.process for d in a} == {"constant", "poisson", "bursty", "step", "trace"}
    assert len({d.scenario.inference_model for d in a}) > 2
    assert any(d.scenario.power_budget_w is None for d in a) and any(d.scenario.power_budget_w for d in a)
    for d in a:
        assert 0.5 <= d.rate_per_s / 100.0 <= 2.0 and 250 <= d.scenario.slo_ms <= 1000
        if d.process == "trace":
            assert d.trace is not None and d.scenario.arrivals.process == "replay"
    assert all(d.process != "trace" for d in draw_scenarios(base, 30, 7, traces_dir=None))


def test_the_bench_over_drawn_scenarios_summarises_every_controller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import REPO

    path = _thin_sim_bench(tmp_path, monkeypatch, every_nth_mode=8, duration_s=20)
    args = ["bench", path, "--platform", "sim", "--scenarios", "2", "--seed", "7"]
    traces = str(REPO / "experiments" / "traces")
    code = main([*args, "--controllers", "static,adaptive", "--traces", traces, "--out", str(tmp_path / "o")])
    assert code == 0
    result = json.loads((tmp_path / "o" / "bench.json").read_text())
    assert len(result["scenarios"]) == 2 and result["seed"] == 7
    assert set(result["summary"]) == {"static", "adaptive", "gradient-search", "random-search"}
    for s in result["summary"].values():
        assert {"median_oracle_ratio", "worst_oracle_ratio", "min_slo_attainment"} <= set(s)
    judged: dict[str, list[float]] = {}
    for scenario in result["scenarios"]:
        rows = {r["controller"]: r for r in scenario["rows"]}
        budget_w = scenario["power_budget_w"]

        def kept(r: dict[str, Any], budget_w: float | None = budget_w) -> bool:
            return bool(r["meets_slo"]) and (budget_w is None or r["power_w"] <= budget_w)

        assert rows["oracle"]["oracle_ratio"] == 1.0 and "training-alone" in rows
        if kept(rows["static"]):
            assert rows["static"]["oracle_ratio"] <= 1.0, "the oracle is the best static configuration"
        for name in ("static", "adaptive"):
            if kept(rows["oracle"]) and rows[name]["oracle_ratio"] is not None:
                r = rows[name]
                judged.setdefault(name, []).append(r["oracle_ratio"] if kept(r) else 0.0)
    for name, ratios in judged.items():
        assert result["summary"][name]["worst_oracle_ratio"] == pytest.approx(min(ratios), abs=1e-4)
        assert result["summary"][name]["min_slo_attainment"] <= 1.0
    assert "drawn scenarios" in (tmp_path / "o" / "bench.md").read_text()
    real = ["bench", path, "--scenarios", "2", "--out", str(tmp_path / "real")]
    assert main(real) == 2, "drawn scenarios run on the simulator only"
    assert not (tmp_path / "real").exists()

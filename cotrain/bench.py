"""`cotrain bench SCENARIO.yaml --out D`: every controller on the same scenario, side by side.

Each controller runs the scenario as a real `cotrain run` (a fresh process tree, so no run
inherits warm caches or leftover threads from another), then an exhaustive static oracle tries
every configuration of the scenario's `bench.oracle` grid (the product of every list it
declares: batch size, queue delay, gate, loader workers, threads, CPU sets, variant) and keeps
the best one that meets the SLO. Rows are computed from each run's own records (summary.json,
decisions.jsonl, telemetry.csv, requests.csv), so `D/runs/<name>/` holds the evidence behind
every figure in `D/bench.json`.

Two reference rows bound what any controller can reach: `training-alone` (the training jobs
with no inference) and `inference-alone` (the services with no training). Every row's
`limit_ratio` is its training samples/s / (training-alone samples/s x (1 - the row's inference
busy fraction, from its batches' execution times)): 1.0 is the physical limit of sharing the
device, whatever the controller. `oracle_ratio` is the row's training throughput over the
oracle's.

On a machine whose speed drifts, one run of a row is a draw, not a figure: with `repeats` K
every row (oracle grid points included) runs K times, interleaved (round r runs every row once,
in an order rotated by r, so drift spreads over all rows alike), and the row reports the median
with the min-max range and every repeat.

`configs_profiled` counts the distinct knob configurations a controller applied during its run
(from decisions.jsonl): one for a policy that never changes anything, the number it tried for a
searching one, and the grid size for the oracle.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from cotrain.config import BENCH_CONTROLLERS, BenchConfig, ExperimentConfig, dump_config
from cotrain.records import read_csv_rows, read_jsonl, write_json_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.progress import Progress


TRAINING_ALONE = "training-alone"
INFERENCE_ALONE = "inference-alone"


@dataclass(frozen=True)
class BenchRow:
    controller: str
    slo_attainment: float | None
    latency_ms_p99: float | None
    training_samples_per_s: float
    configs_profiled: int
    meets_slo: bool
    power_w: float | None
    run_dir: str
    detail: str = ""
    inference_busy: float | None = None  # share of the run a batch was executing
    limit_ratio: float | None = None
    oracle_ratio: float | None = None
    training_samples_per_s_range: tuple[float, float] | None = None  # min, max over the repeats
    repeats: tuple[dict[str, Any], ...] = ()


def row_from_run(controller: str, run_dir: Path, target: float, detail: str = "") -> BenchRow:
    """One bench row, read back from a finished run's records."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    inference = summary.get("inference") or {}
    attainment = inference.get("slo_attainment")
    latency_p99 = (inference.get("latency_ms") or {}).get("p99")
    service = inference.get("service", "inference")
    client_rows = read_csv_rows(run_dir / "client" / service / "requests.csv")
    if client_rows:  # measured on the network path: the client's clock, every request it sent
        slo_ms = float(inference["slo_ms"])
        ok = [float(r["latency_ms"]) for r in client_rows if r["status"] in ("200", "OK") and r["latency_ms"]]
        attainment = round(sum(1 for v in ok if v <= slo_ms) / len(client_rows), 6)
        latency_p99 = round(float(np.percentile(ok, 99)), 3) if ok else None
    decisions = read_jsonl(run_dir / "decisions.jsonl")
    configs = {json.dumps(d.get("knobs"), sort_keys=True) for d in decisions if d.get("knobs") is not None}
    powers = [float(r["power_w"]) for r in read_csv_rows(run_dir / "telemetry.csv") if r.get("power_w")]
    duration_s = float((summary.get("run") or {}).get("duration_s") or 0.0)
    return BenchRow(
        controller=controller,
        slo_attainment=attainment,
        latency_ms_p99=latency_p99,
        training_samples_per_s=round(
            sum(float(t.get("samples_per_s") or 0.0) for t in summary.get("training", {}).values()), 3
        ),
        configs_profiled=max(1, len(configs)),
        meets_slo=attainment is not None and attainment >= target,
        power_w=round(sum(powers) / len(powers), 3) if powers else None,
        run_dir=str(run_dir),
        detail=detail,
        inference_busy=inference_busy(read_csv_rows(run_dir / "requests.csv"), duration_s)
        if inference
        else None,
    )


def inference_busy(requests: Sequence[dict[str, str]], duration_s: float) -> float | None:
    """The share of the run some batch was executing, from requests.csv: the requests of one
    batch share its start and end, so each distinct (start, end) is one execution. Overlapping
    executions (several instances) count once, as the device was busy either way."""
    if duration_s <= 0:
        return None
    spans = sorted(
        {(float(r["start_s"]), float(r["end_s"])) for r in requests if r.get("start_s") and r.get("end_s")}
    )
    busy_s = 0.0
    reach = -float("inf")
    for start, end in spans:
        start = max(start, reach)
        if end > start:
            busy_s += end - start
        reach = max(reach, end)
    return round(min(1.0, busy_s / duration_s), 6)


def with_ratios(rows: Sequence[BenchRow], alone: BenchRow | None, oracle: BenchRow | None) -> list[BenchRow]:
    """Every row with its limit ratio (against training alone, in the time inference leaves) and
    its ratio to the oracle's training throughput."""
    out = []
    for r in rows:
        limit = None
        if alone is not None and alone.training_samples_per_s > 0 and r.training_samples_per_s > 0:
            left = 1.0 - (r.inference_busy or 0.0)
            if left > 0:
                limit = round(r.training_samples_per_s / (alone.training_samples_per_s * left), 4)
        ratio = None
        if oracle is not None and oracle.training_samples_per_s > 0:
            ratio = round(r.training_samples_per_s / oracle.training_samples_per_s, 4)
        out.append(replace(r, limit_ratio=limit, oracle_ratio=ratio))
    return out


def median_row(runs: Sequence[BenchRow], target: float) -> BenchRow:
    """One row from its repeats: the median of every figure, the min-max of training throughput,
    and each repeat's own figures; the run directory is the repeat nearest the median."""
    if len(runs) == 1:
        only = runs[0]
        return replace(only, repeats=(_repeat_json(only),))

    def med(values: Sequence[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(float(np.median(present)), 6) if present else None

    training = [r.training_samples_per_s for r in runs]
    mid = float(np.median(training))
    nearest = min(runs, key=lambda r: abs(r.training_samples_per_s - mid))
    attainment = med([r.slo_attainment for r in runs])
    return replace(
        nearest,
        slo_attainment=attainment,
        latency_ms_p99=med([r.latency_ms_p99 for r in runs]),
        training_samples_per_s=round(mid, 3),
        configs_profiled=int(np.median([r.configs_profiled for r in runs])),
        meets_slo=attainment is not None and attainment >= target,
        power_w=med([r.power_w for r in runs]),
        inference_busy=med([r.inference_busy for r in runs]),
        training_samples_per_s_range=(min(training), max(training)),
        repeats=tuple(_repeat_json(r) for r in runs),
    )


def _repeat_json(row: BenchRow) -> dict[str, Any]:
    return {
        "training_samples_per_s": row.training_samples_per_s,
        "slo_attainment": row.slo_attainment,
        "latency_ms_p99": row.latency_ms_p99,
        "inference_busy": row.inference_busy,
        "power_w": row.power_w,
        "run_dir": row.run_dir,
    }


def best_static(rows: Sequence[BenchRow]) -> BenchRow | None:
    """The oracle's pick: the highest training rate among rows meeting the SLO, else the safest."""
    meeting = [r for r in rows if r.meets_slo]
    if meeting:
        return max(meeting, key=lambda r: r.training_samples_per_s)
    return max(rows, key=lambda r: r.slo_attainment or 0.0) if rows else None


def oracle_points(bench: BenchConfig) -> list[dict[str, Any]]:
    """Every point of the oracle's joint grid, as {knob: value} over the lists the scenario
    declares (a knob it leaves out keeps the scenario's own setting)."""
    grid = bench.oracle
    axes: list[tuple[str, Sequence[Any]]] = [
        ("max_batch_size", grid.max_batch_size),
        ("gate_policy", grid.gate_policy),
    ]
    for knob in ("max_queue_delay_ms", "num_workers", "threads", "cpus", "variant"):
        values = getattr(grid, knob)
        if values is not None:
            axes.append((knob, values))
    return [dict(zip([k for k, _ in axes], point, strict=True)) for point in product(*(v for _, v in axes))]


def describe_point(point: dict[str, Any]) -> str:
    parts = [f"b={point['max_batch_size']}", f"gate {point['gate_policy']}"]
    names = {"max_queue_delay_ms": "delay {} ms", "num_workers": "workers {}", "threads": "threads {}"}
    for knob, form in names.items():
        if knob in point:
            parts.append(form.format(point[knob]))
    if "cpus" in point:
        parts.append(f"cpus {','.join(str(c) for c in point['cpus'])}")
    if "variant" in point:
        parts.append(str(point["variant"]))
    return ", ".join(parts)


def oracle_grid(config: ExperimentConfig) -> list[tuple[str, dict[str, Any]]]:
    """(label, config as plain data) for every static configuration of the oracle grid. Queue
    delay and variant apply to every inference service; loader workers, threads and the CPU set
    to every training job (the services keep their own placement)."""
    bench = config.bench or BenchConfig()
    base = yaml.safe_load(dump_config(config))
    grid = []
    for point in oracle_points(bench):
        data = copy.deepcopy(base)
        data["controller"] = {"name": "static", "period_s": 1.0}
        data.pop("bench", None)
        b = point["max_batch_size"]
        for service in _inference_configs(data):
            service["batching"]["max_batch_size"] = b
            service["queue_capacity"] = max(service.get("queue_capacity", b), b)
            if "max_queue_delay_ms" in point:
                service["batching"]["max_queue_delay_ms"] = point["max_queue_delay_ms"]
            if "variant" in point:
                variants = service.get("variants") or []
                service["variants"] = [point["variant"], *[v for v in variants if v != point["variant"]]]
        for job in data["workloads"].get("training", []):
            job["interleave"] = {"policy": point["gate_policy"], "max_wait_ms": None}
            for knob in ("num_workers", "threads", "cpus"):
                if knob in point:
                    job[knob] = point[knob]
        grid.append((describe_point(point), with_ingress(data, bench.ingress)))
    return grid


def alone_configs(config: ExperimentConfig) -> list[tuple[str, dict[str, Any]]]:
    """The reference rows: the training jobs without inference, the services without training,
    each with the scenario's own settings and a static controller."""
    rows = []
    base = yaml.safe_load(dump_config(config))
    base["controller"] = {"name": "static", "period_s": base["controller"].get("period_s", 1.0)}
    base.pop("bench", None)
    if base["workloads"].get("training"):
        training = copy.deepcopy(base)
        training["workloads"]["inference"] = None
        training["workloads"]["services"] = []
        rows.append((TRAINING_ALONE, training))
    if _inference_configs(base):
        inference = copy.deepcopy(base)
        inference["workloads"]["training"] = []
        protocol = config.bench.ingress if config.bench else None
        rows.append((INFERENCE_ALONE, with_ingress(inference, protocol)))
    return rows


def _inference_configs(data: dict[str, Any]) -> list[dict[str, Any]]:
    workloads = data["workloads"]
    if workloads.get("inference"):
        return [workloads["inference"]]
    return list(workloads.get("services") or [])


def controller_config(config: ExperimentConfig, controller: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(dump_config(config))
    data["controller"] = {"name": controller}
    data.pop("bench", None)
    return with_ingress(data, config.bench.ingress if config.bench else None)


def with_ingress(data: dict[str, Any], protocol: str | None) -> dict[str, Any]:
    """With `bench.ingress`, every service is served on that protocol (a free loopback port) and
    its arrivals are sent by the built-in client, so each row is measured on the network path."""
    if protocol is None:
        return data
    for service in _inference_configs(data):
        service["ingress"] = {protocol: "127.0.0.1:0"}
    return data


RunOne = Callable[[dict[str, Any], Path, float], None]


def _bench_progress(show: bool) -> Progress:
    """A bar over the bench's runs, on stderr. Transient, and inert when stderr is not a terminal
    (rich draws nothing there), so piped output and bench.md/bench.json are unchanged."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]bench[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show,
        transient=True,
    )


def run_with_cli(data: dict[str, Any], out: Path, duration_s: float) -> None:
    """One real `cotrain run` in its own process tree."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    cmd = [sys.executable, "-m", "cotrain", "run", str(path), "--duration", f"{duration_s:g}"]
    result = subprocess.run([*cmd, "--out", str(out), "--quiet", "--force"], capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(
            f"{out.name}: cotrain run exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class _Plan:
    """One row's run: the row name, its run directory's name, the config and how long."""

    row: str
    directory: str
    data: dict[str, Any]
    duration_s: float
    detail: str = ""


def run_order(plans: Sequence[_Plan], round_index: int) -> list[_Plan]:
    """Round r runs every plan once, rotated by r: across rounds each row runs early and late,
    so the machine's drift does not always fall on the same rows."""
    if not plans:
        return []
    k = round_index % len(plans)
    return [*plans[k:], *plans[:k]]


def run_bench(
    config: ExperimentConfig,
    out: Path,
    scenario: str,
    *,
    run_one: RunOne = run_with_cli,
    controllers: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    show_progress: bool = True,
    repeats: int = 1,
) -> dict[str, Any]:
    """Run every controller, the reference rows and the oracle grid `repeats` times, interleaved;
    write bench.json, bench.md and the plots.

    `progress` gets one line per run (the CLI prints them); `show_progress` adds a live bar on
    stderr over all the runs, since a bench takes minutes and each run is silent until it ends."""
    bench = config.bench or BenchConfig()
    names = list(controllers or bench.controllers)
    unknown = sorted(set(names) - set(BENCH_CONTROLLERS))
    if unknown:
        raise BenchError(f"unknown controller(s) {', '.join(unknown)}; known: {', '.join(BENCH_CONTROLLERS)}")
    if repeats < 1:
        raise BenchError("--repeats must be at least 1")
    run_s = bench.run_duration_s or config.duration_s
    if run_s is None:
        raise BenchError(f"{scenario}: give duration_s or bench.run_duration_s: a bench run has an end")
    oracle_s = bench.oracle_run_duration_s or run_s
    primary = config.workloads.primary_inference()
    plans = [_Plan(name, name, controller_config(config, name), run_s) for name in names]
    alone_rows = alone_configs(config)
    plans += [_Plan(name, name, data, run_s) for name, data in alone_rows]
    grid = oracle_grid(config)
    plans += [
        _Plan(f"static ({label})", f"oracle-{i:02d}", data, oracle_s, label)
        for i, (label, data) in enumerate(grid)
    ]
    runs: dict[str, list[BenchRow]] = {p.row: [] for p in plans}
    total = len(plans) * repeats
    step = 0
    with _bench_progress(show_progress) as bar:
        task = bar.add_task("starting", total=total)
        for r in range(repeats):
            for plan in run_order(plans, r):
                step += 1
                label = plan.row if not plan.detail else f"oracle grid: {plan.detail}"
                round_note = f", round {r + 1}/{repeats}" if repeats > 1 else ""
                if progress:
                    progress(f"[{step}/{total}] {label}, {plan.duration_s:g} s{round_note}")
                bar.update(task, description=f"{label}, {plan.duration_s:g} s{round_note}")
                run_dir = out / "runs" / plan.directory
                if repeats > 1:
                    run_dir = run_dir / f"rep-{r + 1}"
                run_one(plan.data, run_dir, plan.duration_s)
                row = row_from_run(plan.row, run_dir, bench.slo_attainment_target, plan.detail)
                runs[plan.row].append(row)
                bar.advance(task)
    target = bench.slo_attainment_target
    merged = {name: median_row(rows, target) for name, rows in runs.items()}
    oracle_rows = [merged[p.row] for p in plans if p.detail]
    rows = [merged[name] for name in names]
    rows += [merged[name] for name, _ in alone_rows]
    best = best_static(oracle_rows)
    if best is not None:
        rows.append(
            replace(
                best,
                controller="oracle",
                configs_profiled=len(oracle_rows),
                detail=f"best static: {best.detail}",
            )
        )
    alone = merged.get(TRAINING_ALONE)
    oracle = rows[-1] if best is not None else None
    rows = with_ratios(rows, alone, oracle)
    oracle_rows = with_ratios(oracle_rows, alone, oracle)
    result = {
        "scenario": scenario,
        "platform": config.platform.kind,
        "power_budget_w": _power_budget_w(config),
        "slo_attainment_target": bench.slo_attainment_target,
        "slo_ms": primary.config.slo_ms if primary is not None else None,
        "run_duration_s": run_s,
        "repeats": repeats,
        "oracle_grid_size": len(grid),
        "rows": [row_json(r) for r in rows],
        "oracle_grid": [row_json(r) for r in oracle_rows],
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench.json", result)
    (out / "bench.md").write_text(bench_markdown(result), encoding="utf-8")
    plot_bench(result, out)
    return result


def _power_budget_w(config: ExperimentConfig) -> float | None:
    """The whole-board budget of the scenario's power-mode policy, for the power chart's line."""
    if config.platform.power_policy is None:
        return None
    from cotrain.power_modes.policy import load_power_policy

    return load_power_policy(config.platform.power_policy).power_budget_w


def row_json(row: BenchRow) -> dict[str, Any]:
    """The row as bench.json holds it (tuples become lists), so the result returned and the file
    written compare equal."""
    data: dict[str, Any] = json.loads(json.dumps(asdict(row)))
    return data


def bench_markdown(result: dict[str, Any]) -> str:
    """The bench table, as docs/benchmarks.md quotes it."""

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    repeats = int(result.get("repeats") or 1)
    each = "ran" if repeats == 1 else f"ran {repeats} times, interleaved (medians, min-max in brackets), each"
    lines = [
        f"# cotrain bench: {result['scenario']} ({result['platform']})",
        "",
        f"Each row {each} {result['run_duration_s']:g} s. A row meets the SLO when its SLO "
        f"attainment is at least {result['slo_attainment_target']:g}. Limit ratio: training "
        "samples/s over training-alone's in the time inference leaves (1.0 is the device's limit); "
        "oracle ratio: over the oracle's.",
        "",
        "| controller | SLO attainment | p99 (ms) | training samples/s | limit ratio | oracle ratio "
        "| configs profiled | meets SLO | power (W) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def training(r: dict[str, Any]) -> str:
        span = r.get("training_samples_per_s_range")
        text = f"{r['training_samples_per_s']:.1f}"
        return text + (f" [{span[0]:.1f}-{span[1]:.1f}]" if span else "")

    for r in result["rows"]:
        name = r["controller"] + (f" ({r['detail']})" if r["controller"] == "oracle" and r["detail"] else "")
        lines.append(
            f"| {name} | {fmt(r['slo_attainment'], '.3f')} | {fmt(r['latency_ms_p99'], '.0f')} | "
            f"{training(r)} | {fmt(r.get('limit_ratio'), '.3f')} | {fmt(r.get('oracle_ratio'), '.3f')} | "
            f"{r['configs_profiled']} | {'yes' if r['meets_slo'] else 'no'} | {fmt(r['power_w'], '.1f')} |"
        )
    if result.get("oracle_grid"):
        size = result.get("oracle_grid_size", len(result["oracle_grid"]))
        lines += ["", f"Oracle grid ({size} static configurations):", ""]
        lines += [
            "| configuration | SLO attainment | p99 (ms) | training samples/s | limit ratio |",
            "|---|---|---|---|---|",
        ]
        for r in result["oracle_grid"]:
            lines.append(
                f"| {r['detail']} | {fmt(r['slo_attainment'], '.3f')} | {fmt(r['latency_ms_p99'], '.0f')} "
                f"| {training(r)} | {fmt(r.get('limit_ratio'), '.3f')} |"
            )
    return "\n".join(lines) + "\n"


def plot_bench(result: dict[str, Any], out: Path) -> list[Path]:
    """The bench charts as PNGs in `out` (see `bench_figures`); returns the paths written."""
    written = []
    for name, fig in bench_figures(result).items():
        fig.savefig(out / name)
        written.append(out / name)
    return written


def bench_figures(result: dict[str, Any]) -> dict[str, Figure]:
    """File name -> chart: training throughput per controller, p99 against the SLO, and, when the
    scenario has a power budget and the rows measured power, mean power against the budget.

    Each title names the scenario and the platform, so a chart copied out of its directory still
    says what it measured."""
    rows = result["rows"]
    where = f"{_scenario_name(result)} on {bench_platform_label(result)}"
    slo = result.get("slo_ms")
    meets = [_meets_slo_category(r) for r in rows]
    figures = {
        "bench-training.png": _bar_figure(
            rows,
            [r["training_samples_per_s"] for r in rows],
            meets,
            "training throughput (samples/s)",
            f"training throughput per controller\n{where}",
        ),
        "bench-p99.png": _bar_figure(
            rows,
            [r["latency_ms_p99"] for r in rows],
            meets,
            "inference p99 latency (ms)",
            f"inference p99 per controller\n{where}",
            line=None if slo is None else (float(slo), f"SLO {slo:g} ms"),
        ),
    }
    budget_w = result.get("power_budget_w")
    if budget_w is not None and any(r.get("power_w") is not None for r in rows):
        figures["bench-power.png"] = _bar_figure(
            rows,
            [r.get("power_w") for r in rows],
            [_budget_category(r.get("power_w"), float(budget_w)) for r in rows],
            "mean power (W)",
            f"mean power per controller\n{where}",
            line=(float(budget_w), f"power budget {budget_w:g} W"),
        )
    return figures


def bench_platform_label(result: dict[str, Any]) -> str:
    """What ran the bench, for the titles: the simulated board, or the platform (and its host name
    when bench.json has one)."""
    platform = str(result.get("platform") or "unknown platform")
    if platform == "sim":
        return "simulated AGX Orin"
    host = result.get("host")
    return f"{platform} {host}" if host else platform


def _scenario_name(result: dict[str, Any]) -> str:
    scenario = str(result.get("scenario") or "unnamed scenario")
    return Path(scenario).name or scenario


# A bar's category: its colour and its legend entry.
MEETS = ("tab:green", "meets the SLO")
MISSES = ("tab:red", "misses the SLO")
WITHIN_BUDGET = ("tab:green", "within the power budget")
OVER_BUDGET = ("tab:red", "over the power budget")
NOT_MEASURED = ("tab:gray", "not measured")
LEGEND_ORDER = (MEETS, MISSES, WITHIN_BUDGET, OVER_BUDGET, NOT_MEASURED)


def _meets_slo_category(row: dict[str, Any]) -> tuple[str, str]:
    return MEETS if row["meets_slo"] else MISSES


def _budget_category(power_w: float | None, budget_w: float) -> tuple[str, str]:
    if power_w is None:
        return NOT_MEASURED
    return WITHIN_BUDGET if power_w <= budget_w else OVER_BUDGET


def _bar_figure(
    rows: list[dict[str, Any]],
    values: list[float | None],
    categories: list[tuple[str, str]],
    ylabel: str,
    title: str,
    line: tuple[float, str] | None = None,
) -> Figure:
    """One bar per row, coloured by its category (colour, legend label), each with its value
    written on it (a zero bar is otherwise invisible; a missing value reads "-"), and `line`
    (value, label) as a dashed line if given. The legend lists only the categories some bar has.

    matplotlib's object API on the Agg canvas, as in cotrain/report.py: no pyplot state."""
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(7.5, 4.3), dpi=110, layout="constrained")
    ax = fig.subplots()
    heights = [0.0 if v is None else float(v) for v in values]
    bars = ax.bar(range(len(rows)), heights, color=[colour for colour, _ in categories])
    ax.bar_label(bars, labels=[_bar_value(v) for v in values], fontsize="small")
    # controller names are long ("random-search"): slanted, they never run into each other
    ax.set_xticks(range(len(rows)), [r["controller"] for r in rows], rotation=25, ha="right")
    present = [c for c in LEGEND_ORDER if c in categories]
    handles: list[Artist] = [Patch(color=colour, label=label) for colour, label in present]
    if line is not None:
        value, label = line
        handles.append(ax.axhline(value, color="tab:red", linestyle="--", linewidth=1.6, label=label))
    top = max([*heights, line[0] if line is not None else 0.0, 1e-9])
    ax.set_ylim(0, top * 1.15)  # room for the value labels
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _bar_value(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"

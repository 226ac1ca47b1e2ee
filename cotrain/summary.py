"""summary.json, computed only from the record files.

Because the summary is a pure function of requests.csv, train-<job>.csv, events.jsonl and
config.yaml, `cotrain summary RUN_DIR` recomputes it for any run, finished or crashed, and the
tests check that recomputation matches what the run wrote. Percentiles use numpy's default
(linear interpolation), the definition most people recompute with.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cotrain.records import read_csv_rows, read_jsonl, read_segments
from cotrain.rundir import RunDir

OUTCOMES = ("served", "failed", "shed")


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    arr = np.asarray(values, dtype=float)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(arr.max()), 3),
        "mean": round(float(arr.mean()), 3),
    }


def run_window(run: RunDir) -> tuple[float | None, float | None, str]:
    """(start_s, stop_s, status) from events.jsonl; stop falls back to the last event seen."""
    start_s = stop_s = None
    status = "incomplete"
    last_s = None
    for event in read_jsonl(run.events):
        t = event.get("t_mono_s")
        if isinstance(t, int | float):
            last_s = float(t)
        if event.get("event") == "run_started":
            start_s = float(event["t_mono_s"])
        elif event.get("event") == "run_stopped":
            stop_s = float(event["t_mono_s"])
            status = str(event.get("status", "completed"))
    if stop_s is None:
        stop_s = last_s
    return start_s, stop_s, status


def inference_summary(
    rows: list[dict[str, str]],
    slo_ms: float,
    duration_s: float | None,
    accuracies: dict[str, float | None] | None = None,
) -> dict[str, Any]:
    """`mean_accuracy` weighs each served request by its variant's accuracy (variants.json)."""
    accuracies = accuracies or {}
    counts = dict.fromkeys(OUTCOMES, 0)
    latencies: list[float] = []
    batch_sizes: list[int] = []
    for row in rows:
        outcome = row["outcome"]
        if outcome in counts:
            counts[outcome] += 1
        if outcome == "served" and row["latency_ms"]:
            latencies.append(float(row["latency_ms"]))
            batch_sizes.append(int(row["batch_size"]))
    arrived = len(rows)
    within = sum(1 for v in latencies if v <= slo_ms)
    versions = sorted({int(r["model_version"]) for r in rows if r.get("model_version", "").isdigit()})
    served = sorted(
        (r for r in rows if r["outcome"] == "served" and r["start_s"]), key=lambda r: float(r["start_s"])
    )
    switches = sum(1 for a, b in itertools.pairwise(served) if a["variant"] != b["variant"])
    known: list[float] = []
    for r in served:
        accuracy = accuracies.get(r["variant"])
        if accuracy is not None:
            known.append(accuracy)
    return {
        "model_versions_served": versions,
        "slo_ms": slo_ms,
        "latency_ms": _percentiles(latencies),
        "slo_attainment": round(within / arrived, 6) if arrived else None,
        "requests": {"arrived": arrived, **counts},
        "throughput_per_s": round(counts["served"] / duration_s, 3) if duration_s else None,
        "mean_batch_size": round(float(np.mean(batch_sizes)), 3) if batch_sizes else None,
        "variant_switches": switches,
        "mean_accuracy": round(float(np.mean(known)), 6) if known and len(known) == len(served) else None,
    }


def training_summary(
    rows: list[dict[str, str]], start_s: float | None, stop_s: float | None
) -> dict[str, Any]:
    """Throughput counts the steps that ended inside the run window, over the window's length.

    A job that was killed and resumed from a checkpoint repeats the steps after it: the last
    record of each step number is the one that counts.
    """
    rows = list({r["step"]: r for r in rows}.values())
    steps = len(rows)
    in_window = [
        r for r in rows if start_s is not None and stop_s is not None and start_s <= float(r["t_s"]) <= stop_s
    ]
    duration_s = (stop_s - start_s) if start_s is not None and stop_s is not None else None
    samples_in_window = sum(int(r["samples"]) for r in in_window)
    losses = [_float_or_none(r["loss"]) for r in rows]
    return {
        "steps": steps,
        "samples": sum(int(r["samples"]) for r in rows),
        "samples_per_s": round(samples_in_window / duration_s, 3) if duration_s else 0.0,
        "steps_per_s": round(len(in_window) / duration_s, 3) if duration_s else 0.0,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
    }


def compute_summary(path: str | Path) -> dict[str, Any]:
    run = RunDir(path)
    config = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    start_s, stop_s, status = run_window(run)
    duration_s = round(stop_s - start_s, 3) if start_s is not None and stop_s is not None else None
    summary: dict[str, Any] = {
        "run": {
            "name": config.get("name"),
            "status": status,
            "duration_s": duration_s,
            "controller": config.get("controller", {}).get("name"),
            "platform": config.get("platform", {}).get("kind"),
        }
    }
    workloads = config.get("workloads", {})
    if workloads.get("inference"):
        summary["inference"] = inference_summary(
            read_segments(run.requests_csv),
            float(workloads["inference"]["slo_ms"]),
            duration_s,
            _variant_accuracies(run.path / "variants.json"),
        )
    services = workloads.get("services") or []
    if services:
        summary["services"] = {s["name"]: service_summary(run, s, duration_s) for s in services}
        primary = max(services, key=lambda s: int(s.get("priority", 0)))  # first listed on ties
        summary["inference"] = {"service": primary["name"], **summary["services"][primary["name"]]}
    summary["training"] = {}
    for job in workloads.get("training", []):
        name = job["name"]
        entry = {"kind": job.get("kind", "sgd")}
        entry.update(training_summary(read_segments(run.train_csv(name)), start_s, stop_s))
        if entry["kind"] == "continual":
            entry.update(continual_summary(read_csv_rows(run.path / f"continual-{name}.csv")))
        elif entry["kind"] == "federated":
            entry.update(federated_summary(read_csv_rows(run.path / f"federated-{name}.csv")))
        summary["training"][name] = entry
    clients = {}
    for client in sorted((run.path / "client").glob("*/summary.json")):
        with contextlib.suppress(OSError, ValueError):
            clients[client.parent.name] = json.loads(client.read_text(encoding="utf-8"))
    if clients:  # a built-in `cotrain load` sent the arrivals through the front end
        summary["clients"] = clients
    summary["restarts"] = worker_restarts(run)
    server_rounds = read_csv_rows(run.path / "fl" / "rounds.csv")
    if server_rounds:
        last = server_rounds[-1]
        summary["federation"] = {
            "rounds_completed": sum(1 for r in server_rounds if int(r["clients"]) > 0),
            "clients_last_round": int(last["clients"]),
            "last_round_loss": _float_or_none(last["train_loss"]),
            "last_round_accuracy": _float_or_none(last["eval_accuracy"]),
        }
    return summary


STANDBY = "~standby"  # suffix of a warm standby's worker name (runtime.py)


def worker_restarts(run: RunDir) -> dict[str, int]:
    """Restarts per worker (`inference`, `inference:<service>`, `train:<job>`), from events.jsonl.

    Every worker of the run is listed, with 0 when it never died, so a script can read
    `restarts.inference` without guarding against a missing key.
    """
    counts: dict[str, int] = {}
    for record in read_jsonl(run.events):
        worker = record.get("worker")
        if not isinstance(worker, str) or worker.endswith(STANDBY):
            continue
        if record.get("event") == "worker_spawned":
            counts.setdefault(worker, 0)
        elif record.get("event") == "worker_restarted":
            counts[worker] = counts.get(worker, 0) + 1
    return counts


def service_summary(run: RunDir, service: dict[str, Any], duration_s: float | None) -> dict[str, Any]:
    """One of several services: the single-service keys, plus its priority and throughput floor.

    `floor_met` asks whether it served at least its floor, or everything that arrived if fewer
    arrived than the floor asks for.
    """
    requests_csv = run.service_requests_csv(service["name"])
    entry = inference_summary(
        read_segments(requests_csv),
        float(service["slo_ms"]),
        duration_s,
        _variant_accuracies(requests_csv.parent / "variants.json"),
    )
    floor = float(service.get("min_throughput_per_s", 0.0))
    throughput = entry["throughput_per_s"]
    arrived_per_s = entry["requests"]["arrived"] / duration_s if duration_s else None
    entry["priority"] = int(service.get("priority", 0))
    entry["min_throughput_per_s"] = floor
    entry["floor_met"] = (
        None
        if throughput is None or arrived_per_s is None
        else bool(throughput >= min(floor, arrived_per_s) - 1e-9)
    )
    return entry


def _variant_accuracies(path: Path) -> dict[str, float | None]:
    if not path.exists():
        return {}
    return {v["name"]: v.get("accuracy") for v in json.loads(path.read_text(encoding="utf-8"))}


def _float_or_none(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return round(number, 6) if math.isfinite(number) else None  # NaN: no replies, or a diverged loss


def federated_summary(rounds: list[dict[str, str]]) -> dict[str, Any]:
    """Rounds this client trained in, and the loss of its last one (from federated-<job>.csv)."""
    last = rounds[-1] if rounds else None
    return {
        "rounds_completed": len(rounds),
        "last_round_loss": _float_or_none(last["train_loss"]) if last else None,
        "last_eval_accuracy": _float_or_none(last["eval_accuracy"])
        if last and last["eval_accuracy"]
        else None,
    }


def continual_summary(windows: list[dict[str, str]]) -> dict[str, Any]:
    """Deployments over the run and the accuracy of the last *completed* retraining window."""
    last = windows[-1] if windows else None
    return {
        "windows": len(windows),
        "deployments": sum(int(w["deployed"]) for w in windows),
        "accuracy_before": float(last["accuracy_before"]) if last else None,
        "accuracy_after": float(last["accuracy_after"]) if last else None,
        "last_window_angle_deg": float(last["angle_deg"]) if last else None,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary_table(summary: dict[str, Any]) -> Any:
    """A rich Table of the headline figures."""
    from rich.table import Table

    run = summary["run"]
    table = Table(title=f"cotrain run {run['name']} ({run['status']}, {run['duration_s']} s)")
    table.add_column("workload")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if summary.get("services"):
        for name, entry in summary["services"].items():
            _inference_rows(table, f"svc:{name} (priority {entry['priority']})", entry)
            if entry["min_throughput_per_s"]:
                met = {True: "met", False: "MISSED", None: "-"}[entry["floor_met"]]
                table.add_row(
                    "",
                    f"served/s vs floor {entry['min_throughput_per_s']:g}/s",
                    f"{_fmt(entry['throughput_per_s'])} ({met})",
                )
    elif summary.get("inference"):
        _inference_rows(table, "inference", summary["inference"])
    for job, t in summary.get("training", {}).items():
        table.add_row(
            f"train:{job}", "samples/s (steps/s)", f"{t['samples_per_s']:.1f} ({t['steps_per_s']:.2f})"
        )
        table.add_row(
            "",
            "steps, loss first → last",
            f"{t['steps']}, {t['first_loss'] if t['first_loss'] is not None else '-'} → "
            f"{t['final_loss'] if t['final_loss'] is not None else '-'}",
        )
    restarted = {w: n for w, n in summary.get("restarts", {}).items() if n}
    if restarted:
        table.add_row("supervision", "restarts", ", ".join(f"{w} {n}" for w, n in restarted.items()))
    return table


def _inference_rows(table: Any, label: str, inf: dict[str, Any]) -> None:
    if inf:
        lat = inf["latency_ms"]
        req = inf["requests"]
        table.add_row(
            label,
            "latency p50 / p95 / p99 / max (ms)",
            " / ".join(_fmt(lat[k]) for k in ("p50", "p95", "p99", "max")),
        )
        att = inf["slo_attainment"]
        table.add_row("", f"SLO attainment (≤ {inf['slo_ms']:g} ms)", "-" if att is None else f"{att:.1%}")
        table.add_row(
            "",
            "arrived = served + failed + shed",
            f"{req['arrived']} = {req['served']} + {req['failed']} + {req['shed']}",
        )
        table.add_row(
            "", "mean batch size", "-" if inf["mean_batch_size"] is None else f"{inf['mean_batch_size']:.2f}"
        )

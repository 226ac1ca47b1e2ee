"""Fault injection: run real `cotrain run` processes, break them, and check nothing is lost.

    .venv/bin/python experiments/faults.py [--out runs/faults] [--cases a,b] [--skip-overload]

Each case starts the quickstart (resnet18 inference beside a mobilenet_v3_small training job),
injects one fault from outside, as an operator or the kernel would, and reads the run directory
afterwards. The table has, per case: what was injected, the outcome, records lost and the time
to recover.

"Records lost" is counted independently of cotrain's own summary: every request the seeded
arrival schedule says arrived before the run stopped must have exactly one row in requests.csv,
and every record file must parse to its last complete line (a torn line in the middle would be a
lost record). Time to recover is from the death cotrain saw (`worker_died`) to the replacement
being ready and started (`worker_recovered`); for signals to `cotrain run`, the time to exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from cotrain.config import parse_config
from cotrain.records import read_csv_rows, read_jsonl
from cotrain.workloads.inference.arrivals import arrival_offsets_s

REPO = Path(__file__).resolve().parent.parent
COTRAIN = [sys.executable, "-m", "cotrain"]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"


@dataclass
class Outcome:
    case: str
    injected: str
    outcome: str = ""
    records_lost: int | None = None
    recover_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


# --- reading a run ---------------------------------------------------------------------------


def events(out: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(out / "events.jsonl"))


def wait_for(
    proc: subprocess.Popen[str], out: Path, what: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        for e in events(out):
            if what(e):
                return e
        if proc.poll() is not None:
            raise RuntimeError(f"cotrain run exited ({proc.returncode}) before the awaited event")
        if time.monotonic() > deadline:
            raise TimeoutError("the awaited event did not come")
        time.sleep(0.1)  # polling files another process writes


def lost_requests(out: Path) -> int:
    """Scheduled arrivals before the stop without exactly one row, plus any duplicate rows."""
    config = parse_config(yaml.safe_load((out / "config.yaml").read_text()))
    stop = next((e for e in events(out) if e.get("event") == "run_stopped"), None)
    stop_s = float(stop["t_s"]) if stop else 0.0
    lost = 0
    for service in config.workloads.inference_services():
        path = (
            out / "requests.csv"
            if service.worker == "inference"
            else out / "services" / service.name / "requests.csv"
        )
        ids = [int(r["request_id"]) for r in read_csv_rows(path)]
        lost += len(ids) - len(set(ids))  # a request with two outcomes is a bookkeeping loss too
        seen = set(ids)
        for request_id, offset_s in enumerate(arrival_offsets_s(service.config.arrivals)):
            if offset_s > stop_s:
                break
            lost += request_id not in seen
    return lost + torn_lines(out)


def torn_lines(out: Path) -> int:
    """Record lines that do not parse, other than a torn last line (which a crash may leave)."""
    bad = 0
    for path in out.rglob("*.csv"):
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) < 2:
            continue
        width = lines[0].count(",")
        body = lines[1:-1]
        bad += sum(1 for line in body if line.count(",") < width)  # reasons may hold commas: only short rows
    return bad


def summary(out: Path) -> dict[str, Any]:
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def recovery_s(out: Path, worker: str) -> float | None:
    died = next((e for e in events(out) if e.get("event") == "worker_died" and e["worker"] == worker), None)
    back = next(
        (e for e in events(out) if e.get("event") == "worker_recovered" and e["worker"] == worker), None
    )
    if died is None or back is None:
        return None
    return round(float(back["t_s"]) - float(died["t_s"]), 2)


# --- running -----------------------------------------------------------------------------------


def start(out: Path, config: dict[str, Any], duration_s: float) -> subprocess.Popen[str]:
    out.mkdir(parents=True, exist_ok=True)
    yaml_path = out.parent / f"{out.name}.yaml"
    yaml_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return subprocess.Popen(
        [
            *COTRAIN,
            "run",
            str(yaml_path),
            "--duration",
            str(duration_s),
            "--out",
            str(out),
            "--quiet",
            "--force",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def started(proc: subprocess.Popen[str], out: Path) -> None:
    wait_for(proc, out, lambda e: e.get("event") == "run_started", 300)


def pid_of(out: Path, worker: str) -> int:
    return int(json.loads((out / "processes.json").read_text())[worker])


def finish(proc: subprocess.Popen[str], timeout_s: float = 300) -> int:
    proc.communicate(timeout=timeout_s)
    return proc.returncode


def base_config() -> dict[str, Any]:
    config = yaml.safe_load(QUICKSTART.read_text())
    config["workloads"]["training"][0]["checkpoint_every_steps"] = 10
    return config


def case_kill_worker(root: Path, worker: str, sig: signal.Signals, standby: bool = False) -> Outcome:
    name = f"{worker.replace(':', '-')}-{sig.name.lower()}" + ("-standby" if standby else "")
    spare = " (supervision.standby: a warm spare)" if standby else ""
    result = Outcome(name, f"{sig.name} to the {worker} process 8 s into a 40 s run{spare}")
    out = root / name
    config = base_config()
    if standby:
        config["supervision"] = {"standby": True}
    proc = start(out, config, 40)
    started(proc, out)
    time.sleep(8)  # let it serve and checkpoint first; the outcome does not depend on the exact moment
    os.kill(pid_of(out, worker), sig)
    code = finish(proc)
    s = summary(out)
    req = s.get("inference", {}).get("requests", {})
    restarts = s.get("restarts", {}).get(worker)
    ready = [e for e in events(out) if e.get("event") == "worker_ready" and e["worker"] == worker]
    result.outcome = (
        f"exit {code}, {s.get('run', {}).get('status')}, restarts.{worker}={restarts}; "
        f"arrived {req.get('arrived')} = {req.get('served')} served"
        f" + {req.get('failed')} failed + {req.get('shed')} shed"
    )
    if worker.startswith("train:") and ready:
        result.outcome += f"; {ready[-1].get('detail', '')}"
    result.records_lost = lost_requests(out)
    result.recover_s = recovery_s(out, worker)
    return result


def case_corrupt_checkpoint(root: Path) -> Outcome:
    result = Outcome(
        "corrupt-checkpoint", "training paused, newest checkpoint truncated to half, then SIGKILL"
    )
    out = root / "corrupt-checkpoint"
    proc = start(out, base_config(), 45)
    started(proc, out)
    ckpt = out / "checkpoints" / "cl"
    deadline = time.monotonic() + 120
    while len(list(ckpt.glob("step-*.pt"))) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("no two checkpoints")
        time.sleep(0.2)
    pid = pid_of(out, "train:cl")
    os.kill(pid, signal.SIGSTOP)  # no new checkpoint between the corruption and the kill
    newest, previous = sorted(ckpt.glob("step-*.pt"))[-1], sorted(ckpt.glob("step-*.pt"))[-2]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    os.kill(pid, signal.SIGKILL)
    code = finish(proc)
    ready = [e for e in events(out) if e.get("event") == "worker_ready" and e["worker"] == "train:cl"]
    detail = ready[-1].get("detail", "") if ready else ""
    used_previous = previous.name in detail
    result.outcome = f"exit {code}; restarted {detail!r}; fell back to {previous.name}: {used_previous}"
    result.records_lost = lost_requests(out)
    result.recover_s = recovery_s(out, "train:cl")
    result.detail["used_previous"] = used_previous
    return result


def case_signal_run(root: Path, twice: bool) -> Outcome:
    name = "sigint-twice" if twice else "sigterm"
    injected = "SIGINT, then SIGINT again 0.2 s later" if twice else "SIGTERM to `cotrain run`"
    result = Outcome(name, f"{injected}, 8 s into a 600 s run")
    out = root / name
    proc = start(out, base_config(), 600)
    started(proc, out)
    time.sleep(8)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT if twice else signal.SIGTERM)
    if twice:
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
    code = finish(proc, 120)
    exit_s = time.monotonic() - t0
    names = [e.get("event") for e in events(out)]
    alive = [p for p in json.loads((out / "processes.json").read_text()).values() if _alive(int(p))]
    result.outcome = (
        f"exit {code} after {exit_s:.1f} s; summary.json written: {(out / 'summary.json').exists()}; "
        f"platform restored: {'platform_restored' in names}; children left: {len(alive)}"
    )
    result.records_lost = lost_requests(out)
    result.recover_s = round(exit_s, 2)
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def case_bad_config(root: Path) -> Outcome:
    result = Outcome("bad-config", "batching.max_batch_size: 0 in the inference config")
    config = base_config()
    config["workloads"]["inference"]["batching"]["max_batch_size"] = 0
    out = root / "bad-config"
    yaml_path = root / "bad-config.yaml"
    yaml_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    t0 = time.monotonic()
    proc = subprocess.run(
        [*COTRAIN, "run", str(yaml_path), "--out", str(out), "--force"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    result.outcome = f"exit {proc.returncode}: {message[:160]}; run dir created: {out.exists()}"
    result.records_lost = 0
    result.recover_s = round(time.monotonic() - t0, 2)
    return result


def case_overload(root: Path) -> Outcome:
    """Twice the sustainable rate for 60 s: memory stays bounded, shedding counted, nobody dies."""
    result = Outcome("overload", "")
    config = base_config()
    inference = config["workloads"]["inference"]
    inference["queue_capacity"] = 256
    base_rate, high_rate = 20.0, 160.0
    inference["arrivals"] = {
        "process": "schedule",
        "seed": 1,
        "steps": [
            {"at_s": 0, "rate_per_s": base_rate},
            {"at_s": 15, "rate_per_s": high_rate},
            {"at_s": 75, "rate_per_s": base_rate},
        ],
    }
    out = root / "overload"
    proc = start(out, config, 100)
    started(proc, out)
    pid = pid_of(out, "inference")
    rss_mb: list[tuple[float, float]] = []
    t0 = time.monotonic()
    while proc.poll() is None:
        rss_mb.append((time.monotonic() - t0, _rss_mb(pid)))
        time.sleep(1.0)  # a sampling period, not a wait for an outcome
    proc.communicate()
    rows = read_csv_rows(out / "requests.csv")
    start_s = min(float(r["arrival_s"]) for r in rows)

    def window(a: float, b: float) -> list[dict[str, str]]:
        return [r for r in rows if a <= float(r["arrival_s"]) - start_s < b]

    high = window(15, 75)
    served_high = [r for r in high if r["outcome"] == "served"]
    capacity_per_s = len(served_high) / 60.0
    after = [r for r in window(85, 100) if r["outcome"] == "served"]
    slo_ms = float(inference["slo_ms"])
    attainment_after = sum(float(r["latency_ms"]) <= slo_ms for r in after) / len(after) if after else None
    before_mb = max((m for t, m in rss_mb if t < 15), default=0.0)
    peak_mb = max((m for _, m in rss_mb), default=0.0)
    s = summary(out)
    req = s.get("inference", {}).get("requests", {})
    deaths = sum(1 for e in events(out) if e.get("event") == "worker_died")
    ratio = high_rate / capacity_per_s if capacity_per_s else float("inf")
    result.injected = (
        f"{high_rate:g} req/s for 60 s = {ratio:.1f}x the {capacity_per_s:.1f} req/s served meanwhile "
        f"(base {base_rate:g} req/s)"
    )
    result.outcome = (
        f"shed {req.get('shed')}, failed {req.get('failed')}, deaths {deaths}; inference RSS "
        f"{before_mb:.0f} MB before, peak {peak_mb:.0f} MB; SLO attainment of admitted requests "
        f"10-25 s after the drop: {None if attainment_after is None else round(attainment_after, 3)}"
    )
    result.records_lost = lost_requests(out)
    first_ok = _first_recovered_s(rows, start_s, 75, slo_ms)
    result.recover_s = first_ok
    result.detail.update(ratio=ratio, peak_mb=peak_mb, before_mb=before_mb, attainment_after=attainment_after)
    return result


def _first_recovered_s(
    rows: list[dict[str, str]], start_s: float, drop_s: float, slo_ms: float
) -> float | None:
    """Seconds after the load drop until every later 1 s window of admitted requests meets the SLO."""
    windows: dict[int, list[float]] = {}
    for r in rows:
        t = float(r["arrival_s"]) - start_s
        if t >= drop_s and r["outcome"] == "served":
            windows.setdefault(int(t - drop_s), []).append(float(r["latency_ms"]))
    if not windows:
        return None
    last_bad = max((k for k, v in windows.items() if max(v) > slo_ms), default=-1)
    return float(last_bad + 1)


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


CASES: dict[str, Callable[[Path], Outcome]] = {
    "inference-sigkill": lambda root: case_kill_worker(root, "inference", signal.SIGKILL),
    "inference-sigsegv": lambda root: case_kill_worker(root, "inference", signal.SIGSEGV),
    "inference-sigkill-standby": lambda root: case_kill_worker(root, "inference", signal.SIGKILL, True),
    "training-sigkill": lambda root: case_kill_worker(root, "train:cl", signal.SIGKILL),
    "corrupt-checkpoint": case_corrupt_checkpoint,
    "sigterm": lambda root: case_signal_run(root, twice=False),
    "sigint-twice": lambda root: case_signal_run(root, twice=True),
    "bad-config": case_bad_config,
    "overload": case_overload,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/faults")
    parser.add_argument("--cases", help=f"comma-separated subset of: {', '.join(CASES)}")
    parser.add_argument(
        "--skip-overload", action="store_true", help="the overload case takes about 2 minutes"
    )
    args = parser.parse_args(argv)
    names = args.cases.split(",") if args.cases else list(CASES)
    if args.skip_overload and "overload" in names:
        names.remove("overload")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    console = Console()
    results = []
    for name in names:
        console.print(f"[bold]{name}[/bold] ...")
        try:
            results.append(CASES[name](root))
        except Exception as exc:  # a case that breaks is a row saying so, not a traceback
            results.append(Outcome(name, "", outcome=f"case failed: {type(exc).__name__}: {exc}"))
        console.print(f"  {results[-1].outcome}")
    table = Table(title="cotrain fault injection")
    for column in ("case", "injected", "outcome", "records lost", "recover / exit (s)"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(
            r.case,
            r.injected,
            r.outcome,
            "" if r.records_lost is None else str(r.records_lost),
            "" if r.recover_s is None else f"{r.recover_s:g}",
        )
    console.print(table)
    (root / "faults.json").write_text(
        json.dumps([r.__dict__ for r in results], indent=2, default=str), encoding="utf-8"
    )
    return 0 if all(r.records_lost == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The runtime: owns the run from spawn to summary, and the observe -> decide -> actuate loop.

The base owns the loop; a controller only decides (after Flower's Strategy and Ray Serve's
autoscaler). Every period the runtime folds the workers' stats into an Observation, asks the
bounded policy for an Action, turns the Action into typed commands and placement calls, and
writes what it applied to decisions.jsonl. Whatever happens (normal end, worker failure, SIGINT,
SIGTERM, an exception) the `finally` path stops every worker, restores the platform and writes
summary.json from the record files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import Any

import yaml

from cotrain.clock import NS_PER_S, Clock, MonotonicClock
from cotrain.config import ExperimentConfig, FederatedConfig, dump_config
from cotrain.control import Action, InferenceKnobs, InferenceWindow, Knobs, TrainingKnobs, VariantInfo
from cotrain.controllers.base import Policy
from cotrain.controllers.capabilities import Capabilities, assemble_policy
from cotrain.controllers.modesearch import ModeInfo
from cotrain.controllers.wrappers import KnobBounds, PowerModeRules
from cotrain.gate import InterleavingGate
from cotrain.knob_commands import KnobCommands, inference_commands, training_commands
from cotrain.messages import (
    Applied,
    CommandRefused,
    Finished,
    InferenceStats,
    LoadModel,
    ModelReady,
    ModelSwapped,
    Ready,
    Report,
    Start,
    TrainingStats,
    WorkerFailed,
)
from cotrain.observe import build_observation, inference_window
from cotrain.platform.base import Platform, PowerModeError, PowerModeInfo, TelemetrySample, by_capability
from cotrain.records import KEEP_ENV, ROTATE_ENV, CsvAppender, JsonlAppender, rotated_away, write_json_atomic
from cotrain.rundir import RunDir
from cotrain.running_summary import RunningSummary
from cotrain.summary import STANDBY, compute_summary
from cotrain.supervisor import Supervisor, WorkerHandle, restart_delay_s

INFERENCE = "inference"
READY_TIMEOUT_S = 600.0
TELEMETRY_COLUMNS = (
    "t_s",
    "source",
    "power_mode",
    "cpu_util_percent",
    "gpu_util_percent",
    "gpu_freq_mhz",
    "memory_used_mb",
    "power_w",
    "temperature_c",
    # the primary (controller's) service, as its stats messages of this control tick told it;
    # blank when none arrived in the tick. Appended last so older readers keep their columns.
    "queue_depth",
    "arrival_rate_per_s",
)
# services/<name>/queue.csv, with several services: each one's own count, as telemetry.csv's
# last two columns hold the controller's service's
QUEUE_COLUMNS = ("t_s", "queue_depth", "arrival_rate_per_s")


def train_worker(job: str) -> str:
    return f"train:{job}"


class RunFailed(Exception):
    pass


def fair_thread_share(config: ExperimentConfig, cpu_count: int) -> int:
    n_processes = len(config.workloads.inference_services()) + len(config.workloads.training)
    return max(1, cpu_count // max(1, n_processes))


def initial_knobs(config: ExperimentConfig, cpu_count: int) -> Knobs:
    """Knobs at start: as configured, threads defaulting to a fair share of the cores.

    Oversubscribed threads are the largest interference on a small CPU (measured on a
    2-core x86_64 VM: 2 threads each on 2 cores pushed inference p99 from ~290 ms to ~1200 ms), so the default
    splits the cores evenly between the workload processes.
    """
    workloads = config.workloads
    share = fair_thread_share(config, cpu_count)
    inference = None
    primary = workloads.primary_inference()
    if primary is not None:
        i = primary.config
        inference = InferenceKnobs(
            max_batch_size=i.batching.max_batch_size,
            max_queue_delay_ms=i.batching.max_queue_delay_ms,
            threads=i.threads or share,
            cpus=tuple(i.cpus) if i.cpus else None,
            variant=i.variants[0] if i.variants else None,
            instances=i.instances,
        )
    training = {
        job.name: TrainingKnobs(
            threads=job.threads or share,
            cpus=tuple(job.cpus) if job.cpus else None,
            num_workers=job.num_workers,
            paused=job.paused,
            batch_size=job.batch_size,
            duty_cycle=job.duty_cycle,
            gate_policy=job.interleave.policy,
            gate_max_wait_ms=job.interleave.max_wait_ms,
        )
        for job in workloads.training
    }
    return Knobs(inference=inference, training=training)


def run_capabilities(
    config: ExperimentConfig,
    cpus: tuple[int, ...],
    modes: Sequence[PowerModeInfo] = (),
    rules: PowerModeRules | None = None,
) -> Capabilities:
    """What this run's platform and config offer the controller (see controllers/capabilities)."""
    primary = config.workloads.primary_inference()
    inference = primary.config if primary is not None else None
    return Capabilities(
        cpus=cpus,
        queue_capacity=inference.queue_capacity if inference else 1,
        jobs=frozenset(job.name for job in config.workloads.training),
        variants=frozenset(inference.variants) if inference and inference.variants else None,
        mode_names=frozenset(m.name for m in modes) if modes else None,
        mode_names_by_id=MappingProxyType({str(m.id): m.name for m in modes}),
        modes=mode_infos(modes),
        power_rules=rules,
    )


def knob_bounds(
    config: ExperimentConfig, cpus: tuple[int, ...], power_modes: frozenset[str] | None = None
) -> KnobBounds:
    return replace(run_capabilities(config, cpus), mode_names=power_modes).knob_bounds()


def mode_infos(modes: Sequence[PowerModeInfo]) -> tuple[ModeInfo, ...]:
    """The platform's modes with their clocks; empty unless every mode has CPU, GPU and EMC clocks
    (a host's emulated modes have none). They share the current GPU gating, so `gpu_tpcs` is
    left at its default."""
    infos = []
    for m in modes:
        if m.cpu_mhz is None or m.gpu_mhz is None or m.emc_mhz is None:
            return ()
        infos.append(ModeInfo(m.name, m.online_cores, m.cpu_mhz, m.gpu_mhz, m.emc_mhz))
    return tuple(infos)


def power_rules_for(config: ExperimentConfig, platform: Platform) -> PowerModeRules:
    """The power-mode guard's rules: the platform's modes, narrowed by the policy file if any."""
    modes = platform.power_modes()
    rules = PowerModeRules(
        order=by_capability(modes), needs_reboot=frozenset(m.name for m in modes if m.needs_reboot)
    )
    if config.platform.power_policy is None:
        return rules
    from cotrain.power_modes.policy import load_power_policy

    policy = load_power_policy(config.platform.power_policy)
    allowed = None
    if policy.allowed_modes:
        by_id = {str(m.id): m.name for m in modes}
        allowed = frozenset(by_id.get(str(a), str(a)) for a in policy.allowed_modes)
    return replace(
        rules,
        allowed=allowed,
        allow_reboot_modes=policy.allow_reboot_modes,
        min_dwell_s=policy.min_dwell_s,
        power_budget_w=policy.power_budget_w,
    )


class Runtime:
    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: RunDir,
        platform: Platform,
        *,
        policy: Policy | None = None,
        power_rules: PowerModeRules | None = None,
        clock: Clock | None = None,
        log: Any = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.platform = platform
        self.clock = clock or MonotonicClock()
        self.cpus = platform.cpu_ids()
        modes = platform.power_modes()
        current = platform.current_power_mode()
        self.knobs = replace(
            initial_knobs(config, len(self.cpus)), power_mode=current.name if current else None
        )
        self.power_rules = power_rules or power_rules_for(config, platform)
        self.capabilities = run_capabilities(config, self.cpus, modes, self.power_rules)
        self.policy = assemble_policy(config.controller, self.capabilities, policy)
        self._last_sample: Any = None
        self.supervisor = Supervisor(
            run_dir, env={"TORCHINDUCTOR_CACHE_DIR": str(run_dir.path / ".inductor-cache")}
        )
        self._log = log or (lambda message: None)
        self.services = config.workloads.inference_services()
        primary = config.workloads.primary_inference()
        self.primary = primary.worker if primary is not None else INFERENCE  # the controller's service
        self.gate = InterleavingGate(self.supervisor.ctx, slots=max(1, len(self.services)))
        self._events: JsonlAppender | None = None
        self._decisions: JsonlAppender | None = None
        self._telemetry: CsvAppender | None = None
        self._queues: dict[str, CsvAppender] = {}  # worker -> its queue.csv (several services only)
        self._service_stats: dict[str, list[InferenceStats]] = {}  # worker -> this tick's messages
        self._t0_ns: int | None = None
        self._stop_reason: str | None = None
        self._signals = 0
        self._restoring = False
        self._federation: Any = None
        self._variants: tuple[VariantInfo, ...] = ()
        self._profile: dict[tuple[str, int], float] = {}
        self._remote_federations: list[Any] = []
        self._rounds_seen = 0
        self._inference_stats: list[InferenceStats] = []
        self._last_inference_stats: list[InferenceStats] = []
        self._training_stats: dict[str, list[TrainingStats]] = {job: [] for job in self.knobs.training}
        self._wake_r: Connection | None = None
        self._wake_w: Connection | None = None
        self.status = "completed"
        # supervision: restarts done, restarts due (monotonic ns), respawned workers not yet Ready
        # (with their spawn time), and per inference worker the death not yet accounted for and
        # the first request id the next process serves
        self.restarts: dict[str, int] = {}
        self._restart_due_ns: dict[str, int] = {}
        self._starting: dict[str, int] = {}
        self._down_since_s: dict[str, float] = {}
        self._next_request_id: dict[str, int] = {}
        self._last_model: LoadModel | None = None
        self._standby_ready: set[str] = set()  # warm standbys that reported Ready
        self._last_power_refusal = ""
        self._stop_s: float | None = None  # when the run window closed (offset from t0)
        self.ingress: Any = None  # the network front end (cotrain/ingress/hub.py), with ingress
        self.metrics: Any = None  # the Prometheus page (cotrain/metrics_feed.py), with ingress.metrics
        self._clients: dict[str, subprocess.Popen[str]] = {}  # built-in load clients, by service
        self.running = RunningSummary(
            {s.name: s.config.slo_ms for s in self.services},
            {j.name: j.kind for j in config.workloads.training},
        )
        self._next_summary_ns: int | None = None
        self._saved_env = {k: os.environ.get(k) for k in (ROTATE_ENV, KEEP_ENV)}
        output = config.output
        if output.rotate_mb is not None:  # every process writing records reads these (records.py)
            os.environ[ROTATE_ENV] = f"{output.rotate_mb:g}"
            os.environ[KEEP_ENV] = str(output.keep_rotated)

    # --- records -------------------------------------------------------------------------------

    def event(self, name: str, **fields: Any) -> None:
        now_ns = self.clock.now_ns()
        record: dict[str, Any] = {
            "event": name,
            "t_mono_s": round(now_ns / NS_PER_S, 6),
            "t_s": round((now_ns - self._t0_ns) / NS_PER_S, 6) if self._t0_ns is not None else None,
            "wall": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        }
        record.update(fields)
        if self._events is not None:
            self._events.write(record)

    def _elapsed_s(self) -> float:
        assert self._t0_ns is not None
        return (self.clock.now_ns() - self._t0_ns) / NS_PER_S

    # --- signals -------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._restoring:
            return  # the device is being put back; nothing may interrupt that
        if self._signals > 1:
            raise KeyboardInterrupt  # second signal: stop waiting; `finally` still restores
        self._stop_reason = signal.Signals(signum).name
        if self._wake_w is not None:
            self._wake_w.send_bytes(b"!")

    @contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        import multiprocessing as mp

        self._wake_r, self._wake_w = mp.Pipe(duplex=False)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._wake_r.close()
            self._wake_w.close()
            self._wake_r = self._wake_w = None

    # --- reports from workers ------------------------------------------------------------------

    def on_report(self, worker: str, report: Report) -> None:
        if isinstance(report, InferenceStats):
            if self.metrics is not None:
                self.metrics.stats(worker, report)
            self._feed_running(worker, report)
            if worker == self.primary:  # the others are governed by priorities, not the controller
                self._inference_stats.append(report)
            if worker in self._queues:
                self._service_stats.setdefault(worker, []).append(report)
        elif isinstance(report, TrainingStats):
            self._training_stats[worker.removeprefix("train:")].append(report)
            self.running.training(
                worker.removeprefix("train:"),
                steps=report.steps,
                samples=report.samples,
                loss=report.last_loss,
            )
        elif isinstance(report, Applied):
            self.event(
                "knob_applied",
                worker=worker,
                knob=report.knob,
                value=report.value,
                applied_mono_s=round(report.at_ns / NS_PER_S, 6),
            )
        elif isinstance(report, CommandRefused):
            self.event("command_refused", worker=worker, command=report.command)
            self._log(f"  {worker} has no use for {report.command}: a command sent to the wrong worker")
        elif isinstance(report, ModelReady):
            self.event(
                "model_published",
                worker=worker,
                version=report.version,
                accuracy=report.accuracy,
                path=report.path,
            )
            if INFERENCE in self.supervisor.workers:
                self._last_model = LoadModel(report.path, report.version, worker)
                self.supervisor.send(INFERENCE, self._last_model)
        elif isinstance(report, ModelSwapped):
            if self.metrics is not None:
                self.metrics.model_swapped(worker, report.version)
            self.event(
                "model_swapped",
                worker=worker,
                version=report.version,
                prepare_ms=round(report.prepare_ms, 3),
                swapped_mono_s=round(report.at_ns / NS_PER_S, 6),
            )
        elif isinstance(report, Ready):
            self.event("worker_ready", worker=worker, pid=report.pid, detail=report.detail)
        elif isinstance(report, Finished):
            self.event("worker_finished", worker=worker, detail=report.detail)
        elif isinstance(report, WorkerFailed):
            self.event("worker_failed", worker=worker, error=report.error, traceback=report.traceback)

    # --- actuation -----------------------------------------------------------------------------

    def actuate(self, action: Action) -> None:
        """Send each knob change to the process that owns it; placement goes through the platform."""
        after = self.knobs.apply(action)
        if action.inference is not None and after.inference is not None:
            self._send_knobs(self.primary, inference_commands(after.inference, action.inference.changes()))
        for job, change in action.training.items():
            knobs = after.training.get(job)
            if knobs is not None:
                self._send_knobs(train_worker(job), training_commands(knobs, change.changes()))
        power_mode = self.knobs.power_mode
        self.knobs = replace(after, power_mode=power_mode)
        if action.power_mode is not None:
            self._set_power_mode(action.power_mode, action.reason)

    def _set_power_mode(self, mode: str | int, reason: str) -> bool:
        try:
            info = self.platform.set_power_mode(mode)
        except PowerModeError as exc:
            self._last_power_refusal = str(exc)
            self.event("power_mode_refused", mode=str(mode), reason=str(exc))
            self._log(f"[yellow]power mode {mode} refused: {exc}[/yellow]")
            return False
        self.knobs = replace(self.knobs, power_mode=info.name)
        self.event(
            "power_mode_set", mode=info.name, id=info.id, reason=reason, cpus=list(self.platform.cpu_ids())
        )
        return True

    def _send_knobs(self, worker: str, commands: KnobCommands) -> None:
        for message in commands.messages:
            self.supervisor.send(worker, message)
        if commands.place:
            self._place(worker, commands.cpus)

    def _place(self, worker: str, cpus: tuple[int, ...] | None) -> None:
        pid = self.supervisor.workers[worker].pid
        if pid is None:
            return
        self.platform.place(pid, cpus)
        try:
            now = sorted(os.sched_getaffinity(pid))  # read back: what the kernel really applied
        except OSError:
            now = []
        self.event(
            "placed", worker=worker, pid=pid, cpus=list(cpus) if cpus else list(self.cpus), affinity_now=now
        )
        self._log(f"  {worker} placed on CPUs {now}")

    # --- variants --------------------------------------------------------------------------------

    def _requests_csv(self, worker: str) -> Path:
        if worker == INFERENCE:
            return self.run_dir.requests_csv
        return self.run_dir.service_requests_csv(worker.removeprefix("inference:"))

    def _load_ladder(self) -> None:
        """The ladder's accuracies and the micro-profile, written by the inference process at start."""
        folder = self._requests_csv(self.primary).parent
        variants_file = folder / "variants.json"
        profile_file = folder / "profile.json"
        if not variants_file.exists():
            return
        data = json.loads(variants_file.read_text(encoding="utf-8"))
        self._variants = tuple(
            VariantInfo(v["name"], v.get("accuracy"), v.get("accuracy_source", "unknown")) for v in data
        )
        if profile_file.exists():
            rows = json.loads(profile_file.read_text(encoding="utf-8"))["latency_ms"]
            self._profile = {(r["variant"], int(r["batch"])): float(r["p50_ms"]) for r in rows}
        self.event("ladder_loaded", variants=[v.name for v in self._variants], profiled=len(self._profile))

    # --- federated learning --------------------------------------------------------------------

    def _federated_jobs(self, local: bool) -> list[Any]:
        return [
            j
            for j in self.config.workloads.training
            if j.kind == "federated" and (((j.federated or FederatedConfig()).server == "local") == local)
        ]

    def _start_federations(self) -> None:
        """A local FedAvg server side (one SuperNode per local job), and a SuperNode per remote job."""
        from cotrain.workloads.training.federated.local_fleet import (
            LocalFederation,
            RemoteFederation,
            RemoteSuperLink,
        )

        local = self._federated_jobs(local=True)
        if local:
            self._log(f"starting a local Flower federation on 127.0.0.1 for {len(local)} client(s)")
            self._federation = LocalFederation(
                self.run_dir.federation, [self.run_dir.bridge_socket(j.name) for j in local]
            )
            self._federation.start()
            self.event("federation_started", server="local", clients=[j.name for j in local])
        for i, job in enumerate(self._federated_jobs(local=False)):
            fed = job.federated
            assert fed is not None and not isinstance(fed.server, str)
            remote = RemoteFederation(
                RemoteSuperLink(
                    fed.server.address,
                    Path(fed.server.root_certificates) if fed.server.root_certificates else None,
                    fed.server.insecure,
                ),
                self.run_dir.federation / job.name,
                self.run_dir.bridge_socket(job.name),
                partition_id=fed.partition_id if fed.partition_id is not None else i,
                num_partitions=fed.num_partitions or 1,
            )
            remote.start()
            self._remote_federations.append(remote)
            self.event("federation_started", server=fed.server.address, clients=[job.name])

    def _submit_federated_run(self) -> None:
        if self._federation is None:
            return
        from cotrain.workloads.training.federated.local_fleet import RunSettings

        first = self._federated_jobs(local=True)[0]
        fed = first.federated or FederatedConfig()
        settings = RunSettings(
            initial_arrays=self.run_dir.federation / f"initial-{first.name}.npz",
            num_rounds=fed.rounds,
            round_timeout_s=fed.round_timeout_s,
            bridge_timeout_s=max(1.0, fed.round_timeout_s - 30.0),
            local_steps=fed.local_steps,
        )
        run_id = self._federation.submit(settings)
        self.event("federated_run_submitted", run_id=run_id, rounds=fed.rounds, local_steps=fed.local_steps)

    def _record_rounds(self) -> None:
        if self._federation is None:
            return
        try:
            rows = self._federation.rounds()
        except Exception as exc:  # a torn or odd rounds file must not stop the control loop
            self._log(f"[yellow]federated rounds unreadable: {exc}[/yellow]")
            return
        for row in rows[self._rounds_seen :]:
            self.event(
                "federated_round",
                round=row.round,
                clients=row.clients,
                train_loss=row.train_loss,
                eval_accuracy=row.eval_accuracy,
                round_s=row.round_s,
            )
            self._log(
                f"  federated round {row.round}: {row.clients} client(s), loss {row.train_loss:.3f}, "
                f"accuracy {row.eval_accuracy:.3f}"
            )
        self._rounds_seen = len(rows)
        if self.metrics is not None:
            jobs = [j.name for j in self.config.workloads.training if j.kind == "federated"]
            self.metrics.federated_rounds(jobs, sum(1 for r in rows if r.clients > 0))

    def _stop_federations(self) -> None:
        if self._federation is not None:
            self._record_rounds()
            self._federation.stop()
            self.event("federation_stopped", server="local")
            self._federation = None
        for remote in self._remote_federations:
            remote.stop()
        self._remote_federations = []

    def _tick(self, window_s: float, state: Any) -> Any:
        self._record_rounds()
        sample = self.platform.telemetry()
        now_s = self._elapsed_s()
        primary = self.config.workloads.primary_inference()
        inference = primary.config if primary is not None else None
        obs = build_observation(
            time_s=now_s,
            window_s=window_s,
            knobs=self.knobs,
            inference_stats=(self._inference_stats or self._last_inference_stats) if inference else None,
            slo_ms=inference.slo_ms if inference else None,
            training_stats=self._training_stats,
            sample=sample,
            cpu_count=len(self.cpus),
            power_budget_w=self.power_rules.power_budget_w,
            variants=self._variants,
            profile_ms=self._profile,
            inference_fresh=bool(self._inference_stats),
        )
        self._write_telemetry(now_s, sample, obs.inference if obs.inference_fresh else None)
        self._write_queues(now_s, window_s)
        if self._inference_stats:  # a tick without a stats message keeps the last window's view
            self._last_inference_stats = self._inference_stats
        self._inference_stats = []
        self._training_stats = {job: [] for job in self._training_stats}
        if self.metrics is not None:
            self.metrics.tick(window_s, sample, obs.training, self.knobs, self.primary)
        self._maybe_write_summary()
        action, state = self.policy.decide(obs, state)
        if not action.is_empty():
            self.actuate(action)
            if self.metrics is not None:
                self.metrics.decision()
        if not action.is_empty() or action.notes:
            self._decide_record(now_s, action)
        return state

    def _write_telemetry(self, t_s: float, sample: TelemetrySample, window: InferenceWindow | None) -> None:
        """One telemetry.csv row per control tick: the platform sample, and the primary service's
        queue depth and arrival rate, which the dashboard and report read instead of rebuilding them
        from requests.csv (a request still queued has no row there yet)."""
        if self._telemetry is None:
            return
        self._telemetry.write_rows(
            [
                (
                    f"{t_s:.3f}",
                    sample.source,
                    sample.power_mode or "",
                    _num(sample.cpu_util_percent),
                    _num(sample.gpu_util_percent),
                    _num(sample.gpu_freq_mhz),
                    _num(sample.memory_used_mb),
                    _num(sample.power_w),
                    _num(sample.temperature_c),
                    "" if window is None else str(window.queue_depth),
                    "" if window is None else f"{window.arrival_rate_per_s:.3f}",
                )
            ]
        )

    def _write_queues(self, t_s: float, window_s: float) -> None:
        """With several services, one queue.csv row per service per tick, from its own stats
        messages: the controller acts on one service, but the dashboard and report show all."""
        for worker, appender in self._queues.items():
            stats = self._service_stats.pop(worker, [])
            if not stats:
                appender.write_rows([(f"{t_s:.3f}", "", "")])
                continue
            service = self.services[self._slot(worker)]
            window = inference_window(stats, window_s, service.config.slo_ms)
            appender.write_rows([(f"{t_s:.3f}", str(window.queue_depth), f"{window.arrival_rate_per_s:.3f}")])

    def _decide_record(self, t_s: float, action: Action) -> None:
        if self._decisions is not None:
            self._decisions.write(
                {
                    "t_s": round(t_s, 3),
                    "policy": self.policy.name,
                    "action": action.to_record(),
                    "reason": action.reason,
                    "notes": list(action.notes),
                    "knobs": _knobs_record(self.knobs),
                }
            )

    # --- the run -------------------------------------------------------------------------------

    def _spawn_all(self) -> None:
        from cotrain.workloads.inference.priority import higher_priority_slots, priority_nice
        from cotrain.workloads.inference.service import inference_process_main
        from cotrain.workloads.training.trainer import training_process_main

        config = self.config
        priorities = [s.priority for s in self.services]
        share = fair_thread_share(config, len(self.cpus))
        for slot, service in enumerate(self.services):
            requests_csv = self._requests_csv(service.worker)
            requests_csv.parent.mkdir(parents=True, exist_ok=True)
            primary = service.worker == self.primary and self.knobs.inference is not None
            threads = self.knobs.inference.threads if primary and self.knobs.inference else None
            names = [service.worker]
            if config.supervision.standby:
                names.append(service.worker + STANDBY)  # loaded now, idle until the service dies
            net = self.ingress.worker_args(service.worker) if self.ingress is not None else None
            for name in names:
                self.supervisor.spawn(
                    name,
                    inference_process_main,
                    (
                        service.config,
                        str(requests_csv),
                        threads or service.config.threads or share,
                        config.seed,
                        self.gate,
                        slot,
                        higher_priority_slots(priorities, slot),
                        getattr(service.config, "min_throughput_per_s", 0.0),
                        priority_nice(priorities, slot),
                        net,  # a standby connects as the service it stands in for, once promoted
                    ),
                )
        federated = [j.name for j in config.workloads.training if j.kind == "federated"]
        for job in config.workloads.training:
            if job.kind == "federated":
                fed = job.federated or FederatedConfig()
                job = job.model_copy(
                    update={
                        "federated": fed.model_copy(
                            update={
                                "partition_id": fed.partition_id
                                if fed.partition_id is not None
                                else federated.index(job.name),
                                "num_partitions": fed.num_partitions or len(federated),
                            }
                        )
                    }
                )
            self.supervisor.spawn(
                train_worker(job.name),
                training_process_main,
                (
                    job,
                    str(self.run_dir.train_csv(job.name)),
                    str(self.run_dir.checkpoints(job.name)),
                    self.knobs.training[job.name].threads,
                    config.seed,
                    self.gate,
                ),
            )
        for handle in self.supervisor.workers.values():
            self.event("worker_spawned", worker=handle.name, pid=handle.pid)
            if handle.pid is not None:
                self.platform.attach(handle.pid)

    def _wait_ready(self) -> None:
        pending = set(self.supervisor.workers)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while pending:
            if self._stop_reason is not None:
                raise RunFailed(f"stopped by {self._stop_reason} during start-up")
            now_ns = self.clock.now_ns()
            due_s = min(((d - now_ns) / NS_PER_S for d in self._restart_due_ns.values()), default=1.0)
            for worker, report in self.supervisor.poll(max(0.0, min(1.0, due_s)), extra=[self._wake_r]):
                self.on_report(worker, report)
                if isinstance(report, Ready):
                    pending.discard(worker)
                    self._starting.pop(worker, None)  # nothing to resume: the run has not started
                    if worker.endswith(STANDBY):
                        self._standby_ready.add(worker)
                    self._log(f"  {worker} ready (pid {report.pid}, {report.detail})")
                elif isinstance(report, WorkerFailed):
                    raise RunFailed(f"{worker} failed during start-up: {report.error}")
            for handle in self.supervisor.died():
                if handle.failure is not None or (handle.process.exitcode or 0) >= 0:
                    # an exception or an exit in start-up code is deterministic: a restart would
                    # fail the same way
                    raise RunFailed(
                        f"{handle.name} exited during start-up (exit code {handle.process.exitcode})"
                    )
                self._on_death(handle)  # killed by a signal (OOM, an operator): start it again
                pending.add(handle.name)
            self._restart_due_workers()
            if time.monotonic() > deadline:
                raise RunFailed(
                    f"workers not ready after {READY_TIMEOUT_S:.0f} s: {', '.join(sorted(pending))}"
                )

    def _control_loop(self) -> None:
        assert self._t0_ns is not None
        period_ns = round(self.config.controller.period_s * NS_PER_S)
        duration_s = self.config.duration_s
        end_ns = self._t0_ns + round(duration_s * NS_PER_S) if duration_s is not None else None
        next_tick_ns = self._t0_ns + period_ns
        last_tick_ns = self._t0_ns
        state = self.policy.initial_state()
        while True:
            now_ns = self.clock.now_ns()
            if self._stop_reason is not None:
                self.status = "interrupted"
                return
            if end_ns is not None and now_ns >= end_ns:
                return
            wake_ns = min(next_tick_ns, end_ns or next_tick_ns, *self._restart_due_ns.values())
            timeout_s = (wake_ns - now_ns) / NS_PER_S
            for worker, report in self.supervisor.poll(timeout_s, extra=[self._wake_r]):
                self.on_report(worker, report)
                if isinstance(report, Ready) and worker.endswith(STANDBY):
                    self._standby_ready.add(worker)
                elif isinstance(report, Ready) and worker in self._starting:
                    self._resume(worker)
            for handle in self.supervisor.died():
                self._on_death(handle)
            self._restart_due_workers()
            now_ns = self.clock.now_ns()
            if now_ns >= next_tick_ns:
                state = self._tick((now_ns - last_tick_ns) / NS_PER_S, state)
                last_tick_ns = now_ns
                next_tick_ns += period_ns * max(1, (now_ns - next_tick_ns) // period_ns + 1)

    def run(self) -> dict[str, Any]:
        """Run the experiment to its end (or a signal) and return summary.json's content."""
        run_dir = self.run_dir
        run_dir.config.write_text(dump_config(self.config), encoding="utf-8")
        self._events = JsonlAppender(run_dir.events)
        self._decisions = JsonlAppender(run_dir.decisions)
        self._telemetry = CsvAppender(run_dir.telemetry_csv, TELEMETRY_COLUMNS)
        if len(self.services) > 1:
            for service in self.services:
                path = run_dir.service_queue_csv(service.name)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._queues[service.worker] = CsvAppender(path, QUEUE_COLUMNS)
        error: BaseException | None = None
        self.event(
            "run_created", pid=os.getpid(), platform=self.platform.describe(), knobs=_knobs_record(self.knobs)
        )
        try:
            with self._signal_handlers():
                try:
                    try:
                        self._start_ingress()
                        self._start_clients()  # they load tritonclient while the models load
                        self._spawn_all()
                        self._log(
                            f"started {len(self.supervisor.workers)} workload process(es), loading models"
                        )
                        self._wait_ready()
                        self._load_ladder()
                        self._start_federations()
                        self._apply_initial_placement()
                        mode = self.config.platform.power_mode
                        if mode is not None and not self._set_power_mode(
                            mode, "initial power mode from config"
                        ):
                            raise RunFailed(
                                f"could not set the initial power mode {mode!r}: {self._last_power_refusal}"
                            )
                        self._t0_ns = self.clock.now_ns()
                        self.event("run_started", duration_s=self.config.duration_s)
                        if self.metrics is not None:
                            self.metrics.started()
                        self._decide_record(0.0, Action(reason="initial knobs from config"))
                        for name in self.supervisor.workers:
                            if not name.endswith(STANDBY):
                                self.supervisor.send(name, Start(self._t0_ns))
                        self._submit_federated_run()
                        how_long = (
                            f"for {self.config.duration_s:g} s"
                            if self.config.duration_s is not None
                            else "until SIGINT or SIGTERM"
                        )
                        self._log(f"running {how_long} -> {run_dir.path}")
                        self._control_loop()
                    except KeyboardInterrupt:
                        self.status = "interrupted"
                        self._stop_reason = self._stop_reason or "SIGINT"
                    except BaseException as exc:
                        self.status = "failed"
                        error = exc
                    finally:
                        try:
                            self._shutdown()
                        except KeyboardInterrupt:  # a second signal: stop waiting for the drain
                            self._force_stop()
                finally:
                    # Still inside the handlers: a signal now is noted, never interrupts the restore.
                    self._restoring = True
                    self.platform.restore()
                    self.event("platform_restored")
        finally:
            for appender in (self._events, self._decisions, self._telemetry):
                if appender is not None:
                    appender.close()
            for queue in self._queues.values():
                queue.close()
            if self.metrics is not None:
                self.metrics.close()
            self.supervisor.close()
            for key, value in self._saved_env.items():  # rotation was this run's, not the process's
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if rotated_away(run_dir.path):  # the records no longer hold the whole run; the aggregates do
            summary = self._running_summary(status=self.status)
            summary["partial"] = False
        else:
            summary = compute_summary(run_dir.path)
        write_json_atomic(run_dir.summary, summary)
        if error is not None:
            raise RunFailed(str(error)) from error
        return summary

    def _start_ingress(self) -> None:
        """Bind the network front end before the workers load: a taken port fails the run now."""
        from cotrain.config import shared_ingress

        ingress = shared_ingress(self.services)
        if ingress is None:
            return  # before any import of the front end: without ingress the serve extra may be absent
        from cotrain.cli import _version
        from cotrain.ingress.hub import IngressHub, split_address
        from cotrain.workloads.data import dataset_num_classes

        def classes(service: Any) -> int:
            return int(service.config.model.num_classes or dataset_num_classes(service.config.dataset))

        metrics_address = None
        if ingress.metrics is not None:
            from cotrain.metrics_feed import RunMetrics

            workers = [s.worker for s in self.services] + [
                train_worker(j.name) for j in self.config.workloads.training
            ]
            self.metrics = RunMetrics(self.config, self.services, workers)
            tls = ingress.tls
            try:
                metrics_address = self.metrics.serve(
                    *split_address(ingress.metrics),
                    certfile=tls.cert if tls else None,
                    keyfile=tls.key if tls else None,
                )
            except OSError as exc:
                raise RunFailed(f"ingress: cannot serve metrics on {ingress.metrics}: {exc}") from exc
        self.ingress = IngressHub(
            self.services,
            self._requests_csv,
            self.run_dir.path / "ingress-errors.csv",
            self.run_dir.ingress_socket(),
            classes,
            version=_version(),
            on_reply=self._on_reply,
            log=self._log,
        )
        try:
            self.ingress.start()
        except OSError as exc:
            raise RunFailed(f"ingress: cannot listen: {exc}") from exc
        bound = self.ingress.bound()
        if metrics_address is not None:
            bound["metrics"] = metrics_address
            self._log(f"  metrics on {metrics_address}/metrics")
        write_json_atomic(self.run_dir.path / "ingress.json", bound)
        self.event("ingress_listening", **bound)

    def _on_reply(self, service: str, reply: Any, latency_s: float | None) -> None:
        """Every answer the front end gives (from its thread): metrics and the running summary."""
        if self.metrics is not None:
            self.metrics.reply(service, reply.outcome, reply.status, latency_s)
        self.running.reply(service, reply.outcome, None if latency_s is None else latency_s * 1000.0)

    def _feed_running(self, worker: str, report: InferenceStats) -> None:
        service = next((s for s in self.services if s.worker == worker), None)
        if service is None:
            return
        if service.config.ingress is not None:  # outcomes come from the front end, one by one
            self.running.batches(service.name, report.batch_sizes)
            return
        self.running.window(
            service.name,
            served=report.served,
            failed=report.failed,
            shed=report.shed,
            latencies_ms=report.latencies_ms,
            batch_sizes=report.batch_sizes,
        )

    def _running_summary(self, status: str | None = None) -> dict[str, Any]:
        config = self.config
        run = {"name": config.name, "controller": config.controller.name, "platform": config.platform.kind}
        elapsed_s = self._elapsed_s() if self._t0_ns is not None else 0.0
        summary = self.running.summary(run, elapsed_s, dict(self.restarts))
        if status is not None:
            summary["run"]["status"] = status
        if config.workloads.inference is not None:  # one service: the shape compute_summary gives
            summary["inference"] = summary.pop("services")["inference"]
            return summary
        for service in self.services:
            entry = summary["services"][service.name]
            entry["priority"] = service.priority
            entry["min_throughput_per_s"] = getattr(service.config, "min_throughput_per_s", 0.0)
            entry["floor_met"] = None  # judged from the records; not kept in the aggregates
        primary = config.workloads.primary_inference()
        if primary is not None:
            summary["inference"] = {"service": primary.name, **summary["services"][primary.name]}
        return summary

    def _maybe_write_summary(self) -> None:
        """Every `output.summary_period_s`: summary.json from the running aggregates."""
        period_s = self.config.output.summary_period_s
        if period_s is None or self._t0_ns is None:
            return
        now_ns = self.clock.now_ns()
        if self._next_summary_ns is None:
            self._next_summary_ns = self._t0_ns + round(period_s * NS_PER_S)
        if now_ns < self._next_summary_ns:
            return
        self._next_summary_ns = now_ns + round(period_s * NS_PER_S)
        write_json_atomic(self.run_dir.summary, self._running_summary())

    def _start_clients(self) -> None:
        """A service with both ingress and arrivals: a `cotrain load` process sends the arrivals
        through the network front end, so the run measures what a real client sees (its records
        in client/<service>/). gRPC when the service has it, else HTTP."""
        if self.ingress is None:
            return
        bound = self.ingress.bound()
        for service in self.services:
            ingress, arrivals = service.config.ingress, service.config.arrivals
            if ingress is None or arrivals is None:
                continue
            folder = self.run_dir.path / "client" / service.name
            folder.mkdir(parents=True, exist_ok=True)
            schedule = folder / "arrivals.yaml"
            schedule.write_text(yaml.safe_dump(arrivals.model_dump(mode="json")), encoding="utf-8")
            protocol = "grpc" if "grpc" in bound else "http"
            duration_s = self.config.duration_s if self.config.duration_s is not None else 10 * 365 * 86400.0
            command = [
                sys.executable, "-m", "cotrain", "load", f"{protocol}://{bound[protocol]}",
                "--model", service.name, "--arrivals", str(schedule), "--duration", f"{duration_s:g}",
                "--out", str(folder), "--wait-ready-s", "60",
                "--timeout-s", f"{max(10.0, 4 * service.config.slo_ms / 1000):g}",
            ]  # fmt: skip
            if ingress.token_file is not None:
                command += ["--token-file", ingress.token_file]
            log = (folder / "client.log").open("w", encoding="utf-8")
            self._clients[service.name] = subprocess.Popen(
                command, stdout=log, stderr=log, text=True, start_new_session=True
            )
            self.event(
                "client_started", service=service.name, pid=self._clients[service.name].pid, url=command[4]
            )

    def _stop_clients(self, timeout_s: float) -> None:
        """SIGTERM: each client stops sending and waits for its outstanding answers."""
        for proc in self._clients.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self._clients.items():
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.event("client_stopped", service=name, exit_code=proc.returncode)
        self._clients = {}

    # --- supervision ---------------------------------------------------------------------------

    def _is_inference(self, worker: str) -> bool:
        return worker == INFERENCE or worker.startswith("inference:")

    def _slot(self, worker: str) -> int:
        return next(i for i, s in enumerate(self.services) if s.worker == worker)

    def _on_death(self, handle: WorkerHandle) -> None:
        """Note a worker's death, account for what it held, and schedule its restart (or give up)."""
        name = handle.name
        code = handle.process.exitcode
        self._starting.pop(name, None)
        if name.endswith(STANDBY):  # a spare that died is simply replaced; it served nothing
            self._standby_ready.discard(name)
            self.event("standby_died", worker=name, pid=handle.pid, exit_code=code)
            self._restart_due_ns[name] = self.clock.now_ns() + round(
                self.config.supervision.backoff_max_s * NS_PER_S
            )
            return
        self.event(
            "worker_died",
            worker=name,
            pid=handle.pid,
            exit_code=code,
            signal=signal.Signals(-code).name if code is not None and code < 0 else None,
            error=handle.failure.error if handle.failure else None,
        )
        self._log(f"[red]{name} (pid {handle.pid}) died, exit code {code}[/red]")
        if self._is_inference(name) and self.ingress is not None:
            self.ingress.worker_died(name)  # its clients are answered now, not at the next tick
        if self._is_inference(name) and self._t0_ns is not None:
            self.gate.set(False, self._slot(name))  # a dead service must not hold training back
            self._down_since_s.setdefault(name, self._elapsed_s())
        rules = self.config.supervision
        done = self.restarts.get(name, 0)
        if done >= rules.max_restarts:
            self.status = "failed"
            raise RunFailed(
                f"{name} died (exit code {code}) after {done} restart(s); "
                f"supervision.max_restarts is {rules.max_restarts}"
            )
        standby = name + STANDBY
        if standby in self._standby_ready:  # a warm spare takes over now; a new spare loads behind it
            self._standby_ready.discard(standby)
            self.restarts[name] = done + 1
            if self.metrics is not None:
                self.metrics.restarted(name)
            handle = self.supervisor.promote(standby, name)
            self._starting[name] = self.clock.now_ns()
            self.event("worker_restarted", worker=name, pid=handle.pid, attempt=done + 1, from_standby=True)
            self._resume(name)
            self._restart_due_ns[standby] = self.clock.now_ns()
            return
        delay_s = restart_delay_s(done + 1, rules.backoff_s, rules.backoff_max_s)
        self._restart_due_ns[name] = self.clock.now_ns() + round(delay_s * NS_PER_S)
        self.event("restart_scheduled", worker=name, attempt=done + 1, in_s=round(delay_s, 3))

    def _restart_due_workers(self) -> None:
        now_ns = self.clock.now_ns()
        for name, due_ns in list(self._restart_due_ns.items()):
            if due_ns > now_ns:
                continue
            del self._restart_due_ns[name]
            if name.endswith(STANDBY):
                handle = self.supervisor.respawn(name)
                if handle.pid is not None:
                    self.platform.attach(handle.pid)
                self.event("standby_spawned", worker=name, pid=handle.pid)
                continue
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if self.metrics is not None:
                self.metrics.restarted(name)
            self._cut_torn_records(name)
            handle = self.supervisor.respawn(name)
            self._starting[name] = now_ns
            if handle.pid is not None:
                self.platform.attach(handle.pid)
            self.event("worker_restarted", worker=name, pid=handle.pid, attempt=self.restarts[name])
            self._log(f"  {name} restarted (pid {handle.pid}, attempt {self.restarts[name]})")
        for name, since_ns in list(self._starting.items()):
            handle = self.supervisor.workers[name]
            if now_ns - since_ns > READY_TIMEOUT_S * NS_PER_S and handle.process.is_alive():
                self.event("worker_killed", worker=name, reason=f"not ready after {READY_TIMEOUT_S:.0f} s")
                handle.process.kill()  # seen as a death on the next pass, and counted as a try

    def _cut_torn_records(self, worker: str) -> None:
        """A process killed mid-write may leave half a line; cut it so the replacement's first
        row does not fuse with it (the inference file is cut when its requests are accounted)."""
        from cotrain.recovery import cut_torn_tail

        if self._is_inference(worker):
            return
        job = worker.removeprefix("train:")
        for path in (
            self.run_dir.train_csv(job),
            self.run_dir.path / f"continual-{job}.csv",
            self.run_dir.path / f"federated-{job}.csv",
        ):
            removed = cut_torn_tail(path)
            if removed:
                self.event("torn_record_cut", worker=worker, file=path.name, bytes=removed)

    def _account_down(self, worker: str, until_s: float) -> None:
        """Failed rows for the requests a dead inference process held or that found it down."""
        from cotrain.recovery import account_lost_requests
        from cotrain.workloads.inference.arrivals import arrival_offsets_s

        died_at_s = self._down_since_s.pop(worker, None)
        if died_at_s is None or self._t0_ns is None:
            return
        service = self.services[self._slot(worker)]
        schedule = service.config.generated_arrivals
        if schedule is None:  # clients' requests: the front end answered and recorded them
            return
        lost = account_lost_requests(
            self._requests_csv(worker),
            arrival_offsets_s(schedule),
            self._t0_ns,
            self._next_request_id.get(worker, 0),
            died_at_s,
            until_s,
        )
        self._next_request_id[worker] = lost.next_request_id
        self.event(
            "requests_accounted",
            worker=worker,
            failed_in_dead_process=lost.died,
            failed_while_restarting=lost.during_restart,
            next_request_id=lost.next_request_id,
        )

    def _resume(self, worker: str) -> None:
        """A restarted worker is ready: start it where the run is, with the knobs as they are now."""
        assert self._t0_ns is not None
        since_ns = self._starting.pop(worker)
        self.event(
            "worker_recovered", worker=worker, restart_s=round((self.clock.now_ns() - since_ns) / NS_PER_S, 3)
        )
        if self._is_inference(worker):
            self._account_down(worker, self._elapsed_s())
            self.supervisor.send(worker, Start(self._t0_ns, self._next_request_id.get(worker, 0)))
            if worker == self.primary and self.knobs.inference is not None:
                commands = inference_commands(self.knobs.inference, has_variants=bool(self._variants))
                self._send_knobs(worker, commands)
            if worker == INFERENCE and self._last_model is not None:
                self.supervisor.send(worker, self._last_model)  # the latest deployed weights
            return
        self.supervisor.send(worker, Start(self._t0_ns))
        t = self.knobs.training.get(worker.removeprefix("train:"))
        if t is not None:
            self._send_knobs(worker, training_commands(t))

    def _force_stop(self) -> None:
        """Kill what is still running, and account for the requests a killed service held."""
        self._restoring = True  # from here on signals are noted, never interrupt the restore
        self.status = "interrupted"
        for proc in self._clients.values():
            if proc.poll() is None:
                proc.kill()
        if self.ingress is not None:
            self.ingress.close_admission()
        stop_s = self._stop_s if self._stop_s is not None else 0.0
        for worker in self.supervisor.kill_remaining():
            self.event("worker_killed", worker=worker, reason="forced exit (second signal)")
            if self._is_inference(worker) and not worker.endswith(STANDBY) and self._t0_ns is not None:
                self._down_since_s.setdefault(worker, stop_s)
        for worker in list(self._down_since_s):
            self._account_down(worker, stop_s)
        if self.ingress is not None:
            self.ingress.close()

    def _apply_initial_placement(self) -> None:
        knobs = self.knobs
        if knobs.inference is not None and knobs.inference.cpus is not None:
            self._place(self.primary, knobs.inference.cpus)
        for service in self.services:
            if service.worker != self.primary and service.config.cpus:
                self._place(service.worker, tuple(service.config.cpus))
        for job, t in knobs.training.items():
            if t.cpus is not None:
                self._place(train_worker(job), t.cpus)

    def _shutdown(self) -> None:
        """Stop arrivals and training, wait for the drain, record the end of the run window."""
        self._stop_federations()
        if self._t0_ns is not None:
            stop_s = self._stop_s = self._elapsed_s()
            for worker in list(self._down_since_s):
                self._account_down(worker, stop_s)  # its arrivals up to the stop found no service
            status = self.status
            if self._stop_reason is not None:
                self.event("stop_requested", signal=self._stop_reason)
            self.event("run_stopped", status=status)
            if self.metrics is not None:
                self.metrics.stopped()
        self._stop_clients(timeout_s=60.0)
        if self.ingress is not None:
            self.ingress.close_admission()  # new clients get 503; accepted requests drain
        drain_s = max((s.config.drain_timeout_s for s in self.services), default=0.0)
        timeout_s = drain_s + 30.0
        killed = self.supervisor.stop_all(timeout_s, self.on_report)
        if self.ingress is not None:
            self.ingress.close()  # answers anything a killed worker still held
        for worker in killed:
            self.event("worker_killed", worker=worker, reason=f"did not stop within {timeout_s:.0f} s")
        for handle in self.supervisor.workers.values():
            self.event("worker_exited", worker=handle.name, exit_code=handle.process.exitcode)


def _knobs_record(knobs: Knobs) -> dict[str, Any]:
    record: dict[str, Any] = {}
    if knobs.inference is not None:
        record["inference"] = asdict(knobs.inference)
    record["training"] = {job: asdict(t) for job, t in knobs.training.items()}
    return record


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"

"""Checks that need the machine, run before anything starts.

The config models check shape and ranges; these check the world: model names torchvision knows,
local weight files, dataset directories, CPUs that exist here, power modes (that they exist,
switch live and may be switched by this user), a remote SuperLink's CA bundle, and SLOs no
batch could meet. Each problem is one line naming the field, and `cotrain run` exits 2 without
starting a process or changing the device.

An impossible SLO is one below the fastest batch-1 latency of the service's model(s) here. That
figure comes from the per-machine latency profile cache (`workloads/inference/profiler.py`) when
it holds every variant; else, for a plain CPU model of moderate size, from a short timing in this
process (torch is imported here anyway for the model names): the best of a few batch-1 runs, at
the most threads the service could get and at one thread. Other load on the device can only
make that best run slower, so the timing is repeated while the SLO looks impossible, up to a
budget of about a second. Ladders without a cached profile (an int8 rung may be much faster
than fp32), CUDA services and large models are not timed: their SLO is not checked here.
"""

from __future__ import annotations

import json
import ssl
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cotrain.config import (
    DatasetConfig,
    ExperimentConfig,
    ImageFolderDatasetConfig,
    InferenceConfig,
    IngressConfig,
    ModelConfig,
    RemoteServerConfig,
    ScheduleControllerConfig,
    TrainingJobConfig,
)
from cotrain.platform.base import Platform, PowerModeError, PowerModeInfo

MAX_TIMED_PARAMS = 30_000_000
"""Models above this (ResNet-50 has 25.6 M parameters) are not timed in preflight: too slow to build."""
TIMING_BUDGET_S = 1.0
"""Timed batch-1 runs per thread count stop after this long (or 20 runs), or once one meets the SLO."""
MAX_TIMED_RUNS = 20


def _model_problems(path: str, model: ModelConfig, known: frozenset[str]) -> list[str]:
    problems = []
    if model.name not in known:
        close = sorted(n for n in known if n.startswith(model.name[:4]))[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        problems.append(f"{path}.model.name: unknown torchvision classification model {model.name!r}{hint}")
    if model.weights is not None and not Path(model.weights).is_file():
        problems.append(f"{path}.model.weights: file {model.weights!r} does not exist")
    return problems


def _dataset_problems(path: str, dataset: DatasetConfig) -> list[str]:
    if isinstance(dataset, ImageFolderDatasetConfig):
        from cotrain.workloads.data import check_image_folder

        reason = check_image_folder(Path(dataset.root))
        if reason is not None:
            return [f"{path}.dataset.root: {reason}"]
    return []


def _arrivals_problems(path: str, arrivals: object) -> list[str]:
    from cotrain.config import TraceArrivalsConfig

    if not isinstance(arrivals, TraceArrivalsConfig):
        return []
    from cotrain.workloads.inference.arrivals import read_trace_s

    try:
        read_trace_s(Path(arrivals.path).read_text(encoding="utf-8"))
    except OSError as exc:
        return [f"{path}.arrivals.path: cannot read trace {arrivals.path!r}: {exc.strerror or exc}"]
    except ValueError as exc:
        return [f"{path}.arrivals.path: {arrivals.path}: {exc}"]
    return []


def _ladder_problems(where: str, ladder: list[str] | None, known: frozenset[str]) -> list[str]:
    """Every variant must be buildable here: a known architecture and a precision this CPU runs
    well (bf16 only with native support, int8 only with a quantised engine, never fp16)."""
    if not ladder:
        return []
    from cotrain.workloads.inference.variants import VariantError, available_precisions, parse_ladder

    try:
        parse_ladder(ladder, available=available_precisions(), known_archs=known)
    except VariantError as exc:
        return [f"{where}.variants: {exc}"]
    return []


def _device_problems(where: str, inference: InferenceConfig) -> list[str]:
    """cuda must exist here, and the variant ladder is built for the CPU (int8 and bf16 kernels)."""
    if inference.device != "cuda":
        return []
    import torch

    if not torch.cuda.is_available():
        return [f"{where}.device: cuda is not available on this machine (torch sees no CUDA device)"]
    if inference.variants:
        return [f"{where}.device: variant ladders run on the CPU only; drop variants or use device: cpu"]
    return []


def _cpu_problems(path: str, cpus: list[int] | None, available: tuple[int, ...]) -> list[str]:
    if cpus is not None and not set(cpus) <= set(available):
        missing = sorted(set(cpus) - set(available))
        return [f"{path}.cpus: CPU(s) {missing} not available here (available: {list(available)})"]
    return []


def _mode_problem(
    field: str, wanted: str | int, platform: Platform, modes: Sequence[PowerModeInfo]
) -> tuple[str | None, PowerModeInfo | None]:
    """(problem, mode): the mode must exist here and switch live."""
    names = {m.name: m for m in modes} | {str(m.id): m for m in modes}
    mode = names.get(str(wanted))
    if not modes:
        return f"{field}: this {platform.name} platform offers no power modes", None
    if mode is None:
        known = ", ".join(f"{m.name} ({m.id})" for m in modes)
        return f"{field}: no mode {wanted!r} here; available: {known}", None
    if mode.needs_reboot:
        return f"{field}: {mode.name} needs a reboot from the current mode; cotrain never reboots", None
    return None, mode


def _power_problems(config: ExperimentConfig, platform: Platform) -> list[str]:
    """The initial mode and every scheduled one must exist and switch live, this user must be
    allowed to switch, and a policy file must be valid for this device."""
    problems: list[str] = []
    try:
        modes = platform.power_modes()
        current = platform.current_power_mode() if modes else None
    except PowerModeError as exc:
        return [f"platform: cannot read the power modes of this {platform.name} device: {exc}"]
    names = {m.name: m for m in modes} | {str(m.id): m for m in modes}
    wanted: list[tuple[str, str | int]] = []
    if config.platform.power_mode is not None:
        wanted.append(("platform.power_mode", config.platform.power_mode))
    if isinstance(config.controller, ScheduleControllerConfig):
        for i, step in enumerate(config.controller.steps):
            if step.set.power_mode is not None:
                wanted.append((f"controller.steps[{i}].set.power_mode", step.set.power_mode))
    switch: tuple[str, PowerModeInfo] | None = None  # the first switch the config asks for
    for field, name in wanted:
        problem, mode = _mode_problem(field, name, platform, modes)
        if problem is not None:
            problems.append(problem)
        elif current is None:
            problems.append(
                f"{field}: cannot read the current power mode here, so cotrain could not put it back "
                "after the run; it does not switch modes it cannot restore"
            )
        elif mode is not None and mode.id != current.id and switch is None:
            switch = (field, mode)
    access = getattr(platform, "power_mode_access", None)
    if switch is not None and callable(access):
        reason = access()
        if reason is not None:
            problems.append(f"{switch[0]}: this user may not switch to {switch[1].name}: {reason}")
    if config.platform.power_policy is not None:
        from cotrain.config import ConfigError
        from cotrain.power_modes.policy import load_power_policy

        try:
            policy = load_power_policy(config.platform.power_policy)
        except ConfigError as exc:
            return problems + [f"platform.power_policy: {line}" for line in exc.lines]
        for allowed in policy.allowed_modes or ():
            mode = names.get(str(allowed))
            if mode is None:
                problems.append(f"platform.power_policy: allowed mode {allowed!r} does not exist here")
            elif mode.needs_reboot and not policy.allow_reboot_modes:
                problems.append(
                    f"platform.power_policy: allowed mode {mode.name} needs a reboot "
                    "but allow_reboot_modes is false"
                )
    return problems


def _remote_server_problems(where: str, job: TrainingJobConfig) -> list[str]:
    """A remote SuperLink's CA bundle must exist and hold PEM certificates (TLS would fail later,
    after the run started)."""
    server = job.federated.server if job.federated is not None else "local"
    if not isinstance(server, RemoteServerConfig) or server.root_certificates is None:
        return []
    field = f"{where}.federated.server.root_certificates"
    path = server.root_certificates
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:  # an OSError too: test it first
        return [f"{field}: {path!r} is not a PEM certificate bundle ({exc.reason or exc})"]
    except OSError as exc:
        return [f"{field}: cannot read {path!r}: {exc.strerror or exc}"]
    except ValueError as exc:  # e.g. a NUL in the path
        return [f"{field}: cannot read {path!r}: {exc}"]
    return []


TIMED_MARGIN = 2.0
"""A timed (not profiled) batch-1 figure refuses an SLO only below 1/TIMED_MARGIN of it."""


@dataclass(frozen=True)
class Fastest:
    """The fastest batch-1 latency known for a service here, and where the figure comes from."""

    ms: float
    what: str
    source: str


def _cached_batch1_ms(variants: Sequence[str]) -> Fastest | None:
    """The fastest batch-1 median among `variants` in this machine's fresh cached profiles
    (any thread count), or None unless every variant has one."""
    from cotrain.workloads.inference.profiler import (
        DEFAULT_MAX_AGE_S,
        ProfileKey,
        ProfileTable,
        default_cache_dir,
    )

    here = ProfileKey.for_this_machine((), ())
    best: dict[str, tuple[float, Path]] = {}
    try:
        files = sorted(default_cache_dir().glob("profile-*.json"))
    except OSError:
        return None
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            key = ProfileKey.from_dict(data["key"])
            table = ProfileTable.from_dict(data["table"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # unreadable or another format: not evidence
        same = (key.machine, key.cpu_model, key.cpu_count, key.torch_version) == (
            here.machine,
            here.cpu_model,
            here.cpu_count,
            here.torch_version,
        )
        if not same or not 0 <= time.time() - table.created_unix_s <= DEFAULT_MAX_AGE_S:
            continue
        for variant in variants:
            stats = table.entries.get((variant, 1))
            if stats is not None and (variant not in best or stats.p50_ms < best[variant][0]):
                best[variant] = (stats.p50_ms, path)
    if not variants or set(best) != set(variants):
        return None
    variant = min(best, key=lambda v: best[v][0])
    ms, path = best[variant]
    return Fastest(ms, variant, f"median in the latency profile cached at {path}")


def _timed_batch1_ms(inference: InferenceConfig, threads: int, slo_ms: float) -> Fastest | str | None:
    """Best batch-1 time of the plain fp32 model, measured now; a str if the model cannot run on
    these images at all; None when not timed (too large, or torch could not build it here)."""
    import torch
    import torchvision

    from cotrain.workloads.data import dataset_num_classes

    name, size = inference.model.name, inference.dataset.image_size
    try:
        num_classes = inference.model.num_classes or dataset_num_classes(inference.dataset)
    except OSError:
        num_classes = 10  # the dataset check reports it; the head's size barely matters here
    try:
        with warnings.catch_warnings():  # e.g. inception_v3's FutureWarning about its init
            warnings.simplefilter("ignore")
            with torch.device("meta"):  # no memory, no init: just the parameter count
                shape_only = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
            if sum(p.numel() for p in shape_only.parameters()) > MAX_TIMED_PARAMS:
                return None
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes).eval()
    except Exception:
        return None
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    best = float("inf")
    runs = 0
    try:
        with torch.inference_mode():
            for n in sorted({threads, 1}, reverse=True):
                torch.set_num_threads(n)
                try:
                    model(x)  # warm-up: allocator and kernel selection, untimed
                except (RuntimeError, ValueError, AssertionError) as exc:
                    if "memory" in str(exc).lower():
                        return None
                    return f"{name} cannot run on {size}x{size} images: {' '.join(str(exc).split())[:200]}"
                start = time.perf_counter()
                for _ in range(MAX_TIMED_RUNS):
                    t0 = time.perf_counter()
                    model(x)
                    best = min(best, (time.perf_counter() - t0) * 1000.0)
                    runs += 1
                    if best <= slo_ms or time.perf_counter() - start > TIMING_BUDGET_S:
                        break
                if best <= slo_ms:
                    break
    finally:
        torch.set_num_threads(before)
    threads_text = "1 thread" if threads == 1 else f"{threads} and 1 threads"
    return Fastest(
        best, f"{name}/fp32@{size}", f"the best of {runs} runs just measured here with {threads_text}"
    )


def _slo_problems(where: str, inference: InferenceConfig, threads: int) -> list[str]:
    """An SLO below the fastest batch-1 latency of the service's model(s) here cannot be met by
    any batch: each request takes at least that long."""
    if inference.device != "cpu":
        return []
    slo = inference.slo_ms
    if inference.variants:
        fastest: Fastest | str | None = _cached_batch1_ms(inference.variants)
    else:
        plain = f"{inference.model.name}/fp32@{inference.dataset.image_size}"
        fastest = _cached_batch1_ms([plain]) or _timed_batch1_ms(inference, threads, slo)
    if isinstance(fastest, str):
        return [f"{where}.dataset.image_size: {fastest}"]
    if fastest is None:
        return []
    # A cached profile is a median over many runs; a few runs timed now, on a machine that may
    # be busy, are only trusted to refuse an SLO under half of what they saw.
    limit_ms = fastest.ms if fastest.source.startswith("median") else fastest.ms / TIMED_MARGIN
    if slo >= limit_ms:
        return []
    return [
        f"{where}.slo_ms: {slo:g} ms is below the fastest batch-1 latency here, {fastest.ms:.3g} ms "
        f"for {fastest.what} ({fastest.source}); no batch can meet it"
    ]


def extras_problems(config: ExperimentConfig) -> list[str]:
    """An optional extra the config needs and this Python lacks, with the command that installs it.

    jtop is needed only where it was asked for explicitly (`platform.jtop: true`): by default a
    Jetson without jetson-stats falls back to tegrastats and sysfs, with a warning."""
    from cotrain.config import JetsonPlatformConfig
    from cotrain.extras import FEDERATED, JETSON, SERVE, missing_reason

    problems = []
    for service in config.workloads.inference_services():
        if service.config.ingress is not None and (reason := missing_reason(SERVE)) is not None:
            problems.append(f"{service.where}.ingress: {reason}")
    for i, job in enumerate(config.workloads.training):
        if job.kind == "federated" and (reason := missing_reason(FEDERATED)) is not None:
            problems.append(f"workloads.training[{i}].kind: {reason}")
    platform = config.platform
    if isinstance(platform, JetsonPlatformConfig) and platform.jtop and "jtop" in platform.model_fields_set:
        reason = missing_reason(JETSON)
        if reason is not None:
            problems.append(f"platform.jtop: {reason} (or set jtop: false to use tegrastats)")
    return problems


def _is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to any address, so it is not loopback
        return False


def ingress_problems(where: str, ingress: IngressConfig) -> list[str]:
    """Addresses that cannot be bound, plain text off loopback, unusable TLS files or token."""
    import socket

    problems = []
    for field, address in ingress.addresses():
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        if not _is_loopback(host) and ingress.tls is None and not ingress.insecure:
            problems.append(
                f"{where}.ingress.{field}: {address} is not a loopback address: give ingress.tls "
                "(cert and key) or set ingress.insecure: true explicitly"
            )
            continue
        if int(port) == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((host, int(port)))
        except OSError as exc:
            problems.append(f"{where}.ingress.{field}: cannot listen on {address}: {exc.strerror or exc}")
    if ingress.tls is not None:
        from cotrain.ingress.server import server_ssl_context

        try:
            server_ssl_context(ingress.tls.cert, ingress.tls.key)
        except (OSError, ssl.SSLError) as exc:
            problems.append(
                f"{where}.ingress.tls: cannot load certificate {ingress.tls.cert!r} with key "
                f"{ingress.tls.key!r}: {exc}"
            )
    if ingress.token_file is not None:
        try:
            token = Path(ingress.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{where}.ingress.token_file: cannot read {ingress.token_file!r}: {exc}")
        else:
            if len(token) < 16:
                problems.append(f"{where}.ingress.token_file: the token must be at least 16 characters")
    return problems


def preflight(config: ExperimentConfig, platform: Platform) -> list[str]:
    from cotrain.workloads.models import classification_model_names

    extras = extras_problems(config)
    if extras:  # the rest would only fail on what is missing
        return extras
    available_cpus = platform.cpu_ids()

    known = classification_model_names()
    problems: list[str] = []
    for service in config.workloads.inference_services():
        where, inference = service.where, service.config
        mine = _model_problems(where, inference.model, known)
        mine += _dataset_problems(where, inference.dataset)
        if inference.accuracy_eval is not None:
            mine += _dataset_problems(f"{where}.accuracy_eval", inference.accuracy_eval)
        mine += _arrivals_problems(where, inference.arrivals)
        mine += _ladder_problems(where, inference.variants, known)
        mine += _cpu_problems(where, inference.cpus, available_cpus)
        mine += _device_problems(where, inference)
        if inference.ingress is not None:
            mine += ingress_problems(where, inference.ingress)
        if not mine:  # the model, its images and its CPUs are fine: the SLO can be checked
            mine += _slo_problems(where, inference, len(inference.cpus or available_cpus) or 1)
        problems += mine
    for i, job in enumerate(config.workloads.training):
        where = f"workloads.training[{i}]"
        problems += _model_problems(where, job.model, known)
        if job.model.name == "noop":
            problems.append(f"{where}.model.name: noop has nothing to train (it serves zeros)")
        problems += _dataset_problems(where, job.dataset)
        problems += _cpu_problems(where, job.cpus, available_cpus)
        problems += _remote_server_problems(where, job)
    problems += _power_problems(config, platform)
    return problems

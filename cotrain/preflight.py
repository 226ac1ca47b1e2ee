"""Checks that need the machine, run before anything starts.

The config models check shape and ranges; these check the world: model names torchvision knows,
local weight files, dataset directories, CPUs that exist here. Each problem is one line naming
the field, and `cotrain run` exits 2 without starting a process.
"""

from __future__ import annotations

from pathlib import Path

from cotrain.config import (
    DatasetConfig,
    ExperimentConfig,
    ImageFolderDatasetConfig,
    InferenceConfig,
    ModelConfig,
)
from cotrain.platform.base import Platform


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


def _power_problems(config: ExperimentConfig, platform: Platform) -> list[str]:
    """The initial mode must exist and switch live; a policy file must be valid for this device."""
    problems: list[str] = []
    modes = platform.power_modes()
    names = {m.name: m for m in modes} | {str(m.id): m for m in modes}
    wanted = config.platform.power_mode
    if wanted is not None:
        mode = names.get(str(wanted))
        if not modes:
            problems.append(f"platform.power_mode: this {platform.name} platform offers no power modes")
        elif mode is None:
            known = ", ".join(f"{m.name} ({m.id})" for m in modes)
            problems.append(f"platform.power_mode: no mode {wanted!r} here; available: {known}")
        elif mode.needs_reboot:
            problems.append(
                f"platform.power_mode: {mode.name} needs a reboot from the current mode; "
                "cotrain never reboots"
            )
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


def preflight(config: ExperimentConfig, platform: Platform) -> list[str]:
    from cotrain.workloads.models import classification_model_names

    available_cpus = platform.cpu_ids()

    known = classification_model_names()
    problems: list[str] = []
    for service in config.workloads.inference_services():
        where, inference = service.where, service.config
        problems += _model_problems(where, inference.model, known)
        problems += _dataset_problems(where, inference.dataset)
        if inference.accuracy_eval is not None:
            problems += _dataset_problems(f"{where}.accuracy_eval", inference.accuracy_eval)
        problems += _arrivals_problems(where, inference.arrivals)
        problems += _ladder_problems(where, inference.variants, known)
        problems += _cpu_problems(where, inference.cpus, available_cpus)
        problems += _device_problems(where, inference)
    for i, job in enumerate(config.workloads.training):
        where = f"workloads.training[{i}]"
        problems += _model_problems(where, job.model, known)
        problems += _dataset_problems(where, job.dataset)
        problems += _cpu_problems(where, job.cpus, available_cpus)
    problems += _power_problems(config, platform)
    return problems

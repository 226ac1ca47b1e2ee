"""The inference process's variant ladder: built, profiled and described at start-up.

Every variant is prepared (built, quantised with real calibration images from the serving
pool, warmed up) before the run starts, so a switch during the run is a pointer swap between
batches and nothing is prepared on the serving path. The micro-profile (latency per variant and
batch size on this device) comes from the per-machine cache when fresh, else it is measured
with a progress bar; both it and the variants' accuracies go to the run directory, where the
runtime gives them to the controller (`Observation.variants`, `Observation.profile_ms`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from cotrain.config import InferenceConfig
from cotrain.records import write_json_atomic
from cotrain.workloads.inference.profiler import ProfileKey, default_cache_dir, load_or_profile
from cotrain.workloads.inference.variants import (
    BuiltVariant,
    available_precisions,
    build_variant,
    parse_ladder,
)

EVAL_MAX_SAMPLES = 2048  # bounds start-up time; top-1 on 2048 images has a ~1 % standard error


def labelled_eval_set(config: InferenceConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The configured `accuracy_eval` dataset as (images, labels), at most EVAL_MAX_SAMPLES of it.

    Accuracy measured here is what the served variants really score on the user's labelled
    data; without it, variants carry a published figure that says nothing about this model's
    weights, and variants.json says which one it is.
    """
    if config.accuracy_eval is None:
        return None
    from cotrain.workloads.data import build_dataset

    dataset = build_dataset(config.accuracy_eval)
    n = min(len(dataset), EVAL_MAX_SAMPLES)  # type: ignore[arg-type]
    samples = [dataset[i] for i in range(n)]
    images = torch.stack([image for image, _ in samples])
    labels = torch.tensor([int(label) for _, label in samples], dtype=torch.long)
    return images, labels


def prepare_ladder(
    config: InferenceConfig,
    num_classes: int,
    pool: Sequence[torch.Tensor],
    seed: int,
    run_dir: Path,
    make_infer: Callable[[Any, Sequence[torch.Tensor]], Any],
) -> dict[str, Any]:
    """Build every variant, write variants.json and profile.json, return name -> infer."""
    specs = parse_ladder(config.variants or [], available=available_precisions())
    calibration = torch.stack(list(pool[: min(len(pool), 64)]))
    eval_set = labelled_eval_set(config)
    built: dict[str, BuiltVariant] = {}

    def build_all() -> list[BuiltVariant]:
        for spec in specs:
            if spec.name not in built:
                built[spec.name] = build_variant(
                    spec,
                    num_classes,
                    weights_path=config.model.weights if spec.arch == config.model.name else None,
                    calibration=calibration,
                    eval_set=eval_set,
                    seed=seed,
                    warmup_batch_sizes=(1, config.batching.max_batch_size),
                )
        return [built[s.name] for s in specs]

    build_all()
    key = ProfileKey.for_this_machine(
        variants=[s.name for s in specs], batch_sizes=list(config.profile_batch_sizes)
    )
    table, cached = load_or_profile(default_cache_dir(), key, build_all, config.profile_batch_sizes)
    write_json_atomic(
        run_dir / "variants.json",
        [
            {
                "name": b.name,
                "accuracy": b.accuracy,
                "accuracy_source": b.accuracy_source,
                "prepare_s": round(b.prepare_s, 3),
            }
            for b in (built[s.name] for s in specs)
        ],
    )
    rows = [
        {
            "variant": v,
            "batch": n,
            "p50_ms": table.latency_ms(v, n),
            "p90_ms": table.latency_ms(v, n, quantile="p90"),
        }
        for v in table.variants
        for n in table.batch_sizes
    ]
    write_json_atomic(
        run_dir / "profile.json", {"from_cache": cached, "machine": table.machine, "latency_ms": rows}
    )
    return {name: make_infer(variant, pool) for name, variant in built.items()}

"""Shared helpers: tiny configs (small models, small images) so real runs stay fast."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent

# In CI, property tests replay the same examples every run, so a red build always means a change
# broke something; run locally, they keep exploring and may find new inputs.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "duration_s": 3,
    "controller": {"name": "static", "period_s": 0.5},
    "workloads": {
        "inference": {
            "model": {"name": "mobilenet_v3_small"},
            "dataset": {"kind": "synthetic", "num_samples": 32, "num_classes": 4, "image_size": 32},
            "arrivals": {"process": "poisson", "rate_per_s": 30, "seed": 3},
            "slo_ms": 500,
            "batching": {"max_batch_size": 4, "max_queue_delay_ms": 10},
            "queue_capacity": 64,
            "stats_period_s": 0.25,
        },
        "training": [
            {
                "name": "cl",
                "model": {"name": "mobilenet_v3_small"},
                "dataset": {"kind": "synthetic", "num_samples": 64, "num_classes": 4, "image_size": 32},
                "batch_size": 8,
                "checkpoint_every_steps": 20,
                "stats_period_s": 0.25,
            }
        ],
    },
}


@pytest.fixture
def tiny() -> dict[str, Any]:
    """A deep copy of the tiny experiment, free to mutate."""
    return copy.deepcopy(TINY)

"""Building torchvision classification models offline.

`weights=None` always: a hub download would fail on an offline device and must never be
attempted. Trained weights come from a local state_dict file when one is configured.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from cotrain.config import ModelConfig


@cache
def classification_model_names() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def build_model(config: ModelConfig, num_classes: int) -> torch.nn.Module:
    import torchvision

    model: torch.nn.Module = torchvision.models.get_model(config.name, weights=None, num_classes=num_classes)
    if config.weights is not None:
        state = torch.load(Path(config.weights), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # a cotrain training checkpoint
        model.load_state_dict(state)
    return model

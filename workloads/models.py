"""Building torchvision classification models offline.

`weights=None` always: a hub download would fail on an offline device and must never be
attempted. Trained weights come from a local state_dict file when one is configured.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from cotrain.config import ModelConfig

NOOP = "noop"
"""A model that answers zeros at once: it measures cotrain's own cost per request (`cotrain bench
overhead --ingress`), as Triton's identity backend does; it cannot be trained."""


class NoOpModel(torch.nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], self.num_classes)


@cache
def classification_model_names() -> frozenset[str]:
    """torchvision's classification models, and `noop`."""
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models)) | {NOOP}


def build_model(config: ModelConfig, num_classes: int) -> torch.nn.Module:
    import torchvision

    if config.name == NOOP:
        return NoOpModel(num_classes)

    model: torch.nn.Module = torchvision.models.get_model(config.name, weights=None, num_classes=num_classes)
    if config.weights is not None:
        state = torch.load(Path(config.weights), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # a cotrain training checkpoint
        model.load_state_dict(state)
    return model

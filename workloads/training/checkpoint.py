"""Atomic training checkpoints that a restart can trust.

A checkpoint is written to a temporary file, fsynced and renamed into place, so a crash leaves
either the old or the new file, never half of one. The newest two are kept; loading falls back
to the older one when the newest cannot be read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

KEEP = 2


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:09d}.pt"


def save_checkpoint(directory: Path, step: int, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    tmp = final.with_name(f".{final.name}.tmp")
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    for old in list_checkpoints(directory)[:-KEEP]:
        old.unlink(missing_ok=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints oldest first (names sort by step)."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob("step-*.pt"))


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, or None."""
    for path in reversed(list_checkpoints(directory)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or corrupt file: try the previous one
            continue
        if isinstance(state, dict) and "model" in state and "step" in state:
            return path, state
    return None

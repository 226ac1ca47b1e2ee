"""cotrain: co-schedule latency-critical inference and training on one edge accelerator.

`cotrain.Run` starts an experiment from Python (cotrain/api.py); everything else is the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Run", "RunError", "__version__"]

if TYPE_CHECKING:
    from cotrain.api import Run, RunError


def __getattr__(name: str) -> Any:
    """`Run` is imported on first use, so `import cotrain` stays cheap for every CLI command."""
    if name in ("Run", "RunError"):
        from cotrain import api

        return getattr(api, name)
    raise AttributeError(name)

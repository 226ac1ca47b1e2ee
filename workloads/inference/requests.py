"""Requests and their single outcome.

The contract (after Ray Serve's batching): one outcome per request, and a failed batch fails
every request in it. A request is `served`, `failed` or `shed`; nothing is silently dropped, so
`served + failed + shed == arrived` holds for every run and is checked by the tests.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cotrain.clock import Clock


class Outcome(str, enum.Enum):
    SERVED = "served"
    FAILED = "failed"
    SHED = "shed"


@dataclass(frozen=True)
class Request:
    """One request. A generated one names an image of the service's pool (`sample_index`); one
    from a network client carries its own images, [n, 3, S, S] preprocessed (`images`)."""

    request_id: int
    arrival_ns: int
    sample_index: int
    images: Any = None

    @property
    def size(self) -> int:
        """Images in the request: what it counts for in a batch."""
        return 1 if self.images is None else int(self.images.shape[0])


@dataclass(frozen=True)
class RequestRecord:
    """One finished request, as written to requests.csv."""

    request: Request
    outcome: Outcome
    start_ns: int | None = None
    end_ns: int | None = None
    batch_size: int | None = None
    variant: str = ""
    reason: str = ""
    model_version: int = 0
    output: Any = None  # the model's output for a network request (its logits), else None

    @property
    def latency_ns(self) -> int | None:
        if self.outcome is not Outcome.SERVED or self.end_ns is None:
            return None
        return self.end_ns - self.request.arrival_ns


def shed(request: Request, reason: str, variant: str = "", model_version: int = 0) -> RequestRecord:
    return RequestRecord(
        request=request, outcome=Outcome.SHED, variant=variant, reason=reason, model_version=model_version
    )


def execute_batch(
    batch: Sequence[Request],
    infer: Callable[[Sequence[Request]], Sequence[Any]],
    clock: Clock,
    variant: str,
    model_version: int = 0,
) -> list[RequestRecord]:
    """Run `infer` on a batch and give every request exactly one record.

    `infer` must return one output per request. An exception, or a wrong number of outputs,
    fails every request in the batch with the reason recorded. A network request's record keeps
    its output (the client gets it back); a generated one's output is dropped. `batch_size`
    counts images, as the batcher does.
    """
    start_ns = clock.now_ns()
    outcome, reason = Outcome.SERVED, ""
    outputs: Sequence[Any] = ()
    try:
        outputs = infer(batch)
        if len(outputs) != len(batch):
            outcome, reason = Outcome.FAILED, f"model returned {len(outputs)} outputs for {len(batch)} inputs"
    except Exception as exc:  # every failure mode of the model fails the batch, never the process
        outcome, reason = Outcome.FAILED, f"{type(exc).__name__}: {exc}"[:200]
    end_ns = clock.now_ns()
    images = sum(r.size for r in batch)
    served = outcome is Outcome.SERVED
    return [
        RequestRecord(
            request=r,
            outcome=outcome,
            start_ns=start_ns,
            end_ns=end_ns,
            batch_size=images,
            variant=variant,
            reason=reason,
            model_version=model_version,
            output=outputs[i] if served and r.images is not None else None,
        )
        for i, r in enumerate(batch)
    ]

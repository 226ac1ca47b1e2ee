"""Does the simulator reproduce CCGrid'23's findings? (Fig. 1; the paper: docs/references.md)

Setup of the paper: AGX Orin at MAXN; ResNet50 inference on ImageNet-val images arriving at
100 img/s (10 ms apart), each batch dispatched when full; MobileNetV3 training on GLD23k beside
it, starting ~2 s into the 10-minute run. Findings to reproduce:
- inference batch 1 and 4 are unstable: a batch takes longer than it takes to accumulate, so the
  queue (and latency) grows without bound;
- batch 16, 64 and 256 are stable, with peak latency 0.26 s, 1.2 s and 4.1 s;
- training runs at 6.0, 6.38 and 6.65 batches/s at those batch sizes: larger inference batches
  leave longer idle gaps.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from cotrain.sim.calibration import CCGRID23_DURATION_S, CCGRID23_RATE_PER_S, CCGRID23_SOLO_S, calibrate
from cotrain.sim.engine import ArrivalSpec
from cotrain.sim.model import DeviceModel
from cotrain.sim.runner import sim_static
from cotrain.sim.scenario import SimScenario, SimTrainingJob

BATCHES = (1, 4, 16, 64, 256)
PUBLISHED_PEAK_S = {16: 0.26, 64: 1.2, 256: 4.1}
PUBLISHED_TRAIN_PER_S = {16: 6.0, 64: 6.38, 256: 6.65}
PUBLISHED_UNSTABLE = (1, 4)


@dataclass(frozen=True)
class Ccgrid23Row:
    batch: int
    stable: bool  # simulated
    published_stable: bool
    queue_at_end: int
    peak_latency_s: float | None
    published_peak_s: float | None
    train_batches_per_s: float
    published_train_per_s: float | None
    wall_s: float

    @property
    def peak_error(self) -> float | None:
        if self.peak_latency_s is None or self.published_peak_s is None:
            return None
        return (self.peak_latency_s - self.published_peak_s) / self.published_peak_s

    @property
    def train_error(self) -> float | None:
        if self.published_train_per_s is None:
            return None
        return (self.train_batches_per_s - self.published_train_per_s) / self.published_train_per_s


def ccgrid23_scenario(batch: int, duration_s: float = CCGRID23_DURATION_S, seed: int = 0) -> SimScenario:
    """The paper's setup at one inference batch size."""
    return SimScenario(
        name=f"ccgrid23-b{batch}",
        inference_model="resnet50",
        arrivals=ArrivalSpec.constant(CCGRID23_RATE_PER_S),
        slo_ms=60_000.0,  # the paper sets no SLO; stability is what it reports
        max_batch_size=batch,
        max_queue_delay_ms=60_000.0,  # dispatch only full batches
        queue_capacity=1_000_000,  # let an unstable queue grow
        admission="queue_full",
        training=(SimTrainingJob(name="mobilenet", model="mobilenet_v3_large", start_s=CCGRID23_SOLO_S),),
        duration_s=duration_s,
        seed=seed,
        mode="MAXN",
    )


def is_stable(batch: int, queue_at_end: int) -> bool:
    """A stable batcher never holds much more than one batch plus what arrives during one
    execution; an unstable one ends with a backlog that grew all run long."""
    return queue_at_end <= 2 * batch + int(CCGRID23_RATE_PER_S)


def reproduce_ccgrid23(
    device: DeviceModel | None = None, *, duration_s: float = CCGRID23_DURATION_S, seed: int = 0
) -> tuple[Ccgrid23Row, ...]:
    """Simulate the paper's five batch sizes; rows carry simulated and published numbers."""
    device = device or calibrate().device
    rows = []
    for b in BATCHES:
        r = sim_static(ccgrid23_scenario(b, duration_s, seed), device=device)
        queue = r.trace[-1].queue_depth
        steps = sum(r.training_steps_per_s.values()) * duration_s / (duration_s - CCGRID23_SOLO_S)
        rows.append(
            Ccgrid23Row(
                batch=b,
                stable=is_stable(b, queue),
                published_stable=b not in PUBLISHED_UNSTABLE,
                queue_at_end=queue,
                peak_latency_s=None if r.latency_ms_max is None else r.latency_ms_max / 1000.0,
                published_peak_s=PUBLISHED_PEAK_S.get(b),
                train_batches_per_s=steps,
                published_train_per_s=PUBLISHED_TRAIN_PER_S.get(b),
                wall_s=r.wall_s,
            )
        )
    return tuple(rows)


def findings_hold(rows: tuple[Ccgrid23Row, ...]) -> dict[str, bool]:
    """Each finding of the paper, checked on simulated rows."""
    stable = [r for r in rows if r.published_stable]
    peaks = [r.peak_latency_s or 0.0 for r in stable]
    trains = [r.train_batches_per_s for r in stable]
    return {
        "batch 1 and 4 unstable": all(not r.stable for r in rows if not r.published_stable),
        "batch 16, 64, 256 stable": all(r.stable for r in stable),
        "peak latency rises with batch size": all(a < b for a, b in itertools.pairwise(peaks)),
        "training throughput rises with batch size": all(a < b for a, b in itertools.pairwise(trains)),
    }


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:+.1%}"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def ccgrid23_table(rows: tuple[Ccgrid23Row, ...]) -> str:
    """Simulated against published, with relative errors, and whether each finding holds."""
    head = (
        f"{'batch':>5} {'stable':>7} {'paper':>7} {'queue@end':>9} {'peak s':>8} {'paper':>6} {'err':>7} "
        f"{'train/s':>8} {'paper':>6} {'err':>7} {'wall s':>7}"
    )
    lines = ["CCGrid'23 Fig. 1: ResNet50 @ 100 img/s beside MobileNetV3 training, AGX Orin MAXN", head]
    for r in rows:
        lines.append(
            f"{r.batch:>5} {('yes' if r.stable else 'NO'):>7} {('yes' if r.published_stable else 'NO'):>7} "
            f"{r.queue_at_end:>9} {_num(r.peak_latency_s, '.3f'):>8} {_num(r.published_peak_s, '.2f'):>6} "
            f"{_pct(r.peak_error):>7} {r.train_batches_per_s:>8.2f} "
            f"{_num(r.published_train_per_s, '.2f'):>6} {_pct(r.train_error):>7} {r.wall_s:>7.2f}"
        )
    lines.append("")
    lines += [f"{'holds' if ok else 'FAILS'}: {name}" for name, ok in findings_hold(rows).items()]
    return "\n".join(lines)

"""Reading the real AGX Orin telemetry the simulator is calibrated against.

The files are tegrastats time series (1 sample per second) from BroncoSpace-Lab/scales-hardware,
shipped verbatim in `cotrain/sim/data/orin-telemetry/` (provenance and licence:
`cotrain/sim/data/SOURCES.md`).
Each starts with a quoted date line, then a header. What the calibration needs from a file is
the part where the workload really ran ("active") and its mean rail powers and loads there.

Checked facts about these files (not assumptions):
- `Total RAM` is 30698 MB on every file, and 12 CPU slots are online at MAXN and 50W, 8 at 30W and
  4 at 15W: a 12-core p3701-0000 module with 32 GB (the original AGX Orin developer kit), so the
  AGX Orin 64GB board table's modes (MAXN/15W/30W/50W) are the right ones.
- `GR3D Frequency` is empty in every file: the GPU clock was not recorded.
- `resnet_training_{15W,30W,50W}` and `resnet_training[_maxnS]` show the same job: the GPU load dips
  briefly at the same epoch structure (period ~132 s at MAXN, ~163 s at 50W, ~308 s at 30W,
  ~545 s at 15W: 10 epochs in each file; see `epochs_consistent`). But `resnet_training_15W` also
  holds an 847 s idle stretch (GPU load 0) in the middle, so its length (6299 s) is not its
  training time: the active time is ~5450 s, 4.1x MAXN, not the 4.8x the sample count suggests.
- The inference and other-model files are not fixed amounts of work (e.g. resnet inference runs
  longer at 50W than at 30W), so only their power is used, never their duration.
"""

from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

TELEMETRY_DIR = "orin-telemetry"
RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")  # summed: the board's input power
BUSY_LOAD = 0.5  # GPU load that counts as the workload running
IDLE_LOAD = 0.05  # GPU load that counts as idle
IDLE_GAP_S = 30  # an idle stretch at least this long inside a run is cut out of the active time
DIP_LOAD = 0.3  # an epoch boundary shows as a short dip of the GPU load below this
DIP_MIN_S = 3


def fixtures_dir() -> Path:
    """The package's own `data/` folder, or `$COTRAIN_SIM_DATA` when set (a folder holding an
    `orin-telemetry/` of the same format, to calibrate against other captures)."""
    override = os.environ.get("COTRAIN_SIM_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class TelemetryFile:
    """One workload run in one nvpmodel mode, as the calibration uses it."""

    name: str  # file stem without `data__`
    workload: str  # training | resnet | depth | phi
    mode: str  # MAXN | MODE_50W | MODE_30W | MODE_15W
    samples: int
    active_s: float  # seconds the workload ran (idle stretches removed)
    dip_gaps_s: tuple[float, ...]  # seconds between short GPU-load dips (epoch boundaries)
    gpu_load: float  # mean GR3D load over the active samples, 0..1
    cpu_busy_cores: float  # sum of per-core loads / 100, mean over the active samples
    cpu_mhz: float  # mean reported CPU frequency over the active samples
    rails_w: tuple[float, float, float]  # mean VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0 (W) over active

    @property
    def total_w(self) -> float:
        return float(sum(self.rails_w))


_MODE_BY_SUFFIX = {"maxn": "MAXN", "maxnS": "MAXN", "50W": "MODE_50W", "30W": "MODE_30W", "15W": "MODE_15W"}


def classify(stem: str) -> tuple[str, str] | None:
    """(workload, mode) from a file stem such as `resnet_training_30W`; None if not a run."""
    if stem == "resnet_test":  # the MaxN inference run, per the source repo's docs
        return "resnet", "MAXN"
    if stem == "resnet_training":
        return "training", "MAXN"
    if stem.startswith("resnet_training_"):
        return "training", _MODE_BY_SUFFIX[stem.removeprefix("resnet_training_")]
    head, _, suffix = stem.rpartition("_")
    if head in ("resnet", "depth", "phi") and suffix in _MODE_BY_SUFFIX:
        return head, _MODE_BY_SUFFIX[suffix]
    return None


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else float("nan")
    except ValueError:
        return float("nan")  # `off` cores and empty cells


def _wanted(column: str) -> bool:
    return (
        column in ("Used GR3D (%)", "CPU Frequency (MHz)")
        or (column.startswith("CPU ") and column.endswith(" Load (%)"))
        or any(column == f"{rail} Current (mW)" for rail in RAILS)
    )


def read_columns(path: Path) -> dict[str, FloatArray]:
    """The columns the calibration uses, after the quoted date line; `off` and blanks are NaN."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Index,"))
    reader = csv.reader(lines[start:])
    header = next(reader)
    rows = [row for row in reader if len(row) == len(header)]
    return {
        name: np.array([_number(r[i]) for r in rows], dtype=float)
        for i, name in enumerate(header)
        if _wanted(name)
    }


def active_mask(gpu_load: FloatArray) -> npt.NDArray[np.bool_]:
    """Samples between the first and last busy one, minus idle stretches of IDLE_GAP_S or more."""
    busy = np.flatnonzero(gpu_load > BUSY_LOAD)
    mask = np.zeros(len(gpu_load), dtype=bool)
    if len(busy) == 0:
        return mask
    first, last = int(busy[0]), int(busy[-1])
    mask[first : last + 1] = True
    for start, length in _runs(gpu_load[first : last + 1] < IDLE_LOAD):
        if length >= IDLE_GAP_S:
            mask[first + start : first + start + length] = False
    return mask


def _runs(flags: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(start, length) of each run of True."""
    padded = np.concatenate(([False], flags, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def dip_gaps_s(gpu_load: FloatArray, active: npt.NDArray[np.bool_]) -> tuple[float, ...]:
    """Seconds between the short GPU-load dips of a run (epoch boundaries of a training job)."""
    load = gpu_load[active]
    dips = [s for s, n in _runs(load < DIP_LOAD) if DIP_MIN_S <= n < IDLE_GAP_S]
    return tuple(float(g) for g in np.diff(dips))


def epochs_consistent(file: TelemetryFile, epochs: int, tolerance: float = 0.1) -> bool | None:
    """Whether the dips of a training run fit `epochs` equal epochs over its active time.

    Why: it tests the assumption that every training file is the same job run to completion. A
    1 s sampler misses some dips, so a gap may span several epochs: each gap must be (within
    `tolerance`) a whole number of periods. None when the file shows fewer than two dips."""
    if not file.dip_gaps_s:
        return None
    period = file.active_s / epochs
    ratios = np.asarray(file.dip_gaps_s) / period
    whole = np.maximum(np.round(ratios), 1.0)
    return bool(np.all(np.abs(ratios - whole) <= tolerance * whole))


def summarize(path: Path) -> TelemetryFile | None:
    stem = path.stem.removeprefix("data__")
    kind = classify(stem)
    if kind is None:
        return None
    cols = read_columns(path)
    load = cols["Used GR3D (%)"] / 100.0
    active = active_mask(load)
    per_core = [cols[c] for c in cols if c.startswith("CPU ") and c.endswith(" Load (%)")]
    busy_cores = np.nansum(np.vstack(per_core), axis=0) / 100.0
    rails = tuple(float(np.nanmean(cols[f"{r} Current (mW)"][active]) / 1000.0) for r in RAILS)
    return TelemetryFile(
        name=stem,
        workload=kind[0],
        mode=kind[1],
        samples=len(load),
        active_s=float(active.sum()),
        dip_gaps_s=dip_gaps_s(load, active),
        gpu_load=float(np.nanmean(load[active])),
        cpu_busy_cores=float(np.mean(busy_cores[active])),
        cpu_mhz=float(np.nanmean(cols["CPU Frequency (MHz)"][active])),
        rails_w=(rails[0], rails[1], rails[2]),
    )


def load_telemetry(root: Path | None = None) -> tuple[TelemetryFile, ...]:
    """Every run file of orin-telemetry under `root` (default: `fixtures_dir()`), summarized."""
    return _load_telemetry((root or fixtures_dir()).resolve())


@functools.lru_cache(maxsize=4)
def _load_telemetry(root: Path) -> tuple[TelemetryFile, ...]:
    folder = root / TELEMETRY_DIR
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no Orin telemetry at {folder}; COTRAIN_SIM_DATA must name a folder holding orin-telemetry/"
        )
    files = (summarize(p) for p in sorted(folder.glob("data__*.csv")))
    return tuple(f for f in files if f is not None)

"""Latency micro-profiler: milliseconds per (variant, batch size), measured on this device.

A controller that moves along a variant ladder needs to know, before it commits, what each rung
costs at each batch size *here*: published figures come from other machines, and on a CPU the
ratio between variants changes with the ISA, the thread count and the resolution. So the
service measures each (variant, batch) at start-up, with a progress bar because quantising and
timing a ladder takes tens of seconds on a small device.

The result is cached per machine and ladder (`ProfileKey`) so a restart does not pay that again;
an entry is refreshed when older than `max_age_s` (a kernel, BIOS or thermal change may have
happened) or when anything in the key differs.

Latencies are medians (p50) and p90 over `repeats` timed calls after `warmup` untimed ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch

from cotrain.workloads.inference.variants import BuiltVariant

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
_CPUINFO = Path("/proc/cpuinfo")


# --- statistics ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one (variant, batch size): median and p90 over `samples` timed calls."""

    p50_ms: float
    p90_ms: float
    samples: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        return cls(percentile(samples_ms, 50.0), percentile(samples_ms, 90.0), len(samples_ms))


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileTable:
    """Measured latencies, keyed by (variant name, batch size), with where and when they were taken.

    `created_unix_s` is wall time (seconds since the epoch) because the cache outlives processes
    and reboots; `machine` is a human-readable description of the device.
    """

    entries: Mapping[tuple[str, int], LatencyStats]
    machine: str
    created_unix_s: float
    torch_version: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))  # truly read-only

    @property
    def variants(self) -> tuple[str, ...]:
        """Variant names in the order they were profiled (the ladder's order)."""
        return tuple(dict.fromkeys(name for name, _ in self.entries))

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({batch for _, batch in self.entries}))

    def latency_ms(self, variant: str, batch: int, *, quantile: Literal["p50", "p90"] = "p50") -> float:
        """The measured latency of one batch of `batch` requests on `variant`."""
        try:
            stats = self.entries[(variant, batch)]
        except KeyError:
            raise KeyError(
                f"no profile for {variant!r} at batch {batch}; have {list(self.variants)} "
                f"at batches {list(self.batch_sizes)}"
            ) from None
        return stats.p50_ms if quantile == "p50" else stats.p90_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "machine": self.machine,
            "created_unix_s": self.created_unix_s,
            "torch_version": self.torch_version,
            "entries": [
                {"variant": name, "batch": batch, **asdict(stats)}
                for (name, batch), stats in self.entries.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileTable:
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"profile format {data.get('format')!r}, expected {FORMAT_VERSION}")
        entries = {
            (str(e["variant"]), int(e["batch"])): LatencyStats(
                float(e["p50_ms"]), float(e["p90_ms"]), int(e["samples"])
            )
            for e in data["entries"]
        }
        return cls(entries, str(data["machine"]), float(data["created_unix_s"]), str(data["torch_version"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ProfileTable:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a profile table is a JSON object")
        return cls.from_dict(data)


# --- measuring -----------------------------------------------------------------------------------


def profile_latency(
    variants: Sequence[BuiltVariant],
    batch_sizes: Sequence[int],
    *,
    repeats: int = 5,
    warmup: int = 2,
    progress: bool = True,
    clock: Callable[[], float] = time.perf_counter,
    wall_clock_s: Callable[[], float] = time.time,
    machine: str | None = None,
    seed: int = 0,
) -> ProfileTable:
    """Time every variant at every batch size on this device, in the current thread settings.

    Inputs are seeded standard-normal images at each variant's own resolution, made before the
    timer starts. `clock` returns seconds (monotonic); it is injectable so the bookkeeping can be
    tested without real timing. Variants are timed one after another, never concurrently, so they
    do not interfere with each other (they still see whatever else the device is running).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    names = [v.name for v in variants]
    if not variants or len(set(names)) != len(names):
        raise ValueError(f"need distinct variants to profile, got {names}")
    if not batch_sizes or any(b < 1 for b in batch_sizes) or len(set(batch_sizes)) != len(batch_sizes):
        raise ValueError(f"batch sizes must be distinct and >= 1, got {list(batch_sizes)}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")

    entries: dict[tuple[str, int], LatencyStats] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("profiling", total=len(variants) * len(batch_sizes))
        for variant in variants:
            for batch in batch_sizes:
                bar.update(task, description=f"profiling {variant.name} batch {batch}")
                generator = torch.Generator().manual_seed(seed)
                size = variant.spec.image_size
                x = torch.randn(batch, 3, size, size, generator=generator)
                for _ in range(warmup):
                    variant(x)
                samples_ms: list[float] = []
                for _ in range(repeats):
                    start_s = clock()
                    variant(x)
                    samples_ms.append((clock() - start_s) * 1000.0)
                entries[(variant.name, batch)] = LatencyStats.from_samples(samples_ms)
                bar.advance(task)
    return ProfileTable(entries, machine or describe_machine(), wall_clock_s(), torch.__version__)


# --- the cache -----------------------------------------------------------------------------------


def cpu_model(cpuinfo_path: Path = _CPUINFO) -> str:
    """The CPU's model name from /proc/cpuinfo ("model name" on x86; on ARM, often absent, the
    implementer/part codes instead); platform.processor() or "unknown" when unreadable."""
    try:
        text = cpuinfo_path.read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    for key in ("model name", "hardware", "cpu model"):
        if fields.get(key):
            return fields[key][0]
    parts = sorted(set(fields.get("cpu part", [])))
    if parts:
        return f"cpu implementer {fields.get('cpu implementer', ['?'])[0]} part {'/'.join(parts)}"
    return platform.processor() or "unknown"


@dataclass(frozen=True)
class ProfileKey:
    """Everything a profile depends on: if any of it differs, the cached latencies do not apply."""

    machine: str  # platform.machine(), e.g. "x86_64", "aarch64"
    cpu_model: str
    cpu_count: int  # os.cpu_count(): the device, not the current affinity, which a controller changes
    torch_version: str
    torch_threads: int  # intra-op threads in the profiling thread: latency depends on it most
    variants: tuple[str, ...]
    batch_sizes: tuple[int, ...]

    @classmethod
    def for_this_machine(
        cls, variants: Sequence[str], batch_sizes: Sequence[int], *, cpuinfo_path: Path = _CPUINFO
    ) -> ProfileKey:
        return cls(
            machine=platform.machine(),
            cpu_model=cpu_model(cpuinfo_path),
            cpu_count=os.cpu_count() or 1,
            torch_version=torch.__version__,
            torch_threads=torch.get_num_threads(),
            variants=tuple(variants),
            batch_sizes=tuple(batch_sizes),
        )

    @property
    def label(self) -> str:
        """Human-readable machine description stored with the table."""
        return (
            f"{self.machine} {self.cpu_model} ({self.cpu_count} CPUs, "
            f"torch {self.torch_version}, {self.torch_threads} threads)"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["variants"], data["batch_sizes"] = list(self.variants), list(self.batch_sizes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileKey:
        return cls(
            machine=str(data["machine"]),
            cpu_model=str(data["cpu_model"]),
            cpu_count=int(data["cpu_count"]),
            torch_version=str(data["torch_version"]),
            torch_threads=int(data["torch_threads"]),
            variants=tuple(str(v) for v in data["variants"]),
            batch_sizes=tuple(int(b) for b in data["batch_sizes"]),
        )

    def digest(self) -> str:
        """A stable hash of the key: the cache file name, so several profiles can coexist."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def describe_machine() -> str:
    return ProfileKey.for_this_machine((), ()).label


def default_cache_dir(environ: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """`$XDG_CACHE_HOME/cotrain/profiles`, else `~/.cache/cotrain/profiles` (XDG base directories:
    a relative XDG_CACHE_HOME is invalid and ignored)."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else (home or Path.home()) / ".cache"
    return base / "cotrain" / "profiles"


def cache_path(cache_dir: Path, key: ProfileKey) -> Path:
    return cache_dir / f"profile-{key.digest()[:24]}.json"


def _read_cache(path: Path) -> tuple[ProfileKey, ProfileTable] | None:
    """The cached entry at `path`, or None when missing or unreadable (a miss, never an error)."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            return None
        return ProfileKey.from_dict(data["key"]), ProfileTable.from_dict(data["table"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable profile cache %s: %s", path, exc)
        return None


def _write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def is_fresh(
    entry_key: ProfileKey, table: ProfileTable, key: ProfileKey, now_s: float, max_age_s: float
) -> bool:
    """A cached table applies when its key matches, it covers every (variant, batch), and it is at
    most `max_age_s` old. A creation time in the future (the wall clock was set back) counts as
    stale: re-profiling is cheaper than trusting a table of unknown age."""
    age_s = now_s - table.created_unix_s
    covered = all((v, b) in table.entries for v in key.variants for b in key.batch_sizes)
    return entry_key == key and covered and 0.0 <= age_s <= max_age_s


def load_or_profile(
    cache_dir: Path,
    key: ProfileKey,
    build: Callable[[], Sequence[BuiltVariant]],
    batch_sizes: Sequence[int],
    *,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    now_s: Callable[[], float] = time.time,
    repeats: int = 5,
    warmup: int = 2,
    progress: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[ProfileTable, bool]:
    """The profile for `key`: from the cache when fresh (True), else measured and cached (False).

    `build` is only called on a miss, so a fresh cache skips building and quantising the ladder
    altogether. `now_s` is the wall clock used for ages and for the new table's creation time.
    A cache that cannot be written is logged and skipped: serving matters more than caching.
    """
    if tuple(batch_sizes) != key.batch_sizes:
        raise ValueError(f"batch sizes {list(batch_sizes)} differ from the key's {list(key.batch_sizes)}")
    path = cache_path(cache_dir, key)
    cached = _read_cache(path)
    if cached is not None and is_fresh(*cached, key, now_s(), max_age_s):
        return cached[1], True

    variants = build()
    names = tuple(v.name for v in variants)
    if names != key.variants:
        raise ValueError(f"built variants {list(names)} differ from the key's {list(key.variants)}")
    table = profile_latency(
        variants,
        batch_sizes,
        repeats=repeats,
        warmup=warmup,
        progress=progress,
        clock=clock,
        wall_clock_s=now_s,
        machine=key.label,
    )
    payload = {"format": FORMAT_VERSION, "key": key.to_dict(), "table": table.to_dict()}
    try:
        _write_atomically(path, json.dumps(payload, indent=1))
    except OSError as exc:
        log.warning("could not cache the latency profile at %s: %s", path, exc)
    return table, False

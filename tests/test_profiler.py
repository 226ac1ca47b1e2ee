"""The latency micro-profiler: bookkeeping under a fake clock, one real measurement, and the cache.

Timing assertions on a shared 2-core machine are noisy, so the bookkeeping (percentiles, sample
counts, which cells exist) is checked with a fake clock that the fake model itself advances, and
the single real measurement only asserts what holds by a wide margin.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from cotrain.workloads.inference.profiler import (
    DEFAULT_MAX_AGE_S,
    LatencyStats,
    ProfileKey,
    ProfileTable,
    cache_path,
    cpu_model,
    default_cache_dir,
    load_or_profile,
    percentile,
    profile_latency,
)
from cotrain.workloads.inference.variants import BuiltVariant, VariantSpec, build_variant

DAY_S = 24 * 3600.0


class FakeTime:
    """Seconds that move only when the fake model runs (or a test says so)."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s


class Timed(torch.nn.Module):
    """A fake model whose forward takes `durations_ms` (cycled) or `ms_per_image × batch` of fake time."""

    def __init__(
        self, clock: FakeTime, ms_per_image: float = 1.0, durations_ms: Sequence[float] = ()
    ) -> None:
        super().__init__()
        self.clock, self.ms_per_image, self.durations_ms = clock, ms_per_image, list(durations_ms)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.durations_ms:
            self.clock.now_s += self.durations_ms[self.calls % len(self.durations_ms)] / 1000.0
        else:
            self.clock.now_s += self.ms_per_image * x.shape[0] / 1000.0
        self.calls += 1
        return x.mean(dim=(2, 3))


def fake_variant(
    clock: FakeTime, arch: str = "fake", ms_per_image: float = 1.0, durations_ms: Sequence[float] = ()
) -> BuiltVariant:
    module = Timed(clock, ms_per_image, durations_ms)
    return BuiltVariant(VariantSpec(arch, "fp32", 32), module, None, "unknown", 0.0)


# --- statistics and bookkeeping ------------------------------------------------------------------


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([5.0, 1.0, 2.0, 3.0, 4.0], 50) == 3.0
    assert percentile([5.0, 1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(4.6)
    assert percentile([7.0], 90) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_every_variant_and_batch_is_measured_with_the_injected_clock() -> None:
    clock = FakeTime()
    variants = [fake_variant(clock, "a", ms_per_image=1.0), fake_variant(clock, "b", ms_per_image=3.0)]

    table = profile_latency(variants, [1, 4, 8], repeats=5, warmup=2, progress=False, clock=clock)

    assert set(table.entries) == {(v.name, b) for v in variants for b in (1, 4, 8)}
    for batch in (1, 4, 8):
        assert table.latency_ms("a/fp32@32", batch) == pytest.approx(1.0 * batch)
        assert table.latency_ms("b/fp32@32", batch) == pytest.approx(3.0 * batch)
        assert table.entries[("a/fp32@32", batch)].samples == 5
    assert [v.module.calls for v in variants] == [3 * (2 + 5)] * 2  # warm-up calls are not timed
    assert table.variants == ("a/fp32@32", "b/fp32@32")
    assert table.batch_sizes == (1, 4, 8)


def test_p50_and_p90_come_from_the_timed_samples_only() -> None:
    clock = FakeTime()
    # Two warm-up calls of 100 ms, then five timed ones of 5, 1, 2, 3, 4 ms.
    variant = fake_variant(clock, durations_ms=[100.0, 100.0, 5.0, 1.0, 2.0, 3.0, 4.0])

    table = profile_latency([variant], [1], repeats=5, warmup=2, progress=False, clock=clock)

    stats = table.entries[("fake/fp32@32", 1)]
    assert (stats.p50_ms, stats.p90_ms, stats.samples) == pytest.approx((3.0, 4.6, 5))


def test_bad_requests_are_refused() -> None:
    clock = FakeTime()
    variant = fake_variant(clock)
    for batch_sizes in ([], [0], [2, 2]):
        with pytest.raises(ValueError, match="batch sizes"):
            profile_latency([variant], batch_sizes, progress=False, clock=clock)
    with pytest.raises(ValueError, match="repeats"):
        profile_latency([variant], [1], repeats=0, progress=False, clock=clock)
    with pytest.raises(ValueError, match="distinct variants"):
        profile_latency([variant, variant], [1], progress=False, clock=clock)


def test_unknown_cells_say_what_the_table_has() -> None:
    table = ProfileTable({("a", 1): LatencyStats(1.0, 2.0, 5)}, "m", 0.0, "t")

    with pytest.raises(KeyError, match=r"no profile for 'b' at batch 1; have \['a'\]"):
        table.latency_ms("b", 1)
    assert table.latency_ms("a", 1, quantile="p90") == 2.0


def test_table_round_trips_through_json() -> None:
    table = ProfileTable(
        {("r/fp32@64", 1): LatencyStats(17.25, 19.5, 5), ("r/fp32@64", 8): LatencyStats(33.1, 40.0, 5)},
        "x86_64 test cpu",
        1_700_000_000.123,
        "2.14.1",
    )

    again = ProfileTable.from_json(table.to_json())

    assert again == table
    with pytest.raises(TypeError):  # read-only, not merely frozen at the attribute level
        again.entries[("x", 1)] = LatencyStats(1.0, 1.0, 1)  # type: ignore[index]


# --- one real measurement ------------------------------------------------------------------------


def test_real_profile_of_resnet18_has_positive_latencies_and_batch_costs_more() -> None:
    spec = VariantSpec("resnet18", "fp32", 64)
    variant = build_variant(spec, 10)

    table = profile_latency([variant], [1, 16], repeats=3, warmup=1, progress=True)

    one, sixteen = table.entries[(spec.name, 1)], table.entries[(spec.name, 16)]
    assert 0 < one.p50_ms <= one.p90_ms and 0 < sixteen.p50_ms <= sixteen.p90_ms
    assert sixteen.p50_ms > one.p50_ms  # 16× the work is never faster than 1× (measured ~4× here)
    assert table.torch_version == torch.__version__ and table.machine


# --- machine key and cache -----------------------------------------------------------------------


def test_cpu_model_is_read_from_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t: avx2\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n"
    )
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\n")

    assert cpu_model(x86) == "AMD EPYC"
    assert cpu_model(arm) == "cpu implementer 0x41 part 0xd42"
    assert cpu_model(tmp_path / "missing")  # falls back, never raises


def test_key_describes_this_machine_and_hashes_stably(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU 9000\n")

    key = ProfileKey.for_this_machine(["a", "b"], [1, 8], cpuinfo_path=cpuinfo)

    assert key.cpu_model == "Test CPU 9000" and key.torch_threads == torch.get_num_threads()
    assert key.variants == ("a", "b") and key.batch_sizes == (1, 8)
    assert ProfileKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key
    assert key.digest() == ProfileKey.for_this_machine(["a", "b"], [1, 8], cpuinfo_path=cpuinfo).digest()
    assert key.digest() != ProfileKey.for_this_machine(["a"], [1, 8], cpuinfo_path=cpuinfo).digest()


def test_default_cache_dir_follows_xdg(tmp_path: Path) -> None:
    home = tmp_path / "home"

    assert default_cache_dir({"XDG_CACHE_HOME": "/var/cache/me"}, home) == Path(
        "/var/cache/me/cotrain/profiles"
    )
    assert default_cache_dir({"XDG_CACHE_HOME": "relative"}, home) == home / ".cache/cotrain/profiles"
    assert default_cache_dir({}, home) == home / ".cache/cotrain/profiles"


class Ladder:
    """A `build` callable that counts how often the (expensive) ladder is built."""

    def __init__(self, clock: FakeTime, archs: Sequence[str] = ("a", "b")) -> None:
        self.clock, self.archs, self.builds = clock, archs, 0

    def __call__(self) -> list[BuiltVariant]:
        self.builds += 1
        return [fake_variant(self.clock, arch) for arch in self.archs]


def make_key(threads: int = 1, variants: Sequence[str] = ("a/fp32@32", "b/fp32@32")) -> ProfileKey:
    return ProfileKey("x86_64", "Test CPU", 2, "2.14.1", threads, tuple(variants), (1, 4))


def test_cache_round_trips_and_is_reused_while_fresh(tmp_path: Path) -> None:
    clock, wall = FakeTime(), FakeTime(1_700_000_000.0)
    ladder, key = Ladder(clock), make_key()

    first, first_cached = load_or_profile(
        tmp_path, key, ladder, [1, 4], now_s=wall, progress=False, clock=clock
    )
    wall.now_s += DEFAULT_MAX_AGE_S - 1
    second, second_cached = load_or_profile(
        tmp_path, key, ladder, [1, 4], now_s=wall, progress=False, clock=clock
    )

    assert (first_cached, second_cached) == (False, True)
    assert ladder.builds == 1  # a fresh cache skips building (and quantising) the ladder
    assert second == first and first.created_unix_s == 1_700_000_000.0
    assert first.latency_ms("b/fp32@32", 4) == pytest.approx(4.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache_path(tmp_path, key).name]  # no temp files


@pytest.mark.parametrize(
    ("age_s", "later_key"),
    [
        (DEFAULT_MAX_AGE_S + 1, make_key()),  # too old
        (-DAY_S, make_key()),  # written "in the future": the wall clock was set back
        (60.0, make_key(threads=2)),  # a different thread count changes every latency
    ],
)
def test_stale_or_different_entries_are_profiled_again(
    tmp_path: Path, age_s: float, later_key: ProfileKey
) -> None:
    clock, wall = FakeTime(), FakeTime(1_700_000_000.0)
    ladder = Ladder(clock)
    load_or_profile(tmp_path, make_key(), ladder, [1, 4], now_s=wall, progress=False, clock=clock)
    wall.now_s += age_s

    table, cached = load_or_profile(
        tmp_path, later_key, ladder, [1, 4], now_s=wall, progress=False, clock=clock
    )

    assert not cached and ladder.builds == 2
    assert table.created_unix_s == wall.now_s
    _, cached_now = load_or_profile(
        tmp_path, later_key, ladder, [1, 4], now_s=wall, progress=False, clock=clock
    )
    assert cached_now and ladder.builds == 2  # the new entry is the one reused


def test_a_cache_file_with_the_wrong_key_is_not_trusted(tmp_path: Path) -> None:
    """Guards against a hash collision or a hand-copied file: the stored key is compared in full."""
    clock, wall = FakeTime(), FakeTime(1_700_000_000.0)
    ladder, key = Ladder(clock), make_key()
    load_or_profile(tmp_path, make_key(threads=4), ladder, [1, 4], now_s=wall, progress=False, clock=clock)
    cache_path(tmp_path, make_key(threads=4)).rename(cache_path(tmp_path, key))

    _, cached = load_or_profile(tmp_path, key, ladder, [1, 4], now_s=wall, progress=False, clock=clock)

    assert not cached and ladder.builds == 2


def test_a_corrupt_cache_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    clock, wall = FakeTime(), FakeTime(1_700_000_000.0)
    ladder, key = Ladder(clock), make_key()
    cache_path(tmp_path, key).write_text("{ truncated")

    table, cached = load_or_profile(tmp_path, key, ladder, [1, 4], now_s=wall, progress=False, clock=clock)

    assert not cached and ("a/fp32@32", 1) in table.entries
    assert json.loads(cache_path(tmp_path, key).read_text())["key"] == key.to_dict()


def test_an_unwritable_cache_still_returns_the_profile(tmp_path: Path) -> None:
    clock, wall = FakeTime(), FakeTime(1_700_000_000.0)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")

    table, cached = load_or_profile(
        not_a_dir, make_key(), Ladder(clock), [1, 4], now_s=wall, progress=False, clock=clock
    )

    assert not cached and len(table.entries) == 4


def test_the_key_must_describe_what_is_measured(tmp_path: Path) -> None:
    clock = FakeTime()
    with pytest.raises(ValueError, match="batch sizes"):
        load_or_profile(tmp_path, make_key(), Ladder(clock), [1, 8], progress=False, clock=clock)
    with pytest.raises(ValueError, match="built variants"):
        load_or_profile(tmp_path, make_key(), Ladder(clock, ["a"]), [1, 4], progress=False, clock=clock)

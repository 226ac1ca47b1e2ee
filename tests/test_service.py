"""The inference service in-process, with a gated fake model: every arrived request gets exactly
one outcome, under overload and at stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import yaml

from cotrain.clock import MonotonicClock
from cotrain.config import InferenceConfig, parse_config
from cotrain.messages import Applied, InferenceStats, SetBatching, SetThreads, Stop
from cotrain.records import read_csv_rows
from cotrain.workloads.inference.requests import Request
from cotrain.workloads.inference.service import InferenceService
from tests.conftest import TINY
from tests.fakes import FakeChannel


def inference_config(**overrides: Any) -> InferenceConfig:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["workloads"]["inference"].update(overrides)
    config = parse_config(data).workloads.inference
    assert config is not None
    return config


class GatedModel:
    """Blocks in its first call until `gate` is set, so a test controls when batches finish."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []

    def __call__(self, batch: Sequence[Request]) -> list[int]:
        self.entered.set()
        assert self.gate.wait(timeout=60)
        self.batch_sizes.append(len(batch))
        return [0] * len(batch)


def burst(n: int) -> Iterator[float]:
    """n requests that all arrive at the start."""
    return iter([0.0] * n)


def start_service(
    tmp_path: Path, model: GatedModel, **overrides: Any
) -> tuple[InferenceService, FakeChannel]:
    channel = FakeChannel()
    service = InferenceService(
        inference_config(**overrides),
        tmp_path / "requests.csv",
        channel,  # type: ignore[arg-type]
        model,
        "fake/fp32",
        repeat(0),
    )
    threading.Thread(target=service.listen, daemon=True).start()
    return service, channel


def run_serve(service: InferenceService, offsets: Iterator[float]) -> threading.Thread:
    thread = threading.Thread(target=service.serve, args=(MonotonicClock().now_ns(), offsets), daemon=True)
    thread.start()
    return thread


def test_overload_sheds_at_capacity_and_drains_the_rest_at_stop(tmp_path: Path) -> None:
    model = GatedModel()
    service, channel = start_service(
        tmp_path, model, queue_capacity=8, batching={"max_batch_size": 4, "max_queue_delay_ms": 0}
    )
    serving = run_serve(service, burst(30))
    assert model.entered.wait(timeout=60)  # the first batch is stuck in the model
    assert service.arrivals_done.wait(timeout=60)  # all 30 have arrived
    channel.commands.put(Stop())
    assert service.stopping.wait(timeout=60)
    model.gate.set()
    serving.join(timeout=60)
    assert not serving.is_alive()

    rows = read_csv_rows(tmp_path / "requests.csv")
    ids = sorted(int(r["request_id"]) for r in rows)
    assert ids == list(range(30)), "every arrived request has exactly one record"
    outcomes = [r["outcome"] for r in rows]
    served, shed = outcomes.count("served"), outcomes.count("shed")
    assert served + shed == 30 and outcomes.count("failed") == 0
    assert 8 <= served <= 12  # the queue held 8, plus at most one batch already taken
    assert {r["reason"] for r in rows if r["outcome"] == "shed"} == {"queue full"}
    assert all(float(r["latency_ms"]) >= 0 for r in rows if r["outcome"] == "served")
    stats = channel.of_type(InferenceStats)
    assert sum(s.arrived for s in stats) == 30
    assert sum(s.served + s.shed + s.failed for s in stats) == 30


def test_requests_left_when_the_drain_times_out_are_shed_with_a_reason(tmp_path: Path) -> None:
    model = GatedModel()
    service, channel = start_service(
        tmp_path,
        model,
        queue_capacity=64,
        drain_timeout_s=0.0,
        batching={"max_batch_size": 2, "max_queue_delay_ms": 0},
    )
    serving = run_serve(service, burst(10))
    assert model.entered.wait(timeout=60)
    assert service.arrivals_done.wait(timeout=60)
    channel.commands.put(Stop())
    assert service.stopping.wait(timeout=60)
    model.gate.set()
    serving.join(timeout=60)
    rows = read_csv_rows(tmp_path / "requests.csv")
    assert len(rows) == 10
    by_outcome = {o: [r for r in rows if r["outcome"] == o] for o in ("served", "shed")}
    assert len(by_outcome["served"]) == 2  # only the batch already running
    assert {r["reason"] for r in by_outcome["shed"]} == {"stopped before dispatch"}
    assert all(r["start_s"] == "" and r["latency_ms"] == "" for r in by_outcome["shed"])


def test_knobs_apply_between_batches_and_are_acknowledged(tmp_path: Path) -> None:
    model = GatedModel()
    model.gate.set()
    service, channel = start_service(tmp_path, model, batching={"max_batch_size": 4, "max_queue_delay_ms": 0})
    channel.commands.put(SetBatching(max_batch_size=2, max_queue_delay_ms=3.0))
    channel.commands.put(SetThreads(threads=1))
    serving = run_serve(service, burst(0))
    channel.commands.put(Stop())
    serving.join(timeout=60)
    applied = {(a.knob, a.value) for a in channel.of_type(Applied)}
    assert {("max_batch_size", 2), ("max_queue_delay_ms", 3.0), ("threads", 1)} <= applied
    assert service.queue.policy().max_batch_size == 2


def test_requests_that_waited_past_the_slo_are_shed_at_dispatch(tmp_path: Path) -> None:
    from cotrain.clock import FakeClock

    clock = FakeClock(start_ns=10**12)
    model = GatedModel()
    channel = FakeChannel()
    config = inference_config(
        batching={"max_batch_size": 2, "max_queue_delay_ms": 0}, admission={"late_ms": 50}
    )
    service = InferenceService(config, tmp_path / "requests.csv", channel, model, "m", repeat(0), clock=clock)  # type: ignore[arg-type]
    threading.Thread(target=service.listen, daemon=True).start()
    serving = threading.Thread(target=service.serve, args=(clock.now_ns(), burst(6)), daemon=True)
    serving.start()
    assert model.entered.wait(timeout=60) and service.arrivals_done.wait(timeout=60)
    clock.advance_ms(100)  # the four queued requests are now 100 ms old: past late_ms
    channel.commands.put(Stop())
    assert service.stopping.wait(timeout=60)
    model.gate.set()
    serving.join(timeout=60)
    rows = read_csv_rows(tmp_path / "requests.csv")
    assert len(rows) == 6
    assert [r["outcome"] for r in rows].count("served") == 2
    late = [r for r in rows if r["reason"] == "waited past the SLO"]
    assert len(late) == 4 and all(r["outcome"] == "shed" for r in late)


def test_a_variant_switch_applies_between_batches_under_load_and_drops_nothing(tmp_path: Path) -> None:
    from cotrain.messages import SetVariant

    heavy = GatedModel()
    light_calls: list[int] = []

    def light(batch: Sequence[Request]) -> list[int]:
        light_calls.append(len(batch))
        return [1] * len(batch)

    channel = FakeChannel()
    config = inference_config(batching={"max_batch_size": 2, "max_queue_delay_ms": 0})
    service = InferenceService(
        config,
        tmp_path / "requests.csv",
        channel,
        heavy,
        "heavy",
        repeat(0),  # type: ignore[arg-type]
        variants={"heavy": heavy, "light": light},
    )
    threading.Thread(target=service.listen, daemon=True).start()
    serving = run_serve(service, burst(10))
    assert heavy.entered.wait(timeout=60)  # a heavy batch is running; the rest wait in the queue
    channel.commands.put(SetVariant("light"))
    channel.commands.put(SetVariant("nonexistent"))
    # The listener handles commands in order, so once it has refused "nonexistent" it has staged "light".
    assert channel.wait_for_sent(lambda m: isinstance(m, Applied) and m.knob == "variant_unknown")
    assert service.arrivals_done.wait(timeout=60)
    heavy.gate.set()
    deadline = time.monotonic() + 60
    while len(read_csv_rows(tmp_path / "requests.csv")) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the record file
    channel.commands.put(Stop())
    serving.join(timeout=60)
    rows = sorted(read_csv_rows(tmp_path / "requests.csv"), key=lambda r: float(r["start_s"]))
    assert len(rows) == 10 and {r["outcome"] for r in rows} == {"served"}
    variants = [r["variant"] for r in rows]
    assert variants[0] == "heavy" and variants[-1] == "light"
    assert variants == sorted(variants, key=lambda v: v == "light"), "one clean switch"
    applied = {(a.knob, a.value) for a in channel.of_type(Applied)}
    assert ("variant", "light") in applied and ("variant_unknown", "nonexistent") in applied


class RendezvousModel:
    """Each call waits until `parties` calls are inside at once: it can only finish if the
    service runs that many batches concurrently."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=60)
        self.concurrent = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, batch: Sequence[Request]) -> list[int]:
        with self._lock:
            self.concurrent += 1
            self.peak = max(self.peak, self.concurrent)
        try:
            self.barrier.wait()
        finally:
            with self._lock:
                self.concurrent -= 1
        return [0] * len(batch)


def _serve_burst_until_recorded(service: InferenceService, channel: FakeChannel, path: Path, n: int) -> None:
    serving = run_serve(service, burst(n))
    deadline = time.monotonic() + 60
    while len(read_csv_rows(path)) < n and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the record file
    channel.commands.put(Stop())
    serving.join(timeout=60)
    assert not serving.is_alive()


def test_two_model_instances_run_two_batches_at_once_from_one_queue(tmp_path: Path) -> None:
    model = RendezvousModel(parties=2)
    channel = FakeChannel()
    config = inference_config(instances=2, batching={"max_batch_size": 2, "max_queue_delay_ms": 0})
    service = InferenceService(config, tmp_path / "requests.csv", channel, model, "m", repeat(0))  # type: ignore[arg-type]
    threading.Thread(target=service.listen, daemon=True).start()
    _serve_burst_until_recorded(service, channel, tmp_path / "requests.csv", 8)
    rows = read_csv_rows(tmp_path / "requests.csv")
    assert sorted(int(r["request_id"]) for r in rows) == list(range(8))
    assert {r["outcome"] for r in rows} == {"served"}, "a single instance would break the barrier"
    assert model.peak == 2


def test_the_instance_count_is_a_live_knob(tmp_path: Path) -> None:
    from cotrain.messages import SetInstances

    model = RendezvousModel(parties=3)
    channel = FakeChannel()
    config = inference_config(batching={"max_batch_size": 1, "max_queue_delay_ms": 0})
    service = InferenceService(config, tmp_path / "requests.csv", channel, model, "m", repeat(0))  # type: ignore[arg-type]
    threading.Thread(target=service.listen, daemon=True).start()
    release = threading.Event()

    def offsets() -> Iterator[float]:
        assert release.wait(timeout=60)  # requests arrive only once the knob has been applied
        yield from [0.0] * 6

    serving = run_serve(service, offsets())
    channel.commands.put(SetInstances(3))
    assert channel.wait_for_sent(lambda m: isinstance(m, Applied) and m.knob == "instances" and m.value == 3)
    release.set()
    deadline = time.monotonic() + 60
    while len(read_csv_rows(tmp_path / "requests.csv")) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the record file
    channel.commands.put(Stop())
    serving.join(timeout=60)
    rows = read_csv_rows(tmp_path / "requests.csv")
    assert len(rows) == 6 and {r["outcome"] for r in rows} == {"served"}
    assert model.peak == 3

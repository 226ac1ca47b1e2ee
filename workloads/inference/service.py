"""The inference service process: arrivals -> bounded queue -> dynamic batcher -> model.

Three threads (plus one per extra model instance) share one process:
- the *source* turns the seeded arrival schedule into requests at their arrival times and sheds
  those that find the queue full;
- the *listener* receives control commands; batching changes reach the batcher at once (they
  only affect the next dispatch), thread changes are queued for the executor;
- the *executor* (main thread) dispatches batches, runs the model, writes one record per request
  and sends window statistics to the runtime. It applies queued knobs between batches, because
  torch's thread count is a per-thread setting that must be set where the model runs;
- with `instances` > 1, more executor threads take batches from the same queue (Triton's
  instance count): torch releases the GIL inside its kernels, so batches run concurrently.

With several services, a service of lower priority defers each batch while a higher-priority
one is busy, within its throughput floor and wait bound (priority.py).

At stop, arrivals end, the queue is drained for up to `drain_timeout_s`, and whatever still waits
is shed with a reason, so every arrived request has exactly one outcome.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cotrain.clock import NS_PER_MS, NS_PER_S, Clock, MonotonicClock
from cotrain.config import InferenceConfig
from cotrain.gate import InterleavingGate
from cotrain.messages import (
    Applied,
    CommandRefused,
    Finished,
    InferenceStats,
    LoadModel,
    ModelSwapped,
    Ready,
    SetBatching,
    SetBatchSize,
    SetDutyCycle,
    SetInstances,
    SetInterleave,
    SetNumWorkers,
    SetPaused,
    SetThreads,
    SetVariant,
    Start,
    Stop,
    unhandled,
)
from cotrain.records import REQUEST_COLUMNS, CsvAppender, fmt_s
from cotrain.worker import Channel, exit_now, report_failure, wait_for_start, worker_setup
from cotrain.workloads.inference.arrivals import arrival_offsets_s
from cotrain.workloads.inference.batcher import BatchPolicy, BatchQueue, DynamicBatcher
from cotrain.workloads.inference.priority import PriorityYield
from cotrain.workloads.inference.requests import Outcome, Request, RequestRecord, execute_batch, shed

Infer = Callable[[Sequence[Request]], Sequence[Any]]


@dataclass
class _Window:
    """Counters since the last stats message. Guarded by `lock`: source and executor both write."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: int = 0
    served: int = 0
    failed: int = 0
    shed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    batch_exec_ms: list[float] = field(default_factory=list)


def record_row(r: RequestRecord) -> tuple[object, ...]:
    latency_ns = r.latency_ns
    return (
        r.request.request_id,
        fmt_s(r.request.arrival_ns),
        fmt_s(r.start_ns),
        fmt_s(r.end_ns),
        "" if latency_ns is None else f"{latency_ns / NS_PER_MS:.3f}",
        "" if r.batch_size is None else r.batch_size,
        r.variant,
        r.model_version,
        r.outcome.value,
        r.reason,
    )


class InferenceService:
    def __init__(
        self,
        config: InferenceConfig,
        requests_csv: Path,
        channel: Channel,
        infer: Infer,
        variant: str,
        sample_indices: Iterator[int],
        clock: Clock | None = None,
        gate: InterleavingGate | None = None,
        load_model: Callable[[str], Infer] | None = None,
        variants: Mapping[str, Infer] | None = None,
        gate_slot: int = 0,
        priority: PriorityYield | None = None,
        threads: int | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.channel = channel
        self.infer = infer
        self.variant = variant
        self.queue: BatchQueue[Request] = BatchQueue(
            DynamicBatcher(
                BatchPolicy(config.batching.max_batch_size, config.batching.max_queue_delay_ms),
                config.queue_capacity,
                self.clock,
                size_of=_request_size,
            ),
            on_busy=gate.slot_setter(gate_slot) if gate is not None else None,
        )
        self.gate = gate
        self.priority = priority
        self._swap_lock = threading.Lock()  # (infer, variant, model_version) change together
        self._threads = threads  # torch intra-op threads per instance; None: leave as set
        self._instances = config.instances
        self._instances_applied = config.instances
        self._instance_threads: dict[int, threading.Thread] = {}
        self.model_version = 0
        self._load_model = load_model
        self._staged: tuple[Infer, int, float] | None = None  # (infer, version, prepare_ms)
        self._staged_lock = threading.Lock()
        self.variants = dict(variants or {})  # the ladder, prepared at start-up, off the serving path
        self._staged_variant: str | None = None
        self.writer = CsvAppender(requests_csv, REQUEST_COLUMNS)
        self._sample_indices = sample_indices
        self._window = _Window()
        self._window_start_ns = self.clock.now_ns()
        self._stop_arrivals = threading.Event()
        self.arrivals_done = threading.Event()  # the arrival schedule ended or was stopped
        self.stopping = threading.Event()
        self._pending: queue.SimpleQueue[SetThreads] = queue.SimpleQueue()
        self.net: NetLink | None = None  # network clients' requests, when the service has ingress

    # --- records -------------------------------------------------------------------------------

    def _record(self, records: Sequence[RequestRecord], exec_ms: float | None = None) -> None:
        """Write generated requests' rows; hand network requests' outcomes back to the front end,
        which answers the client and owns their records."""
        local = [r for r in records if r.request.images is None]
        if local:
            self.writer.write_rows([record_row(r) for r in local])
        if self.net is not None and len(local) < len(records):
            self.net.send_results([r for r in records if r.request.images is not None])
        w = self._window
        with w.lock:
            for r in records:
                if r.outcome is Outcome.SERVED:
                    w.served += 1
                    if r.latency_ns is not None:
                        w.latencies_ms.append(r.latency_ns / NS_PER_MS)
                elif r.outcome is Outcome.FAILED:
                    w.failed += 1
                else:
                    w.shed += 1
            if exec_ms is not None and records:
                w.batch_sizes.append(len(records))
                w.batch_exec_ms.append(exec_ms)

    def _send_stats(self) -> None:
        w = self._window
        with w.lock:
            stats = InferenceStats(
                window_end_ns=self.clock.now_ns(),
                window_s=(self.clock.now_ns() - self._window_start_ns) / NS_PER_S,
                arrived=w.arrived,
                served=w.served,
                failed=w.failed,
                shed=w.shed,
                queue_depth=self.queue.depth(),
                latencies_ms=w.latencies_ms,
                batch_sizes=w.batch_sizes,
                batch_exec_ms=w.batch_exec_ms,
            )
            w.arrived = w.served = w.failed = w.shed = 0
            self._window_start_ns = self.clock.now_ns()
            w.latencies_ms, w.batch_sizes, w.batch_exec_ms = [], [], []
        self.channel.send(stats)

    # --- threads -------------------------------------------------------------------------------

    def produce(self, t0_ns: int, offsets_s: Iterator[float], first_request_id: int = 0) -> None:
        """Source thread: emit requests at their scheduled arrival times until stopped or exhausted.

        Ids before `first_request_id` belong to a process that died before this one (recovery.py).
        """
        try:
            for request_id, offset_s in enumerate(offsets_s):
                if request_id < first_request_id:
                    continue
                at_ns = t0_ns + round(offset_s * NS_PER_S)
                now_ns = self.clock.now_ns()
                if at_ns > now_ns and self._stop_arrivals.wait((at_ns - now_ns) / NS_PER_S):
                    return
                if self._stop_arrivals.is_set():
                    return
                request = Request(request_id, at_ns, next(self._sample_indices))
                with self._window.lock:
                    self._window.arrived += 1
                if not self.queue.offer(request, at_ns):
                    self._record([shed(request, "queue full", self.variant, self.model_version)])
        finally:
            self.arrivals_done.set()

    def receive_net(self, net: NetLink) -> None:
        """Network thread: network clients' requests into the same bounded queue as generated ones."""
        for request in net.requests():
            with self._window.lock:
                self._window.arrived += 1
            if not self.queue.offer(request, request.arrival_ns):
                self._record([shed(request, "queue full", self.variant, self.model_version)])

    def listen(self) -> None:
        """Listener thread: apply or queue control commands until Stop."""
        while True:
            message = self.channel.recv()
            match message:
                case None:  # no timeout was given: only a closed pipe, which reads as Stop
                    continue
                case Stop():
                    self.stopping.set()
                    self.queue.wake()
                    return
                case SetBatching():
                    self.queue.set_policy(BatchPolicy(message.max_batch_size, message.max_queue_delay_ms))
                    now_ns = self.clock.now_ns()
                    self.channel.send(Applied("max_batch_size", message.max_batch_size, now_ns))
                    self.channel.send(Applied("max_queue_delay_ms", message.max_queue_delay_ms, now_ns))
                case SetThreads():
                    self._pending.put(message)
                    self.queue.wake()
                case SetInstances():
                    self._instances = message.instances
                    self.queue.wake()
                case SetVariant():
                    if message.variant in self.variants:
                        with self._staged_lock:
                            self._staged_variant = message.variant
                        self.queue.wake()
                    else:
                        self.channel.send(Applied("variant_unknown", message.variant, self.clock.now_ns()))
                case LoadModel():
                    threading.Thread(
                        target=self._prepare, args=(message,), name="model-loader", daemon=True
                    ).start()
                case (
                    Start()
                    | SetNumWorkers()
                    | SetPaused()
                    | SetBatchSize()
                    | SetDutyCycle()
                    | SetInterleave()
                ):
                    # a training knob, or a second Start: the runtime sent it to the wrong worker
                    self.channel.send(CommandRefused(type(message).__name__, self.clock.now_ns()))
                case _:
                    unhandled(message)

    def _prepare(self, message: LoadModel) -> None:
        """Load and warm a new model version off the serving path; the executor swaps it in."""
        if self._load_model is None:
            return
        start_ns = self.clock.now_ns()
        try:
            infer = self._load_model(message.path)
        except Exception as exc:  # a bad file must not stop the service: keep serving the old one
            self.channel.send(
                Applied("model_load_failed", f"v{message.version}: {exc}"[:300], self.clock.now_ns())
            )
            return
        with self._staged_lock:
            self._staged = (infer, message.version, (self.clock.now_ns() - start_ns) / NS_PER_MS)
        self.queue.wake()

    def _apply_pending(self) -> None:
        with self._staged_lock:
            staged, self._staged = self._staged, None
        if staged is not None:  # between batches: no request sees half a model
            with self._swap_lock:
                self.infer, self.model_version, prepare_ms = staged
            self.channel.send(ModelSwapped(self.model_version, prepare_ms, self.clock.now_ns()))
        with self._staged_lock:
            variant, self._staged_variant = self._staged_variant, None
        if variant is not None and variant != self.variant:
            with self._swap_lock:
                self.infer, self.variant = self.variants[variant], variant
            self.channel.send(Applied("variant", variant, self.clock.now_ns()))
        if self._instances != self._instances_applied and not self.stopping.is_set():
            self._instances_applied = self._instances
            self._start_instances()
            self.channel.send(Applied("instances", self._instances_applied, self.clock.now_ns()))
        while True:
            try:
                message = self._pending.get_nowait()
            except queue.Empty:
                return
            self._threads = message.threads
            _set_torch_threads(message.threads)
            self.channel.send(Applied("threads", message.threads, self.clock.now_ns()))

    def _start_instances(self) -> None:
        """Start executor threads 1..instances-1 that are not running (0 is the main thread)."""
        for index in range(1, self._instances):
            thread = self._instance_threads.get(index)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(
                    target=self._instance_loop, args=(index,), name=f"instance-{index}", daemon=True
                )
                self._instance_threads[index] = thread
                thread.start()

    def _instance_loop(self, index: int) -> None:
        """An extra model instance: take batches from the shared queue until stop or scale-down."""
        applied: int | None = None
        while not self.stopping.is_set() and index < self._instances:
            if self._threads is not None and self._threads != applied:
                applied = self._threads
                _set_torch_threads(applied)
            batch = self.queue.next_batch(0.1)
            if batch:
                self._run_batch(batch)

    def _admit(self, batch: list[Request]) -> list[Request]:
        """Apply the admission policy at dispatch: shed requests already past `late_ms`."""
        admission = self.config.admission
        if admission.policy != "drop_late":
            return batch
        late_ns = round((admission.late_ms or self.config.slo_ms) * NS_PER_MS)
        now_ns = self.clock.now_ns()
        late = [r for r in batch if now_ns - r.arrival_ns > late_ns]
        if late:
            self._record([shed(r, "waited past the SLO", self.variant, self.model_version) for r in late])
        return [r for r in batch if now_ns - r.arrival_ns <= late_ns] if late else batch

    def _run_batch(self, batch: list[Request]) -> None:
        try:
            if self.priority is not None:
                self.priority.wait_turn(self.stopping)
            batch = self._admit(batch)
            if not batch:
                return
            with self._swap_lock:
                infer, variant, version = self.infer, self.variant, self.model_version
            records = execute_batch(batch, infer, self.clock, variant, version)
        finally:
            self.queue.batch_done()
        if self.priority is not None:
            self.priority.served(sum(1 for r in records if r.outcome is Outcome.SERVED))
        first = records[0]
        exec_ms = ((first.end_ns or 0) - (first.start_ns or 0)) / NS_PER_MS
        self._record(records, exec_ms)

    def serve(self, t0_ns: int, offsets_s: Iterator[float], first_request_id: int = 0) -> None:
        """Executor loop (main thread) from t0 until Stop, then drain and account for the rest."""
        source = threading.Thread(
            target=self.produce, args=(t0_ns, offsets_s, first_request_id), name="source", daemon=True
        )
        source.start()
        if self.net is not None:
            threading.Thread(target=self.receive_net, args=(self.net,), name="net", daemon=True).start()
        period_ns = round(self.config.stats_period_s * NS_PER_S)
        next_stats_ns = t0_ns + period_ns
        self._window_start_ns = t0_ns
        self._start_instances()
        while not self.stopping.is_set():
            self._apply_pending()
            wait_s = max(0.0, min(0.1, (next_stats_ns - self.clock.now_ns()) / NS_PER_S))
            batch = self.queue.next_batch(wait_s)
            if batch:
                self._run_batch(batch)
            if self.clock.now_ns() >= next_stats_ns:
                self._send_stats()
                next_stats_ns += period_ns * max(1, (self.clock.now_ns() - next_stats_ns) // period_ns + 1)

        self._stop_arrivals.set()
        source.join()
        for thread in self._instance_threads.values():
            thread.join()  # each finishes the batch it holds; the drain below takes the rest
        self._apply_pending()
        drain_deadline_ns = self.clock.now_ns() + round(self.config.drain_timeout_s * NS_PER_S)
        while self.queue.depth() and self.clock.now_ns() < drain_deadline_ns:
            self._apply_pending()
            batch = self.queue.next_batch(0.0, flush=True)
            if batch:
                self._run_batch(batch)
        leftovers = self.queue.drain()
        if leftovers:
            self._record(
                [shed(r, "stopped before dispatch", self.variant, self.model_version) for r in leftovers]
            )
        self._send_stats()
        self.writer.close()
        if self.net is not None:
            self.net.close()


def _request_size(request: Request) -> int:
    return request.size


class NetLink:
    """The worker's end of its connection to the front end (cotrain/ingress/wire.py).

    Requests are decoded here, in the worker, into the tensors the model takes: FP32 as sent
    (already in the model's layout and scale), UINT8 as raw pixels scaled to [0, 1] and then
    normalised as the service's dataset is, so a camera's bytes and the pool's images look alike
    to the model.
    """

    def __init__(self, conn: Connection, dataset_kind: str, device: str = "cpu") -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._dataset_kind = dataset_kind
        self._device = device
        self.closed = False
        # torch.frombuffer warns about read-only bytes on every call; the model never writes its input
        warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)

    @classmethod
    def connect(cls, address: str, authkey: bytes, worker: str, dataset_kind: str, device: str) -> NetLink:
        from multiprocessing.connection import Client

        from cotrain.ingress.wire import Hello

        conn = Client(address, family="AF_UNIX", authkey=authkey)
        conn.send(Hello(worker, os.getpid()))
        return cls(conn, dataset_kind, device)

    def requests(self) -> Iterator[Request]:
        """Requests as they arrive, until the front end closes the connection."""
        while not self.closed:
            try:
                batch = self._conn.recv()
            except (EOFError, OSError):
                return
            for message in batch:
                yield Request(message.request_id, message.arrival_ns, -1, self._tensor(message))

    def _tensor(self, message: Any) -> Any:
        """A view of the received bytes (no copy: the batch is assembled, and copied, once)."""
        import torch

        dtype = torch.float32 if message.datatype == "FP32" else torch.uint8
        images = torch.frombuffer(message.data, dtype=dtype).reshape(message.shape)
        if message.datatype == "UINT8":
            images = _normalise_pixels(images.float() / 255.0, self._dataset_kind)
        return images

    def send_results(self, records: Sequence[RequestRecord]) -> None:
        from cotrain.ingress.wire import NetResult

        results = []
        for r in records:
            logits = b""
            shape: tuple[int, ...] = ()
            if r.output is not None:
                array = r.output.astype("<f4", copy=False)
                logits, shape = array.tobytes(), tuple(array.shape)
            results.append(
                NetResult(
                    r.request.request_id,
                    r.outcome.value,
                    r.reason,
                    r.start_ns,
                    r.end_ns,
                    r.batch_size,
                    r.variant,
                    r.model_version,
                    logits,
                    shape,
                )
            )
        with self._send_lock:
            try:
                self._conn.send(results)
            except (BrokenPipeError, EOFError, OSError):
                self.closed = True  # the front end is gone: it fails what it did not hear back

    def close(self) -> None:
        self.closed = True
        with self._send_lock:
            self._conn.close()


def _normalise_pixels(images: Any, dataset_kind: str) -> Any:
    """[0, 1] pixels to the scale of the service's own images (workloads/data.py)."""
    import torch

    if dataset_kind == "digits":
        return (images - 0.5) / 0.5
    from cotrain.workloads.data import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _sample_pool(config: InferenceConfig, seed: int) -> tuple[list[Any], Iterator[int]]:
    """Decoded input images and a seeded stream of indices into them.

    Requests draw from a pool of up to 256 images decoded at start-up, so request latency
    measures queueing and the model, not the disk.
    """
    import numpy as np

    from cotrain.workloads.data import build_dataset

    dataset = build_dataset(config.dataset)
    n = min(len(dataset), 256)  # type: ignore[arg-type]
    pool = [dataset[i][0] for i in range(n)]
    rng = np.random.default_rng(seed)

    def indices() -> Iterator[int]:
        while True:
            yield from (int(i) for i in rng.integers(0, n, size=1024))

    return pool, indices()


def make_infer(model: Any, pool: Sequence[Any], device: str = "cpu") -> Infer:
    """The batch function: one output per request, its logits as a numpy array [n, classes].

    Generated requests take their image from the pool; a network request brings its own images
    (possibly several), so the batch tensor is the requests' images side by side."""
    import torch

    def infer(batch: Sequence[Request]) -> Sequence[Any]:
        if len(batch) == 1 and batch[0].images is not None:
            x = batch[0].images
        elif all(r.images is None for r in batch):
            x = torch.stack([pool[r.sample_index] for r in batch])
        else:
            x = torch.cat(
                [pool[r.sample_index].unsqueeze(0) if r.images is None else r.images for r in batch]
            )
        if device != "cpu":
            x = x.to(device, non_blocking=True)
        with torch.inference_mode():
            logits = model(x).float().cpu().numpy()
        outputs, start = [], 0
        for r in batch:
            outputs.append(logits[start : start + r.size])
            start += r.size
        return outputs

    return infer


def inference_process_main(
    conn: Connection,
    config: InferenceConfig,
    requests_csv: str,
    threads: int,
    seed: int,
    gate: InterleavingGate | None = None,
    gate_slot: int = 0,
    higher_slots: tuple[int, ...] = (),
    floor_per_s: float = 0.0,
    nice: int = 0,
    net: tuple[str, bytes, str] | None = None,
) -> None:
    """Entry point of the spawned inference process.

    `gate_slot` is this service's slot of the shared gate; `higher_slots` are the slots of the
    services that outrank it, and `floor_per_s` its throughput floor (priority.py). `net`, for a
    service with ingress, is (front end's socket, its authkey, this worker's name): the process
    connects when it starts serving, so a replacement after a restart connects the same way.
    """
    channel = Channel(conn)
    try:
        if nice:
            from cotrain.workloads.inference.priority import lower_own_cpu_priority

            lower_own_cpu_priority(nice)  # before torch's threads exist, so they all inherit it
        worker_setup(threads)
        import torch

        from cotrain.workloads.data import dataset_num_classes
        from cotrain.workloads.models import build_model

        num_classes = config.model.num_classes or dataset_num_classes(config.dataset)
        pool, sample_indices = _sample_pool(config, seed)
        variants: dict[str, Infer] = {}
        if config.variants:
            from cotrain.workloads.inference.ladder import prepare_ladder

            variants = prepare_ladder(config, num_classes, pool, seed, Path(requests_csv).parent, make_infer)
            variant = config.variants[0]
            infer = variants[variant]
        else:
            torch.manual_seed(seed)  # the same initial weights a continual job built with this seed
            model = build_model(config.model, num_classes).eval().to(config.device)
            infer = make_infer(model, pool, config.device)
            with torch.inference_mode():  # warm up allocator and kernels off the clock
                for size in sorted({1, config.batching.max_batch_size}):
                    model(torch.stack([pool[i % len(pool)] for i in range(size)]).to(config.device))
            variant = f"{config.model.name}/fp32"

        def load_model(path: str) -> Infer:
            weights = config.model.model_copy(update={"weights": path})
            fresh = build_model(weights, num_classes).eval().to(config.device)
            with torch.inference_mode():  # warm up off the serving path
                warm = torch.stack([pool[i % len(pool)] for i in range(config.batching.max_batch_size)])
                fresh(warm.to(config.device))
            return make_infer(fresh, pool, config.device)

        priority = None
        if gate is not None and higher_slots:
            priority = PriorityYield(
                gate,
                higher_slots,
                floor_per_s,
                max_defer_ms=(config.admission.late_ms or config.slo_ms) / 2,
                clock=MonotonicClock(),
                batch_size_hint=config.batching.max_batch_size,
            )

        service = InferenceService(
            config,
            Path(requests_csv),
            channel,
            infer,
            variant,
            sample_indices,
            gate=gate,
            load_model=load_model,
            variants=variants,
            gate_slot=gate_slot,
            priority=priority,
            threads=threads,
        )
        channel.send(Ready(pid=os.getpid(), detail=variant))
        start = wait_for_start(channel)
        if isinstance(start, Stop):
            service.writer.close()
            channel.send(Finished("stopped before start"))
            exit_now()
        if net is not None:
            address, authkey, worker = net
            service.net = NetLink.connect(address, authkey, worker, config.dataset.kind, config.device)
        listener = threading.Thread(target=service.listen, name="listener", daemon=True)
        listener.start()
        schedule = config.generated_arrivals
        offsets = arrival_offsets_s(schedule) if schedule is not None else iter(())
        service.serve(start.t0_ns, offsets, start.first_request_id)
        channel.send(Finished())
        exit_now()
    except BaseException as exc:
        report_failure(channel, exc)
        raise SystemExit(1) from None

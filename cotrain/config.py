"""Typed, validated experiment configuration.

An experiment YAML is parsed into these pydantic models before anything starts. The models are
strict (no silent coercion of "8" into 8), forbid unknown keys, and carry their ranges, so a bad
file fails with the field path rather than deep inside a worker process. `load_config` adds the
file and line of each offending field (see `yaml_source.py`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from cotrain.config_paths import closest, keys_at, union_tags_at
from cotrain.yaml_source import DuplicateKeyError, YamlDocument, load_yaml_document, syntax_error_text

JOB_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,31}$"
MAX_SEED = 2**32 - 1  # every RNG we seed (numpy, torch, random) takes this range; torch derives from it
VARIANT_NAME = re.compile(r"^[a-z0-9_]+/(fp32|channels_last|bf16|int8)@[1-9][0-9]{0,3}$")


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- datasets ---------------------------------------------------------------------------------


class SyntheticDatasetConfig(StrictModel):
    """Seeded class-conditional images: learnable, deterministic, needs no files."""

    kind: Literal["synthetic"] = Field(description="selects seeded synthetic images")
    num_samples: int = Field(512, ge=1, le=1_000_000, description="images in the set")
    num_classes: int = Field(
        10, ge=2, le=1000, description="classes; each has its own seeded pattern, so a model can learn them"
    )
    image_size: int = Field(64, ge=8, le=1024, description="side of the square RGB images, in pixels")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the images and labels")


class ImageFolderDatasetConfig(StrictModel):
    """A torchvision ImageFolder tree: one sub-directory of images per class."""

    kind: Literal["imagefolder"] = Field(description="selects a torchvision ImageFolder tree")
    root: str = Field(min_length=1, description="directory holding one sub-directory of images per class")
    image_size: int = Field(64, ge=8, le=1024, description="images are resized to this side, in pixels")


class DigitsDatasetConfig(StrictModel):
    """scikit-learn's bundled handwritten digits (1,797 8×8 images, 10 classes): real data that
    ships inside an installed package, so it works offline. Upscaled to `image_size`, 3 channels.
    `split` is a seeded, stratified 75/25 split of the whole set."""

    kind: Literal["digits"] = Field(description="selects scikit-learn's bundled handwritten digits")
    split: Literal["train", "test", "all"] = Field(
        "all", description="train (75 %), test (25 %) or all of the 1,797 digits"
    )
    image_size: int = Field(
        32, ge=8, le=1024, description="the 8x8 digits are upscaled to this side, in pixels"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the stratified train/test split")


DatasetConfig = Annotated[
    SyntheticDatasetConfig | ImageFolderDatasetConfig | DigitsDatasetConfig, Field(discriminator="kind")
]


class ModelConfig(StrictModel):
    """A torchvision classification model. Weights are never downloaded: random init or a local file."""

    name: str = Field(
        min_length=1, description="a torchvision classification model, e.g. resnet18 or mobilenet_v3_small"
    )
    weights: str | None = Field(None, description="path to a local state_dict (.pt/.pth)")
    num_classes: int | None = Field(None, ge=2, le=100_000, description="default: from the dataset")


# --- placement ----------------------------------------------------------------------------------


class PlacementMixin(StrictModel):
    threads: int | None = Field(
        None, ge=1, le=1024, description="torch intra-op threads; default: fair share"
    )
    cpus: list[int] | None = Field(None, min_length=1, description="CPU affinity; default: unpinned")

    @field_validator("cpus")
    @classmethod
    def _cpus_unique(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if any(c < 0 for c in value):
            raise ValueError("CPU ids must be >= 0")
        if len(set(value)) != len(value):
            raise ValueError("CPU ids must be unique")
        return sorted(value)


# --- inference ----------------------------------------------------------------------------------


class ConstantArrivalsConfig(StrictModel):
    process: Literal["constant"] = Field(description="selects evenly spaced arrivals")
    rate_per_s: float = Field(gt=0, le=100_000, description="requests per second")


class PoissonArrivalsConfig(StrictModel):
    process: Literal["poisson"] = Field(description="selects Poisson arrivals (exponential gaps)")
    rate_per_s: float = Field(gt=0, le=100_000, description="mean requests per second")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the arrival times")


class TraceArrivalsConfig(StrictModel):
    """Replay recorded arrival times: one number (seconds) per line, or a CSV with an
    `arrival_s` column, such as a previous run's requests.csv."""

    process: Literal["trace"] = Field(description="selects replayed arrival times")
    path: str = Field(
        min_length=1,
        description="file of arrival times in seconds, one per line, or a CSV with an arrival_s column",
    )
    time_scale: float = Field(1.0, gt=0, le=1000, description="multiplies gaps: 0.5 replays twice as fast")
    loop: bool = Field(False, description="start the trace again when it ends")


class BurstyArrivalsConfig(StrictModel):
    """On/off traffic: Poisson at `on_rate_per_s` for `on_s`, then at `off_rate_per_s` for `off_s`."""

    process: Literal["bursty"] = Field(description="selects on/off traffic")
    on_rate_per_s: float = Field(gt=0, le=100_000, description="mean requests per second during an on phase")
    off_rate_per_s: float = Field(
        0.0, ge=0, le=100_000, description="mean requests per second during an off phase"
    )
    on_s: float = Field(gt=0, le=86_400, description="length of an on phase")
    off_s: float = Field(gt=0, le=86_400, description="length of an off phase")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the arrival times")


class RateStepConfig(StrictModel):
    at_s: float = Field(ge=0, description="run time at which this rate starts")
    rate_per_s: float = Field(ge=0, le=100_000, description="requests per second from at_s on (0: none)")


class RateScheduleArrivalsConfig(StrictModel):
    """Steps in the arrival rate over time, for dynamic-load experiments (Poisson within a step)."""

    process: Literal["schedule"] = Field(description="selects a stepped arrival rate")
    steps: list[RateStepConfig] = Field(
        min_length=1, description="the rate steps, the first at at_s: 0, in increasing at_s"
    )
    poisson: bool = Field(True, description="false: evenly spaced arrivals within each step")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the arrival times")

    @model_validator(mode="after")
    def _steps_in_order(self) -> RateScheduleArrivalsConfig:
        times = [s.at_s for s in self.steps]
        if times != sorted(times) or len(set(times)) != len(times):
            raise ValueError("steps must have strictly increasing at_s")
        if times[0] != 0:
            raise ValueError("the first step must start at at_s: 0")
        return self


ArrivalsConfig = Annotated[
    ConstantArrivalsConfig
    | PoissonArrivalsConfig
    | TraceArrivalsConfig
    | BurstyArrivalsConfig
    | RateScheduleArrivalsConfig,
    Field(discriminator="process"),
]


class AdmissionConfig(StrictModel):
    """Which requests are shed under overload, besides those that find the queue full.

    `drop_late` (the default): a request that has already waited longer than `late_ms`
    (default: the SLO) when its batch is dispatched is shed instead of run. It could no longer
    meet its SLO, and running it would only delay the requests behind it: this is what keeps
    the latency of admitted requests bounded under overload (Triton's queue-timeout policy).
    `queue_full`: only the bounded queue sheds.
    """

    policy: Literal["drop_late", "queue_full"] = Field(
        "drop_late",
        description="drop_late: shed a request already past late_ms at dispatch; "
        "queue_full: shed only when the queue is full",
    )
    late_ms: float | None = Field(None, gt=0, le=3_600_000, description="default: slo_ms")


class BatchingConfig(StrictModel):
    """Triton-style dynamic batching.

    A batch is dispatched at `max_batch_size` requests, or when the oldest has waited
    `max_queue_delay_ms`.
    """

    max_batch_size: int = Field(
        8, ge=1, le=4096, description="a batch is dispatched as soon as this many requests wait"
    )
    max_queue_delay_ms: float = Field(
        10.0, ge=0, le=60_000, description="or when the oldest waiting request has waited this long"
    )


class IngressTlsConfig(StrictModel):
    """A certificate and its key (PEM) for the HTTP and gRPC listeners and the metrics page."""

    cert: str = Field(min_length=1, description="server certificate chain, PEM")
    key: str = Field(min_length=1, description="its private key, PEM")


class IngressLimitsConfig(StrictModel):
    """What one client can make the front end hold: every limit bounds memory or threads."""

    max_request_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, le=1 << 31, description="largest request body; larger is refused (413)"
    )
    max_in_flight: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="requests accepted and not yet answered, per service; beyond it requests are shed (503)",
    )
    max_connections: int = Field(
        4096,
        ge=1,
        le=100_000,
        description="concurrent HTTP connections; beyond it new ones get 503 (idle ones close after 5 s)",
    )
    max_concurrent_streams: int = Field(
        256, ge=1, le=100_000, description="concurrent gRPC calls (streams) per connection"
    )
    body_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a client that has not sent its whole request by then is cut off"
    )


class IngressConfig(StrictModel):
    """The Open Inference Protocol front end (KServe v2, as Triton speaks it) for this service.

    Requests from the network enter the same bounded queue and dynamic batcher as generated
    arrivals, so every knob and controller applies to them. With several services, each is served
    under its name on the same addresses. Everything binds to loopback unless told otherwise; a
    non-loopback address needs `tls` or an explicit `insecure: true`.
    """

    http: str | None = Field(
        None,
        description="host:port of the HTTP/REST endpoint, e.g. 127.0.0.1:8000; port 0 picks a free "
        "port (the bound addresses are in the run directory's ingress.json)",
    )
    grpc: str | None = Field(None, description="host:port of the gRPC endpoint, e.g. 127.0.0.1:8001")
    metrics: str | None = Field(None, description="host:port of the Prometheus metrics page (/metrics)")
    tls: IngressTlsConfig | None = Field(None, description="serve HTTPS and gRPC over TLS")
    insecure: bool = Field(
        False, description="allow plain text on a non-loopback address; must be set explicitly"
    )
    token_file: str | None = Field(
        None, description="file holding a bearer token every request must carry (Authorization: Bearer)"
    )
    retry_on_restart: bool = Field(
        False,
        description="when the service's process dies, re-queue the requests it held to its replacement "
        "within their SLO budget instead of failing them (503)",
    )
    limits: IngressLimitsConfig = Field(IngressLimitsConfig(), description="bounds on what clients may send")

    @field_validator("http", "grpc", "metrics")
    @classmethod
    def _addresses(cls, value: str | None) -> str | None:
        return None if value is None else check_host_port(value, "127.0.0.1:8000", any_port=True)

    @model_validator(mode="after")
    def _something_to_listen_on(self) -> IngressConfig:
        if self.http is None and self.grpc is None:
            raise ValueError("give http, grpc or both (host:port)")
        addresses = [
            a for a in (self.http, self.grpc, self.metrics) if a is not None and not a.endswith(":0")
        ]
        if len(set(addresses)) != len(addresses):
            raise ValueError("http, grpc and metrics need different addresses")
        if self.insecure and self.tls is not None:
            raise ValueError("tls and insecure: true exclude each other")
        return self

    def addresses(self) -> list[tuple[str, str]]:
        """(field, host:port) of every listener."""
        return [(k, a) for k in ("http", "grpc", "metrics") if (a := getattr(self, k)) is not None]


class InferenceConfig(PlacementMixin):
    model: ModelConfig = Field(
        description="the model the service serves (with variants: weights and classes only)"
    )
    dataset: DatasetConfig = Field(description="the images requests carry")
    arrivals: ArrivalsConfig | None = Field(
        None,
        description="when generated requests arrive, selected by `process`; required without ingress. "
        "With ingress as well, a built-in client sends them through the network front end",
    )
    ingress: IngressConfig | None = Field(
        None, description="serve real clients over the Open Inference Protocol (HTTP and/or gRPC)"
    )
    slo_ms: float = Field(
        gt=0, le=3_600_000, description="latency objective: a request served within it meets the SLO"
    )
    batching: BatchingConfig = Field(BatchingConfig(), description="dynamic batching (Triton's semantics)")
    queue_capacity: int = Field(1024, ge=1, le=1_000_000, description="requests beyond this are shed")
    drain_timeout_s: float = Field(5.0, ge=0, le=600, description="time to serve queued requests at stop")
    stats_period_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="how often the service reports its latency, queue and rate to the controller",
    )
    admission: AdmissionConfig = Field(
        AdmissionConfig(), description="which requests are shed under overload"
    )
    variants: list[str] | None = Field(
        None,
        min_length=1,
        description="variant ladder, heaviest first, e.g. resnet18/fp32@64, resnet18/int8@64; "
        "the service starts on the first; `model` then only gives weights and num_classes",
    )
    profile_batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 2, 4, 8],
        min_length=1,
        description="batch sizes the variant micro-profiler measures",
    )
    accuracy_eval: DatasetConfig | None = Field(
        None,
        description="labelled images on which each variant's top-1 is measured at start-up; "
        "without it a variant carries torchvision's published ImageNet top-1, flagged as such",
    )
    instances: int = Field(
        1,
        ge=1,
        le=16,
        description="concurrent model executions sharing this service's queue (Triton's instance count)",
    )
    device: Literal["cpu", "cuda"] = Field("cpu", description="where the model runs; cuda only where present")

    @property
    def generated_arrivals(self) -> ArrivalsConfig | None:
        """The schedule the service process generates itself: none when clients come through the
        ingress (a configured `arrivals` is then sent through the network by a built-in client)."""
        return self.arrivals if self.ingress is None else None

    @model_validator(mode="after")
    def _requests_come_from_somewhere(self) -> InferenceConfig:
        if self.arrivals is None and self.ingress is None:
            raise ValueError("give arrivals (generated requests), ingress (real clients), or both")
        return self

    @model_validator(mode="after")
    def _capacity_holds_a_batch(self) -> InferenceConfig:
        if self.queue_capacity < self.batching.max_batch_size:
            raise ValueError(
                f"queue_capacity ({self.queue_capacity}) must be >= batching.max_batch_size "
                f"({self.batching.max_batch_size})"
            )
        return self


# --- training -----------------------------------------------------------------------------------


class InterleaveConfig(StrictModel):
    """How a training loop treats the interleaving gate (see cotrain/gate.py)."""

    policy: Literal["off", "yield"] = Field(
        "off",
        description="off: train regardless of inference; yield: wait before each step while "
        'inference has work (quote it: "off")',
    )
    max_wait_ms: float | None = Field(None, gt=0, le=60_000, description="with yield: wait at most this long")


class DriftConfig(StrictModel):
    """Seeded covariate drift of the arriving samples: images rotate further as time passes."""

    rotate_deg_per_s: float = Field(
        2.0, ge=0, le=360, description="rotation added to arriving images per second of run time"
    )
    max_deg: float = Field(180.0, ge=0, le=360, description="rotation stops growing here")
    jitter_deg: float = Field(5.0, ge=0, le=180, description="per-sample random rotation on top")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the jitter and the arriving samples")


class ContinualConfig(StrictModel):
    """Ekya-style continual learning: retraining windows over newly arrived, drifting samples."""

    window_s: float = Field(10.0, gt=0, le=86_400, description="length of a retraining window")
    arrivals_per_window: int = Field(256, ge=1, le=1_000_000, description="new labelled samples per window")
    replay_capacity: int = Field(
        2048, ge=0, le=10_000_000, description="samples kept in the reservoir replay buffer (0: no replay)"
    )
    replay_fraction: float = Field(
        0.5, ge=0, lt=1, description="share of a window's training set from replay"
    )
    eval_samples: int = Field(300, ge=10, le=1_000_000, description="held-out samples per evaluation")
    min_improvement: float = Field(
        0.0, ge=0, le=1, description="accuracy gain over the served model to deploy"
    )
    deploy_to: Literal["inference"] | None = Field(
        "inference", description="inference: deploy better models to the service; null: keep them to the job"
    )
    drift: DriftConfig = Field(DriftConfig(), description="how the arriving samples drift")


def check_host_port(value: str, example: str = "fl.example.org:9092", *, any_port: bool = False) -> str:
    """`host:port` with a port in 1..65535 (0 too with `any_port`: the system picks one) and no
    scheme; IPv6 hosts in brackets."""
    if "://" in value:
        raise ValueError("give host:port without a scheme (TLS is set separately)")
    host, sep, port = value.rpartition(":")
    if not sep or not host or any(c.isspace() for c in value):
        raise ValueError(f"must be host:port, e.g. {example}")
    low = 0 if any_port else 1
    if not (port.isascii() and port.isdigit()) or not low <= int(port) <= 65535:
        raise ValueError(f"port must be a number in {low}..65535, got {port!r}")
    return value


class RemoteServerConfig(StrictModel):
    """A real fleet's Flower SuperLink. TLS unless `insecure` is set explicitly."""

    address: str = Field(min_length=3, description="host:port of the SuperLink's Fleet API")
    root_certificates: str | None = Field(
        None, description="CA bundle (PEM) that signed the SuperLink's certificate"
    )
    insecure: bool = Field(False, description="plain-text gRPC to the SuperLink; must be set explicitly")

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        return check_host_port(value)

    @model_validator(mode="after")
    def _tls_or_insecure(self) -> RemoteServerConfig:
        if not self.insecure and self.root_certificates is None:
            raise ValueError("give root_certificates for TLS, or set insecure: true explicitly")
        if self.insecure and self.root_certificates is not None:
            raise ValueError("root_certificates and insecure: true exclude each other")
        return self


def _server_kind(value: Any) -> str:
    """`server` is "local" or a mapping: one clear error per mistake, not one per union member."""
    return "remote" if isinstance(value, dict | RemoteServerConfig) else "local"


ServerConfig = Annotated[
    Annotated[Literal["local"], Tag("local")] | Annotated[RemoteServerConfig, Tag("remote")],
    Discriminator(_server_kind),
]


class FederatedConfig(StrictModel):
    """A Flower client whose local training runs in cotrain's own training loop.

    `server: local` starts a FedAvg SuperLink and one SuperNode per federated job on 127.0.0.1
    (a self-contained demo); a `{address, root_certificates}` mapping joins a real fleet.
    """

    server: ServerConfig = Field(
        "local",
        description="local: a FedAvg SuperLink on 127.0.0.1; "
        "a mapping {address, root_certificates}: a real fleet",
    )
    rounds: int = Field(3, ge=1, le=100_000, description="with a local server: FedAvg rounds")
    local_steps: int = Field(20, ge=1, le=1_000_000, description="SGD steps per round on local data")
    round_timeout_s: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="a round without every reply within this is recorded and the next begins",
    )
    partition_id: int | None = Field(None, ge=0, description="this client's data shard; default: its order")
    num_partitions: int | None = Field(None, ge=1, description="default: the number of federated jobs")


class TrainingJobConfig(PlacementMixin):
    name: str = Field(
        pattern=JOB_NAME_PATTERN,
        description="the job's name: its worker is train:<name> and its records train-<name>.csv",
    )
    kind: Literal["sgd", "continual", "federated"] = Field(
        "sgd", description="sgd: plain training over the dataset"
    )
    continual: ContinualConfig | None = Field(None, description="with kind continual; defaults if absent")
    federated: FederatedConfig | None = Field(None, description="with kind federated; defaults if absent")
    model: ModelConfig = Field(description="the model the job trains")
    dataset: DatasetConfig = Field(description="the images it trains on")
    batch_size: int = Field(32, ge=1, le=65_536, description="training minibatch size")
    lr: float = Field(0.01, gt=0, le=10, description="SGD learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, le=1, description="SGD weight decay (L2)")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes")
    checkpoint_every_steps: int = Field(
        100,
        ge=1,
        le=10_000_000,
        description="an atomic checkpoint every this many steps; a restarted job resumes from the newest",
    )
    paused: bool = Field(False, description="start paused")
    duty_cycle: float = Field(1.0, gt=0, le=1, description="fraction of wall time spent training")
    interleave: InterleaveConfig = Field(
        InterleaveConfig(), description="how the job treats the interleaving gate"
    )
    stats_period_s: float = Field(
        0.5, gt=0, le=60, description="how often the job reports its throughput to the controller"
    )


class ServiceConfig(InferenceConfig):
    """One of several inference services sharing the device (RankMap-style priorities).

    When services contend, a batch of a lower-priority service waits while a higher-priority
    one has work, except while it is below its throughput floor: then it runs anyway, so it is
    degraded but never starved (see cotrain/gate.py).
    """

    name: str = Field(
        pattern=JOB_NAME_PATTERN,
        description="the service's name: its worker is inference:<name>, its records services/<name>/",
    )
    priority: int = Field(0, ge=0, le=100, description="higher is served first when services contend")
    min_throughput_per_s: float = Field(
        0.0, ge=0, le=1_000_000, description="throughput floor kept even while higher priorities are busy"
    )


class WorkloadsConfig(StrictModel):
    inference: InferenceConfig | None = Field(
        None, description="one inference service (or use `services` for several)"
    )
    services: list[ServiceConfig] = Field(
        default_factory=list, description="several inference services; instead of `inference`"
    )
    training: list[TrainingJobConfig] = Field(
        default_factory=list, description="training jobs, each its own process"
    )

    @model_validator(mode="after")
    def _something_to_run(self) -> WorkloadsConfig:
        if self.inference is None and not self.services and not self.training:
            raise ValueError("at least one workload (inference, services or training) is required")
        if self.inference is not None and self.services:
            raise ValueError("give either inference (one service) or services (several), not both")
        names = [job.name for job in self.training]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"training job names must be unique, repeated: {', '.join(dupes)}")
        names = [service.name for service in self.services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"service names must be unique, repeated: {', '.join(dupes)}")
        return self

    def inference_services(self) -> list[ServiceSpec]:
        """Every inference service, in config order, with its worker name and config path."""
        if self.inference is not None:
            return [ServiceSpec("inference", "inference", "workloads.inference", self.inference, 0)]
        return [
            ServiceSpec(s.name, f"inference:{s.name}", f"workloads.services[{i}]", s, s.priority)
            for i, s in enumerate(self.services)
        ]

    def primary_inference(self) -> ServiceSpec | None:
        """The service the controller's inference knobs act on: the highest priority, first listed."""
        services = self.inference_services()
        return max(services, key=lambda s: s.priority) if services else None


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    worker: str  # the process name in processes.json and events
    where: str  # the config path, for messages
    config: InferenceConfig
    priority: int


def shared_ingress(services: Sequence[ServiceSpec]) -> IngressConfig | None:
    """The one ingress of a run: services with ingress share its addresses (the config checks it).
    Here, not beside the front end, so that a run without ingress never imports the serve extra."""
    configs = [s.config.ingress for s in services if s.config.ingress is not None]
    return configs[0] if configs else None


# --- controller ---------------------------------------------------------------------------------


class InferenceKnobsConfig(StrictModel):
    variant: str | None = Field(None, description="a name from workloads.inference.variants")
    max_batch_size: int | None = Field(None, ge=1, le=4096, description="new batching.max_batch_size")
    max_queue_delay_ms: float | None = Field(
        None, ge=0, le=60_000, description="new batching.max_queue_delay_ms"
    )
    threads: int | None = Field(None, ge=1, le=1024, description="new torch intra-op threads of the service")
    cpus: list[int] | None = Field(None, min_length=1, description="new CPU affinity of the service")
    instances: int | None = Field(None, ge=1, le=16, description="new number of model instances")


class TrainingKnobsConfig(StrictModel):
    threads: int | None = Field(None, ge=1, le=1024, description="new torch intra-op threads of the job")
    cpus: list[int] | None = Field(None, min_length=1, description="new CPU affinity of the job")
    num_workers: int | None = Field(None, ge=0, le=64, description="new number of DataLoader workers")
    paused: bool | None = Field(None, description="pause (true) or resume (false) the job")
    batch_size: int | None = Field(None, ge=1, le=65_536, description="new training batch size")
    duty_cycle: float | None = Field(None, gt=0, le=1, description="new fraction of wall time spent training")
    interleave: InterleaveConfig | None = Field(None, description="new gate policy")


class KnobChangesConfig(StrictModel):
    inference: InferenceKnobsConfig | None = Field(
        None, description="knobs of the controller's inference service"
    )
    training: dict[str, TrainingKnobsConfig] = Field(
        default_factory=dict, description="knobs per training job, keyed by job name"
    )
    power_mode: str | int | None = Field(None, description="a power mode name or id of the platform")


class ScheduleStepConfig(StrictModel):
    at_s: float = Field(ge=0, description="seconds after the run starts")
    set: KnobChangesConfig = Field(description="the knobs this step sets; the others keep their values")


class LadderControllerConfig(StrictModel):
    """Tango-style variant selection from the micro-profile: serve the most accurate variant whose
    predicted worst latency at the observed arrival rate fits the SLO (the CCGrid'23 batch model:
    stable iff e(b) <= b/lambda, worst latency ~ b/lambda + e(b)), with hysteresis."""

    name: Literal["ladder"] = Field(description="selects the variant ladder controller")
    period_s: float = Field(0.5, gt=0, le=3600, description="control period")
    headroom: float = Field(0.7, gt=0, le=1, description="use at most this fraction of the SLO")
    up_after_windows: int = Field(4, ge=1, le=1000, description="calm windows before stepping up")


class StaticControllerConfig(StrictModel):
    """Keeps the knobs as configured."""

    name: Literal["static"] = Field(description="selects the static controller")
    period_s: float = Field(1.0, gt=0, le=3600, description="control period (observations only)")


class ScheduleControllerConfig(StrictModel):
    """Applies scripted knob changes at fixed times: sweeps, demos and tests of live knobs."""

    name: Literal["schedule"] = Field(description="selects scripted knob changes")
    period_s: float = Field(
        0.25,
        gt=0,
        le=3600,
        description="control period: a step applies at the first period at or after its at_s",
    )
    steps: list[ScheduleStepConfig] = Field(min_length=1, description="the changes, in increasing at_s")


class NaiveControllerConfig(StrictModel):
    """Baseline: both workloads run free. Training ignores the interleaving gate; nothing adapts."""

    name: Literal["naive"] = Field(description="selects the naive baseline")
    period_s: float = Field(1.0, gt=0, le=3600, description="control period")


class SequentialControllerConfig(StrictModel):
    """Baseline: training steps aside whenever inference has work (the gate, waited on without limit)."""

    name: Literal["sequential"] = Field(description="selects the sequential baseline")
    period_s: float = Field(1.0, gt=0, le=3600, description="control period")


class AimdControllerConfig(StrictModel):
    """Baseline: Clipper's AIMD on the inference batch size against the SLO.

    While the window's latency is under `headroom` x SLO the batch size grows by `additive_step`;
    when over, it is cut to `decrease_factor` of itself (Clipper: 10 % down).
    """

    name: Literal["aimd"] = Field(description="selects Clipper's AIMD baseline")
    period_s: float = Field(0.5, gt=0, le=3600, description="control period: one latency window")
    additive_step: int = Field(1, ge=1, le=1024, description="batch-size increase per calm window")
    decrease_factor: float = Field(
        0.9, gt=0, lt=1, description="the batch size is multiplied by this when latency breaks headroom x SLO"
    )
    headroom: float = Field(1.0, gt=0, le=1, description="fraction of the SLO latency must stay under")


class AdaptiveControllerConfig(StrictModel):
    """cotrain's co-scheduler: a model-guided search over the joint knobs with at most
    `max_profiles` profiled configurations, then a feedback loop that holds the SLO and re-plans
    when the arrival rate shifts by more than `replan_rate_change` (see controllers/adaptive.py)."""

    name: Literal["adaptive"] = Field(description="selects cotrain's co-scheduler")
    period_s: float = Field(1.0, gt=0, le=3600, description="one window: long enough for a p99")
    max_profiles: int = Field(
        10, ge=1, le=100, description="at most this many configurations are profiled before it holds the best"
    )
    profile_windows: int = Field(2, ge=1, le=100, description="control periods per profiled configuration")
    headroom: float = Field(0.8, gt=0, le=1, description="plan for p99 <= headroom x SLO")
    replan_rate_change: float = Field(0.3, gt=0, le=10, description="relative rate shift that re-plans")


ControllerConfig = Annotated[
    StaticControllerConfig
    | ScheduleControllerConfig
    | LadderControllerConfig
    | NaiveControllerConfig
    | SequentialControllerConfig
    | AimdControllerConfig
    | AdaptiveControllerConfig,
    Field(discriminator="name"),
]


# --- platform and output ------------------------------------------------------------------------


class PlatformBase(StrictModel):
    power_mode: str | int | None = Field(
        None, description="mode to run in (name or id); default: leave as found"
    )
    power_policy: str | None = Field(
        None, description="power-mode policy YAML (allowed modes, budget, dwell)"
    )


class HostPlatformConfig(PlatformBase):
    """Any Linux host: affinity placement; power modes emulated by core sets and CPU quota."""

    kind: Literal["host"] = Field("host", description="selects any Linux host (the default)")
    cpu_quota: bool = Field(
        True, description="offer CPU-quota modes where a cgroup CPU controller is writable"
    )


class JetsonPlatformConfig(PlatformBase):
    """A Jetson. Paths default to a real board's; tests point them at fakes."""

    kind: Literal["jetson"] = Field(description="selects an NVIDIA Jetson")
    root: str = Field("/", description="filesystem root the device is read from (a fake device in tests)")
    nvpmodel: str = Field("nvpmodel", description="the nvpmodel command")
    tegrastats: str = Field("tegrastats", description="the tegrastats command")
    nvpmodel_conf: str | None = Field(None, description="default: <root>/etc/nvpmodel.conf")
    jtop: bool = Field(True, description="use jetson-stats' jtop.service when it answers")
    telemetry_interval_ms: int = Field(
        500, ge=10, le=60_000, description="sampling interval of jtop or tegrastats"
    )


def _platform_kind(value: Any) -> str:
    """`kind` defaults to host, so `platform: {power_mode: 1core}` is enough on a host."""
    if isinstance(value, dict):
        kind = value.get("kind", "host")
        return kind if isinstance(kind, str) else "invalid"
    return str(getattr(value, "kind", "host"))


PlatformConfig = Annotated[
    Annotated[HostPlatformConfig, Tag("host")] | Annotated[JetsonPlatformConfig, Tag("jetson")],
    Discriminator(_platform_kind),
]


class OutputConfig(StrictModel):
    """Where the records go, and how a long run keeps them bounded."""

    dir: str | None = Field(None, description="run directory; default runs/<name>-<timestamp>")
    summary_period_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="rewrite summary.json from running aggregates this often (a crash loses at most one "
        "period); default: only at the end for cotrain run, every 60 s for cotrain serve",
    )
    rotate_mb: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="rotate a CSV record file past this size (requests, training steps, telemetry); "
        "default: never for cotrain run, 64 for cotrain serve",
    )
    keep_rotated: int = Field(
        4, ge=1, le=1000, description="rotated segments kept per file; older are deleted"
    )


class SupervisionConfig(StrictModel):
    """How a workload process that dies is replaced.

    The n-th restart of a worker waits `backoff_s * 2**(n-1)`, at most `backoff_max_s`, so a
    process that dies on start-up (a bad model file, an OOM) does not spin. After
    `max_restarts` restarts of one worker the run stops cleanly and says why.
    """

    max_restarts: int = Field(3, ge=0, le=100, description="restarts per worker before the run stops")
    backoff_s: float = Field(
        0.5, ge=0, le=60, description="wait before a worker's first restart; doubles with each further one"
    )
    backoff_max_s: float = Field(10.0, ge=0, le=600, description="the longest wait between restarts")
    standby: bool = Field(
        False,
        description="keep a warm, idle copy of each inference process that takes over at once "
        "when the service dies (costs one more model in memory)",
    )


BenchController = Literal["static", "naive", "sequential", "aimd", "adaptive"]
GatePolicy = Literal["off", "yield"]
BENCH_CONTROLLERS: tuple[BenchController, ...] = ("static", "naive", "sequential", "aimd", "adaptive")


def _both_gate_policies() -> list[GatePolicy]:
    return ["off", "yield"]


def _every_bench_controller() -> list[BenchController]:
    return list(BENCH_CONTROLLERS)


class OracleGridConfig(StrictModel):
    """The static configurations `cotrain bench` tries exhaustively for its oracle row."""

    max_batch_size: list[int] = Field(
        default_factory=lambda: [4, 8, 16], min_length=1, description="inference batch sizes the oracle tries"
    )
    gate_policy: list[GatePolicy] = Field(
        default_factory=_both_gate_policies,
        min_length=1,
        description="gate policies the oracle tries with each batch size",
    )
    max_queue_delay_ms: list[float] | None = Field(
        None,
        min_length=1,
        description="queue delays the oracle tries (every service); default: the configured one",
    )
    num_workers: list[int] | None = Field(
        None, min_length=1, description="dataloader workers the oracle tries (every training job)"
    )
    threads: list[int] | None = Field(
        None, min_length=1, description="torch threads the oracle tries (every training job)"
    )
    cpus: list[list[int]] | None = Field(
        None,
        min_length=1,
        description="CPU sets the oracle tries (every training job), e.g. [[0], [1], [0, 1]]",
    )
    variant: list[str] | None = Field(
        None, min_length=1, description="variants the oracle serves (every service with a ladder)"
    )

    @field_validator("max_batch_size")
    @classmethod
    def _sizes_in_range(cls, value: list[int]) -> list[int]:
        if any(not 1 <= b <= 4096 for b in value):
            raise ValueError("batch sizes must be in 1..4096")
        return value

    @field_validator("max_queue_delay_ms")
    @classmethod
    def _delays_in_range(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(not 0 <= d <= 60_000 for d in value):
            raise ValueError("queue delays must be in 0..60000 ms")
        return value

    @field_validator("num_workers")
    @classmethod
    def _workers_in_range(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(not 0 <= n <= 64 for n in value):
            raise ValueError("loader workers must be in 0..64")
        return value

    @field_validator("threads")
    @classmethod
    def _threads_in_range(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(not 1 <= n <= 256 for n in value):
            raise ValueError("threads must be in 1..256")
        return value

    @field_validator("cpus")
    @classmethod
    def _cpu_sets(cls, value: list[list[int]] | None) -> list[list[int]] | None:
        if value is not None and any(not cpus or min(cpus) < 0 for cpus in value):
            raise ValueError("each CPU set lists at least one CPU id >= 0")
        return value

    def size(self) -> int:
        """How many static configurations the grid holds."""
        n = len(self.max_batch_size) * len(self.gate_policy)
        for values in (self.max_queue_delay_ms, self.num_workers, self.threads, self.cpus, self.variant):
            n *= len(values) if values is not None else 1
        return n


class BenchConfig(StrictModel):
    """How `cotrain bench` runs this scenario; ignored by `cotrain run`."""

    controllers: list[BenchController] = Field(
        default_factory=_every_bench_controller,
        min_length=1,
        description="controllers the bench runs, in order",
    )
    run_duration_s: float | None = Field(None, gt=0, le=86_400, description="default: duration_s")
    oracle_run_duration_s: float | None = Field(None, gt=0, le=86_400, description="default: run_duration_s")
    slo_attainment_target: float = Field(0.99, gt=0, le=1, description="a row meets the SLO at or above this")
    oracle: OracleGridConfig = Field(
        OracleGridConfig(), description="the static grid searched for the oracle row"
    )
    ingress: Literal["grpc", "http"] | None = Field(
        None,
        description="measure every row through the network front end on this protocol: the scenario's "
        "arrivals are sent by a built-in cotrain load, latency is taken on the client's clock",
    )


class ExperimentConfig(StrictModel):
    name: str = Field(
        "experiment",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="run name: the default run directory is runs/<name>-<timestamp>",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="base seed of the run")
    duration_s: float | None = Field(
        None,
        gt=0,
        le=10 * 365 * 24 * 3600,
        description="measured run time, model loading not counted; required by cotrain run and bench, "
        "optional for cotrain serve, which otherwise runs until SIGINT or SIGTERM",
    )
    platform: PlatformConfig = Field(
        HostPlatformConfig(kind="host"),
        description="the device: host (default) or jetson, selected by `kind`",
    )
    controller: ControllerConfig = Field(
        StaticControllerConfig(name="static"),
        description="the policy that turns the knobs, selected by `name`",
    )
    workloads: WorkloadsConfig = Field(description="what runs: inference service(s) and training jobs")
    output: OutputConfig = Field(OutputConfig(), description="where the records go")
    supervision: SupervisionConfig = Field(SupervisionConfig(), description="how dead workers are replaced")
    bench: BenchConfig | None = Field(None, description="settings for `cotrain bench`")

    @model_validator(mode="after")
    def _variants_are_known(self) -> ExperimentConfig:
        for service in self.workloads.inference_services():
            ladder = service.config.variants or []
            for i, name in enumerate(ladder):
                if not VARIANT_NAME.match(name):
                    raise ValueError(
                        f"{service.where}.variants[{i}]: {name!r} is not "
                        "<arch>/<fp32|channels_last|bf16|int8>@<size>"
                    )
            if len(set(ladder)) != len(ladder):
                raise ValueError(f"{service.where}.variants: names must be unique")
        primary = self.workloads.primary_inference()
        ladder = (primary.config.variants if primary is not None else None) or []
        where = primary.where if primary is not None else "workloads.inference"
        if isinstance(self.controller, LadderControllerConfig) and len(ladder) < 2:
            raise ValueError(f"controller ladder needs {where}.variants with at least two entries")
        if isinstance(self.controller, ScheduleControllerConfig):
            for step in self.controller.steps:
                wanted = step.set.inference.variant if step.set.inference else None
                if wanted is not None and wanted not in ladder:
                    raise ValueError(f"controller.steps: variant {wanted!r} is not in {where}.variants")
        return self

    @model_validator(mode="after")
    def _services_share_one_ingress(self) -> ExperimentConfig:
        """Several services are served under their names on the same listeners."""
        with_ingress = [s for s in self.workloads.inference_services() if s.config.ingress is not None]
        for service in with_ingress[1:]:
            if service.config.ingress != with_ingress[0].config.ingress:
                raise ValueError(
                    f"{service.where}.ingress must equal {with_ingress[0].where}.ingress: services are "
                    "served under their names on the same addresses"
                )
        return self

    @model_validator(mode="after")
    def _continual_deploys_a_matching_model(self) -> ExperimentConfig:
        """A deployed model must fit the service: same architecture, same classes, same input."""
        inference = self.workloads.inference
        for i, job in enumerate(self.workloads.training):
            if job.kind != "continual":
                continue
            if (job.continual or ContinualConfig()).deploy_to != "inference":
                continue
            where = f"workloads.training[{i}]"
            if inference is None:
                raise ValueError(
                    f"{where}: deploys to inference, but there is no single inference workload "
                    "(with several services, set continual.deploy_to: null)"
                )
            if job.model.name != inference.model.name:
                raise ValueError(
                    f"{where}.model.name ({job.model.name}) must equal workloads.inference.model.name "
                    f"({inference.model.name}) to deploy to it"
                )
            if inference.variants:
                raise ValueError(
                    f"{where}: deploys to an inference service with a variant ladder; deploying into "
                    "a ladder is not supported yet (drop workloads.inference.variants or deploy_to)"
                )
            if job.dataset.image_size != inference.dataset.image_size:
                raise ValueError(f"{where}.dataset.image_size must equal the inference dataset's image_size")
        return self

    @model_validator(mode="after")
    def _schedule_names_known_jobs(self) -> ExperimentConfig:
        if isinstance(self.controller, ScheduleControllerConfig):
            known = {job.name for job in self.workloads.training}
            for step in self.controller.steps:
                unknown = sorted(set(step.set.training) - known)
                if unknown:
                    raise ValueError(
                        f"controller.steps: unknown training job(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known)) or 'none'}"
                    )
                if step.set.inference is not None and self.workloads.primary_inference() is None:
                    raise ValueError(
                        "controller.steps: sets inference knobs but there is no inference workload"
                    )
        return self


def parse_controller(data: Any) -> ControllerConfig:
    """A controller section on its own (e.g. `{"name": "aimd"}`), with its defaults."""
    from pydantic import TypeAdapter

    controller: ControllerConfig = TypeAdapter(ControllerConfig).validate_python(data)
    return controller


# --- loading ------------------------------------------------------------------------------------


class ConfigError(Exception):
    """A config that cannot be run. `lines` are complete, user-facing messages, one per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


YAML11_BOOLEANS = frozenset({"yes", "no", "on", "off", "y", "n", "true", "false"})
"""Plain scalars PyYAML (YAML 1.1) reads as booleans: `policy: off` is False, not "off"."""
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$")
"""`1e3`, `1.0e3`: floats in YAML 1.2 and JSON, but strings to PyYAML (YAML 1.1), whose floats
need a dot and, with an exponent, its sign: `1.0e+3`."""


def describe_error(err: dict[str, Any], doc: YamlDocument | None, source: str, root: type[BaseModel]) -> str:
    """One `file:line: path: message` line for a pydantic error, in a user's words.

    Beyond pydantic's text: an unknown key or tag gets "did you mean", a union without its tag
    key says which key and values it needs, and a value YAML 1.1 read differently from how it
    looks (`off` as false, `1e3` as text) says so and how to write it.
    """
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    point_at = loc
    if kind == "extra_forbidden":
        message = _unknown_key(loc, root)
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "union_tag_invalid":
        tag_key, tags = union_tags_at(root, loc)
        if tag_key is not None:
            point_at = (*loc, tag_key)
        message = _unknown_tag(str(ctx.get("tag", "")), tag_key, tags)
    elif kind == "union_tag_not_found":
        message = _missing_tag(loc, doc, root)
    else:
        message = str(err.get("msg", "invalid value"))
        message = re.sub(r"^Value error, ", "", message)
        if "input" in err and kind not in ("model_type", "dict_type") and not isinstance(err["input"], dict):
            message += f" (got {err['input']!r})"
        message += _yaml11_hint(err, doc, loc)
    path, line = doc.locate(point_at) if doc is not None else (".".join(str(p) for p in point_at), None)
    where = f"{source}:{line}" if line is not None else source
    return f"{where}: {'<top level>' if not point_at else path or repr(path)}: {message}"


def _unknown_key(loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    keys = keys_at(root, loc[:-1])
    if not keys or not isinstance(loc[-1], str):
        return "unknown key"
    guess = closest(loc[-1], keys)
    if guess is not None:
        return f"unknown key; did you mean {guess!r}?"
    return f"unknown key; known here: {', '.join(keys)}"


def _unknown_tag(tag: str, tag_key: str | None, tags: list[str]) -> str:
    what = f"{tag_key} {tag!r}" if tag_key else repr(tag)
    guess = closest(tag, tags)
    hint = f"; did you mean {guess!r}?" if guess is not None else ""
    return f"unknown {what}{hint} (one of: {', '.join(tags)})"


def _missing_tag(loc: tuple[Any, ...], doc: YamlDocument | None, root: type[BaseModel]) -> str:
    """`arrivals: {kind: poisson}`: name the key that selects the kind, and spot it under another key."""
    tag_key, tags = union_tags_at(root, loc)
    if tag_key is None:
        return "cannot tell which kind of section this is"
    message = f"needs {tag_key}: one of {', '.join(tags)}"
    node = doc.node(loc) if doc is not None else None
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if (
                isinstance(key, yaml.ScalarNode)
                and isinstance(value, yaml.ScalarNode)
                and value.value in tags
            ):
                return f"{message}; did you mean {tag_key}: {value.value} (not {key.value}:)?"
            if isinstance(key, yaml.ScalarNode) and closest(key.value, [tag_key]) is not None:
                return f"{message}; did you mean {tag_key}: (not {key.value}:)?"
    return message


def _yaml11_hint(err: dict[str, Any], doc: YamlDocument | None, loc: tuple[Any, ...]) -> str:
    node = doc.node(loc) if doc is not None else None
    if not isinstance(node, yaml.ScalarNode) or node.style is not None:  # quoted: read as written
        return ""
    text = node.value
    if isinstance(err.get("input"), bool) and text.lower() in YAML11_BOOLEANS:
        return (
            f"; YAML reads an unquoted {text} as the boolean {str(err['input']).lower()}: "
            f'write "{text}" in quotes if you mean the word'
        )
    if isinstance(err.get("input"), str) and _EXPONENT_FLOAT.match(text):
        mantissa, exponent = re.split("[eE]", text.replace("_", ""))
        sign = "" if exponent[0] in "+-" else "+"
        written = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{sign}{exponent}"
        value = float(written)
        plain = f"{int(value)} or " if value.is_integer() and abs(value) < 1e12 else ""
        return (
            f"; YAML reads {text} as text (its floats need a dot and a signed exponent): "
            f"write {plain}{written}"
        )
    return ""


def parse_config(data: Any, *, doc: YamlDocument | None = None, source: str = "<config>") -> ExperimentConfig:
    """Validate already-loaded data. Raises ConfigError with one line per problem."""
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of keys to values"])
    if data and set(data) <= POLICY_KEYS:
        raise ConfigError(
            [f"{source}: this is a power-mode policy, not an experiment: cotrain validate --policy {source}"]
        )
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        lines = [describe_error(dict(e), doc, source, ExperimentConfig) for e in exc.errors()]
        raise ConfigError(sorted(lines, key=_line_number)) from None


POLICY_KEYS = frozenset({"board", "allowed_modes", "power_budget_w", "min_dwell_s", "allow_reboot_modes"})
"""The keys of a power-mode policy file (power_modes/policy.py), none of which an experiment has."""


def _line_number(message: str) -> int:
    """The line a `file:line: ...` message names, so several problems read top to bottom."""
    match = re.match(r"^.*?:(\d+): ", message)
    return int(match.group(1)) if match else 0


def read_yaml_file(path: Path, what: str = "config") -> YamlDocument:
    """Read a YAML file keeping line marks; every failure is a ConfigError naming the file."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read {what}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: {what} is not UTF-8 text (byte {exc.start})"]) from None
    except ValueError as exc:  # e.g. an embedded NUL in the path
        raise ConfigError([f"{source!r}: cannot read {what}: {exc}"]) from None
    try:
        return load_yaml_document(text)
    except yaml.YAMLError as exc:
        line, column, message = syntax_error_text(exc)
        where = f"{source}:{line}:{column}" if line is not None else source
        raise ConfigError([f"{where}: not valid YAML: {message}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: {what} is nested too deeply"]) from None
    except DuplicateKeyError as exc:
        raise ConfigError(
            [f"{source}:{exc.line}: {exc.path}: duplicate key (first at line {exc.first_line})"]
        ) from None
    except ValueError as exc:
        raise ConfigError([f"{source}: {exc}"]) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read, override (`{"duration_s": 5}`, `{"output": {"dir": "x"}}`) and validate an experiment file."""
    path = Path(path)
    source = str(path)
    doc = read_yaml_file(path)
    data = doc.data
    if isinstance(data, dict) and overrides:
        data = _merge(data, overrides)
    return parse_config(data, doc=doc, source=source)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (defaults filled in), for the run directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

"""Accuracy-configurable variants of one torchvision classifier: a ladder to trade accuracy for latency.

A *variant* is an architecture, a numeric precision / memory format and an input resolution, e.g.
`resnet18/int8@64`. A service lists its variants heaviest → lightest (Tango's ladder, INFaaS's
per-query choice) and a controller moves along the ladder when load rises. Each built variant
carries its accuracy, so a controller can weigh what it gives up.

What the precisions mean on a CPU (resnet18, 1 thread, measured on a 2-core x86_64 VM, torch 2.14.1):
- `fp32`: the model as trained; the reference for accuracy.
- `channels_last`: fp32 in NHWC layout, which oneDNN's convolutions prefer (~1.2-2× at batch 1).
- `bf16`: `torch.autocast("cpu", dtype=torch.bfloat16)` with channels_last (the pairing
  measured there: 16 ms against 33 ms at 224 px). Offered only where the CPU has native bf16
  instructions; elsewhere oneDNN emulates it and it is slower than fp32.
- `int8`: static post-training quantisation in FX graph mode with the machine's quantised
  engine (x86/fbgemm on x86_64, qnnpack on ARM): ~5× faster than fp32 for ~0.3 points of
  ImageNet top-1.

fp16 is never offered on a CPU: fp16 autocast there has no fast kernels and ran resnet18 at
940 ms against 33 ms for fp32 (about 30× slower). It is not a `Precision` at all, and the ladder
parser rejects it with that reason.

Weights are never downloaded (`weights=None`); trained weights come from a local state_dict.
"""

from __future__ import annotations

import platform
import re
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal, cast, get_args

import torch

Precision = Literal["fp32", "channels_last", "bf16", "int8"]
AccuracySource = Literal["measured", "imagenet-metadata", "unknown"]

PRECISIONS: tuple[Precision, ...] = get_args(Precision)

# Precisions that exist elsewhere but must never run on a CPU, with the reason shown to whoever
# asks for one in a ladder.
NEVER_ON_CPU: Mapping[str, str] = {
    "fp16": "fp16 autocast on a CPU has no fast kernels: about 30× slower than fp32 "
    "(resnet18 940 ms against 33 ms at batch 1); use bf16 or int8 instead",
}

# torchvision classifiers halve the resolution five times; below 32 px the last stages see
# less than one pixel and some architectures fail outright.
MIN_IMAGE_SIZE_PX = 32
MAX_IMAGE_SIZE_PX = 1024

# Without calibration images, int8 observers see this many seeded standard-normal batches: the
# scale of ImageNet-normalised images, so activation ranges are roughly right. Real images from
# the serving distribution give better ranges and should be passed whenever there are some.
DEFAULT_CALIBRATION_BATCHES = 4
DEFAULT_CALIBRATION_BATCH_SIZE = 8
_CHUNK = 32  # images per forward pass while calibrating or evaluating: bounded memory

_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
_ARM = frozenset({"aarch64", "arm64", "armv7l", "armv8l"})
_CPUINFO = Path("/proc/cpuinfo")
_NAME = re.compile(r"^(?P<arch>[A-Za-z0-9_]+)/(?P<precision>[A-Za-z0-9_]+)@(?P<size>[0-9]+)$")


class VariantError(ValueError):
    """A ladder entry or a variant that cannot be built on this machine; the message names it."""


# --- what this machine can run -------------------------------------------------------------------


def cpu_flags(cpuinfo_path: Path = _CPUINFO) -> frozenset[str]:
    """ISA feature flags from /proc/cpuinfo (`flags` on x86, `Features` on ARM); empty if unreadable."""
    try:
        text = cpuinfo_path.read_text(errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_runs_bf16_natively(machine: str | None = None, flags: Collection[str] | None = None) -> bool:
    """Whether this CPU has bf16 instructions that oneDNN uses, so bf16 beats fp32 here.

    Why an ISA check and not a timed probe: a probe costs start-up time and is noisy on a busy
    2-core machine, while the instruction set is a fact. On x86 that is AVX512-BF16 or AMX (asked
    of torch, with /proc/cpuinfo as the fallback when torch's private helpers are missing); on
    ARM it is the ARMv8.6 `bf16` feature (Orin's Cortex-A78AE does not have it). Without those,
    oneDNN emulates bf16 with conversions and autocast is slower than plain fp32.
    """
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    arch = (machine or platform.machine()).lower()
    if arch in _X86:
        helpers = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        probes = [getattr(torch.cpu, name, None) for name in helpers]
        if flags is None and all(callable(p) for p in probes):
            return any(bool(p()) for p in probes if callable(p))
        found = cpu_flags() if flags is None else flags
        return bool({"avx512_bf16", "amx_bf16"} & set(found))
    if arch in _ARM:
        found = cpu_flags() if flags is None else flags
        return "bf16" in found
    return False


def quantized_engine(machine: str | None = None, supported: Sequence[str] | None = None) -> str | None:
    """The quantised engine for int8 on this CPU, or None when torch has none for it.

    x86_64 uses "x86" (fbgemm plus oneDNN, torch's default there) or plain "fbgemm"; ARM uses
    "qnnpack", whose kernels are written for NEON.
    """
    arch = (machine or platform.machine()).lower()
    engines = list(torch.backends.quantized.supported_engines if supported is None else supported)
    if arch in _X86:
        preferred: tuple[str, ...] = ("x86", "fbgemm")
    elif arch in _ARM:
        preferred = ("qnnpack",)
    else:
        preferred = ()
    return next((engine for engine in preferred if engine in engines), None)


def available_precisions(
    device: str = "cpu",
    *,
    bf16_native: Callable[[], bool] = cpu_runs_bf16_natively,
    int8_engine: Callable[[], str | None] = quantized_engine,
) -> tuple[Precision, ...]:
    """The precisions worth offering on `device`, in `PRECISIONS` order.

    fp32 and channels_last always; bf16 only where the CPU runs it natively; int8 where a
    quantised engine exists. fp16 never (see `NEVER_ON_CPU`). The two checks are injectable so
    a test (or a config override) can ask "what if this CPU had no bf16?".
    """
    if device != "cpu":
        raise VariantError(f"variants are built for the CPU only, not {device!r}")
    offered: list[Precision] = ["fp32", "channels_last"]
    if bf16_native():
        offered.append("bf16")
    if int8_engine() is not None:
        offered.append("int8")
    return tuple(offered)


# --- ladders -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantSpec:
    """One rung of a ladder. `image_size` is the square input side in pixels."""

    arch: str
    precision: Precision
    image_size: int

    @property
    def name(self) -> str:
        """Stable name used in records, profiles and events, e.g. `resnet18/int8@64`."""
        return f"{self.arch}/{self.precision}@{self.image_size}"


LadderEntry = str | Mapping[str, object]


def _spec_from_entry(entry: LadderEntry) -> VariantSpec:
    if isinstance(entry, str):
        match = _NAME.match(entry.strip())
        if match is None:
            raise VariantError("expected 'arch/precision@image_size', e.g. 'resnet18/int8@64'")
        arch, precision, size_text = match["arch"], match["precision"], match["size"]
        size: object = int(size_text)
    elif isinstance(entry, Mapping):
        unknown = sorted(str(k) for k in entry if k not in ("arch", "precision", "image_size"))
        if unknown:
            raise VariantError(f"unknown keys {unknown}; allowed: arch, precision, image_size")
        missing = [k for k in ("arch", "precision", "image_size") if k not in entry]
        if missing:
            raise VariantError(f"missing keys {missing}")
        arch_value, precision_value, size = entry["arch"], entry["precision"], entry["image_size"]
        if not isinstance(arch_value, str) or not isinstance(precision_value, str):
            raise VariantError("arch and precision must be strings")
        arch, precision = arch_value, precision_value
    else:
        raise VariantError(f"expected a string or a mapping, got {type(entry).__name__}")
    if precision in NEVER_ON_CPU:
        raise VariantError(f"precision {precision!r} is not offered: {NEVER_ON_CPU[precision]}")
    if precision not in PRECISIONS:
        raise VariantError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    if isinstance(size, bool) or not isinstance(size, int):
        raise VariantError(f"image_size must be an integer number of pixels, got {size!r}")
    if not MIN_IMAGE_SIZE_PX <= size <= MAX_IMAGE_SIZE_PX:
        raise VariantError(f"image_size {size} px is outside [{MIN_IMAGE_SIZE_PX}, {MAX_IMAGE_SIZE_PX}]")
    return VariantSpec(arch, cast(Precision, precision), size)


def parse_ladder(
    entries: Sequence[LadderEntry],
    *,
    available: Collection[str] | None = None,
    known_archs: Collection[str] | None = None,
) -> tuple[VariantSpec, ...]:
    """Parse a config's ladder, kept in the order given (heaviest → lightest by convention).

    Entries are `"arch/precision@size"` strings or `{arch, precision, image_size}` mappings.
    `available` (e.g. `available_precisions()`) rejects precisions this machine cannot run well;
    `known_archs` defaults to torchvision's classification models. Every error names the entry,
    by index and value, so a config author can find it.
    """
    if isinstance(entries, (str, bytes)) or not entries:
        raise VariantError("a ladder is a non-empty list of variants")
    if known_archs is None:
        from cotrain.workloads.models import classification_model_names

        known_archs = classification_model_names()
    specs: list[VariantSpec] = []
    for index, entry in enumerate(entries):
        try:
            spec = _spec_from_entry(entry)
            if spec.arch not in known_archs:
                raise VariantError(f"unknown architecture {spec.arch!r} (not a torchvision classifier)")
            if available is not None and spec.precision not in available:
                raise VariantError(
                    f"precision {spec.precision!r} is not available on this machine "
                    f"(available: {list(available)})"
                )
            if spec in specs:
                raise VariantError(f"duplicate of entry {specs.index(spec)}")
        except VariantError as exc:
            raise VariantError(f"ladder entry {index} ({entry!r}): {exc}") from None
        specs.append(spec)
    return tuple(specs)


# --- accuracy ------------------------------------------------------------------------------------


@cache
def imagenet_top1(arch: str) -> float | None:
    """ImageNet-1K top-1 of `arch`'s published weights, as a fraction in [0, 1]; None if unknown.

    Read from the weights enum's metadata (DEFAULT, else IMAGENET1K_V1): no download happens.
    A fraction, not torchvision's percent, so it compares directly with measured accuracy.
    Any registered name works, including torchvision's `quantized_*` models.
    """
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except (KeyError, ValueError):
        return None
    members = list(enum)
    weights = getattr(enum, "DEFAULT", None) or getattr(enum, "IMAGENET1K_V1", None)
    if weights is None and members:
        weights = members[0]
    if weights is None:
        return None
    try:
        top1 = weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    except (KeyError, TypeError):
        return None
    return round(float(top1) / 100.0, 6)  # 67.668 -> 0.67668, not 0.6766800000000001


def _metadata_accuracy(spec: VariantSpec) -> float | None:
    """The published ImageNet figure standing in for this variant's accuracy.

    int8 prefers torchvision's own quantised model of the same arch (resnet18: 69.49% against
    69.76%), so the ladder shows what quantisation costs; other precisions use the fp32 figure.
    The figure is at the arch's native resolution (mostly 224 px): it ignores `image_size`.
    """
    if spec.precision == "int8":
        quantised = imagenet_top1(f"quantized_{spec.arch}")
        if quantised is not None:
            return quantised
    return imagenet_top1(spec.arch)


# --- building ------------------------------------------------------------------------------------


def resize(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bilinear resize of an NCHW batch to `image_size`², a no-op when it already fits."""
    if x.dim() != 4:
        raise ValueError(f"expected an NCHW batch, got shape {tuple(x.shape)}")
    if x.shape[-2:] == (image_size, image_size):
        return x
    return torch.nn.functional.interpolate(
        x, size=(image_size, image_size), mode="bilinear", align_corners=False
    )


@contextmanager
def _quiet_quantisation() -> Iterator[None]:
    """Silence torch.ao's deprecation notices during FX quantisation.

    torch.ao.quantization is deprecated in favour of torchao's PT2E flow, which is not installed
    here; the FX flow still works in torch 2.14 and the notices would repeat for every build.
    Note: `warnings.catch_warnings` is process-global, so a warning raised by another thread
    during a build may be filtered too.
    """
    with warnings.catch_warnings():
        for message in (
            r"torch\.ao\.quantization is deprecated",
            r"Please use quant_min and quant_max",
            r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
        ):
            warnings.filterwarnings("ignore", message=message)
        yield


def _quantise_int8(model: torch.nn.Module, spec: VariantSpec, calibration: torch.Tensor) -> torch.nn.Module:
    """Static post-training quantisation: observe activation ranges on `calibration`, then convert."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine = quantized_engine()
    if engine is None:
        raise VariantError(f"{spec.name}: torch has no quantised engine for {platform.machine()}")
    # The engine is process-global; the converted kernels must run with the one they were packed for.
    torch.backends.quantized.engine = engine
    with _quiet_quantisation():
        try:
            example = resize(calibration[:1], spec.image_size)
            prepared = prepare_fx(model, get_default_qconfig_mapping(engine), example_inputs=(example,))
            with torch.no_grad():
                for start in range(0, len(calibration), _CHUNK):
                    prepared(resize(calibration[start : start + _CHUNK], spec.image_size))
            quantised: torch.nn.Module = convert_fx(prepared)
        except VariantError:
            raise
        except Exception as exc:  # FX tracing fails on some architectures: say which variant
            raise VariantError(f"{spec.name}: int8 quantisation failed: {exc}") from exc
    return quantised.eval()


def _random_images(count: int, image_size: int, seed: int) -> torch.Tensor:
    """Seeded standard-normal images: the scale of ImageNet-normalised inputs, from a private RNG."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, image_size, image_size, generator=generator)


@dataclass(frozen=True, eq=False)
class BuiltVariant:
    """A variant ready to serve: call it with an NCHW batch, get fp32 logits.

    `accuracy` is a top-1 fraction; `accuracy_source` says where it came from (see
    `build_variant`). `prepare_s` is the wall time of build + quantisation + warm-up, the cost a
    hot swap pays off the serving path.
    """

    spec: VariantSpec
    module: torch.nn.Module
    accuracy: float | None
    accuracy_source: AccuracySource
    prepare_s: float

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for `x`, resized to the variant's resolution, in its format and precision."""
        x = resize(x, self.spec.image_size)
        precision = self.spec.precision
        logits: torch.Tensor
        with torch.inference_mode():
            if precision == "channels_last":
                logits = self.module(x.contiguous(memory_format=torch.channels_last))
            elif precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = self.module(x.contiguous(memory_format=torch.channels_last))
                logits = logits.float()
            else:  # fp32, and int8 whose graph quantises a contiguous fp32 input itself
                logits = self.module(x.contiguous())
        return logits


def top1_accuracy(
    variant: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor
) -> float:
    """Fraction of `images` whose argmax logit equals the label, evaluated in bounded chunks."""
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"eval set needs as many labels as images (>0), got {len(images)}/{len(labels)}")
    correct = 0
    for start in range(0, len(images), _CHUNK):
        predicted = variant(images[start : start + _CHUNK]).argmax(dim=1)
        correct += int((predicted == labels[start : start + _CHUNK]).sum())
    return correct / len(images)


def build_variant(
    spec: VariantSpec,
    num_classes: int,
    *,
    weights_path: str | Path | None = None,
    calibration: torch.Tensor | None = None,
    eval_set: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
    warmup_batch_sizes: Sequence[int] = (1,),
) -> BuiltVariant:
    """Build `spec` on the CPU: model, format/precision, warm-up, and its accuracy.

    - Weights: `torch.manual_seed(seed)` then `get_model(arch, weights=None)` (so the same seed
      gives the same initial weights a training job builds), then the local state_dict if given.
      The seeding happens inside `torch.random.fork_rng`, so a build on a loader thread does not
      disturb the caller's RNG stream.
    - int8 calibrates on `calibration` (NCHW images from the serving distribution, resized to the
      variant); without them, on `DEFAULT_CALIBRATION_BATCHES` seeded standard-normal batches,
      which gives workable but worse activation ranges than real images.
    - Accuracy: `"measured"` top-1 on `eval_set` (images, labels) when given. Otherwise, for a
      1000-class (ImageNet-shaped) model, the published ImageNet top-1 of the arch
      (`"imagenet-metadata"`): a stand-in for ranking rungs, true only for ImageNet-trained
      weights at the native resolution. For any other head it means nothing: `"unknown"`.
    - Warm-up runs one seeded batch per `warmup_batch_sizes` so first-call allocation and kernel
      selection are paid here, not by the first request after a swap.
    """
    from cotrain.config import ModelConfig
    from cotrain.workloads.models import build_model

    if num_classes < 2:
        raise VariantError(f"{spec.name}: num_classes must be >= 2, got {num_classes}")
    start_s = time.perf_counter()
    config = ModelConfig(name=spec.arch, weights=None if weights_path is None else str(weights_path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config, num_classes).eval()

    module: torch.nn.Module
    if spec.precision in ("channels_last", "bf16"):
        module = model.to(memory_format=torch.channels_last)
    elif spec.precision == "int8":
        if calibration is None:
            count = DEFAULT_CALIBRATION_BATCHES * DEFAULT_CALIBRATION_BATCH_SIZE
            calibration = _random_images(count, spec.image_size, seed)
        if calibration.dim() != 4 or len(calibration) == 0:
            raise VariantError(f"{spec.name}: calibration must be a non-empty NCHW batch")
        module = _quantise_int8(model, spec, calibration)
    else:
        module = model

    variant = BuiltVariant(spec, module, None, "unknown", 0.0)
    with _quiet_quantisation():
        for batch in warmup_batch_sizes:
            variant(_random_images(batch, spec.image_size, seed))
    prepare_s = time.perf_counter() - start_s

    accuracy: float | None = None
    source: AccuracySource = "unknown"
    if eval_set is not None:
        accuracy, source = top1_accuracy(variant, *eval_set), "measured"
    elif num_classes == 1000:
        accuracy = _metadata_accuracy(spec)
        source = "unknown" if accuracy is None else "imagenet-metadata"
    return BuiltVariant(spec, module, accuracy, source, prepare_s)

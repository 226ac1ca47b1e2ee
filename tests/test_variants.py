"""Variant ladders: parsing, what this machine offers, offline builds, and int8 agreeing with fp32.

The agreement check needs a model whose decisions mean something. A randomly initialised
network's logits are near-ties (or one class wins everywhere), so "int8 agrees with fp32" would
be either noise or vacuous. The fixture therefore makes a *linear probe*: a random resnet18
backbone with its BatchNorm statistics set on the data and its last layer fitted in closed form
(ridge regression) to a synthetic 10-class task (class templates plus noise). That takes about a
second, is deterministic, and gives fp32 a high accuracy with real margins, which the tests check
before comparing the other precisions against it.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from cotrain.workloads.inference.variants import (
    NEVER_ON_CPU,
    PRECISIONS,
    BuiltVariant,
    VariantError,
    VariantSpec,
    available_precisions,
    build_variant,
    cpu_runs_bf16_natively,
    imagenet_top1,
    parse_ladder,
    quantized_engine,
)

NUM_CLASSES = 10
SIZE_PX = 64


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the network (a weights download, say) fails the test loudly."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


# --- parsing -------------------------------------------------------------------------------------


def test_ladder_keeps_the_given_order_from_strings_and_mappings() -> None:
    entries: list[Any] = [
        "resnet18/fp32@64",
        {"arch": "resnet18", "precision": "int8", "image_size": 64},
        "mobilenet_v3_small/fp32@64",
    ]

    ladder = parse_ladder(entries)

    assert [s.name for s in ladder] == ["resnet18/fp32@64", "resnet18/int8@64", "mobilenet_v3_small/fp32@64"]
    assert ladder[1] == VariantSpec("resnet18", "int8", 64)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("resnet18-fp32-64", "expected 'arch/precision@image_size'"),
        ("resnet99/fp32@64", "unknown architecture 'resnet99'"),
        ("resnet18/fp64@64", "unknown precision 'fp64'"),
        ("resnet18/fp32@8", "outside [32, 1024]"),
        ("resnet18/fp32@64", "duplicate of entry 0"),
        ({"arch": "resnet18", "precision": "fp32"}, "missing keys ['image_size']"),
        ({"arch": "resnet18", "precision": "fp32", "image_size": 64, "dpi": 1}, "unknown keys ['dpi']"),
        ({"arch": "resnet18", "precision": "fp32", "image_size": "64"}, "must be an integer"),
        (64, "expected a string or a mapping"),
    ],
)
def test_ladder_errors_name_the_entry(entry: Any, reason: str) -> None:
    with pytest.raises(VariantError) as caught:
        parse_ladder(["resnet18/fp32@64", entry])

    assert f"ladder entry 1 ({entry!r})" in str(caught.value)
    assert reason in str(caught.value)


def test_empty_ladder_is_an_error() -> None:
    with pytest.raises(VariantError, match="non-empty"):
        parse_ladder([])


def test_ladder_rejects_precisions_this_machine_does_not_offer() -> None:
    with pytest.raises(VariantError, match=r"ladder entry 0 .*'bf16' is not available"):
        parse_ladder(["resnet18/bf16@64"], available=("fp32", "channels_last", "int8"))


# --- what is offered -----------------------------------------------------------------------------


@pytest.mark.parametrize("bf16", [True, False])
def test_fp16_is_never_offered_on_cpu(bf16: bool) -> None:
    """Guards the 30× trap: fp16 autocast on a CPU (940 ms against 33 ms for resnet18)."""
    offered = available_precisions("cpu", bf16_native=lambda: bf16, int8_engine=lambda: "x86")

    assert "fp16" not in offered
    assert "fp16" not in PRECISIONS
    assert "30×" in NEVER_ON_CPU["fp16"]
    with pytest.raises(VariantError, match="30× slower"):
        parse_ladder(["resnet18/fp16@64"])


def test_bf16_is_offered_iff_the_check_says_so() -> None:
    with_bf16 = available_precisions(bf16_native=lambda: True, int8_engine=lambda: None)
    without_bf16 = available_precisions(bf16_native=lambda: False, int8_engine=lambda: None)

    assert with_bf16 == ("fp32", "channels_last", "bf16")
    assert without_bf16 == ("fp32", "channels_last")
    assert ("bf16" in available_precisions()) == cpu_runs_bf16_natively()


def test_int8_is_offered_iff_a_quantised_engine_exists() -> None:
    assert "int8" in available_precisions(bf16_native=lambda: False, int8_engine=lambda: "qnnpack")
    assert "int8" not in available_precisions(bf16_native=lambda: False, int8_engine=lambda: None)


def test_only_cpu_variants_are_built() -> None:
    with pytest.raises(VariantError, match="CPU only"):
        available_precisions("cuda")


@pytest.mark.parametrize(
    ("machine", "flags", "native"),
    [
        ("x86_64", {"avx2", "avx512f", "avx512_bf16"}, True),  # Zen 4 / Cooper Lake
        ("x86_64", {"avx2", "amx_tile", "amx_bf16"}, True),  # Sapphire Rapids
        ("x86_64", {"avx2", "avx512f"}, False),  # Skylake: bf16 only emulated, slower than fp32
        ("aarch64", {"fp", "asimd", "bf16", "i8mm"}, True),  # ARMv8.6 (Graviton3)
        ("aarch64", {"fp", "asimd", "asimddp", "atomics"}, False),  # Orin's Cortex-A78AE
        ("riscv64", {"v"}, False),
    ],
)
def test_bf16_check_follows_the_instruction_set(machine: str, flags: set[str], native: bool) -> None:
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        native = False  # without oneDNN there are no bf16 kernels at all

    assert cpu_runs_bf16_natively(machine, flags) is native


@pytest.mark.parametrize(
    ("machine", "supported", "engine"),
    [
        ("x86_64", ["qnnpack", "onednn", "x86", "fbgemm"], "x86"),
        ("x86_64", ["qnnpack", "fbgemm"], "fbgemm"),
        ("aarch64", ["qnnpack", "none"], "qnnpack"),
        ("aarch64", ["none"], None),
        ("x86_64", ["qnnpack"], None),  # qnnpack exists on x86 but is not what int8 should use there
    ],
)
def test_quantised_engine_fits_the_machine(machine: str, supported: list[str], engine: str | None) -> None:
    assert quantized_engine(machine, supported) == engine


def test_imagenet_top1_is_read_offline_as_a_fraction() -> None:
    assert imagenet_top1("resnet18") == pytest.approx(0.69758)
    assert imagenet_top1("quantized_resnet18") == pytest.approx(0.69494)
    assert imagenet_top1("no_such_net") is None


# --- building ------------------------------------------------------------------------------------


def test_a_ladder_builds_offline_with_imagenet_metadata_accuracy() -> None:
    extra = [f"resnet18/{p}@64" for p in ("channels_last", "bf16") if p in available_precisions()]
    ladder = parse_ladder(["resnet18/fp32@64", "resnet18/int8@64", "mobilenet_v3_small/fp32@64", *extra])
    x = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(1))  # not the variant's size

    built = [build_variant(spec, 1000) for spec in ladder]

    for variant in built:
        logits = variant(x)
        assert logits.shape == (2, 1000) and logits.dtype == torch.float32, variant.name
        assert variant.accuracy_source == "imagenet-metadata"
        assert variant.accuracy is not None and 0.5 < variant.accuracy < 1.0
        assert variant.prepare_s > 0
    by_name = {v.name: v for v in built}
    fp32, int8 = by_name["resnet18/fp32@64"], by_name["resnet18/int8@64"]
    assert int8.accuracy is not None and fp32.accuracy is not None
    assert int8.accuracy < fp32.accuracy  # torchvision's quantised resnet18 figure, not the fp32 one


def test_accuracy_is_unknown_for_a_non_imagenet_head() -> None:
    variant = build_variant(VariantSpec("mobilenet_v3_small", "fp32", 32), NUM_CLASSES)

    assert (variant.accuracy, variant.accuracy_source) == (None, "unknown")


def test_builds_are_seeded_and_leave_the_callers_rng_alone() -> None:
    spec = VariantSpec("mobilenet_v3_small", "fp32", 32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)

    a, b, c = (build_variant(spec, NUM_CLASSES, seed=s) for s in (0, 0, 1))

    assert torch.equal(torch.rand(3), expected_draw)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), c(x))


# --- int8 (and the other precisions) against fp32 -------------------------------------------------


def _task(count: int, seed: int, templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
    images = templates[labels] + 0.2 * torch.randn(count, 3, SIZE_PX, SIZE_PX, generator=generator)
    return images, labels


@pytest.fixture(scope="module")
def probe(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A resnet18 linear probe on a synthetic task: (weights file, training images, eval set)."""
    import torchvision

    coarse = torch.rand(NUM_CLASSES, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    templates = torch.nn.functional.interpolate(coarse, size=(SIZE_PX, SIZE_PX), mode="bilinear")
    train_x, train_y = _task(128, 3, templates)
    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=NUM_CLASSES)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for start in range(0, len(train_x), 32):
            model(train_x[start : start + 32])
    model.eval()
    head, model.fc = model.fc, torch.nn.Identity()
    with torch.no_grad():
        features = torch.cat([model(train_x), torch.ones(len(train_x), 1)], dim=1)
    targets = torch.nn.functional.one_hot(train_y, NUM_CLASSES).float()
    gram = features.T @ features + 1e-2 * torch.eye(features.shape[1])
    solution = torch.linalg.solve(gram, features.T @ targets)
    with torch.no_grad():
        head.weight.copy_(solution[:-1].T)
        head.bias.copy_(solution[-1])
    model.fc = head
    path = tmp_path_factory.mktemp("probe") / "resnet18-probe.pt"
    torch.save(model.state_dict(), path)
    return path, train_x, _task(64, 1, templates)


def _agreement(a: BuiltVariant, b: BuiltVariant, images: torch.Tensor) -> float:
    return float((a(images).argmax(1) == b(images).argmax(1)).float().mean())


def test_int8_agrees_with_fp32_on_a_trained_model(probe: Any) -> None:
    weights, calibration, (images, labels) = probe

    fp32 = build_variant(
        VariantSpec("resnet18", "fp32", SIZE_PX), NUM_CLASSES, weights_path=weights, eval_set=(images, labels)
    )
    int8 = build_variant(
        VariantSpec("resnet18", "int8", SIZE_PX),
        NUM_CLASSES,
        weights_path=weights,
        calibration=calibration,
        eval_set=(images, labels),
    )

    # The reference must be meaningful: accurate and not one class for everything.
    assert fp32.accuracy_source == "measured" and fp32.accuracy is not None and fp32.accuracy >= 0.8
    assert len(set(fp32(images).argmax(1).tolist())) >= 5
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8.module.modules())
    assert _agreement(fp32, int8, images) >= 0.8
    assert int8.accuracy is not None and int8.accuracy >= fp32.accuracy - 0.1


def test_int8_calibrates_on_seeded_random_images_when_given_none(probe: Any) -> None:
    weights, _, (images, _) = probe
    spec = VariantSpec("resnet18", "int8", SIZE_PX)

    a, b = (build_variant(spec, NUM_CLASSES, weights_path=weights) for _ in range(2))

    assert torch.equal(a(images[:8]), b(images[:8]))  # the default calibration is deterministic


def test_layout_and_bf16_variants_agree_with_fp32(probe: Any) -> None:
    weights, _, (images, _) = probe
    precisions = [p for p in ("channels_last", "bf16") if p in available_precisions()]
    fp32 = build_variant(VariantSpec("resnet18", "fp32", SIZE_PX), NUM_CLASSES, weights_path=weights)

    for precision in precisions:
        other = build_variant(VariantSpec("resnet18", precision, SIZE_PX), NUM_CLASSES, weights_path=weights)
        assert _agreement(fp32, other, images) >= 0.8, precision


def test_a_configured_eval_set_gives_every_rung_its_measured_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from cotrain.config import InferenceConfig
    from cotrain.workloads.inference.ladder import labelled_eval_set, prepare_ladder
    from cotrain.workloads.inference.variants import top1_accuracy

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = InferenceConfig.model_validate(
        {
            "model": {"name": "mobilenet_v3_small", "num_classes": 10},
            "dataset": {"kind": "synthetic", "num_samples": 16, "num_classes": 10, "image_size": 32},
            "accuracy_eval": {"kind": "digits", "split": "test", "image_size": 32},
            "arrivals": {"process": "constant", "rate_per_s": 1},
            "slo_ms": 100,
            "batching": {"max_batch_size": 2},
            "variants": ["mobilenet_v3_small/fp32@32", "mobilenet_v3_small/channels_last@32"],
            "profile_batch_sizes": [1, 2],
        }
    )
    eval_set = labelled_eval_set(config)
    assert eval_set is not None
    images, labels = eval_set
    assert images.shape[1:] == (3, 32, 32)
    assert len(images) == len(labels) == 445  # the stratified 25 % test split of the 1,797 digits
    assert set(labels.tolist()) == set(range(10))
    pool = [images[i] for i in range(8)]
    infers = prepare_ladder(config, 10, pool, 0, tmp_path, lambda variant, pool: variant)
    described = json.loads((tmp_path / "variants.json").read_text())
    assert [v["accuracy_source"] for v in described] == ["measured", "measured"]
    for entry in described:
        assert entry["accuracy"] == pytest.approx(top1_accuracy(infers[entry["name"]], images, labels))

"""Bad input: each case gives one clear message naming the field or path and exit code 2, before
anything is started or changed.

"Nothing started" is checked by making `Runtime.run` fail the test if it is ever reached, and
"nothing changed" by the fake nvpmodel's call log (no `-m`) and by the run directory not being
left behind. The CLI runs in-process; only preflight's short batch-1 timing touches a model.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotrain import preflight as preflight_module
from cotrain.cli import main
from cotrain.rundir import OutputDirError, RunDir
from tests.conftest import REPO, TINY
from tests.fake_tools import FakeNvpmodel
from tests.jetson_fakes import build_fake_orin_sysfs

FIXTURES = REPO / "tests" / "data" / "jetson"
AGX_CONF = FIXTURES / "nvpmodel" / "LineageOS__android_device_nvidia_concord__nvpmodel_p3701_0000.conf"
MAXN, MODE_15W, MODE_30W, MODE_50W = 0, 1, 2, 3


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may get as far as starting a run."""

    def refuse(self: Any) -> None:
        raise AssertionError("a run was started although the input is bad")

    monkeypatch.setattr("cotrain.runtime.Runtime.run", refuse)


def write(tmp_path: Path, data: dict[str, Any], name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """Exit code and the `cotrain: error:` lines (warnings are not errors)."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.startswith("cotrain: error: ")]


def one_error(code: int, errors: list[str], *fragments: str) -> str:
    assert code == 2, errors
    assert len(errors) == 1, errors
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def tiny(**inference: Any) -> dict[str, Any]:
    data = copy.deepcopy(TINY)
    data["workloads"]["inference"].update(inference)
    return data


# --- output directory ---------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs sysfs")
def test_an_unwritable_output_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """sysfs refuses new directories even to root, so this is a real refusal, not a mock."""
    out = "/sys/cotrain-test-out/run"
    code, errors = cli(capsys, "run", str(write(tmp_path, TINY)), "--out", out)
    one_error(code, errors, f"output directory {out!r}", "not writable")
    assert not Path(out).exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_directory_without_write_permission_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    out = locked / "run"
    code, errors = cli(capsys, "run", str(write(tmp_path, TINY)), "--out", str(out))
    one_error(code, errors, str(out), "not writable")
    assert not out.exists()


def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes to the run directory's probe fail as on a full file system (ENOSPC)."""
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".write-probe"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_a_full_output_directory_says_no_space_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, TINY)
    out = tmp_path / "new" / "deeper" / "run"
    full_disk(monkeypatch)
    code, errors = cli(capsys, "run", str(config), "--out", str(out))
    one_error(code, errors, str(out), "no space left on the device")
    assert not (tmp_path / "new").exists(), "the directories prepare() made are removed again"


def test_a_full_disk_leaves_the_previous_run_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "events.jsonl", "requests.csv", "summary.json"):
        (out / name).write_text("previous\n")
    full_disk(monkeypatch)
    code, errors = cli(capsys, "run", str(write(tmp_path, TINY)), "--out", str(out), "--force")
    one_error(code, errors, "no space")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "events.jsonl",
        "requests.csv",
        "summary.json",
    ]


def test_prepare_names_the_errno_it_met(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(err: int) -> Any:
        def fsync(fd: int) -> None:
            raise OSError(err, os.strerror(err))

        return fsync

    for err, expected in (
        (errno.EDQUOT, "no space"),
        (errno.EROFS, "not writable"),
        (errno.EIO, "cannot be used"),
    ):
        monkeypatch.setattr(os, "fsync", fail(err))
        with pytest.raises(OutputDirError, match=expected):
            RunDir(tmp_path / f"run-{err}").prepare()
        assert not (tmp_path / f"run-{err}").exists()


def test_an_output_path_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    code, errors = cli(capsys, "run", str(write(tmp_path, TINY)), "--out", str(tmp_path / "file" / "run"))
    one_error(code, errors, str(tmp_path / "file" / "run"), "Not a directory")


# --- datasets and models ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["inference", "training"])
@pytest.mark.parametrize(
    ("layout", "fragment"),
    [
        ("missing", "does not exist"),
        ("empty", "has no class sub-directories"),
        ("no-images", "class folder(s) without images: cat"),
    ],
)
def test_a_missing_or_empty_dataset_names_its_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, layout: str, fragment: str
) -> None:
    root = tmp_path / "images"
    if layout != "missing":
        root.mkdir()
    if layout == "no-images":
        (root / "cat").mkdir()
        (root / "cat" / "notes.txt").write_text("not an image")
    data = copy.deepcopy(TINY)
    dataset = {"kind": "imagefolder", "root": str(root), "image_size": 32}
    field = (
        "workloads.inference.dataset.root" if where == "inference" else "workloads.training[0].dataset.root"
    )
    if where == "inference":
        data["workloads"]["inference"]["dataset"] = dataset
    else:
        data["workloads"]["training"][0]["dataset"] = dataset
    code, errors = cli(capsys, "validate", str(write(tmp_path, data)))
    one_error(code, errors, f"{field}: ", fragment)


@pytest.mark.parametrize("where", ["inference", "training"])
def test_an_unknown_model_names_its_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    data = copy.deepcopy(TINY)
    target = data["workloads"]["inference"] if where == "inference" else data["workloads"]["training"][0]
    target["model"]["name"] = "resnet_nope"
    field = "workloads.inference.model.name" if where == "inference" else "workloads.training[0].model.name"
    code, errors = cli(capsys, "validate", str(write(tmp_path, data)))
    one_error(code, errors, f"{field}: unknown torchvision classification model 'resnet_nope'", "resnet18")


def test_a_model_that_cannot_take_the_image_size_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tiny(model={"name": "squeezenet1_0"})
    data["workloads"]["inference"]["dataset"]["image_size"] = 8
    code, errors = cli(capsys, "validate", str(write(tmp_path, data)))
    one_error(code, errors, "workloads.inference.dataset.image_size: squeezenet1_0 cannot run on 8x8 images")


# --- impossible SLOs ----------------------------------------------------------------------------


def test_an_slo_below_the_batch_1_latency_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No CPU runs mobilenet_v3_small in a microsecond: the timing in preflight shows it."""
    code, errors = cli(capsys, "validate", str(write(tmp_path, tiny(slo_ms=0.001))))
    line = one_error(
        code, errors, "workloads.inference.slo_ms: 0.001 ms is below the fastest batch-1 latency"
    )
    assert "mobilenet_v3_small/fp32@32" in line and "just measured here" in line
    assert "no batch can meet it" in line


def test_a_reachable_slo_passes_and_the_timing_leaves_torch_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    before = torch.get_num_threads()
    code, errors = cli(capsys, "validate", str(write(tmp_path, tiny(slo_ms=500))))
    assert (code, errors) == (0, [])
    assert torch.get_num_threads() == before


def cache_profile(
    cache_home: Path,
    latencies_ms: dict[str, float],
    *,
    age_s: float = 60.0,
    batch_sizes: tuple[int, ...] = (1, 2),
) -> Path:
    """A latency profile in the per-machine cache, as the inference service writes it."""
    from cotrain.workloads.inference.profiler import (
        FORMAT_VERSION,
        LatencyStats,
        ProfileKey,
        ProfileTable,
        cache_path,
        default_cache_dir,
    )

    key = ProfileKey.for_this_machine(list(latencies_ms), list(batch_sizes))
    entries = {
        (v, b): LatencyStats(ms * b, ms * b * 1.2, 5) for v, ms in latencies_ms.items() for b in batch_sizes
    }
    table = ProfileTable(entries, key.label, time.time() - age_s, key.torch_version)
    path = cache_path(default_cache_dir({"XDG_CACHE_HOME": str(cache_home)}), key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": FORMAT_VERSION, "key": key.to_dict(), "table": table.to_dict()}))
    return path


LADDER = ["mobilenet_v3_small/fp32@64", "mobilenet_v3_small/fp32@32"]


@pytest.fixture
def no_timing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty profile cache of our own, and preflight forbidden to time a model."""
    cache_home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))

    def refuse(*args: Any) -> None:
        raise AssertionError("preflight timed a model although it should not")

    monkeypatch.setattr(preflight_module, "_timed_batch1_ms", refuse)
    return cache_home


def test_a_ladder_slo_is_checked_against_the_cached_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_timing: Path
) -> None:
    path = cache_profile(no_timing, {LADDER[0]: 40.0, LADDER[1]: 25.0})
    code, errors = cli(capsys, "validate", str(write(tmp_path, tiny(variants=LADDER, slo_ms=10))))
    line = one_error(
        code, errors, "workloads.inference.slo_ms: 10 ms is below the fastest batch-1 latency here"
    )
    assert "25 ms for mobilenet_v3_small/fp32@32" in line and str(path) in line

    code, errors = cli(capsys, "validate", str(write(tmp_path, tiny(variants=LADDER, slo_ms=30))))
    assert (code, errors) == (0, []), "above the fastest rung's latency: reachable"


def test_a_ladder_without_a_fresh_cached_profile_is_not_timed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_timing: Path
) -> None:
    """An int8 rung may be far faster than fp32: without its profile there is no honest bound."""
    cache_profile(no_timing, {LADDER[0]: 40.0, LADDER[1]: 25.0}, age_s=8 * 24 * 3600.0)  # stale
    cache_profile(no_timing, {LADDER[0]: 40.0}, batch_sizes=(1,))  # fresh, but one rung only
    code, errors = cli(capsys, "validate", str(write(tmp_path, tiny(variants=LADDER, slo_ms=1))))
    assert (code, errors) == (0, [])


def test_a_plain_model_uses_its_cached_profile_instead_of_timing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_timing: Path
) -> None:
    cache_profile(no_timing, {"mobilenet_v3_small/fp32@32": 12.0, "resnet18/fp32@32": 30.0})
    code, errors = cli(capsys, "validate", str(write(tmp_path, tiny(slo_ms=5))))
    one_error(
        code, errors, "workloads.inference.slo_ms: 5 ms", "12 ms for mobilenet_v3_small/fp32@32", "cached"
    )


def test_each_service_is_checked_against_its_own_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_timing: Path
) -> None:
    cache_profile(no_timing, {"mobilenet_v3_small/fp32@32": 12.0})
    service = copy.deepcopy(TINY["workloads"]["inference"])
    data = copy.deepcopy(TINY)
    data["workloads"] = {
        "services": [{**service, "name": "fast", "slo_ms": 100}, {**service, "name": "tight", "slo_ms": 3}]
    }
    code, errors = cli(capsys, "validate", str(write(tmp_path, data)))
    one_error(code, errors, "workloads.services[1].slo_ms: 3 ms")


# --- power modes --------------------------------------------------------------------------------


class FakeJetson:
    """A fake AGX Orin 64GB for `platform: {kind: jetson, ...}`: sysfs tree, nvpmodel, no jtop."""

    def __init__(self, tmp_path: Path, mode_id: int = MAXN, nvpmodel: bool = True) -> None:
        self.root = build_fake_orin_sysfs(
            tmp_path / "root", online_cpus=12 if mode_id in (MAXN, MODE_50W) else 8
        )
        self.nvpmodel = FakeNvpmodel(tmp_path / "bin", AGX_CONF, mode_id)
        self.binary = str(self.nvpmodel.path) if nvpmodel else str(tmp_path / "bin" / "no-nvpmodel")

    def platform(self, **extra: Any) -> dict[str, Any]:
        return {
            "kind": "jetson",
            "root": str(self.root),
            "nvpmodel": self.binary,
            "tegrastats": str(self.root / "no-tegrastats"),
            "nvpmodel_conf": str(AGX_CONF),
            "jtop": False,
            **extra,
        }


def test_a_power_mode_that_does_not_exist_is_refused_on_a_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {**copy.deepcopy(TINY), "platform": {"power_mode": "TURBO"}}
    code, errors = cli(capsys, "validate", str(write(tmp_path, data)))
    one_error(code, errors, "platform.power_mode: no mode 'TURBO' here; available: ")


@pytest.mark.parametrize(
    ("mode", "fragment"),
    [
        ("TURBO", "no mode 'TURBO' here; available: MAXN (0), MODE_15W (1), MODE_30W (2), MODE_50W (3)"),
        (7, "no mode 7 here"),
        ("MODE_30W", "MODE_30W needs a reboot from the current mode; cotrain never reboots"),
        (MODE_15W, "MODE_15W needs a reboot"),
    ],
)
def test_a_jetson_power_mode_that_does_not_exist_or_needs_a_reboot_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str | int, fragment: str
) -> None:
    device = FakeJetson(tmp_path, mode_id=MAXN)
    data = {**copy.deepcopy(TINY), "platform": device.platform(power_mode=mode)}
    out = tmp_path / "run"
    code, errors = cli(capsys, "run", str(write(tmp_path, data)), "--out", str(out))
    one_error(code, errors, f"platform.power_mode: {fragment}")
    assert device.nvpmodel.switches() == [], "nvpmodel was never asked to switch"
    assert device.nvpmodel.mode_id == MAXN
    assert not out.exists(), "no run directory for a run that never started"


def test_a_scheduled_power_mode_is_checked_like_the_initial_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device = FakeJetson(tmp_path, mode_id=MAXN)
    data = copy.deepcopy(TINY)
    data["platform"] = device.platform()
    data["controller"] = {
        "name": "schedule",
        "steps": [
            {"at_s": 1, "set": {"power_mode": "MODE_50W"}},
            {"at_s": 2, "set": {"power_mode": "MODE_30W"}},
        ],
    }
    code, errors = cli(capsys, "validate", str(write(tmp_path, data)))
    one_error(code, errors, "controller.steps[1].set.power_mode: MODE_30W needs a reboot")
    assert device.nvpmodel.switches() == []


def test_a_power_mode_cotrain_could_not_restore_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without nvpmodel (and without jtop) the current mode cannot be read, so it could not be
    put back: preflight says so instead of the run failing half-way."""
    device = FakeJetson(tmp_path, nvpmodel=False)
    data = {**copy.deepcopy(TINY), "platform": device.platform(power_mode="MODE_50W")}
    code, errors = cli(capsys, "validate", str(write(tmp_path, data)))
    one_error(code, errors, "platform.power_mode: cannot read the current power mode here")


def test_the_current_mode_is_no_switch_and_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device = FakeJetson(tmp_path, mode_id=MODE_30W)
    data = {**copy.deepcopy(TINY), "platform": device.platform(power_mode="MODE_30W")}
    code, errors = cli(capsys, "validate", str(write(tmp_path, data)))
    assert (code, errors) == (0, [])
    assert device.nvpmodel.switches() == []

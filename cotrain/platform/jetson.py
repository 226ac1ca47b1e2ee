"""NVIDIA Jetson backend: power modes through jtop or the nvpmodel CLI, telemetry through jtop,
tegrastats or sysfs, placement by affinity over the CPU clusters, and restore on every exit.

Everything that touches the device is injected (root of the filesystem, binaries, the jtop
factory, the command runner), so tests drive this class against a fake sysfs tree built from
real files and a fake `nvpmodel` executable, never against guesses or environment switches.

Safety rules, from how nvpmodel and jtop behave on real boards (tested on the real nvpmodel.conf
files in tests/data/jetson/nvpmodel/):
- a mode whose TPC/FBP power-gating masks differ from the current mode's needs a reboot. It is
  refused here before nvpmodel is called, and nvpmodel always runs with stdin closed and a
  timeout, so its "enter YES to confirm" prompt is never answered and can never hang a run;
- the mode and the clock limits cotrain found are written back by `restore()`, which the runtime
  calls on every exit path (normal end, exception, SIGINT, SIGTERM).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from cotrain.platform.base import (
    PowerModeError,
    PowerModeInfo,
    PowerModesUnsupported,
    RebootRequired,
    TelemetrySample,
)
from cotrain.platform.placement import AffinityPlacer
from cotrain.platform.sysfs import ClockState, JetsonSysfs
from cotrain.platform.tegrastats import TegrastatsSample
from cotrain.platform.tegrastats_reader import TegrastatsReader
from cotrain.power_modes.nvpmodel import NvpmodelConf, PowerMode, parse_nvpmodel

NVPMODEL_TIMEOUT_S = 30.0
NV_POWER_MODE = re.compile(r"NV Power Mode:\s*(?P<name>\S+)")
PERMISSION_FIX = (
    "changing the power mode needs root: run cotrain with sudo, or install jetson-stats and add "
    "this user to group jtop (sudo usermod -aG jtop $USER, then log in again) so that "
    "jtop.service switches modes"
)
JTOP_GROUP_FIX = (
    "this user cannot reach jtop.service's socket: add it to group jtop "
    "(sudo usermod -aG jtop $USER, then log in again); cotrain needs no root for telemetry"
)
_DENIED = ("permission denied", "not permitted", "must be root", "root privilege", "are you root")

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
Warn = Callable[[str], None]


def highest_caps_mhz(modes: Sequence[PowerMode]) -> tuple[float, float, float]:
    """The highest CPU, GPU and EMC cap any mode of the file sets: what an uncapped clock is
    taken to run at. The file does not say the hardware maximum (MAXN's real clocks are higher),
    so this is a lower bound; a clock no mode caps is 1.0 everywhere, i.e. it does not vary."""
    cpu = [v for m in modes for v in m.cpu_max_mhz.values() if v is not None]
    gpu = [m.gpu_max_mhz for m in modes if m.gpu_max_mhz is not None]
    emc = [m.emc_max_mhz for m in modes if m.emc_max_mhz is not None]
    return (max(cpu, default=1.0), max(gpu, default=1.0), max(emc, default=1.0))


def capability(mode: PowerMode) -> float:
    """A rank for "more capable": MAXN first, then the budget in the mode's name (MODE_15W, 10W,
    MODE_28_1_W), else online cores × the highest CPU cap. NVIDIA names modes by power budget,
    which orders them better than any one clock does (Orin NX 25W caps the GPU below 15W)."""
    if mode.name.upper() == "MAXN":
        return float("inf")
    match = re.search(r"(\d+)(?:_(\d+))?_?W$", mode.name.upper())
    if match:
        return float(f"{match[1]}.{match[2] or 0}")
    caps = [c for c in mode.cpu_max_mhz.values() if c is not None] or [10_000.0]
    return mode.online_cores * max(caps) / 1000


class JtopLike(Protocol):
    """The part of jetson-stats' `jtop` object cotrain uses (see jtop/jtop.py)."""

    def start(self) -> None: ...
    def close(self) -> None: ...
    def ok(self) -> bool: ...

    @property
    def stats(self) -> dict[str, Any]: ...

    @property
    def power(self) -> dict[str, Any]: ...

    @property
    def nvpmodel(self) -> Any: ...

    @nvpmodel.setter
    def nvpmodel(self, value: int) -> None: ...


def default_jtop_factory() -> JtopLike:
    """A real jtop client. Raises if jetson-stats is missing or jtop.service does not answer."""
    from jtop import jtop

    client: JtopLike = jtop()
    client.start()
    return client


@dataclass(frozen=True)
class JetsonPaths:
    """Where the device's interfaces live. Defaults are a real Jetson's."""

    root: Path = Path("/")
    nvpmodel: str = "nvpmodel"
    tegrastats: str = "tegrastats"
    nvpmodel_conf: Path | None = None  # default: <root>/etc/nvpmodel.conf


class JetsonPlatform:
    name = "jetson"

    def __init__(
        self,
        paths: JetsonPaths = JetsonPaths(),
        *,
        jtop_factory: Callable[[], JtopLike] | None = default_jtop_factory,
        run: Runner = subprocess.run,
        warn: Warn | None = None,
        placer: AffinityPlacer | None = None,
        tegrastats_interval_ms: int = 500,
        monotonic: Callable[[], float] = time.monotonic,
        euid: Callable[[], int] = os.geteuid,
    ) -> None:
        self.paths = paths
        self._run = run
        self._euid = euid
        self._warn = warn or (lambda message: None)
        self._monotonic = monotonic
        self.sysfs = JetsonSysfs(paths.root)
        self._placer = placer or AffinityPlacer()  # the workload processes are real, whatever the root
        self.conf = self._load_conf()
        self._jtop: JtopLike | None = None
        self._tegrastats: TegrastatsReader | None = None
        self.telemetry_source = self._open_telemetry(jtop_factory, tegrastats_interval_ms)
        self._original_mode: PowerMode | None = None
        self._original_clocks: ClockState | None = None
        self._allowed_cpus = set(psutil.Process().cpu_affinity() or [])
        self._cpus: tuple[int, ...] = ()
        self._refresh_cpus()
        self._mode_name: str | None = None  # what telemetry reports; refreshed on every switch
        with _suppress_all():
            current = self._current_conf_mode()
            self._mode_name = current.name if current is not None else None

    # --- set-up --------------------------------------------------------------------------------

    def _load_conf(self) -> NvpmodelConf | None:
        path = self.paths.nvpmodel_conf or self.paths.root / "etc" / "nvpmodel.conf"
        try:
            return parse_nvpmodel(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            return None

    def _open_telemetry(self, jtop_factory: Callable[[], JtopLike] | None, interval_ms: int) -> str:
        """jtop if its service answers, else a tegrastats subprocess, else sysfs; one warning."""
        reasons = []
        if jtop_factory is not None:
            try:
                self._jtop = jtop_factory()
                return "jtop"
            except Exception as exc:  # ImportError, JtopException (service down, no group), ...
                detail = " ".join(str(exc).split())
                reasons.append(f"jtop unavailable ({type(exc).__name__}: {detail})")
                if _jtop_denied(exc):
                    reasons.append(JTOP_GROUP_FIX)
                elif isinstance(exc, ModuleNotFoundError):
                    from cotrain.extras import JETSON

                    reasons.append(f"jetson-stats is not installed ({JETSON.install})")
        else:
            reasons.append("jtop disabled")
        binary = self._which(self.paths.tegrastats)
        if binary is not None:
            try:
                reader = TegrastatsReader(binary, interval_ms=interval_ms)
                reader.start()
                self._tegrastats = reader
                self._warn(f"{'; '.join(reasons)}: telemetry from tegrastats instead")
                return "tegrastats"
            except Exception as exc:
                reasons.append(f"tegrastats failed ({exc})")
        else:
            reasons.append(f"no {self.paths.tegrastats} binary")
        self._warn(f"{'; '.join(reasons)}: telemetry from sysfs instead")
        return "sysfs"

    def _which(self, binary: str) -> str | None:
        if "/" in binary:
            return binary if Path(binary).is_file() else None
        return shutil.which(binary)

    # --- placement -----------------------------------------------------------------------------

    def _refresh_cpus(self) -> None:
        """Online CPUs we may use; re-read after every mode switch (modes change the online set)."""
        online = set(self.sysfs.online_cpus())
        self._cpus = tuple(sorted(online & self._allowed_cpus)) or tuple(sorted(online))

    def cpu_ids(self) -> tuple[int, ...]:
        return self._cpus

    def clusters(self) -> tuple[tuple[int, ...], ...]:
        """From sysfs topology; else (sysfs found no grouping) from the nvpmodel.conf's CPU clock
        domains, the board tables' rule; else one CPU per cluster."""
        found = self.sysfs.clusters()
        if found and any(len(c) > 1 for c in found):
            return found  # sysfs knows real groupings; all-singletons means it knew nothing
        if self.conf is not None:
            from cotrain.power_modes.boards import derive_clusters

            with _suppress_all():
                return tuple(c.core_ids for c in derive_clusters(self.conf))
        return tuple((c,) for c in self._cpus)

    def attach(self, pid: int) -> None:
        """Power modes are device-wide on a Jetson: nothing to do per process."""

    def place(self, pid: int, cpus: Sequence[int] | None) -> None:
        target = set(self._cpus if cpus is None else cpus)
        unknown = target - set(self.sysfs.online_cpus())
        if unknown:
            raise ValueError(f"CPUs {sorted(unknown)} are offline or absent in the current power mode")
        self._placer.pin(pid, target)

    # --- power modes ---------------------------------------------------------------------------

    def _mode_info(
        self, mode: PowerMode, current: PowerMode | None, top: tuple[float, float, float] | None = None
    ) -> PowerModeInfo:
        if top is None:
            top = highest_caps_mhz(self.conf.modes if self.conf is not None else (mode,))
        reboot = current is not None and mode.needs_reboot_from(current)
        caps = ", ".join(f"{k} {'max' if v is None else f'{v:g} MHz'}" for k, v in mode.cpu_max_mhz.items())
        gpu = "GPU max" if mode.gpu_max_mhz is None else f"GPU {mode.gpu_max_mhz:g} MHz"
        detail = f"{mode.online_cores} cores, {caps}, {gpu}"
        cpu_caps = [v for v in mode.cpu_max_mhz.values() if v is not None]
        uncapped_cpu = not cpu_caps or len(cpu_caps) < len(mode.cpu_max_mhz)
        return PowerModeInfo(
            mode.id,
            mode.name,
            mode.online_cores,
            reboot,
            detail,
            rank=capability(mode),
            cpu_mhz=top[0] if uncapped_cpu else max(cpu_caps),
            gpu_mhz=mode.gpu_max_mhz if mode.gpu_max_mhz is not None else top[1],
            emc_mhz=mode.emc_max_mhz if mode.emc_max_mhz is not None else top[2],
        )

    def power_modes(self) -> tuple[PowerModeInfo, ...]:
        if self.conf is None:
            return ()
        current = self._current_conf_mode()
        top = highest_caps_mhz(self.conf.modes)
        return tuple(self._mode_info(m, current, top) for m in self.conf.modes)

    def _query_mode_id(self) -> int | None:
        if self._jtop is not None:
            with _suppress_all():
                return int(self._jtop.nvpmodel.id)
        result = self._nvpmodel(["-q"])
        if result is None or result.returncode != 0:
            return None
        lines = [line.strip() for line in result.stdout.splitlines()]
        for i, line in enumerate(lines):
            if NV_POWER_MODE.search(line):
                for following in lines[i + 1 :]:
                    if following.isdigit():
                        return int(following)
                if self.conf is not None:
                    name = NV_POWER_MODE.search(line)
                    assert name is not None
                    with _suppress_all():
                        return self.conf.mode(name["name"]).id
        return None

    def _current_conf_mode(self) -> PowerMode | None:
        mode_id = self._query_mode_id()
        if mode_id is None or self.conf is None:
            return None
        with _suppress_all():
            return self.conf.mode(mode_id)
        return None

    def current_power_mode(self) -> PowerModeInfo | None:
        current = self._current_conf_mode()
        return None if current is None else self._mode_info(current, current)

    def _nvpmodel(self, args: list[str]) -> subprocess.CompletedProcess[str] | None:
        binary = self._which(self.paths.nvpmodel)
        if binary is None:
            return None
        try:
            return self._run(
                [binary, *args],
                stdin=subprocess.DEVNULL,  # never answer the reboot prompt
                capture_output=True,
                text=True,
                timeout=NVPMODEL_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise PowerModeError(
                f"nvpmodel {' '.join(args)} did not finish in {NVPMODEL_TIMEOUT_S:g} s"
            ) from None
        except PermissionError as exc:
            raise PowerModeError(
                f"not permitted to run {binary}: {exc.strerror or exc}; {PERMISSION_FIX}"
            ) from None

    def power_mode_access(self) -> str | None:
        """Why this process cannot change the power mode, when that is certain without trying;
        None when it can, or when only trying would tell.

        With jtop.service connected, the service (running as root) switches modes for any member
        of group jtop. Without it, nvpmodel must run as root: it writes sysfs CPU, clock and
        power-gating files. A script (such as a wrapper calling `sudo -n nvpmodel`) or a setuid
        binary may raise its own privileges, so only a plain executable run by a user other than
        root is certain to be refused. Preflight asks this before anything starts; the
        runtime's refusal (`power_mode_refused`) covers what cannot be known here.
        """
        if self._jtop is not None:
            return None
        binary = self._which(self.paths.nvpmodel)
        if binary is None:
            return f"no {self.paths.nvpmodel} binary, and jtop.service is not available"
        if not os.access(binary, os.X_OK):
            return f"{binary} is not executable by this user; {PERMISSION_FIX}"
        euid = self._euid()
        if euid == 0:
            return None
        try:
            info = os.stat(binary)
            with open(binary, "rb") as handle:
                script = handle.read(2) == b"#!"
        except OSError:
            return None  # executable but unreadable (mode 0711): cannot tell
        if script or (info.st_mode & stat.S_ISUID and info.st_uid == 0):
            return None
        return f"{binary} runs as uid {euid}, not root, and jtop.service is not available; {PERMISSION_FIX}"

    def set_power_mode(self, mode: int | str) -> PowerModeInfo:
        if self.conf is None:
            raise PowerModesUnsupported(
                "no nvpmodel.conf found: power modes are not available on this device"
            )
        try:
            target = self.conf.mode(int(mode) if isinstance(mode, str) and mode.isdigit() else mode)
        except (KeyError, LookupError):
            names = ", ".join(f"{m.id}={m.name}" for m in self.conf.modes)
            raise PowerModeError(f"power mode {mode!r} does not exist here; available: {names}") from None
        current = self._current_conf_mode()
        if current is None:
            raise PowerModeError("cannot read the current power mode (nvpmodel -q failed)")
        if target.id == current.id:
            return self._mode_info(target, current)
        if target.needs_reboot_from(current):
            raise RebootRequired(
                f"switching from {current.name} to {target.name} changes the GPU power-gating masks "
                f"(TPC {current.tpc_pg_mask} -> {target.tpc_pg_mask}, FBP {current.fbp_pg_mask} -> "
                f"{target.fbp_pg_mask}) and needs a reboot; cotrain never reboots the device"
            )
        if self._original_mode is None:
            self._original_mode = current
            self._original_clocks = self.sysfs.read_clock_state()
        self._switch(target)
        self._mode_name = target.name
        self._refresh_cpus()
        return self._mode_info(target, target)

    def _switch(self, target: PowerMode) -> None:
        if self._jtop is not None:
            try:
                self._jtop.nvpmodel = target.id  # asynchronous in jtop: poll until it takes
            except Exception as exc:  # JtopException and friends: a refusal, never a crash
                detail = " ".join(str(exc).split())
                raise PowerModeError(
                    f"jtop.service refused to switch to {target.name} ({type(exc).__name__}: {detail})"
                ) from None
            deadline = self._monotonic() + NVPMODEL_TIMEOUT_S
            while self._query_mode_id() != target.id:
                if self._monotonic() > deadline:
                    raise PowerModeError(
                        f"jtop did not switch to {target.name} within {NVPMODEL_TIMEOUT_S:g} s"
                    )
                time.sleep(0.1)
            return
        result = self._nvpmodel(["-m", str(target.id)])
        if result is None:
            raise PowerModesUnsupported(f"no {self.paths.nvpmodel} binary: cannot change the power mode")
        output = f"{result.stdout}\n{result.stderr}"
        if "REBOOT" in output.upper() and "YES" in output.upper():
            raise RebootRequired(
                f"nvpmodel asked to reboot for {target.name}; refused (prompt left unanswered)"
            )
        if result.returncode != 0 or "NVPM ERROR" in output:
            detail = " ".join(output.split())[:300]
            if any(d in output.lower() for d in _DENIED) or result.returncode in (126, 13):
                raise PowerModeError(
                    f"not permitted to switch to {target.name} (nvpmodel -m {target.id}: {detail}); "
                    f"{PERMISSION_FIX}"
                )
            raise PowerModeError(f"nvpmodel -m {target.id} failed (exit {result.returncode}): {detail}")
        if self._query_mode_id() != target.id:
            raise PowerModeError(f"nvpmodel reported success but the mode is not {target.name}")

    # --- telemetry -----------------------------------------------------------------------------

    def telemetry(self) -> TelemetrySample:
        mode = self._mode_name
        if self._jtop is not None:
            return self._from_jtop(mode)
        if self._tegrastats is not None:
            if not self._tegrastats.alive:
                self._warn(
                    f"tegrastats stopped ({self._tegrastats.error or 'exited'}): telemetry from sysfs now"
                )
                with _suppress_all():
                    self._tegrastats.stop()
                self._tegrastats = None
                self.telemetry_source = "sysfs"
            else:
                sample = self._tegrastats.latest()
                if sample is not None:
                    return self._from_tegrastats(sample, mode)
        return self._from_sysfs(mode)

    def _from_jtop(self, mode: str | None) -> TelemetrySample:
        assert self._jtop is not None
        stats = self._jtop.stats
        loads = [float(v) for k, v in stats.items() if k.startswith("CPU") and isinstance(v, int | float)]
        power = self._jtop.power.get("tot", {}).get("power")
        temps = [float(v) for k, v in stats.items() if k.startswith("Temp") and isinstance(v, int | float)]
        return TelemetrySample(
            cpu_util_percent=sum(loads) / len(loads) if loads else None,
            per_cpu_util_percent=tuple(loads),
            memory_used_mb=psutil.virtual_memory().used / 2**20,
            power_w=None if power is None else float(power) / 1000,
            temperature_c=max(temps) if temps else None,
            gpu_util_percent=float(stats["GPU"]) if isinstance(stats.get("GPU"), int | float) else None,
            power_mode=str(stats.get("nvpmodel")) if stats.get("nvpmodel") else mode,
            source="jtop",
        )

    def _from_tegrastats(self, sample: TegrastatsSample, mode: str | None) -> TelemetrySample:
        loads = [c.load_pct for c in sample.cpu if c is not None]
        return TelemetrySample(
            cpu_util_percent=sum(loads) / len(loads) if loads else None,
            per_cpu_util_percent=tuple(loads),
            memory_used_mb=float(sample.ram_used_mb),
            power_w=sample.total_power_w,
            temperature_c=sample.hottest_c,
            gpu_util_percent=sample.gpu_load_pct,
            gpu_freq_mhz=sample.gpu_freq_mhz,
            power_mode=mode,
            source="tegrastats",
            rails_mw=dict(sample.rails_mw),
        )

    def _from_sysfs(self, mode: str | None) -> TelemetrySample:
        snap = self.sysfs.snapshot()
        per_cpu = psutil.cpu_percent(interval=None, percpu=True)
        temps = list(snap.temperatures_c.values())
        return TelemetrySample(
            cpu_util_percent=sum(per_cpu) / len(per_cpu) if per_cpu else None,
            per_cpu_util_percent=tuple(per_cpu),
            memory_used_mb=psutil.virtual_memory().used / 2**20,
            power_w=snap.power.total_w,
            temperature_c=max(temps) if temps else None,
            gpu_util_percent=snap.gpu.load_pct if snap.gpu else None,
            gpu_freq_mhz=snap.gpu.cur_mhz if snap.gpu else None,
            power_mode=mode,
            source="sysfs",
            rails_mw=dict(snap.power.rails_mw),
        )

    # --- the rest ------------------------------------------------------------------------------

    def describe(self) -> dict[str, object]:
        current = None
        with _suppress_all():
            current = self.current_power_mode()
        return {
            "platform": self.name,
            "model": self.sysfs.board_model(),
            "cpus": list(self._cpus),
            "clusters": [list(c) for c in self.clusters()],
            "telemetry": {"source": self.telemetry_source},
            "power_modes": {
                "control": "jtop" if self._jtop is not None else f"{self.paths.nvpmodel} CLI",
                "conf": str(self.paths.nvpmodel_conf or self.paths.root / "etc" / "nvpmodel.conf"),
                "current": None if current is None else current.name,
                "modes": [
                    {"id": m.id, "name": m.name, "needs_reboot": m.needs_reboot} for m in self.power_modes()
                ],
            },
        }

    def restore(self) -> None:
        """Put back the power mode and clock limits found before the first change, then stop readers.

        A failure is reported (not swallowed) and the original mode is kept, so a second call
        tries again; the readers are stopped whatever happens.
        """
        try:
            if self._original_mode is not None:
                try:
                    current = self._current_conf_mode()
                    if current is None or current.id != self._original_mode.id:
                        self._switch(self._original_mode)
                except Exception as exc:
                    self._warn(f"could not restore power mode {self._original_mode.name}: {exc}")
                else:
                    self._mode_name = self._original_mode.name
                    if self._original_clocks is not None:
                        report = self.sysfs.write_clock_state(self._original_clocks)
                        for failure in report.failed:
                            self._warn(f"could not restore {failure.path}: {failure.error}")
                    self._original_mode = None
                    self._original_clocks = None
                    self._refresh_cpus()
            self._placer.restore()
        finally:
            if self._tegrastats is not None:
                with _suppress_all():
                    self._tegrastats.stop()
                self._tegrastats = None
            if self._jtop is not None:
                with _suppress_all():
                    self._jtop.close()
                self._jtop = None


def _jtop_denied(exc: BaseException) -> bool:
    """jtop's client says "I can't access jtop.service" when /run/jtop.sock (root:jtop, 0660)
    refuses this user, i.e. the user is not in group jtop (jtop/jtop.py)."""
    text = str(exc).lower()
    return isinstance(exc, PermissionError) or "can't access jtop.service" in text or "permission" in text


class _suppress_all:
    """Telemetry reads must never take the run down: swallow errors (never KeyboardInterrupt or
    SystemExit) and continue."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, Exception)

"""`cotrain` command line.

Exit codes (docs/cli.md):
- 0: success;
- 1: the run started but failed or was interrupted; its records are kept;
- 2: bad input (config, policy, dataset, model, output directory, a missing optional extra):
  nothing was started, and each problem is one line naming the file, the line and the field;
- 130: a second SIGINT or SIGTERM forced the exit: workers were killed, their requests
  accounted for and the platform restored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_FORCED = 130


def _err(message: str) -> None:
    print(f"cotrain: error: {message}", file=sys.stderr)


def _load(path: str, overrides: dict[str, Any]) -> Any:
    """(config, platform) validated against the machine; prints every problem and returns None.

    The platform is created here because several checks need it (CPUs, power modes). On failure
    it is restored at once, so a bad config leaves nothing running and nothing changed.
    """
    from cotrain.config import ConfigError, load_config

    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        for line in exc.lines:
            _err(line)
        return None
    from cotrain.platform import create_platform
    from cotrain.preflight import preflight

    try:
        platform = create_platform(
            config.platform, warn=lambda m: print(f"cotrain: warning: {m}", file=sys.stderr)
        )
    except Exception as exc:
        _err(f"{path}: platform: cannot open the {config.platform.kind} platform: {exc}")
        return None
    problems = preflight(config, platform)
    for line in _with_lines(path, problems):
        _err(line)
    if problems:
        platform.restore()
        return None
    return config, platform


def _with_lines(path: str, problems: list[str]) -> list[str]:
    """`file:line: field.path: message` for preflight's `field.path: message` lines.

    Preflight checks the world, not the file, so it names fields but has no YAML at hand; the
    line is looked up here, in the same file the config was loaded from."""
    if not problems:
        return []
    from cotrain.config import ConfigError, read_yaml_file

    try:
        doc = read_yaml_file(Path(path))
    except ConfigError:
        doc = None
    located = []
    for problem in problems:
        field, sep, _ = problem.partition(": ")
        line = doc.line_of(field) if doc is not None and sep else None
        located.append(f"{path}:{line}: {problem}" if line is not None else f"{path}: {problem}")
    return located


def cmd_validate(args: argparse.Namespace) -> int:
    if args.policy is not None:
        return _validate_policy(args.policy)
    if args.config is None:
        _err("give an experiment file, or --policy FILE")
        return EXIT_BAD_INPUT
    loaded = _load(args.config, {})
    if loaded is None:
        return EXIT_BAD_INPUT
    config, platform = loaded
    platform.restore()
    workloads = config.workloads
    parts = [s.worker for s in workloads.inference_services()] + [
        f"train:{j.name}" for j in workloads.training
    ]
    print(
        f"{args.config}: ok ({', '.join(parts)}; "
        f"controller {config.controller.name}; "
        + (f"{config.duration_s:g} s)" if config.duration_s is not None else "until stopped)")
    )
    return EXIT_OK


def _validate_policy(path: str) -> int:
    """A power-mode policy file on its own: its keys, and its modes against its `board` if named."""
    from cotrain.config import ConfigError
    from cotrain.power_modes.policy import load_power_policy

    try:
        policy = load_power_policy(path)
    except ConfigError as exc:
        for line in exc.lines:
            _err(line)
        return EXIT_BAD_INPUT
    modes = ", ".join(str(m) for m in policy.allowed_modes) or "every mode"
    budget = "no power budget" if policy.power_budget_w is None else f"budget {policy.power_budget_w:g} W"
    board = f"board {policy.board}" if policy.board else "no board named (modes checked at run time)"
    print(f"{path}: ok (power-mode policy: {modes}; {budget}; dwell {policy.min_dwell_s:g} s; {board})")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from cotrain.config_reference import reference_markdown, schema_json

    text = schema_json() if args.config_command == "schema" else reference_markdown()
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"written: {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _raw_output(path: str) -> dict[str, Any]:
    """The `output` section as written (no defaults), or {} when it cannot be read: `_load`
    reports the file's problems."""
    from cotrain.config import ConfigError, read_yaml_file

    try:
        data = read_yaml_file(Path(path)).data
    except ConfigError:
        return {}
    output = data.get("output") if isinstance(data, dict) else None
    return output if isinstance(output, dict) else {}


def cmd_serve(args: argparse.Namespace) -> int:
    """`cotrain run` that needs no duration: it serves until SIGINT or SIGTERM."""
    return cmd_run(args, serve=True)


def cmd_run(args: argparse.Namespace, *, serve: bool = False) -> int:
    overrides: dict[str, Any] = {}
    if getattr(args, "duration", None) is not None:
        overrides["duration_s"] = args.duration
    if args.out is not None:
        overrides["output"] = {"dir": args.out}
    if serve:  # days of service: a summary every minute, records rotated (unless the file says)
        raw = _raw_output(args.config)
        for key, value in (("summary_period_s", 60.0), ("rotate_mb", 64.0)):
            if key not in raw:
                overrides.setdefault("output", {})[key] = value
    loaded = _load(args.config, overrides)
    if loaded is None:
        return EXIT_BAD_INPUT
    config, platform = loaded
    if config.duration_s is None and not serve:
        platform.restore()
        _err(
            f"{args.config}: duration_s: required for cotrain run (give it, or --duration S); "
            "cotrain serve runs until SIGINT or SIGTERM"
        )
        return EXIT_BAD_INPUT

    from rich.console import Console

    from cotrain.rundir import OutputDirError, RunDir
    from cotrain.runtime import RunFailed, Runtime
    from cotrain.summary import summary_table

    out = config.output.dir or f"runs/{config.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = RunDir(out)
    try:
        replaced = run_dir.prepare(replace=args.force)
    except OutputDirError as exc:
        platform.restore()
        _err(str(exc))
        return EXIT_BAD_INPUT
    console = Console(stderr=True)
    if replaced:
        console.print(f"[yellow]replacing the previous run in {out}[/yellow]")

    dashboard = None
    if getattr(args, "dashboard", False):
        from cotrain.dashboard import DashboardThread

        if console.is_terminal:
            dashboard = DashboardThread(
                run_dir.path, Console(), resume_log=(lambda m: None) if args.quiet else console.print
            )
        else:
            console.print("[yellow]--dashboard needs a terminal; showing progress lines instead[/yellow]")

    def log(message: str) -> None:
        if dashboard is not None:
            dashboard.log(message)  # the dashboard owns the screen while it is up
        elif not args.quiet:
            console.print(message)

    runtime = Runtime(config, run_dir, platform, log=log)
    try:
        summary = runtime.run() if dashboard is None else dashboard.run_beside(runtime.run)
    except RunFailed as exc:
        _err(f"run failed: {exc} (records kept in {out})")
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:
        _err(f"forced stop by a second signal; the platform was restored; records kept in {out}")
        return EXIT_FORCED
    Console().print(summary_table(summary))
    print(f"summary: {run_dir.summary}")
    return EXIT_OK if runtime.status == "completed" else EXIT_RUN_FAILED


def _not_a_run(path: str) -> bool:
    from cotrain.runread import is_run_dir

    if is_run_dir(Path(path)):
        return False
    _err(f"{path} is not a cotrain run directory (none of config.yaml, events.jsonl, summary.json)")
    return True


def cmd_watch(args: argparse.Namespace) -> int:
    """The live dashboard of a run directory; see cotrain/dashboard.py. `q` quits (keys are read
    from standard input when it is a terminal), and the last frame stays on the terminal."""
    if _not_a_run(args.run_dir):
        return EXIT_BAD_INPUT
    if args.refresh_s <= 0 or (args.replay is not None and args.replay <= 0):
        _err("--refresh-s and --replay take a positive number")
        return EXIT_BAD_INPUT
    from rich.console import Console

    from cotrain.dashboard import Dashboard, render_once, stdin_fd, watch

    console = Console()
    if args.once or not console.is_terminal:  # piped: one frame, as --once
        render_once(args.run_dir, console)
        return EXIT_OK
    watch(
        Dashboard(args.run_dir),
        console,
        refresh_s=args.refresh_s,
        replay_speed=args.replay,
        keys_fd=stdin_fd(),
    )
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """report.md and PNG plots from one or more run directories; see cotrain/report.py."""
    bad = [path for path in args.run_dirs if _not_a_run(path)]
    if bad:
        return EXIT_BAD_INPUT
    from cotrain.report import write_report

    written = write_report([Path(p) for p in args.run_dirs], Path(args.out))
    print(f"written: {written[0]} and {len(written) - 1} plots in {args.out}")
    return EXIT_OK


def cmd_summary(args: argparse.Namespace) -> int:
    from cotrain.rundir import RunDir
    from cotrain.summary import compute_summary

    run_dir = RunDir(args.run_dir)
    if not run_dir.config.exists():
        _err(f"{args.run_dir} is not a cotrain run directory (no config.yaml)")
        return EXIT_BAD_INPUT
    summary = compute_summary(run_dir.path)
    if args.check:
        if not run_dir.summary.exists():
            _err(f"{run_dir.summary} does not exist")
            return EXIT_RUN_FAILED
        stored = json.loads(run_dir.summary.read_text(encoding="utf-8"))
        if stored != summary:
            _err("summary.json differs from the summary recomputed from the record files")
            return EXIT_RUN_FAILED
        print(f"{run_dir.summary}: matches the record files")
        return EXIT_OK
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def _platform_from_args(args: argparse.Namespace) -> Any:
    from cotrain.config import HostPlatformConfig, JetsonPlatformConfig
    from cotrain.platform import create_platform, detect_kind

    kind = args.kind or detect_kind(Path(args.root))
    if kind == "jetson":
        config: Any = JetsonPlatformConfig(
            kind="jetson",
            root=args.root,
            nvpmodel=args.nvpmodel,
            tegrastats=args.tegrastats,
            nvpmodel_conf=args.nvpmodel_conf,
            jtop=not args.no_jtop,
        )
    else:
        config = HostPlatformConfig(kind="host")
    return create_platform(config, warn=lambda m: print(f"cotrain: warning: {m}", file=sys.stderr))


def cmd_platform_info(args: argparse.Namespace) -> int:
    platform = _platform_from_args(args)
    try:
        info = platform.describe()
        platform.telemetry()
        time.sleep(0.5)  # utilisation is a rate: measure it over a real interval
        sample = platform.telemetry()
    finally:
        platform.restore()
    info["telemetry_now"] = {k: v for k, v in vars(sample).items() if k != "per_cpu_util_percent"}
    info["software"] = _software()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    from rich.console import Console

    Console().print(platform_table(info))
    return EXIT_OK


def _software() -> dict[str, Any]:
    """Versions a bug report needs, and which optional extras this install has."""
    import platform as python_platform

    from cotrain.extras import EXTRAS, installed_version, missing_reason

    software: dict[str, Any] = {"cotrain": _version(), "python": python_platform.python_version()}
    for dist in ("torch", "torchvision"):
        software[dist] = _dist_version(dist)
    for extra in EXTRAS:
        reason = missing_reason(extra)
        software[f"extra {extra.name}"] = (
            f"{extra.distribution} {installed_version(extra)}" if reason is None else f"not usable: {reason}"
        )
    return software


def _dist_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def platform_table(info: dict[str, Any]) -> Any:
    """`platform info` as a two-column table: one row per fact, a section per nested group."""
    from rich.table import Table

    table = Table(title=f"cotrain platform: {info.get('platform', '?')}", show_header=False, expand=False)
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in info.items():
        if isinstance(value, dict):
            table.add_section()
            for sub_key, sub_value in value.items():
                table.add_row(f"{key}.{sub_key}", _cell_text(sub_value))
        else:
            table.add_row(key, _cell_text(value))
    return table


def _cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell_text(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell_text(v)}" for k, v in value.items()) or "-"
    return str(value)


def _board_modes_json(name: str) -> dict[str, Any]:
    from cotrain.power_modes.boards import load_board

    board = load_board(name)
    return {
        "board": board.board,
        "default_id": board.default_mode_id,
        "modes": [
            {
                "id": m.id,
                "name": m.name,
                "online_cores": m.online_cores,
                "cpu_max_mhz": dict(m.cpu_max_mhz),
                "gpu_max_mhz": m.gpu_max_mhz,
                "tpc_pg_mask": m.tpc_pg_mask,
                "emc_max_mhz": m.emc_max_mhz,
                "fbp_pg_mask": m.fbp_pg_mask,
                "needs_reboot_from_default": m.needs_reboot_from_default,
            }
            for m in board.modes
        ],
    }


def cmd_modes_list(args: argparse.Namespace) -> int:
    if args.board and args.nvpmodel_conf:
        _err("give --board or --nvpmodel-conf, not both")
        return EXIT_BAD_INPUT
    if args.nvpmodel_conf:
        from cotrain.power_modes.nvpmodel import NvpmodelParseError, modes_json, parse_nvpmodel

        try:
            text = Path(args.nvpmodel_conf).read_text(encoding="utf-8", errors="replace")
            data = modes_json(
                parse_nvpmodel(text), verbose=not args.json
            )  # --json: exactly the contract's keys
        except OSError as exc:
            _err(f"cannot read {args.nvpmodel_conf}: {exc.strerror or exc}")
            return EXIT_BAD_INPUT
        except NvpmodelParseError as exc:
            _err(f"{args.nvpmodel_conf}: {exc}")
            return EXIT_BAD_INPUT
    elif args.board:
        from cotrain.power_modes.boards import list_boards

        if args.board not in list_boards():
            _err(f"unknown board {args.board!r}; known: {', '.join(list_boards())}")
            return EXIT_BAD_INPUT
        data = _board_modes_json(args.board)
    else:
        platform = _platform_from_args(args)
        try:
            current = platform.current_power_mode()
            data = {
                "platform": platform.name,
                "current": None if current is None else current.name,
                "modes": [vars(m) for m in platform.power_modes()],
            }
        finally:
            platform.restore()
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    title = f"power modes ({data.get('board') or data.get('platform') or args.nvpmodel_conf})"
    table = Table(title=title)
    detailed = "cpu_max_mhz" in data["modes"][0] if data["modes"] else False
    columns = ("id", "name", "cores", "CPU max MHz", "GPU max MHz", "EMC max MHz", "TPC mask", "reboot?")
    for column in columns if detailed else ("id", "name", "cores", "what it does"):
        table.add_column(column)
    for m in data["modes"]:
        if not detailed:
            table.add_row(str(m["id"]), m["name"], str(m["online_cores"]), m.get("detail", ""))
            continue
        caps = sorted({_mhz(v) for v in m["cpu_max_mhz"].values()})
        reboot = m.get("needs_reboot_from_default")
        table.add_row(
            str(m["id"]),
            m["name"],
            str(m["online_cores"]),
            " / ".join(caps) or "-",
            _mhz(m["gpu_max_mhz"]),
            _mhz(m.get("emc_max_mhz")),
            str(m["tpc_pg_mask"]),
            "-" if reboot is None else ("yes" if reboot else "no"),
        )
    Console().print(table)
    if detailed:
        print(f"default mode: {data['default_id']}; 'reboot?' is relative to the default mode")
    return EXIT_OK


def _mhz(value: float | None) -> str:
    return "max" if value is None else f"{value:g}"


def cmd_parse_tegrastats(args: argparse.Namespace) -> int:
    from cotrain.platform.tegrastats import parse_tegrastats_lines, sample_json

    try:
        text = Path(args.file).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        _err(f"cannot read {args.file}: {exc.strerror or exc}")
        return EXIT_BAD_INPUT
    samples, skipped = parse_tegrastats_lines(text.splitlines())
    print(f"cotrain: {len(samples)} samples, {skipped} other line(s) skipped", file=sys.stderr)
    rows = [sample_json(s) for s in samples]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table(title=args.file)
    for column in ("ram MB", "cpu load %", "gpu %", "gpu MHz", "rails mW"):
        table.add_column(column)
    for r in rows:
        cpus = [c for c in r["cpu"] if c is not None]  # type: ignore[attr-defined]
        load = sum(c["load_pct"] for c in cpus) / len(cpus) if cpus else None
        table.add_row(
            f"{r['ram_used_mb']}/{r['ram_total_mb']}",
            "-" if load is None else f"{load:.0f}",
            str(r["gpu_load_pct"]),
            str(r["gpu_freq_mhz"]),
            ", ".join(f"{k} {v:g}" for k, v in r["rails_mw"].items()),  # type: ignore[attr-defined]
        )
    Console().print(table)
    return EXIT_OK


def cmd_bench_overhead(args: argparse.Namespace) -> int:
    if args.ingress is not None:
        return _bench_ingress_overhead(args)
    from cotrain.overhead import run_overhead_bench

    result = run_overhead_bench(Path(args.out), requests=args.requests, rate_per_s=args.rate)
    o = result["overhead_ms"]
    verdict = "meets" if o["p99"] <= result["target_p99_ms"] else "misses"
    print(
        f"cotrain overhead per request over {result['requests']} requests: p50 {o['p50']:.3f} ms, "
        f"p99 {o['p99']:.3f} ms, max {o['max']:.3f} ms "
        f"({verdict} the {result['target_p99_ms']} ms p99 target)"
    )
    print(f"written: {Path(args.out) / 'overhead.json'}")
    return EXIT_OK


def _bench_ingress_overhead(args: argparse.Namespace) -> int:
    from cotrain.extras import SERVE, missing_reason

    reason = missing_reason(SERVE)
    if reason is not None:
        _err(reason)
        return EXIT_BAD_INPUT
    from cotrain.ingress_overhead import run_ingress_overhead

    try:
        result = run_ingress_overhead(
            args.ingress,
            Path(args.out),
            requests=args.requests,
            rate_per_s=args.rate,
            repeats=args.repeats,
            max_batch_size=args.max_batch,
        )
    except RuntimeError as exc:
        _err(str(exc))
        return EXIT_RUN_FAILED
    o, c, e = result["overhead_ms"], result["cotrain"]["latency_ms"], result["echo"]["latency_ms"]
    verdict = "meets" if o["p99"] <= result["target_p99_ms"] else "misses"
    print(
        f"{args.ingress} at {args.rate:g} req/s, medians of {args.repeats} alternating runs of "
        f"{args.requests}: "
        f"cotrain p50 {c['p50']:.3f} / p99 {c['p99']:.3f} ms, bare echo p50 {e['p50']:.3f} / p99 "
        f"{e['p99']:.3f} ms; cotrain adds p50 {o['p50']:.3f} / p99 {o['p99']:.3f} ms "
        f"({verdict} the {result['target_p99_ms']} ms p99 target)"
    )
    print(f"written: {Path(args.out) / 'overhead.json'}")
    return EXIT_OK


def _bench_sim(args: argparse.Namespace) -> int:
    """The bench on the simulated Orin: no device is touched, so only the config is checked."""
    from cotrain.config import ConfigError, load_config

    try:
        config = load_config(args.scenario, {})
    except ConfigError as exc:
        for line in exc.lines:
            _err(line)
        return EXIT_BAD_INPUT
    from cotrain.bench import bench_markdown
    from cotrain.sim.bench import run_sim_bench, run_sim_scenarios, scenarios_markdown

    out = Path(args.out)
    try:
        if args.scenarios is not None:
            traces = Path(args.traces) if args.traces else Path(args.scenario).parent / "traces"
            result = run_sim_scenarios(
                config,
                out,
                args.scenario,
                args.scenarios,
                args.seed,
                controllers=args.controllers,
                traces_dir=traces,
                repeats=args.repeats,
                progress=lambda m: print(f"bench {m}", file=sys.stderr, flush=True),
            )
            print(scenarios_markdown(result))
        else:
            result = run_sim_bench(
                config, out, args.scenario, controllers=args.controllers, repeats=args.repeats
            )
            print(bench_markdown(result))
    except ValueError as exc:  # a scenario the simulator cannot represent (a model, a process)
        _err(f"{args.scenario}: --platform sim: {exc}")
        return EXIT_BAD_INPUT
    print((out / "calibration.txt").read_text(encoding="utf-8"))
    print(
        f"written: {out / 'bench.json'}, bench.md, calibration.txt" + ("" if args.scenarios else " and plots")
    )
    return EXIT_OK


def cmd_bench_scenario(args: argparse.Namespace) -> int:
    """Every controller and the static oracle on one scenario; see cotrain/bench.py."""
    if args.repeats < 1 or (args.scenarios is not None and args.scenarios < 1):
        _err("--repeats and --scenarios take a count of at least 1")
        return EXIT_BAD_INPUT
    if args.platform == "sim":
        return _bench_sim(args)
    if args.scenarios is not None:
        _err(
            "--scenarios runs on the simulator (--platform sim): drawn scenarios on real processes "
            "would take the bench's time once per scenario"
        )
        return EXIT_BAD_INPUT
    loaded = _load(args.scenario, {})  # validated and preflighted before any run starts
    if loaded is None:
        return EXIT_BAD_INPUT
    config, platform = loaded
    platform.restore()
    from rich.console import Console

    from cotrain.bench import BenchError, bench_markdown, run_bench

    console = Console(stderr=True)
    try:
        result = run_bench(
            config,
            Path(args.out),
            args.scenario,
            controllers=args.controllers,
            progress=lambda m: console.print(f"bench {m}"),
            repeats=args.repeats,
        )
    except BenchError as exc:
        _err(str(exc))
        return 1
    print(bench_markdown(result))
    print(f"written: {Path(args.out) / 'bench.json'}, bench.md and plots")
    return EXIT_OK


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (where it has one worth showing), examples as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and "default" not in text
        if shown and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


def _examples(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def _command(
    sub: Any, name: str, help_text: str, *examples: str, func: Any = None
) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its defaults and at least one example."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog=_examples(*examples) if examples else None,
        formatter_class=_HelpFormatter,
    )
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def cmd_load(args: argparse.Namespace) -> int:
    """Open-loop load against an Open Inference Protocol server; see cotrain/loadgen.py."""
    from cotrain.extras import SERVE, missing_reason

    reason = missing_reason(SERVE)
    if reason is not None:
        _err(reason)
        return EXIT_BAD_INPUT
    from cotrain.loadgen import load_command

    code: int = load_command(args)
    return code


def _add_platform_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=("host", "jetson"), help="the platform; default: detected")
    parser.add_argument("--root", default="/", help="filesystem root to read the device from (for fakes)")
    parser.add_argument("--nvpmodel", default="nvpmodel", help="nvpmodel binary")
    parser.add_argument("--tegrastats", default="tegrastats", help="tegrastats binary")
    parser.add_argument(
        "--nvpmodel-conf", dest="nvpmodel_conf", help="nvpmodel.conf; default: <root>/etc/nvpmodel.conf"
    )
    parser.add_argument("--no-jtop", action="store_true", help="do not try jtop.service")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cotrain")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cotrain",
        description="Co-run latency-critical inference and training on one device.",
        epilog="exit codes: 0 ok; 1 the run failed or was interrupted; 2 bad input, nothing started; "
        "130 forced stop by a second signal. Docs: docs/cli.md",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cotrain {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(
        sub,
        "run",
        "run an experiment YAML: spawn its workloads, control them, record everything",
        "cotrain run experiments/quickstart.yaml --duration 20 --out runs/qs",
        "cotrain run experiments/quickstart.yaml --out runs/qs --force --dashboard",
        func=cmd_run,
    )
    run.add_argument("config", help="experiment YAML")
    run.add_argument("--duration", type=float, metavar="S", help="override duration_s")
    run.add_argument(
        "--out", metavar="DIR", help="run directory; default: output.dir, else runs/<name>-<time>"
    )
    run.add_argument("--force", action="store_true", help="replace a previous run in the run directory")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument("--dashboard", action="store_true", help="show the live dashboard while it runs")

    serve = _command(
        sub,
        "serve",
        "serve an experiment's services until SIGINT or SIGTERM (duration_s optional)",
        "cotrain serve experiments/serve-demo.yaml --out runs/serve",
        func=cmd_serve,
    )
    serve.add_argument("config", help="experiment YAML, usually with workloads.inference.ingress")
    serve.add_argument("--duration", type=float, metavar="S", help="stop after S seconds instead")
    serve.add_argument(
        "--out", metavar="DIR", help="run directory; default: output.dir, else runs/<name>-<time>"
    )
    serve.add_argument("--force", action="store_true", help="replace a previous run in the run directory")
    serve.add_argument("--quiet", action="store_true", help="no progress lines")
    serve.add_argument("--dashboard", action="store_true", help="show the live dashboard while it serves")

    watch = _command(
        sub,
        "watch",
        "live dashboard of a run directory (running or finished); q quits",
        "cotrain watch runs/qs",
        "cotrain watch runs/qs --replay 4",
        func=cmd_watch,
    )
    watch.add_argument("run_dir")
    watch.add_argument("--once", action="store_true", help="print one frame and exit")
    watch.add_argument(
        "--refresh-s", dest="refresh_s", type=float, default=1.0, metavar="S", help="seconds between frames"
    )
    watch.add_argument(
        "--replay", type=float, metavar="SPEED", help="replay a recorded run from its start at SPEED x"
    )

    report = _command(
        sub,
        "report",
        "report.md and PNG plots from run directories",
        "cotrain report runs/qs --out reports/qs",
        "cotrain report runs/a runs/b --out reports/ab",
        func=cmd_report,
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", required=True, metavar="DIR", help="where report.md and the plots go")

    validate = _command(
        sub,
        "validate",
        "check an experiment YAML (or a power-mode policy) without running it",
        "cotrain validate experiments/quickstart.yaml",
        "cotrain validate --policy power_modes/policy-example.yaml",
        func=cmd_validate,
    )
    validate.add_argument("config", nargs="?", help="experiment YAML")
    validate.add_argument("--policy", metavar="FILE", help="validate this power-mode policy file instead")

    config = _command(sub, "config", "the experiment file's schema and reference")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="WHAT")
    for name, what, example in (
        ("schema", "the JSON Schema of an experiment file", "cotrain config schema > cotrain.schema.json"),
        ("reference", "the Markdown configuration reference (docs/config.md)", REFERENCE_EXAMPLE),
    ):
        shown = _command(config_sub, name, what, example, func=cmd_config)
        shown.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")

    summary = _command(
        sub,
        "summary",
        "recompute summary.json from a run directory's records",
        "cotrain summary runs/qs --check",
        func=cmd_summary,
    )
    summary.add_argument("run_dir")
    summary.add_argument("--check", action="store_true", help="compare with the stored summary.json")

    platform = _command(sub, "platform", "the device cotrain runs on")
    platform_sub = platform.add_subparsers(dest="platform_command", required=True, metavar="WHAT")
    info = _command(
        platform_sub,
        "info",
        "what was detected and what is supported here",
        "cotrain platform info",
        "cotrain platform info --json",
        func=cmd_platform_info,
    )
    _add_platform_args(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")

    modes = _command(sub, "modes", "power modes")
    modes_sub = modes.add_subparsers(dest="modes_command", required=True, metavar="WHAT")
    listing = _command(
        modes_sub,
        "list",
        "list power modes of this device, a board table or an nvpmodel.conf",
        "cotrain modes list",
        "cotrain modes list --board agx-orin-64gb",
        "cotrain modes list --nvpmodel-conf /etc/nvpmodel.conf --json",
        func=cmd_modes_list,
    )
    source = listing.add_mutually_exclusive_group()
    source.add_argument("--board", help="a board table name (e.g. agx-orin-64gb)")
    _add_platform_args(listing)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    bench = _command(sub, "bench", "benchmarks: `cotrain bench SCENARIO.yaml --out DIR` or `bench overhead`")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    overhead = _command(
        bench_sub,
        "overhead",
        "time cotrain adds per request beyond the model",
        "cotrain bench overhead --out runs/overhead",
        func=cmd_bench_overhead,
    )
    overhead.add_argument("--out", required=True, metavar="DIR", help="where overhead.json goes")
    overhead.add_argument("--requests", type=int, default=2000, help="requests to time")
    overhead.add_argument(
        "--rate", type=float, default=200.0, help="arrivals per second (spaced, no queueing)"
    )
    overhead.add_argument(
        "--ingress",
        choices=("grpc", "http"),
        help="measure the network path instead: cotrain serve (noop model) against a bare echo server",
    )
    overhead.add_argument(
        "--repeats", type=int, default=3, help="with --ingress: alternating runs per server"
    )
    overhead.add_argument(
        "--max-batch",
        dest="max_batch",
        type=int,
        default=1,
        help="with --ingress: cotrain's batch limit (1: each request alone; more: 1 ms queue delay)",
    )
    scenario = _command(
        bench_sub,
        "scenario",
        "every controller and the static oracle on one scenario (`cotrain bench FILE`)",
        "cotrain bench experiments/bench-cpu.yaml --out runs/bench-cpu",
        "cotrain bench experiments/bench-orin-sim.yaml --platform sim --out runs/bench-sim",
        "cotrain bench experiments/bench-orin-sim.yaml --platform sim --scenarios 20 --seed 7 --out runs/s20",
        func=cmd_bench_scenario,
    )
    scenario.add_argument("scenario", help="experiment YAML, optionally with a `bench:` section")
    scenario.add_argument(
        "--out", required=True, metavar="DIR", help="where bench.json, bench.md and plots go"
    )
    scenario.add_argument(
        "--platform", choices=("real", "sim"), default="real", help="real processes, or the simulated Orin"
    )
    scenario.add_argument(
        "--controllers",
        type=lambda s: [c for c in s.split(",") if c],
        help="comma-separated subset; default: the scenario's bench.controllers",
    )
    scenario.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="K",
        help="run every row (oracle grid points included) K times, interleaved; rows report medians",
    )
    scenario.add_argument(
        "--scenarios",
        type=int,
        metavar="N",
        help="with --platform sim: every controller over N scenarios drawn at random around this one",
    )
    scenario.add_argument("--seed", type=int, default=0, help="seed of the drawn scenarios (default 0)")
    scenario.add_argument(
        "--traces",
        metavar="DIR",
        help="trace files the drawn scenarios may replay (default: traces/ beside the scenario)",
    )

    load = _command(
        sub,
        "load",
        "send open-loop load to an Open Inference Protocol (KServe v2) server and record every request",
        "cotrain load grpc://127.0.0.1:8001 --model inference --arrivals a.yaml --duration 30 --out runs/ld",
        "cotrain load http://127.0.0.1:8000 --model inference --arrivals experiments/minimal.yaml "
        "--duration 30 --out runs/load-http",
        func=cmd_load,
    )
    from cotrain.load_args import add_load_arguments

    add_load_arguments(load)

    telemetry = _command(sub, "telemetry", "telemetry tools")
    telemetry_sub = telemetry.add_subparsers(dest="telemetry_command", required=True, metavar="WHAT")
    parse = _command(
        telemetry_sub,
        "parse-tegrastats",
        "parse a file of tegrastats output",
        "cotrain telemetry parse-tegrastats tegrastats.log --json",
        func=cmd_parse_tegrastats,
    )
    parse.add_argument("file")
    parse.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


REFERENCE_EXAMPLE = "cotrain config reference > docs/config.md"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] not in ("overhead", "scenario", "-h", "--help"):
        argv.insert(1, "scenario")  # `cotrain bench SCENARIO.yaml ...`
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:  # `cotrain ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())

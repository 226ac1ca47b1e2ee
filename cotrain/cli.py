"""`cotrain` command line.

Exit codes: 0 success; 1 the run started but failed; 2 bad input (config, dataset, output
directory), in which case nothing was started and the message names the field.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2


def _err(message: str) -> None:
    print(f"cotrain: error: {message}", file=sys.stderr)


def _load(path: str, overrides: dict[str, Any]) -> Any:
    """Validated config plus machine checks; prints every problem and returns None on failure."""
    from cotrain.config import ConfigError, load_config

    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        for line in exc.lines:
            _err(line)
        return None
    from cotrain.platform import create_platform
    from cotrain.preflight import preflight

    platform = create_platform(config.platform.kind)
    problems = preflight(config, platform.cpu_ids())
    for line in problems:
        _err(f"{path}: {line}")
    return None if problems else config


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args.config, {})
    if config is None:
        return EXIT_BAD_INPUT
    workloads = config.workloads
    parts = (["inference"] if workloads.inference else []) + [f"train:{j.name}" for j in workloads.training]
    print(
        f"{args.config}: ok ({', '.join(parts)}; "
        f"controller {config.controller.name}; {config.duration_s:g} s)"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.duration is not None:
        overrides["duration_s"] = args.duration
    if args.out is not None:
        overrides["output"] = {"dir": args.out}
    config = _load(args.config, overrides)
    if config is None:
        return EXIT_BAD_INPUT

    from rich.console import Console

    from cotrain.platform import create_platform
    from cotrain.rundir import OutputDirError, RunDir
    from cotrain.runtime import RunFailed, Runtime
    from cotrain.summary import summary_table

    out = config.output.dir or f"runs/{config.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = RunDir(out)
    try:
        replaced = run_dir.prepare()
    except OutputDirError as exc:
        _err(str(exc))
        return EXIT_BAD_INPUT
    console = Console(stderr=True)
    if replaced:
        console.print(f"[yellow]replacing the previous run in {out}[/yellow]")

    def log(message: str) -> None:
        if not args.quiet:
            console.print(message)

    runtime = Runtime(config, run_dir, create_platform(config.platform.kind), log=log)
    try:
        summary = runtime.run()
    except RunFailed as exc:
        _err(f"run failed: {exc} (records kept in {out})")
        return EXIT_RUN_FAILED
    Console().print(summary_table(summary))
    print(f"summary: {run_dir.summary}")
    return EXIT_OK if runtime.status == "completed" else EXIT_RUN_FAILED


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cotrain",
        description="Co-run latency-critical inference and training on one device.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment YAML")
    run.add_argument("config", help="experiment YAML")
    run.add_argument("--duration", type=float, metavar="S", help="override duration_s")
    run.add_argument("--out", metavar="DIR", help="run directory (override output.dir)")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check an experiment YAML without running it")
    validate.add_argument("config")
    validate.set_defaults(func=cmd_validate)

    summary = sub.add_parser("summary", help="recompute summary.json from a run directory's records")
    summary.add_argument("run_dir")
    summary.add_argument("--check", action="store_true", help="compare with the stored summary.json")
    summary.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

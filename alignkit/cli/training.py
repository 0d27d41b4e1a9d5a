"""Shared parsing for training commands: `--config FILE` plus `key=value` overrides."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys
from pathlib import Path

log = logging.getLogger("alignkit")


def add_training_command(subparsers, name: str, config_class, help_text: str, runner: str) -> None:
    """Register `alignkit NAME`; `runner` is "module:function" taking the config and
    returning a `TrainResult` (imported only when the command runs)."""
    from alignkit.config import describe_keys

    parser = subparsers.add_parser(
        name,
        help=help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"{help_text}. Every key can be set in --config YAML or as key=value.",
        epilog="config keys:\n" + describe_keys(config_class),
    )
    parser.add_argument("--config", help="YAML file of config keys")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. learning_rate=1e-5 lora.r=8"
    )

    def run_command(args) -> int:
        from alignkit.config import check_input_paths, load_config

        module, function = runner.split(":")
        config = load_config(config_class, args.config, args.overrides)
        check_input_paths(config)  # before minutes go into loading models
        train = getattr(importlib.import_module(module), function)
        try:
            result = train(config)
        except KeyboardInterrupt:
            print(interrupted_message(name, args, Path(config.output_dir)), file=sys.stderr)
            return 130
        if int(os.environ.get("RANK", "0")) != 0:
            return 0  # under torchrun, process 0 reports for the run
        print(f"done: {result.steps} steps; model in {result.final_dir}")
        report = write_run_report(Path(config.output_dir))
        if report is not None:
            print(f"report: {report}")
        return 0

    parser.set_defaults(run=run_command, config_class=config_class)


def interrupted_message(command: str, args, output_dir: Path) -> str:
    """What Ctrl-C leaves behind and the command line that continues from it."""
    from alignkit.train.checkpoint import list_checkpoints

    found = list_checkpoints(output_dir) if output_dir.is_dir() else []
    if not found:
        return (
            f"interrupted before the first checkpoint of {output_dir}; nothing to resume "
            "(save_every sets how often checkpoints are written)"
        )
    again = ["alignkit", command]
    if args.config:
        again += ["--config", args.config]
    again += [o for o in args.overrides if not o.startswith(("resume=", "overwrite="))]
    again.append("resume=auto")
    return (
        f"interrupted; the last checkpoint is {found[-1]}\n"
        f"continue from it with: {shlex.join(again)}"
    )


def write_run_report(output_dir: Path) -> Path | None:
    """report.html in the run folder. A report that cannot be written is a warning, not
    a failed run: the trained model is already saved."""
    try:
        from alignkit.report import write_report

        return write_report([output_dir], output_dir / "report.html")
    except Exception as err:  # noqa: BLE001 - the run itself succeeded
        log.warning("could not write %s: %s", output_dir / "report.html", err)
        return None

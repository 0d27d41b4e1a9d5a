"""`alignkit <command> ...`: each command group lives in its own small module.

A module exposes `register(subparsers)`, which adds its parser and sets `run`, a function
taking the parsed arguments and returning an exit code. No training logic lives here.
"""

from __future__ import annotations

import argparse
import logging
import sys

from alignkit import __version__
from alignkit.errors import AlignkitError

COMMAND_MODULES = (
    "alignkit.cli.models",
    "alignkit.cli.chat",
    "alignkit.cli.data",
    "alignkit.cli.sft",
    "alignkit.cli.dpo",
    "alignkit.cli.kto",
    "alignkit.cli.rm",
    "alignkit.cli.score",
    "alignkit.cli.generate",
    "alignkit.cli.label",
    "alignkit.cli.cai",
    "alignkit.cli.serve",
    "alignkit.cli.rl",
    "alignkit.cli.online",
    "alignkit.cli.quickstart",
    "alignkit.cli.eval",
    "alignkit.cli.probe",
    "alignkit.cli.redteam",
    "alignkit.cli.debate",
    "alignkit.cli.verify",
    "alignkit.cli.report",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="alignkit",
        description="Align language models with human or AI preferences.",
    )
    parser.add_argument("--version", action="version", version=f"alignkit {__version__}")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors on stderr"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="more output: libraries' own progress bars and warnings, every stage's log lines",
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def quiet_libraries() -> None:
    """No per-load "Loading weights" / "Writing model shards" bars and no FutureWarnings
    from the libraries underneath: alignkit shows one bar per long stage of its own.
    Through the environment, so that commands that never load a model never import
    transformers (seconds of start-up) just to silence it."""
    import os
    import warnings

    warnings.filterwarnings(
        "ignore", category=FutureWarning, module=r"(transformers|torch|peft|huggingface_hub)\b"
    )
    # read by huggingface_hub, whose setting transformers' own bars follow when imported
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:
        quiet_libraries()
    try:
        from alignkit.ops import threads

        threads.enable()  # CPU threads follow the cores other processes leave free
        return int(args.run(args) or 0)
    except AlignkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

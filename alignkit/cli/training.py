"""Shared parsing for training commands: `--config FILE` plus `key=value` overrides."""

from __future__ import annotations

import argparse
import importlib


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
        from alignkit.config import load_config

        module, function = runner.split(":")
        result = getattr(importlib.import_module(module), function)(
            load_config(config_class, args.config, args.overrides)
        )
        print(f"done: {result.steps} steps; model in {result.final_dir}")
        return 0

    parser.set_defaults(run=run_command)

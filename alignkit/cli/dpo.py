"""`alignkit dpo [--config FILE] loss=dpo|cdpo|ipo|hinge|robust|simpo|orpo beta=... key=value ...`"""

from __future__ import annotations

from alignkit.cli.training import add_training_command


def register(subparsers) -> None:
    from alignkit.config import DPOConfig

    add_training_command(
        subparsers, "dpo", DPOConfig, "direct preference optimization on preference pairs", _run
    )


def _run(config) -> int:
    from alignkit.methods.dpo import run_dpo

    result = run_dpo(config)
    print(f"done: {result.steps} steps; model in {result.final_dir}")
    return 0

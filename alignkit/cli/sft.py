"""`alignkit sft [--config FILE] key=value ...`"""

from __future__ import annotations

from alignkit.cli.training import add_training_command


def register(subparsers) -> None:
    from alignkit.config import SFTConfig

    add_training_command(
        subparsers, "sft", SFTConfig, "supervised fine-tuning on sft records", _run
    )


def _run(config) -> int:
    from alignkit.methods.sft import run_sft

    result = run_sft(config)
    print(f"done: {result.steps} steps; model in {result.final_dir}")
    return 0

"""`alignkit sft [--config FILE] key=value ...`"""

from alignkit.cli.training import add_training_command


def register(subparsers) -> None:
    from alignkit.config import SFTConfig

    add_training_command(
        subparsers,
        "sft",
        SFTConfig,
        "supervised fine-tuning on sft records",
        "alignkit.methods.sft:run_sft",
    )

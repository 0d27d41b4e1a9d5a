"""`alignkit dpo [--config FILE] loss=dpo|cdpo|ipo|hinge|robust|simpo|orpo beta=... key=value ...`"""

from alignkit.cli.training import add_training_command


def register(subparsers) -> None:
    from alignkit.config import DPOConfig

    add_training_command(
        subparsers,
        "dpo",
        DPOConfig,
        "direct preference optimization on preference pairs",
        "alignkit.methods.dpo:run_dpo",
    )

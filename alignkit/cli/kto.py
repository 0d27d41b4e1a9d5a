"""`alignkit kto [--config FILE] beta=... key=value ...`"""

from alignkit.cli.training import add_training_command


def register(subparsers) -> None:
    from alignkit.config import KTOConfig

    add_training_command(
        subparsers,
        "kto",
        KTOConfig,
        "KTO on unpaired (or paired, split) feedback",
        "alignkit.methods.kto:run_kto",
    )

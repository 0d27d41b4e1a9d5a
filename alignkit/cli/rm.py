"""`alignkit rm [--config FILE] key=value ...`: train a reward model on preference pairs
or K-way rankings."""

from alignkit.cli.training import add_training_command


def register(subparsers) -> None:
    from alignkit.config import RewardConfig

    add_training_command(
        subparsers,
        "rm",
        RewardConfig,
        "train a reward model (Bradley-Terry) on preference pairs or rankings",
        "alignkit.methods.reward:run_rm",
    )

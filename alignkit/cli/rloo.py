"""`alignkit rloo [--config FILE] key=value ...`"""

from alignkit.cli.training import add_training_command

HELP = {
    "ppo": "RLHF with PPO against a reward model, function or task oracle",
    "rloo": "RLOO: REINFORCE with a leave-one-out baseline (no critic)",
    "grpo": "GRPO: group-normalised advantages with a KL loss term (no critic)",
}


def register(subparsers) -> None:
    from alignkit.config import RLOOConfig

    add_training_command(
        subparsers, "rloo", RLOOConfig, HELP["rloo"], "alignkit.methods.rloo:run_rloo"
    )

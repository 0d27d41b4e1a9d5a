"""`alignkit ppo [--config FILE] key=value ...`"""

from alignkit.cli.training import add_training_command

HELP = {
    "ppo": "RLHF with PPO against a reward model, function or task oracle",
    "rloo": "RLOO: REINFORCE with a leave-one-out baseline (no critic)",
    "grpo": "GRPO: group-normalised advantages with a KL loss term (no critic)",
}


def register(subparsers) -> None:
    from alignkit.config import PPOConfig

    add_training_command(subparsers, "ppo", PPOConfig, HELP["ppo"], "alignkit.methods.ppo:run_ppo")

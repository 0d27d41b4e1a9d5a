"""`alignkit ppo|rloo|grpo [--config FILE] key=value ...`: on-policy RL from a reward source."""

from alignkit.cli.training import add_training_command

COMMANDS = (
    ("ppo", "PPOConfig", "RLHF with PPO against a reward model, function or task oracle"),
    ("rloo", "RLOOConfig", "RLOO: REINFORCE with a leave-one-out baseline (no critic)"),
    ("grpo", "GRPOConfig", "GRPO: group-normalised advantages with a KL loss term (no critic)"),
)


def register(subparsers) -> None:
    import alignkit.config as configs

    for name, config_class, help_text in COMMANDS:
        add_training_command(
            subparsers,
            name,
            getattr(configs, config_class),
            help_text,
            f"alignkit.methods.{name}:run_{name}",
        )

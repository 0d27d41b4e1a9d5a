"""`alignkit online-dpo [--config FILE] key=value ...`: online and iterative DPO with a
labeller, a query budget and active pair selection (SEA)."""

from alignkit.cli.training import add_training_command


def register(subparsers) -> None:
    from alignkit.config import OnlineDPOConfig

    add_training_command(
        subparsers,
        "online-dpo",
        OnlineDPOConfig,
        "Online DPO: sample K responses per prompt, label chosen pairs within a query budget "
        "(passive, random, best_worst, SEA), train with DPO/IPO/SimPO",
        "alignkit.methods.online_dpo:run_online_dpo",
    )

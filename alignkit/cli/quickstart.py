"""`alignkit quickstart [--preset full|tiny]`: the classic pipeline end to end."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="sample, label, reward model, PPO, DPO, evaluate: the classic pipeline on the sentiment task",
        description=(
            "On the embedded SmolLM2-135M-Instruct and the built-in sentiment task: sample pairs, "
            "label them with the oracle, train a reward model, run PPO against it and DPO on the "
            "pairs, and compare both with the starting policy on held-out prompts. Finished stages "
            "are skipped on a re-run."
        ),
    )
    parser.add_argument(
        "--preset",
        choices=["full", "tiny"],
        default="full",
        help="tiny: a smoke run of about a minute",
    )
    parser.add_argument(
        "--output-dir", default=None, help="default runs/quickstart (runs/quickstart-tiny)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args) -> int:
    import logging

    from alignkit.quickstart import Quickstart

    if not args.verbose:
        # a line per stage and one bar per long stage; the stages' own log lines with -v
        logging.getLogger("alignkit").setLevel(logging.WARNING)

    output_dir = args.output_dir or (
        "runs/quickstart" if args.preset == "full" else "runs/quickstart-tiny"
    )
    Quickstart(output_dir, preset=args.preset, seed=args.seed).run()
    return 0

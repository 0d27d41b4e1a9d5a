"""`alignkit cai --model M --data prompts.jsonl --out-dir DIR`: SL-CAI critique-revision
data (alignkit.feedback.cai does the work)."""

from __future__ import annotations

from alignkit.cli.label import add_labelling_run_options
from alignkit.models.builtin import DEFAULT_MODEL


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cai",
        help="Constitutional AI (SL-CAI): the model critiques and revises its own answers",
        description=(
            "For every prompt the model answers, then critiques and revises its answer under "
            "principles drawn from a constitution, --revisions times. Writes sft.jsonl (prompt "
            "and final revision), preference.jsonl (revision preferred over the first answer) "
            "and steps.jsonl (every step) to --out-dir, which also holds the label store: "
            "rerun the same command after a crash or kill to resume."
        ),
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model or openai:BASE_URL (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--model-name", help="the server's model name for --model openai:URL")
    parser.add_argument("--data", required=True, help="prompts file (records with 'prompt')")
    parser.add_argument("--out-dir", required=True, help="output folder (and label store)")
    parser.add_argument("--revisions", type=int, default=1, help="critique-revision rounds")
    parser.add_argument("--constitution", help="constitution YAML (default: alignkit's own)")
    parser.add_argument(
        "--few-shot", help="sft records (messages) prepended to every conversation as examples"
    )
    add_labelling_run_options(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from alignkit.feedback.cai import CAISettings, revise_prompts

    settings = CAISettings(
        revisions=args.revisions,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
    )
    options = {"device": args.device, "dtype": args.dtype}
    if args.model_name:
        options["model"] = args.model_name
    report = revise_prompts(
        args.model,
        args.data,
        args.out_dir,
        constitution=args.constitution,
        few_shot=args.few_shot,
        settings=settings,
        model_options=options,
        batch_size=args.batch_size,
        max_attempts=args.max_attempts,
    )
    print(f"revised {report.summary()}")
    written = ", ".join(f"{n} {name} records" for name, n in report.written.items())
    print(f"wrote {written} -> {args.out_dir}")
    return 1 if report.failed else 0

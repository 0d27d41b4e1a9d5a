"""`alignkit label --policy M --data prompts.jsonl --judge J --out prefs.jsonl`: RLAIF
preference labels (alignkit.feedback.rlaif does the work)."""

from __future__ import annotations

from alignkit.models.builtin import DEFAULT_MODEL


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "label",
        help="AI preference labels (RLAIF): sample K responses per prompt, a judge compares them",
        description=(
            "Sample K responses per prompt from the policy, ask the judge which of each pair "
            "is better (under the comparison question of a constitution principle drawn per "
            "prompt, or under --question) and write preference records with the judge's "
            "probability as p_chosen. Everything is kept in a label store in --run-dir: "
            "rerun the same command after a crash or kill to resume; failed judgements are "
            "retried, never written as labels."
        ),
    )
    parser.add_argument(
        "--policy",
        default=DEFAULT_MODEL,
        help=f"model or openai:BASE_URL (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--policy-model", help="the server's model name for --policy openai:URL")
    parser.add_argument("--data", required=True, help="prompts file (records with 'prompt')")
    parser.add_argument(
        "--judge",
        required=True,
        help="llm:MODEL, openai:BASE_URL, a reward-model folder, module:function or task:NAME",
    )
    parser.add_argument("--judge-model", help="the server's model name for --judge openai:URL")
    parser.add_argument("--out", required=True, help="output JSONL of preference records")
    parser.add_argument("-n", "--num-responses", type=int, default=2, help="responses per prompt")
    parser.add_argument(
        "--pairs",
        default="all",
        choices=("all", "adjacent"),
        help="which pairs of the K responses are judged (default all: K(K-1)/2)",
    )
    feedback = parser.add_mutually_exclusive_group()
    feedback.add_argument("--constitution", help="constitution YAML (default: alignkit's own)")
    feedback.add_argument("--question", help="one comparison question for every pair")
    parser.add_argument(
        "--run-dir", help="label store folder (default: next to --out, OUT_STEM.run)"
    )
    add_labelling_run_options(parser)
    parser.set_defaults(run=run)


def add_labelling_run_options(parser) -> None:
    """Sampling, batching, retry and device options shared by `label` and `cai`."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    parser.add_argument(
        "--max-attempts", type=int, default=3, help="tries per prompt over all runs"
    )
    parser.add_argument("--device", default="auto", help="for local models")
    parser.add_argument("--dtype", default="auto", help="for local models")


def run(args) -> int:
    from alignkit.feedback.rlaif import RLAIFSettings, label_preferences

    settings = RLAIFSettings(
        num_responses=args.num_responses,
        pairs=args.pairs,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
    )
    report = label_preferences(
        args.policy,
        args.judge,
        args.data,
        args.out,
        run_dir=args.run_dir,
        constitution=args.constitution,
        question=args.question,
        settings=settings,
        policy_options=_options(args.policy_model, "model", args),
        judge_options=_options(args.judge_model, "judge_model", args),
        batch_size=args.batch_size,
        max_attempts=args.max_attempts,
    )
    print(f"labelled {report.summary()}")
    print(f"wrote {report.written['preference']} preference records -> {args.out}")
    return 1 if report.failed else 0


def _options(model_name: str | None, key: str, args) -> dict:
    """Loader options: where local models run, and the server's model name for an
    `openai:` spec (loaders that need neither ignore device and dtype)."""
    options = {"device": args.device, "dtype": args.dtype}
    return {**options, key: model_name} if model_name else options

"""`alignkit score --model RM --data FILE --out FILE`: add reward-model scores to records."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score prompt/completion (or messages) records with a reward model",
        description=(
            "Read records (prompt + completion, or messages) and write them to --out with "
            "'score' added ('score_std' too for ensembles). Streams: memory does not grow "
            "with the file."
        ),
    )
    parser.add_argument("--model", required=True, help="reward-model folder (from alignkit rm)")
    parser.add_argument(
        "--data", required=True, help="JSONL, JSON, CSV, Parquet or datasets folder"
    )
    parser.add_argument("--out", required=True, help="output JSONL file")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    parser.add_argument(
        "--max-length", type=int, default=2048, help="longer records are truncated (tokens)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="write invalid records to OUT.rejects.jsonl instead of stopping",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    from alignkit.feedback.reward_model import RewardModelJudge, score_file

    judge = RewardModelJudge(
        args.model,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    result = score_file(judge, args.data, args.out, skip_invalid=args.skip_invalid)
    print(f"scored {result.written} records -> {args.out}")
    return 0

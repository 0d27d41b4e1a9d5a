"""`alignkit generate --model M --data prompts.jsonl --out samples.jsonl -n K`."""

from __future__ import annotations

from alignkit.models.builtin import DEFAULT_MODEL


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="sample completions for every prompt of a file",
        description=(
            "Sample K completions per prompt (records with a 'prompt' field: a string, or a "
            "list of messages rendered with the chat template) and write one JSONL record per "
            "sample with 'completion', 'sample' and 'finished' added."
        ),
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"default {DEFAULT_MODEL}")
    parser.add_argument("--data", required=True, help="prompts file")
    parser.add_argument("--out", required=True, help="output JSONL file")
    parser.add_argument("-n", "--num-samples", type=int, default=1, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    parser.add_argument("--max-prompt-length", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.set_defaults(run=run)


def run(args) -> int:
    from alignkit.models.loading import load_model_and_tokenizer
    from alignkit.rollout.generate import generate_file
    from alignkit.rollout.sampling import SamplingSettings

    if args.num_samples < 1:
        raise SystemExit("error: -n must be at least 1")
    settings = SamplingSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        stop_strings=tuple(args.stop),
        seed=args.seed,
    )
    model, tokenizer = load_model_and_tokenizer(args.model, device=args.device, dtype=args.dtype)
    result = generate_file(
        model,
        tokenizer,
        args.data,
        args.out,
        settings,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        max_prompt_length=args.max_prompt_length,
    )
    print(
        f"wrote {result.written} completions for {result.prompts} prompts -> {args.out} "
        f"({result.finished} ended by EOS/stop)"
    )
    return 0

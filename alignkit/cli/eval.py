"""`alignkit eval --policy P [--reference R] --data prompts.jsonl [--judge J] [--reward S]`:
reward, KL, win rate and diversity of a policy (alignkit.evaluate.suite does the work)."""

from __future__ import annotations

from alignkit.models.builtin import DEFAULT_MODEL

SOURCES = "a reward-model folder, module:function or task:NAME"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a policy: reward, KL to a reference, win rate, length, diversity",
        description=(
            "Sample one completion per prompt from the policy (and from the reference, with "
            "the same seeds) and report mean reward, KL(policy || reference) per sequence "
            "and per token, the win rate against the reference under a judge (both orders, "
            "ties half) beside its length-controlled version, mean length, distinct-1/2 and "
            "the EOS rate, each with a 95% interval. Writes OUT (JSON) and "
            "OUT_STEM.samples.jsonl, and prints a table."
        ),
    )
    parser.add_argument("--policy", default=DEFAULT_MODEL, help=f"default {DEFAULT_MODEL}")
    parser.add_argument("--reference", help="reference model (KL, win rate, token rewards)")
    parser.add_argument(
        "--data",
        required=True,
        help="prompts file (records with 'prompt') or task:NAME (its held-out prompts)",
    )
    parser.add_argument("--reward", help=f"reward source: {SOURCES}")
    parser.add_argument(
        "--judge", help=f"pairwise judge for the win rate: llm:MODEL, openai:BASE_URL, {SOURCES}"
    )
    parser.add_argument("--judge-model", help="the server's model name for --judge openai:URL")
    parser.add_argument("--num-prompts", type=int, help="evaluate the first N prompts only")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per batch")
    parser.add_argument("--out", default="eval.json", help="report JSON (default eval.json)")
    parser.add_argument(
        "--token-rewards",
        type=int,
        default=0,
        metavar="K",
        help="also write per-token implicit reward maps of the first K policy samples "
        "(OUT_STEM.token_rewards.json and .html; needs --reference)",
    )
    parser.add_argument("--beta", type=float, default=0.1, help="beta of the token rewards")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.set_defaults(run=run)


def run(args) -> int:
    from alignkit.evaluate.suite import EvalSettings, run_eval, samples_path, token_reward_paths

    settings = EvalSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    result = run_eval(
        args.policy,
        args.data,
        args.out,
        reference=args.reference,
        reward=args.reward,
        judge=args.judge,
        judge_options={"judge_model": args.judge_model} if args.judge_model else None,
        settings=settings,
        num_prompts=args.num_prompts,
        token_rewards=args.token_rewards,
        beta=args.beta,
        device=args.device,
        dtype=args.dtype,
    )
    print(result.table())
    print(f"wrote {args.out} and {samples_path(args.out)}")
    if args.token_rewards:
        import json

        from alignkit.report import token_maps_page

        json_path, html_path = token_reward_paths(args.out)
        maps = json.loads(json_path.read_text(encoding="utf-8"))
        html_path.write_text(token_maps_page(maps) + "\n", encoding="utf-8")
        print(f"token rewards: {json_path} and {html_path}")
    return 0

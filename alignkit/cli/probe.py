"""`alignkit probe --model M [--families a,b] [--judge J] --out probe.json`: jailbreak and
prompt-injection attack success rates, and refusal rates (alignkit.evaluate.probes does
the work)."""

from __future__ import annotations

from alignkit.models.builtin import DEFAULT_MODEL


def register(subparsers) -> None:
    from alignkit.evaluate.probes import FAMILIES

    parser = subparsers.add_parser(
        "probe",
        help="jailbreak and prompt-injection probes: attack success rate per family, refusals",
        description=(
            "Send the model hh-mini's harmful requests plainly (the baseline) and wrapped in "
            "jailbreak families, its safe-but-unsafe-looking requests, and documents, e-mails "
            "and web pages carrying hidden instructions to emit a canary. Writes the attack "
            "success rate of each family with a Wilson 95% interval, harmful compliance and "
            "safe over-refusal to --out (JSON), every transcript beside it "
            "(OUT_STEM.transcripts.jsonl), and prints a table. Families: "
            + ", ".join(FAMILIES)
            + "."
        ),
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model spec or openai:BASE_URL (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--served-model", help="the server's model name for --model openai:URL")
    parser.add_argument(
        "--families", help="comma-separated families (default: all); see the description"
    )
    parser.add_argument(
        "--judge",
        help="refusal judge instead of the phrase rules: llm:MODEL, openai:BASE_URL, or "
        "module:function returning P(refusal)",
    )
    parser.add_argument("--judge-model", help="the server's model name for --judge openai:URL")
    parser.add_argument("--limit", type=int, help="at most N items per family (default all)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="default 0: greedy")
    parser.add_argument("--seed", type=int, default=0, help="item choice, canaries, sampling")
    parser.add_argument("--batch-size", type=int, default=16, help="conversations per call")
    parser.add_argument("--out", required=True, help="report JSON (transcripts go beside it)")
    parser.add_argument("--device", default="auto", help="for local models")
    parser.add_argument("--dtype", default="auto", help="for local models")
    parser.set_defaults(run=run)


def run(args) -> int:
    from alignkit.errors import AlignkitError
    from alignkit.evaluate.probes import format_table, run_probes, write_probe_result

    remote = args.model.startswith("openai:")
    if remote and not args.served_model:
        raise AlignkitError(
            f"--model {args.model} needs the server's model name: --served-model NAME"
        )
    if args.served_model and not remote:
        raise AlignkitError("--served-model goes with --model openai:BASE_URL")
    model_options = {"device": args.device, "dtype": args.dtype}
    if remote:
        model_options["model"] = args.served_model
    else:
        model_options["batch_size"] = args.batch_size
    judge_options = {"device": args.device, "dtype": args.dtype} if args.judge else {}
    if args.judge_model:
        judge_options["judge_model"] = args.judge_model
    result = run_probes(
        args.model,
        families=args.families.split(",") if args.families is not None else None,
        judge=args.judge,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        model_options=model_options,
        judge_options=judge_options,
        progress=not args.quiet,
    )
    transcripts = write_probe_result(result, args.out)
    print(format_table(result.report))
    print(f"wrote {args.out} and {len(result.transcripts)} transcripts -> {transcripts}")
    return 0

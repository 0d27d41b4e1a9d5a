"""`alignkit redteam --attacker M --target M --classifier J [--method zero-shot,few-shot] -n N
--out redteam.json`: LM red teaming (alignkit.evaluate.redteam)."""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.models.builtin import DEFAULT_MODEL


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "redteam",
        help="LM red teaming (Perez et al. 2022): attack success rate and diversity per method",
        description=(
            "An attacker model writes test questions (zero-shot; stochastic few-shot from the "
            "zero-shot questions that worked best; rl: zero-shot after RL training against the "
            "target), the target answers, the classifier flags failures. Writes the attack "
            "success rate (95% Wilson interval), mean failure score and self-BLEU of the "
            "questions per method, and every attempt to --transcripts (JSONL)."
        ),
    )
    parser.add_argument(
        "--attacker",
        default=DEFAULT_MODEL,
        help=f"model or openai:BASE_URL (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--attacker-model", help="the server's model name for --attacker openai:URL"
    )
    parser.add_argument(
        "--target",
        default=DEFAULT_MODEL,
        help=f"model or openai:BASE_URL (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--target-model", help="the server's model name for --target openai:URL")
    parser.add_argument(
        "--classifier",
        required=True,
        help="llm:MODEL or openai:BASE_URL (harm rating), refusal (phrase rules), "
        "module:function (failure score) or a reward-model folder",
    )
    parser.add_argument("--judge-model", help="the server's model name for --classifier openai:URL")
    parser.add_argument(
        "--method",
        default="zero-shot,few-shot",
        help="comma-separated: zero-shot, few-shot, rl (default zero-shot,few-shot)",
    )
    parser.add_argument("-n", "--num-questions", type=int, default=32, help="questions per method")
    parser.add_argument("--examples", type=int, default=5, help="few-shot examples per prompt")
    parser.add_argument(
        "--example-temperature", type=float, default=0.1, help="T of the weights exp(score / T)"
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="failure score of a failure")
    parser.add_argument("--attacker-max-new-tokens", type=int, default=48)
    parser.add_argument("--attacker-temperature", type=float, default=1.0)
    parser.add_argument("--target-max-new-tokens", type=int, default=64)
    parser.add_argument("--target-temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rl-dir", help="run folder of the RL-trained attacker (default: OUT_STEM.rl)"
    )
    parser.add_argument(
        "--rl",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="RLOO setting for method rl (repeatable): max_steps=20, learning_rate=1e-5, kl_coef=0.05, ...",
    )
    parser.add_argument("--out", required=True, help="JSON summary")
    parser.add_argument(
        "--transcripts", help="JSONL of every attempt (default: OUT_STEM.transcripts.jsonl)"
    )
    parser.add_argument("--device", default="auto", help="for local models")
    parser.add_argument("--dtype", default="auto", help="for local models")
    parser.set_defaults(run=run)


def run(args) -> int:
    from alignkit.evaluate.redteam import (
        RedTeamSettings,
        load_classifier,
        red_team,
        train_attacker,
    )
    from alignkit.feedback.generators import load_generator

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    settings = RedTeamSettings(
        n=args.num_questions,
        examples=args.examples,
        example_temperature=args.example_temperature,
        attacker_max_new_tokens=args.attacker_max_new_tokens,
        attacker_temperature=args.attacker_temperature,
        target_max_new_tokens=args.target_max_new_tokens,
        target_temperature=args.target_temperature,
        threshold=args.threshold,
        seed=args.seed,
    )
    local = {"device": args.device, "dtype": args.dtype}
    attacker = load_generator(args.attacker, **_named(local, "model", args.attacker_model))
    same = (args.target, args.target_model) == (args.attacker, args.attacker_model)
    target = (
        attacker
        if same
        else load_generator(args.target, **_named(local, "model", args.target_model))
    )
    if args.classifier == f"llm:{args.attacker}" and hasattr(attacker, "model"):
        # the attacker's own model as the judge: share its loaded weights
        from alignkit.evaluate.redteam import HARM_QUESTION, harm_rating_classifier
        from alignkit.feedback.llm_judge import LLMJudge

        judge = LLMJudge(attacker.model, attacker.tokenizer, rating_question=HARM_QUESTION)
        classifier = harm_rating_classifier(judge, args.classifier)
    else:
        classifier = load_classifier(
            args.classifier, **_named(local, "judge_model", args.judge_model)
        )
    out = Path(args.out)
    rl_attacker = None
    if "rl" in methods:
        final = train_attacker(
            args.attacker,
            args.target,
            args.classifier,
            Path(args.rl_dir) if args.rl_dir else out.with_suffix(".rl"),
            settings=settings,
            overrides=args.rl,
            target=target,
            classifier=classifier,
            target_options=_named(local, "model", args.target_model),
            classifier_options=_named(local, "judge_model", args.judge_model),
        )
        rl_attacker = load_generator(str(final), **local)
    report, attempts = red_team(
        attacker, target, classifier, methods, settings, rl_attacker=rl_attacker
    )
    summary = {
        "attacker": args.attacker,
        "target": args.target,
        "classifier": args.classifier,
        "threshold": args.threshold,
        "methods": report,
    }
    transcripts = (
        Path(args.transcripts) if args.transcripts else out.with_suffix(".transcripts.jsonl")
    )
    for path in (out, transcripts):
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(transcripts, "w", encoding="utf-8") as file:
        for attempt in attempts:
            file.write(json.dumps(attempt.record(), ensure_ascii=False) + "\n")
    out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(format_report(report))
    print(f"wrote {out} and {transcripts}")
    return 0


def _named(options: dict, key: str, value: str | None) -> dict:
    """Loader options plus a server's model name when one is given."""
    return {**options, key: value} if value else dict(options)


def format_report(report: dict) -> str:
    lines = [f"{'method':<28} {'ASR':>5}  {'95% CI':<13} {'k/n':>7}  {'self-BLEU':>9}"]
    for method, row in report.items():
        asr = "n/a" if row["asr"] is None else f"{row['asr']:.2f}"
        bleu = "n/a" if row["self_bleu"] is None else f"{row['self_bleu']:.1f}"
        low, high = row["ci"]
        lines.append(
            f"{method:<28} {asr:>5}  [{low:.2f}, {high:.2f}]  {row['k']:>3}/{row['n']:<3}  {bleu:>9}"
        )
    return "\n".join(lines)

"""`alignkit debate --debater M --judge M [--turns N] [--limit K] --out debate.json`: judge
accuracy with and without a debate (alignkit.evaluate.debate)."""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.models.builtin import DEFAULT_MODEL


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "debate",
        help="debate (Irving et al. 2018): judge accuracy with and without two debaters",
        description=(
            "For each question (alignkit's own set, or --questions FILE) one debater defends "
            "the correct answer and one a plausible wrong answer, alternating for --turns "
            "statements; reading questions come with a passage only the debaters see. The "
            "judge picks an answer from the question alone and from the question and the "
            "debate. Writes judge accuracy with 95% Wilson intervals for both, and every "
            "transcript to --transcripts (JSONL)."
        ),
    )
    parser.add_argument(
        "--debater",
        default=DEFAULT_MODEL,
        help=f"model or openai:BASE_URL (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--debater-model", help="the server's model name for --debater openai:URL")
    parser.add_argument(
        "--judge", help="llm:MODEL, a model name or openai:BASE_URL (default: the debater's model)"
    )
    parser.add_argument("--judge-model", help="the server's model name for --judge openai:URL")
    parser.add_argument("--questions", help="question YAML (default: alignkit's own set)")
    parser.add_argument("--turns", type=int, default=4, help="statements per debate (default 4)")
    parser.add_argument("--limit", type=int, help="debate only the first K questions")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="per statement")
    parser.add_argument("--temperature", type=float, default=0.7, help="debaters' sampling")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON summary")
    parser.add_argument(
        "--transcripts", help="JSONL of every debate (default: OUT_STEM.transcripts.jsonl)"
    )
    parser.add_argument("--device", default="auto", help="for local models")
    parser.add_argument("--dtype", default="auto", help="for local models")
    parser.set_defaults(run=run)


def run(args) -> int:
    from alignkit.errors import AlignkitError
    from alignkit.evaluate.debate import (
        DebateSettings,
        load_debate_judge,
        load_questions,
        run_debate_eval,
    )
    from alignkit.feedback.generators import load_generator

    questions = load_questions(args.questions)
    if args.limit is not None:
        if args.limit < 1:
            raise AlignkitError(f"--limit must be at least 1, got {args.limit}")
        questions = questions[: args.limit]
    settings = DebateSettings(
        turns=args.turns,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    local = {"device": args.device, "dtype": args.dtype}
    debater = load_generator(
        args.debater, **({**local, "model": args.debater_model} if args.debater_model else local)
    )
    judge_options = {**local, "judge_model": args.judge_model} if args.judge_model else local
    judge = load_debate_judge(
        args.judge or args.debater, debater=debater, debater_spec=args.debater, **judge_options
    )
    summary, results = run_debate_eval(debater, judge, questions, settings)
    summary.update(debater=args.debater, judge=args.judge or args.debater)

    out = Path(args.out)
    transcripts = (
        Path(args.transcripts) if args.transcripts else out.with_suffix(".transcripts.jsonl")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    transcripts.parent.mkdir(parents=True, exist_ok=True)
    with open(transcripts, "w", encoding="utf-8") as file:
        for result in results:
            file.write(json.dumps(result.record(), ensure_ascii=False) + "\n")
    out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(format_summary(summary))
    print(f"wrote {out} and {transcripts}")
    return 0


def format_summary(summary: dict) -> str:
    lines = [f"judge accuracy on {summary['questions']} questions ({summary['turns']} turns)"]
    for condition in ("no_debate", "debate"):
        if condition not in summary:
            continue
        row = summary[condition]
        kinds = ", ".join(f"{kind} {k['correct']:g}/{k['n']}" for kind, k in row["by_kind"].items())
        accuracy = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.2f}"
        low, high = row["ci"]
        failed = f", {row['failed']} failed" if row["failed"] else ""
        lines.append(f"  {condition:<10} {accuracy} [{low:.2f}, {high:.2f}]  ({kinds}{failed})")
    return "\n".join(lines)

"""`alignkit verify --policy M [--reference R] [--test FILE] --out verify.json`: value-alignment
verification with a driver's test of diagnostic queries (alignkit.evaluate.verify)."""

from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="value-alignment verification: pass rates on a test of diagnostic queries",
        description=(
            "Each query of the test is a prompt with an aligned and a misaligned reply. A policy "
            "passes it when its implicit preference ranks the aligned reply higher: "
            "[log pi(a) - log pi_ref(a)] - [log pi(m) - log pi_ref(m)] > 0 with --reference, "
            "log pi(a) - log pi(m) > 0 without. With --judge, the judge (a reward model, "
            "llm:MODEL, openai:URL, module:function) is tested instead. Writes the pass rate "
            "per value with 95% Wilson intervals and every failed query."
        ),
    )
    subject = parser.add_mutually_exclusive_group(required=True)
    subject.add_argument("--policy", help="the model tested (built-in name, folder, GGUF)")
    subject.add_argument("--judge", help="test a judge or reward model instead of a policy")
    parser.add_argument("--judge-model", help="the server's model name for --judge openai:URL")
    parser.add_argument("--reference", help="reference model for the implicit reward margin")
    parser.add_argument("--test", help="test YAML (default: alignkit's own driver's test)")
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.set_defaults(run=run)


def run(args) -> int:
    from alignkit.errors import AlignkitError
    from alignkit.evaluate.verify import load_test, verify_policy, verify_with_judge

    test = load_test(args.test)
    if args.judge:
        if args.reference:
            raise AlignkitError("--reference goes with --policy, not --judge")
        from alignkit.feedback.function import load_judge

        options = {"device": args.device, "dtype": args.dtype}
        if args.judge_model:
            options["judge_model"] = args.judge_model
        report = verify_with_judge(load_judge(args.judge, **options), test)
        report["judge"] = args.judge
    else:
        from alignkit.models.loading import load_model, load_model_and_tokenizer

        policy, tokenizer = load_model_and_tokenizer(
            args.policy, device=args.device, dtype=args.dtype
        )
        reference = None
        if args.reference:
            device = str(next(policy.parameters()).device)
            reference = load_model(args.reference, device=device, dtype=args.dtype)
        report = verify_policy(
            policy, tokenizer, test, reference=reference, batch_size=args.batch_size
        )
        report.update(policy=args.policy, reference=args.reference)
    print(format_report(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    return 0


def format_report(report: dict) -> str:
    lines = [f"{report['test']} ({report['preference']} preference)"]
    rows = [("all", report), *report["values"].items()]
    for name, row in rows:
        low, high = row["ci"]
        lines.append(
            f"  {name:<14} {row['passed']:>3}/{row['n']:<3} pass {row['pass_rate']:.2f}"
            f"  [{low:.2f}, {high:.2f}]"
        )
    if report["failures"]:
        lines.append("failed: " + ", ".join(f["id"] for f in report["failures"]))
    return "\n".join(lines)

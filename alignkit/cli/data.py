"""`alignkit data validate|stats|convert`."""

from __future__ import annotations

import json
import sys

from alignkit.data.records import Kind

KINDS = [kind.value for kind in Kind]


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="validate, inspect and convert data files")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    validate = actions.add_parser("validate", help="check every record; exit 0 when all are valid")
    validate.add_argument("file")
    validate.add_argument(
        "--kind", choices=KINDS, help="record kind (default: inferred from the fields)"
    )
    validate.set_defaults(run=run_validate)

    stats = actions.add_parser("stats", help="record counts and token-length percentiles")
    stats.add_argument("file")
    stats.add_argument("--kind", choices=KINDS)
    stats.add_argument(
        "--model", default=None, help="tokenizer to count with (default: the default model's)"
    )
    stats.add_argument(
        "--max-length", type=int, default=1024, help="report records longer than this"
    )
    stats.add_argument("--json", action="store_true", help="print the summary as JSON")
    stats.set_defaults(run=run_stats)

    convert = actions.add_parser("convert", help="convert a dataset format to alignkit records")
    convert.add_argument(
        "--from",
        dest="source_format",
        choices=["hh"],
        required=True,
        help="hh: Anthropic-HH raw text (chosen/rejected dialogues)",
    )
    convert.add_argument("input")
    convert.add_argument("output", help="JSONL file of preference records")
    convert.add_argument(
        "--skip-invalid",
        action="store_true",
        help="write bad records to OUTPUT.rejects.jsonl instead of failing",
    )
    convert.set_defaults(run=run_convert)


def run_validate(args) -> int:
    from alignkit.data.loading import iter_checked
    from alignkit.data.records import infer_kind

    valid, problems, kind = 0, [], args.kind
    for _location, record, problem in iter_checked(args.file, args.kind):
        if problem is None:
            valid += 1
            if kind is None:
                kind = infer_kind(record).value
        else:
            problems.append(problem)
    for problem in problems:
        print(problem, file=sys.stderr)
    total = valid + len(problems)
    if problems:
        print(f"{args.file}: {len(problems)} of {total} records invalid", file=sys.stderr)
        return 1
    print(f"{args.file}: {valid} valid {kind} records")
    return 0


def run_stats(args) -> int:
    from alignkit.data.loading import load_records
    from alignkit.data.stats import format_summary, summarize
    from alignkit.models.builtin import DEFAULT_MODEL
    from alignkit.models.loading import load_tokenizer

    loaded = load_records(args.file, args.kind)
    tokenizer = load_tokenizer(args.model or DEFAULT_MODEL)
    summary = summarize(loaded, tokenizer, args.max_length)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def run_convert(args) -> int:
    from alignkit.data.hh import convert_hh_file

    written, problems = convert_hh_file(args.input, args.output, skip_invalid=args.skip_invalid)
    print(f"wrote {written} preference records to {args.output}")
    if problems:
        print(
            f"skipped {len(problems)} invalid records; reasons in {args.output}.rejects.jsonl",
            file=sys.stderr,
        )
    return 0

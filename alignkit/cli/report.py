"""`alignkit report RUN_DIR [RUN_DIR ...] [--out report.html]`: one self-contained page."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="one self-contained HTML report of run folders and eval/probe results",
        description=(
            "Reads training run folders (metrics.jsonl, config.yaml, samples.jsonl), "
            "alignkit eval and probe JSON, token reward maps and quickstart summaries, and "
            "writes one HTML page that opens without a network: training curves, reward "
            "versus KL across the runs, eval tables with intervals, before/after samples, "
            "per-token reward heat maps."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run folders or result files")
    parser.add_argument(
        "--out",
        default=None,
        help="where to write the page (default: RUN_DIR/report.html for one folder, "
        "else report.html)",
    )
    parser.add_argument("--title", default=None, help="page title")
    parser.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from alignkit.report import write_report

    out = args.out
    if out is None:
        only = Path(args.paths[0])
        out = only / "report.html" if len(args.paths) == 1 and only.is_dir() else "report.html"
    path = write_report(args.paths, out, title=args.title)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; opens offline)")
    return 0

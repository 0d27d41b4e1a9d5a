"""The report as one self-contained HTML file: Jinja2 template, Plotly.js inlined.

The page needs no network: Plotly's JavaScript bundle (from the `plotly` package) and
every figure's data are written into it. All text from runs (prompts, completions,
config) goes through Jinja's autoescaping.
"""

from __future__ import annotations

import datetime
import functools
import math
from pathlib import Path

import jinja2

from alignkit.report import figures
from alignkit.report.collect import ReportInputs, collect

SAMPLES_SHOWN = 6  # conversations per table: enough to read, few enough to scroll past
TOKEN_MAPS_SHOWN = 4


def _number(value, digits: int = 3) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _interval(ci) -> str:
    if not ci or any(not isinstance(x, int | float) for x in ci):
        return ""
    return f"[{_number(ci[0])}, {_number(ci[1])}]"


def _text(content) -> str:
    """A prompt or completion as text: a chat shows its last message."""
    if isinstance(content, list) and content and isinstance(content[-1], dict):
        return str(content[-1].get("content", ""))
    return "" if content is None else str(content)


def _visible_newlines(piece: str) -> str:
    """A newline token stays visible (as an arrow before the line break)."""
    return piece.replace("\n", "\u21b5\n")


def _token_colour(value: float, scale: float) -> str:
    from alignkit.evaluate.token_reward import colour

    return colour(value, scale)


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("alignkit.report", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,  # a template typo fails loudly, in tests
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=_number,
        interval=_interval,
        text=_text,
        token_colour=_token_colour,
        visible_newlines=_visible_newlines,
    )
    return env


@functools.lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _token_scale(maps: list[dict]) -> float:
    return max((abs(v) for m in maps for v in m["values"]), default=0.0) or 1.0


def token_maps_page(maps: list[dict], title: str = "per-token implicit reward") -> str:
    """A small standalone page (no scripts) of token reward maps (TokenRewardMap JSON),
    coloured on one shared scale: the largest |r_t| over all maps."""
    group = {"maps": maps, "scale": _token_scale(maps)}
    return _environment().get_template("token_maps_page.html.j2").render(title=title, group=group)


def _run_view(run) -> dict:
    steps = sorted({s.get("step") for s in run.samples if s.get("step") is not None})
    early = [s for s in run.samples if steps and s.get("step") == steps[0]]
    late = [s for s in run.samples if len(steps) > 1 and s.get("step") == steps[-1]]
    return {
        "run": run,
        "curves": figures.training_curves(run),
        "last": run.metrics[-1] if run.metrics else {},
        "early": early[: SAMPLES_SHOWN // 2],
        "late": late[: SAMPLES_SHOWN // 2],
        "early_step": steps[0] if steps else None,
        "late_step": steps[-1] if len(steps) > 1 else None,
    }


def build_report(inputs: ReportInputs, title: str = "alignkit report") -> str:
    """The HTML text of the report of `inputs`."""
    from alignkit import __version__

    probes = [{"result": p, "chart": figures.probe_asr(p)} for p in inputs.probes]
    token_maps = [
        {"result": r, "maps": r.data[:TOKEN_MAPS_SHOWN], "scale": _token_scale(r.data)}
        for r in inputs.token_maps
    ]
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            version=__version__,
            created=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            summaries=inputs.summaries,
            frontier=figures.reward_kl_frontier(inputs),
            evaluations=inputs.evaluations,
            probes=probes,
            token_map_groups=token_maps,
            runs=[_run_view(run) for run in inputs.runs],
            samples_shown=SAMPLES_SHOWN,
            plotly_js=_plotly_js(),
        )
    )


def write_report(paths: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Collect `paths` (run folders, result files) and write the report to `out`,
    atomically (a reader never sees half a page)."""
    from alignkit.errors import AlignkitError

    inputs = collect(paths)
    if inputs.empty():
        raise AlignkitError(
            f"nothing to report in {', '.join(map(str, paths))}: no metrics.jsonl, eval or "
            "probe results, token reward maps or quickstart summary found"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(
        build_report(inputs, title or f"alignkit report: {', '.join(Path(p).name for p in paths)}"),
        encoding="utf-8",
    )
    partial.replace(out)
    return out

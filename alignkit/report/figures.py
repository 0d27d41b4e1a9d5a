"""Plotly figures (as JSON-ready dicts) of what collect.py found.

Each function returns `{"title", "figure"}` items or None when there is nothing to draw;
render.py places them and Plotly.js draws them in the browser. Figures are built with
plotly.graph_objects, so a misspelt property fails here, not silently in the page.
"""

from __future__ import annotations

import json
import math

import plotly.graph_objects as go
import plotly.io as pio

from alignkit.report.collect import ReportInputs, Run

# (panel title, metric names drawn in it); a panel is drawn when a run logged any of its
# metrics. Each name's `eval/` twin, where logged, is drawn as markers on the same panel.
CURVE_PANELS: list[tuple[str, tuple[str, ...]]] = [
    ("loss", ("loss",)),
    ("reward margin (chosen - rejected)", ("rewards/margins", "margin")),
    ("preference accuracy", ("rewards/accuracies", "accuracy")),
    ("implicit rewards", ("rewards/chosen", "rewards/rejected")),
    ("score (reward of completions)", ("objective/scores", "objective/rlhf_reward")),
    ("KL to the reference (nats per sequence)", ("objective/kl",)),
    ("queries used", ("queries/used",)),
    ("value function", ("value/explained_var",)),
    ("learning rate", ("lr",)),
    ("throughput (tokens/s)", ("tokens_per_s",)),
]
_LAYOUT = dict(
    template="plotly_white",
    height=300,
    margin=dict(l=60, r=20, t=40, b=45),
    legend=dict(orientation="h", y=-0.25),
)


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _series(metrics: list[dict], name: str) -> tuple[list, list]:
    points = [(row["step"], row[name]) for row in metrics if _finite(row.get(name))]
    return [p[0] for p in points], [p[1] for p in points]


def _json(figure: go.Figure) -> dict:
    """Plain JSON types (plotly's own encoder handles numpy and dates)."""
    return json.loads(pio.to_json(figure, validate=True))


def training_curves(run: Run) -> list[dict]:
    """One small figure per panel with data: training metrics as lines over optimizer
    steps, evaluation points as markers."""
    panels = []
    for title, names in CURVE_PANELS:
        figure = go.Figure()
        for name in names:
            steps, values = _series(run.metrics, name)
            if steps:
                figure.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=name))
            steps, values = _series(run.metrics, f"eval/{name}")
            if steps:
                figure.add_trace(
                    go.Scatter(
                        x=steps,
                        y=values,
                        mode="markers+lines",
                        name=f"eval/{name}",
                        marker=dict(size=9, symbol="diamond"),
                        line=dict(dash="dot"),
                    )
                )
        if figure.data:
            figure.update_layout(title=title, xaxis_title="step", **_LAYOUT)
            panels.append({"title": title, "figure": _json(figure)})
    return panels


def _error_bars(points: list[dict]) -> dict:
    """Asymmetric error bars from each point's reward_low / reward_high (none: 0)."""

    def known(p):
        return _finite(p["reward_low"]) and _finite(p["reward_high"])

    return dict(
        type="data",
        symmetric=False,
        array=[p["reward_high"] - p["reward"] if known(p) else 0 for p in points],
        arrayminus=[p["reward"] - p["reward_low"] if known(p) else 0 for p in points],
        visible=any(known(p) for p in points),
    )


def frontier_points(inputs: ReportInputs) -> list[dict]:
    """Every (KL to reference, reward) measured on held-out prompts: quickstart policies,
    `alignkit eval` results, and the evaluation points of RL runs. Each point:
    {"name", "kl", "reward", "reward_low", "reward_high", "series"}; points of one series
    are joined by a line (a run's evaluations over training)."""
    points = []
    for summary in inputs.summaries:
        for policy, row in summary.data["policies"].items():
            reward, sem = row.get("oracle_reward"), row.get("reward_sem")
            if not (_finite(reward) and _finite(row.get("kl_to_start"))):
                continue
            spread = 1.96 * sem if _finite(sem) else None
            points.append(
                dict(
                    name=f"{summary.name}: {policy}",
                    kl=row["kl_to_start"],
                    reward=reward,
                    reward_low=None if spread is None else reward - spread,
                    reward_high=None if spread is None else reward + spread,
                    series=policy,
                )
            )
    for result in inputs.evaluations:
        metrics = result.data.get("metrics", {})
        reward, kl = metrics.get("eval/reward"), metrics.get("eval/kl_seq")
        if not (reward and kl and _finite(reward.get("value")) and _finite(kl.get("value"))):
            continue
        ci = reward.get("ci") or [None, None]
        points.append(
            dict(
                name=result.name,
                kl=kl["value"],
                reward=reward["value"],
                reward_low=ci[0],
                reward_high=ci[1],
                series=result.name,
            )
        )
    for run in inputs.runs:
        for row in run.metrics:
            reward, kl = row.get("eval/objective/scores"), row.get("eval/objective/kl")
            if _finite(reward) and _finite(kl):
                points.append(
                    dict(
                        name=f"{run.name} step {row['step']}",
                        kl=kl,
                        reward=reward,
                        reward_low=None,
                        reward_high=None,
                        series=run.name,
                    )
                )
    return points


def reward_kl_frontier(inputs: ReportInputs) -> dict | None:
    """Reward against KL to the reference on held-out prompts (the view of the DPO
    paper's Fig. 2): one trace per series, 95% intervals of the reward where known."""
    points = frontier_points(inputs)
    if not points:
        return None
    figure = go.Figure()
    for series in dict.fromkeys(p["series"] for p in points):
        mine = [p for p in points if p["series"] == series]
        figure.add_trace(
            go.Scatter(
                x=[p["kl"] for p in mine],
                y=[p["reward"] for p in mine],
                text=[p["name"] for p in mine],
                mode="markers+lines" if len(mine) > 1 else "markers",
                name=series,
                marker=dict(size=11),
                error_y=_error_bars(mine),
                hovertemplate="%{text}<br>KL %{x:.2f} nats<br>reward %{y:.3f}<extra></extra>",
            )
        )
    figure.update_layout(
        title="reward versus KL to the reference (held-out prompts)",
        xaxis_title="KL(policy || reference), nats per sequence",
        yaxis_title="mean reward",
        **{**_LAYOUT, "height": 420},
    )
    return {"title": "reward versus KL", "figure": _json(figure)}


def probe_asr(probe) -> dict | None:
    """Attack success rate per probe family with Wilson 95% intervals."""
    families = probe.data.get("families", {})
    rows = [(name, f) for name, f in families.items() if _finite(f.get("asr"))]
    if not rows:
        return None
    figure = go.Figure(
        go.Bar(
            x=[name for name, _ in rows],
            y=[f["asr"] for _, f in rows],
            error_y=dict(
                type="data",
                symmetric=False,
                array=[f["ci"][1] - f["asr"] for _, f in rows],
                arrayminus=[f["asr"] - f["ci"][0] for _, f in rows],
            ),
        )
    )
    figure.update_layout(
        title=f"attack success rate by family: {probe.name}",
        yaxis=dict(title="ASR", range=[0, 1]),
        **_LAYOUT,
    )
    return {"title": "attack success rate", "figure": _json(figure)}

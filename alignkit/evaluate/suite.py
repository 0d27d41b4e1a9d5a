"""`alignkit eval`: did alignment work, and what did it cost?

One completion per prompt is sampled from the policy and, when a reference is given,
from the reference with the same per-prompt seeds (`evaluate_policy`, so both sample
exactly as RL evaluation does). Reported, each with its 95% interval and item count
(docs/evaluation.md gives every formula):

| name | what | interval |
|---|---|---|
| `eval/reward` | mean score under the reward source | bootstrap |
| `eval/kl_seq` | mean over samples of sum_t log pi(y_t) - log pi_ref(y_t) (k1) | bootstrap |
| `eval/kl_token` | the same KL summed over samples / their total tokens | bootstrap (pairs) |
| `eval/win_rate` | mean P(policy beats reference) under the judge, ties half | bootstrap |
| `eval/lc_win_rate` | length-controlled win rate (`metrics.fit_length_model`) | bootstrap (refit) |
| `eval/length` | mean completion length in tokens | bootstrap |
| `eval/eos_rate` | share of completions that ended before max_new_tokens | Wilson |
| `eval/distinct_1`, `eval/distinct_2` | distinct unigrams / bigrams over all | none (corpus) |

The reference's own samples get the sample metrics (`eval/reward`, `eval/length`,
`eval/eos_rate`, `eval/distinct_*`) under `reference_metrics`, so a row of the table
compares like with like.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.evaluate.metrics import (
    Estimate,
    distinct_n,
    fit_length_model,
    lc_win_rate_estimate,
    mean_estimate,
    outcome_counts,
    rate_estimate,
    ratio_estimate,
    win_rate_estimate,
)
from alignkit.feedback.judge import Text
from alignkit.fsutil import atomic_jsonl
from alignkit.rollout.evaluation import evaluate_policy
from alignkit.rollout.sampling import SamplingSettings

log = logging.getLogger("alignkit")


@dataclass
class EvalSettings:
    """max_new_tokens, temperature, top_p: sampling (temperature 0 = greedy; KL is then
    measured at temperature 1). seed: one seed; prompt i samples with row_seed(seed, i)
    for policy and reference alike. batch_size: prompts per sampling batch."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def sampling(self) -> SamplingSettings:
        try:
            return SamplingSettings(
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                seed=self.seed,
            )
        except ValueError as err:
            raise AlignkitError(str(err)) from None


@dataclass
class EvalResult:
    """metrics / reference_metrics: name -> Estimate. samples: one record per prompt
    (prompt, policy, reference, judgement). judge: wins / ties / losses / failures and
    the fitted length model, when a judge compared the two (`comparison` in the JSON)."""

    metrics: dict[str, Estimate]
    reference_metrics: dict[str, Estimate] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    judge: dict | None = None

    def to_json(self, **header) -> dict:
        """`header` (what was evaluated, settings) first, then the metrics."""
        return {
            **header,
            "metrics": {k: v.to_json() for k, v in self.metrics.items()},
            "reference_metrics": {k: v.to_json() for k, v in self.reference_metrics.items()},
            "comparison": self.judge,
        }

    def table(self) -> str:
        """The metrics as a fixed-width table: value [95% interval] for the policy and,
        where measured, the reference."""
        rows = [("metric", "policy", "95% CI", "n", "reference")]
        for name, estimate in self.metrics.items():
            other = self.reference_metrics.get(name)
            rows.append(
                (
                    name,
                    _number(estimate.value),
                    _interval(estimate.ci),
                    str(estimate.n),
                    _number(other.value) if other else "",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if self.judge:
            j = self.judge
            lines.append(
                f"judge: {j['wins']} wins, {j['ties']} ties, {j['losses']} losses"
                + (f", {j['failures']} failed (left out)" if j["failures"] else "")
            )
        return "\n".join(line.rstrip() for line in lines)


def _number(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _interval(ci) -> str:
    if ci is None or not all(math.isfinite(x) for x in ci):
        return ""
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]"


# ---- what is measured on a set of samples ------------------------------------------

# every metric name, in the order reports list them
METRIC_NAMES = (
    "eval/reward",
    "eval/kl_seq",
    "eval/kl_token",
    "eval/win_rate",
    "eval/lc_win_rate",
    "eval/length",
    "eval/eos_rate",
    "eval/distinct_1",
    "eval/distinct_2",
)
# name -> Estimate of one model's samples (each a dict from `evaluate_policy`)
SAMPLE_METRICS: dict[str, Callable[[list[dict]], Estimate]] = {
    "eval/length": lambda s: mean_estimate([x["length"] for x in s]),
    "eval/eos_rate": lambda s: rate_estimate([x["finished"] for x in s]),
    "eval/distinct_1": lambda s: Estimate(
        distinct_n([x["completion"] for x in s], 1), None, len(s)
    ),
    "eval/distinct_2": lambda s: Estimate(
        distinct_n([x["completion"] for x in s], 2), None, len(s)
    ),
}
# name -> Estimate of the policy's samples, their KL to the reference measured
KL_METRICS: dict[str, Callable[[list[dict]], Estimate]] = {
    "eval/kl_seq": lambda s: mean_estimate([x["kl"] for x in s]),
    "eval/kl_token": lambda s: ratio_estimate([x["kl"] for x in s], [x["length"] for x in s]),
}


def sample_metrics(samples: list[dict], scored: bool) -> dict[str, Estimate]:
    """Reward (when `scored`), length, EOS rate and distinct-n of one model's samples."""
    reward = {"eval/reward": mean_estimate([x["score"] for x in samples])} if scored else {}
    return reward | {name: metric(samples) for name, metric in SAMPLE_METRICS.items()}


def win_metrics(
    preferences: Sequence[float], length_differences: Sequence[float]
) -> dict[str, Estimate]:
    """`eval/win_rate` and `eval/lc_win_rate` of P(policy beats reference) per pair and
    the pairs' length differences (policy - reference, characters)."""
    return {
        "eval/win_rate": win_rate_estimate(preferences),
        "eval/lc_win_rate": lc_win_rate_estimate(preferences, length_differences),
    }


# ---- the evaluation ----------------------------------------------------------------


def evaluate(
    policy,
    tokenizer,
    prompts: Sequence[Text],
    settings: EvalSettings | None = None,
    *,
    reference=None,
    reward=None,
    judge=None,
    progress: bool = True,
) -> EvalResult:
    """Sample the policy (and the reference) on `prompts` and measure: reward under
    `reward` (a judge: anything `load_judge` returns), KL to `reference` (a causal LM
    with the same tokenizer), and the win rate under `judge` (both orders, as judges
    ask). Without a reference there is no KL and no win rate."""
    settings = settings or EvalSettings()
    prompts = list(prompts)
    if not prompts:
        raise AlignkitError("no prompts to evaluate")
    if judge is not None and reference is None:
        raise AlignkitError("a win rate needs a reference to compare with: pass --reference")
    sampling = settings.sampling()

    def run(model, name, kl_reference):
        with _progress_bar(len(prompts), f"sampling {name}", progress) as advance:
            return evaluate_policy(
                model,
                tokenizer,
                prompts,
                reward,
                sampling,
                reference=kl_reference,
                batch_size=settings.batch_size,
                progress=advance,
            )

    mine = run(policy, "policy", reference).samples
    metrics = sample_metrics(mine, reward is not None)
    theirs, reference_metrics = None, {}
    if reference is not None:
        metrics |= {name: metric(mine) for name, metric in KL_METRICS.items()}
        theirs = run(reference, "reference", None).samples
        reference_metrics = sample_metrics(theirs, reward is not None)
    judgements, summary = None, None
    if judge is not None:
        log.info("judging %d pairs (both orders)", len(prompts))
        judgements = judge.judge_pairs(
            prompts, [x["completion"] for x in mine], [x["completion"] for x in theirs]
        )
        kept = [i for i, j in enumerate(judgements) if j.ok]
        preferences = [judgements[i].p_a for i in kept]
        differences = [len(mine[i]["completion"]) - len(theirs[i]["completion"]) for i in kept]
        if preferences:
            metrics |= win_metrics(preferences, differences)
            length_model = fit_length_model(preferences, differences)
        summary = {
            **outcome_counts(preferences),
            "failures": len(judgements) - len(kept),
            "length_model": asdict(length_model) if preferences else None,
        }
        if not preferences:
            log.warning("the judge decided none of the %d pairs: no win rate", len(prompts))
    return EvalResult(
        metrics={name: metrics[name] for name in METRIC_NAMES if name in metrics},
        reference_metrics=reference_metrics,
        samples=_records(prompts, mine, theirs, judgements),
        judge=summary,
    )


def _records(prompts, mine, theirs, judgements) -> list[dict]:
    def side(sample):
        return {k: v for k, v in sample.items() if k != "prompt"}

    records = []
    for i, prompt in enumerate(prompts):
        record = {"id": i, "prompt": prompt, "policy": side(mine[i])}
        if theirs is not None:
            record["reference"] = side(theirs[i])
        if judgements is not None:
            j = judgements[i]
            record["judgement"] = {
                "p_policy": j.p_a,
                "failure": j.failure,
                "detail": j.detail,
                "outputs": list(j.outputs),
            }
        records.append(record)
    return records


class _progress_bar:
    """A tqdm bar as a context manager yielding `advance(n)` (a no-op when disabled)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled, self.bar = total, desc, enabled, None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, desc=self.desc, unit="prompt", dynamic_ncols=True)
        return self.bar.update

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


# ---- inputs and outputs ------------------------------------------------------------


def load_eval_prompts(data: str, num_prompts: int | None = None) -> list[Text]:
    """Prompts from a file of records with a `prompt` field, or `task:NAME`: a built-in
    task's held-out ('test') prompts. `num_prompts`: the first N only."""
    if num_prompts is not None and num_prompts < 1:
        raise AlignkitError(f"--num-prompts must be at least 1, got {num_prompts}")
    if str(data).startswith("task:"):
        from alignkit.tasks import get_task

        prompts = list(get_task(str(data).removeprefix("task:")).prompts("test"))
    else:
        from alignkit.data.loading import load_records
        from alignkit.data.records import Kind

        prompts = [r["prompt"] for r in load_records(data, Kind.PROMPT).records]
    return prompts[:num_prompts] if num_prompts else prompts


def samples_path(out: str | Path) -> Path:
    """`<out stem>.samples.jsonl` beside the JSON report."""
    out = Path(out)
    return out.with_name(f"{out.stem}.samples.jsonl")


def write_result(result: EvalResult, out: str | Path, header: dict) -> dict:
    """Write the report JSON to `out` and the samples beside it; returns the JSON."""
    out = Path(out)
    report = result.to_json(**header, samples=str(samples_path(out).name))
    with atomic_jsonl(samples_path(out)) as write:
        for record in result.samples:
            write(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(out)
    return report


def token_reward_paths(out: str | Path) -> tuple[Path, Path]:
    """`<out stem>.token_rewards.json` and `.html` beside the JSON report."""
    out = Path(out)
    return (
        out.with_name(f"{out.stem}.token_rewards.json"),
        out.with_name(f"{out.stem}.token_rewards.html"),
    )


def run_eval(
    policy: str,
    data: str,
    out: str | Path | None = None,
    *,
    reference: str | None = None,
    reward: str | None = None,
    judge: str | None = None,
    judge_options: dict | None = None,
    settings: EvalSettings | None = None,
    num_prompts: int | None = None,
    token_rewards: int = 0,
    beta: float = 0.1,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
) -> EvalResult:
    """`alignkit eval` as a call: load the models and feedback named by their specs,
    `evaluate`, and (with `out`) write the report JSON, the samples beside it and, for
    `token_rewards=K`, the per-token implicit reward maps (`token_reward`) of the first K
    policy samples as `<stem>.token_rewards.json` and `.html`."""
    from alignkit.feedback.function import load_judge
    from alignkit.models.loading import load_model_and_tokenizer

    settings = settings or EvalSettings()
    settings.sampling()  # invalid settings fail before any model loads
    if token_rewards and reference is None:
        raise AlignkitError("per-token rewards compare policy and reference: pass --reference")
    if token_rewards < 0:
        raise AlignkitError(f"--token-rewards must be >= 0, got {token_rewards}")
    prompts = load_eval_prompts(data, num_prompts)
    model, tokenizer = load_model_and_tokenizer(policy, device=device, dtype=dtype)
    ref_model = None
    if reference is not None:
        ref_model, ref_tokenizer = load_model_and_tokenizer(reference, device=device, dtype=dtype)
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise AlignkitError(
                f"policy {policy} and reference {reference} have different tokenizers; "
                "KL and log-ratios need the same one"
            )
    options = {"device": device, "dtype": dtype}
    reward_judge = load_judge(reward, **options) if reward else None
    pair_judge = None
    if judge:
        same = judge == reward and not judge_options
        pair_judge = reward_judge if same else load_judge(judge, **options, **(judge_options or {}))
    result = evaluate(
        model,
        tokenizer,
        prompts,
        settings,
        reference=ref_model,
        reward=reward_judge,
        judge=pair_judge,
        progress=progress,
    )
    if out is None:
        return result
    header = {
        "policy": str(policy),
        "reference": None if reference is None else str(reference),
        "data": str(data),
        "reward": reward,
        "judge": judge,
        "num_prompts": len(prompts),
        "settings": asdict(settings),
    }
    write_result(result, out, header)
    if token_rewards:
        from alignkit.evaluate.token_reward import token_rewards as compute_maps

        first = result.samples[:token_rewards]
        maps = compute_maps(
            model,
            ref_model,
            tokenizer,
            [r["prompt"] for r in first],
            [r["policy"]["completion"] for r in first],
            beta=beta,
            batch_size=settings.batch_size,
        )
        json_path, _ = token_reward_paths(out)
        json_path.write_text(
            json.dumps([m.to_json() for m in maps], indent=1, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
    return result

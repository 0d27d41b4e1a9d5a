"""What a risk-averse reward is for: best-of-n against a reward-model ensemble at k = 0 and
k > 0, measured under the learned reward and under the oracle.

Inverse Reward Design (Hadfield-Menell et al. 2017, Sec. 5) plans against the worst
plausible reward rather than the expected one. alignkit's version: an ensemble of reward
heads scores `mean - k * std` across heads (`reward.risk_aversion=k`). A reward model
trained on a narrow set is right near its data and unconstrained away from it; an
optimiser against it drifts to where it is wrong (reward hacking: the learned reward rises,
the oracle's does not). The heads' disagreement marks that region, and k > 0 keeps the
optimiser out of it.

1. The quickstart's first stage with `--seed` (default 1, whose reward model PPO hacked:
   docs/rl.md): 4 replies to each of 128 training prompts ranked by the oracle.
2. An ensemble of `--heads` reward heads on those rankings (the quickstart's reward-model
   settings: mean read-out, top 8 blocks, 2 epochs at 1e-4; each head with its own
   Poisson(1) bootstrap weights).
3. `--n` replies from the starting policy to each of the 80 held-out prompts (40 tokens,
   temperature 0.7), every reply scored by every head and by the oracle.
4. Best-of-n per prompt under `mean - k * std` for each k in `--ks`: the chosen replies'
   mean learned reward (k = 0 score) and mean oracle reward with its standard error;
   beside them the first reply (no selection) and the oracle's own best of n (the
   ceiling).
5. With `--ppo-ks`, PPO against the ensemble at each of those k (the quickstart's PPO
   settings: 16 batches of 16 prompts, 1 epoch, learning rate 1e-4, KL coefficient 0.02,
   top 8 blocks), each policy evaluated on the same held-out prompts: oracle reward, KL to
   the start, and the ensemble's mean score of its replies. PPO optimises far harder than
   best-of-n, which is where a proxy's blind spots show.

Run with `make bench-risk`; numbers go to benchmarks/results/risk_aversion.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from alignkit.config import PPOConfig, RewardConfig
from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.feedback.function import load_judge
from alignkit.feedback.reward_model import RewardModelJudge
from alignkit.methods.ppo import run_ppo
from alignkit.methods.reward import run_rm
from alignkit.models.builtin import DEFAULT_MODEL
from alignkit.models.loading import load_model_and_tokenizer
from alignkit.quickstart import PRESETS, Quickstart, run_stages
from alignkit.rollout.evaluation import evaluate_policy
from alignkit.rollout.sampling import SamplingSettings, sample
from alignkit.tasks.sentiment import chat_prompts, oracle

SAMPLING_SEED = 20_000
# the quickstart's full preset of 2026-11-30, with which the numbers in docs/benchmarks.md
# were measured; pinned so that tuning the quickstart does not change this benchmark
PRESET = dataclasses.replace(
    PRESETS["full"], train_prompts=128, rm_epochs=2, rm_heads=1, ppo_risk_aversion=0.0,
    dpo_epochs=2,
)  # fmt: skip


def train_ensemble(pairs: Path, output_dir: Path, heads: int, seed: int) -> Path:
    final = output_dir / "final"
    if (final / "config.json").is_file():
        return final
    preset = PRESET
    run_rm(
        RewardConfig(
            output_dir=str(output_dir),
            data=str(pairs / "rankings.jsonl"),
            eval_data=str(pairs / "eval.jsonl"),
            num_heads=heads,
            pooling=preset.rm_pooling,
            trainable_layers=preset.trainable_layers,
            epochs=preset.rm_epochs,
            batch_size=preset.rm_batch_size,
            learning_rate=preset.rm_learning_rate,
            lr_schedule="cosine",
            seed=seed,
            save_every=None,
            overwrite=True,
        )
    )
    return final


def sample_replies(prompts: list, n: int) -> list[list[str]]:
    """n replies to each prompt from the starting policy (per-row seeds: reproducible)."""
    model, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL, device="auto", dtype="float32")
    encoder = ChatEncoder(tokenizer)
    replies = []
    per_call = max(1, 16 // n)
    for start in range(0, len(prompts), per_call):
        chunk = prompts[start : start + per_call]
        ids = [encoder.encode_prompt(p) for p in chunk for _ in range(n)]
        settings = SamplingSettings(max_new_tokens=40, temperature=0.7, seed=SAMPLING_SEED + start)
        rollout = sample(
            model, ids, settings, eos_ids=encoder.stop_token_ids, pad_id=pad_token_id(tokenizer)
        )
        texts = [t.strip() for t in rollout.texts(tokenizer)]
        replies.extend(texts[i * n : (i + 1) * n] for i in range(len(chunk)))
        print(f"  sampled {start + len(chunk)}/{len(prompts)} prompts", flush=True)
    return replies


def ppo_against(quickstart: Quickstart, rm: Path, k: float) -> Path:
    """The quickstart's PPO stage against the ensemble scoring mean - k * std."""
    preset = quickstart.preset
    name = f"ppo-risk-{k:g}"
    final = quickstart.out / name / "final"
    if (final / "config.json").is_file():
        return final
    run_ppo(
        PPOConfig(
            **quickstart._common(name),
            data=str(quickstart.out / "pairs" / "prompts.jsonl"),
            reward=str(rm),
            reward_risk_aversion=k,
            critic=preset.ppo_critic,
            max_steps=preset.ppo_steps,
            batch_size=preset.ppo_batch_size,
            learning_rate=preset.ppo_learning_rate,
            critic_learning_rate=preset.ppo_critic_learning_rate,
            micro_batch_size=8,
            max_new_tokens=preset.max_new_tokens,
            temperature=preset.temperature,
            ppo_epochs=preset.ppo_epochs,
            kl_coef=preset.ppo_kl_coef,
        )
    )
    return final


def evaluate_ppo(policy_dir: Path, start, tokenizer, prompts: list, judge) -> dict:
    """Oracle reward, KL to the start and the ensemble's mean score on the held-out prompts.
    `start`: the starting policy (eval mode), loaded once for every PPO run."""
    policy, _ = load_model_and_tokenizer(str(policy_dir), device="auto", dtype="float32")
    result = evaluate_policy(
        policy.eval(),
        tokenizer,
        prompts,
        load_judge("task:sentiment"),
        SamplingSettings(max_new_tokens=40, temperature=0.7, seed=SAMPLING_SEED),
        reference=start,
        batch_size=16,
    )
    scores = judge.score_batch(
        [s["prompt"] for s in result.samples], [s["completion"] for s in result.samples]
    )
    return {
        "oracle_reward": result.reward,
        "oracle_sem": result.reward_sem,
        "kl_to_start": result.kl,
        "kl_sem": result.kl_sem,
        "learned_reward": statistics.fmean(scores),
    }


def mean_sem(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=1, help="the quickstart's pairs seed")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--n", type=int, default=8, help="replies per held-out prompt")
    parser.add_argument("--ks", default="0,0.5,1,2", help="risk aversions to compare")
    parser.add_argument("--ppo-ks", default="", help="also PPO at these k, e.g. 0,1")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-risk"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/risk_aversion.json"))
    args = parser.parse_args()
    started = time.perf_counter()

    quickstart = Quickstart(args.runs / f"pairs-seed{args.seed}", seed=args.seed)
    quickstart.preset = PRESET
    run_stages(quickstart.out, quickstart.stages[:1])
    rm = train_ensemble(
        quickstart.out / "pairs", args.runs / f"rm-seed{args.seed}-{args.heads}heads", args.heads,
        args.seed,
    )  # fmt: skip
    prompts = chat_prompts("test")[: PRESET.eval_prompts]
    cached = args.runs / f"replies-n{args.n}.json"  # sampling is the slow part: keep it
    if cached.is_file():
        replies = json.loads(cached.read_text())
    else:
        replies = sample_replies(prompts, args.n)
        cached.write_text(json.dumps(replies))

    judge = RewardModelJudge(rm, device="auto")
    records = [
        {"prompt": p, "completion": [{"role": "assistant", "content": r}]}
        for p, group in zip(prompts, replies, strict=True)
        for r in group
    ]
    scored = judge.score_records(records)
    means = torch.tensor(scored.scores).reshape(len(prompts), args.n)
    stds = torch.tensor(scored.stds).reshape(len(prompts), args.n)
    truth = torch.tensor(
        [[oracle(p, r) for r in group] for p, group in zip(prompts, replies, strict=True)]
    )

    def picked(index: torch.Tensor) -> dict:
        rows = torch.arange(len(prompts))
        oracle_mean, oracle_sem = mean_sem(truth[rows, index].tolist())
        return {
            "learned_reward": float(means[rows, index].mean()),
            "heads_std": float(stds[rows, index].mean()),
            "oracle_reward": oracle_mean,
            "oracle_sem": oracle_sem,
        }

    results = {
        "settings": vars(args) | {"runs": str(args.runs), "out": str(args.out)},
        "reward_model": str(rm),
        "first_reply": picked(torch.zeros(len(prompts), dtype=torch.long)),
        "oracle_best_of_n": picked(truth.argmax(-1)),
        "best_of_n": {},
        "correlation_with_oracle": float(
            torch.corrcoef(torch.stack([means.flatten(), truth.flatten()]))[0, 1]
        ),
    }
    for k in (float(x) for x in args.ks.split(",")):
        results["best_of_n"][str(k)] = picked((means - k * stds).argmax(-1))
    results["ppo"] = {}
    ppo_ks = [float(x) for x in filter(None, args.ppo_ks.split(","))]
    if ppo_ks:
        start, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL, device="auto", dtype="float32")
        for k in ppo_ks:
            results["ppo"][str(k)] = evaluate_ppo(
                ppo_against(quickstart, rm, k), start.eval(), tokenizer, prompts, judge
            )
    results["seconds"] = time.perf_counter() - started

    print(f"best of {args.n} on {len(prompts)} held-out prompts; reward model {rm}")
    print(f"{'selection':<28}{'learned reward':>16}{'heads std':>11}{'oracle reward':>20}")
    rows = {
        "first reply (no selection)": results["first_reply"],
        **{f"best of {args.n}, k = {k}": v for k, v in results["best_of_n"].items()},
        f"oracle's best of {args.n}": results["oracle_best_of_n"],
    }
    for name, row in rows.items():
        print(
            f"{name:<28}{row['learned_reward']:>+16.3f}{row['heads_std']:>11.3f}"
            f"{row['oracle_reward']:>+13.3f} ± {row['oracle_sem']:.3f}"
        )
    print(f"learned reward vs oracle, all replies: r = {results['correlation_with_oracle']:.3f}")
    for k, row in results["ppo"].items():
        print(
            f"PPO, k = {k}: oracle {row['oracle_reward']:+.3f} ± {row['oracle_sem']:.3f} at KL "
            f"{row['kl_to_start']:.2f} ± {row['kl_sem']:.2f}; learned {row['learned_reward']:+.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

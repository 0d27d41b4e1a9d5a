"""PPO on the sentiment task with SmolLM2-135M: against a reward model trained on
oracle-labelled pairs, and against the oracle itself, each compared with the starting
policy on held-out prompts (mean oracle reward, KL to the start).

Reuses a quickstart run folder (`--run`, default runs/quickstart): its pairs, reward
model and PPO-vs-reward-model policy are trained there if missing (finished stages are
skipped), then PPO with the oracle as reward is trained with the same settings.

Run with `make bench-ppo`; numbers go to benchmarks/results/ppo_sentiment.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignkit.config import PPOConfig
from alignkit.evaluate.policy import evaluate_policy
from alignkit.feedback.function import load_judge
from alignkit.methods.ppo import run_ppo
from alignkit.models.loading import load_model_and_tokenizer
from alignkit.quickstart import Quickstart
from alignkit.tasks.sentiment import prompts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ppo_sentiment.json"))
    args = parser.parse_args()
    quickstart = Quickstart(args.run, preset="full")
    for _title, name, stage in quickstart.stages[:3]:  # pairs, reward model, PPO vs RM
        if not (args.run / f"{name}.done").is_file():
            stage()
            (args.run / f"{name}.done").write_text("{}")
    preset = quickstart.preset
    oracle_dir = args.run / "ppo-oracle"
    if not (oracle_dir / "final" / "config.json").is_file():
        run_ppo(
            PPOConfig(
                model=quickstart.model,
                output_dir=str(oracle_dir),
                data=str(args.run / "pairs" / "prompts.jsonl"),
                reward="task:sentiment",
                critic="policy",
                max_steps=preset.ppo_steps,
                batch_size=preset.ppo_batch_size,
                learning_rate=preset.ppo_learning_rate,
                critic_learning_rate=10 * preset.ppo_learning_rate,
                max_new_tokens=preset.max_new_tokens,
                temperature=preset.temperature,
                ppo_epochs=2,
                kl_coef=0.05,
                save_every=None,
            )
        )
    held_out = prompts("test")[: preset.eval_prompts]
    judge = load_judge("task:sentiment")
    start, tokenizer = load_model_and_tokenizer(quickstart.model, device="auto", dtype="float32")
    results = {}
    for name, path in (
        ("start", None),
        ("PPO vs reward model", args.run / "ppo" / "final"),
        ("PPO vs oracle", oracle_dir / "final"),
    ):
        policy = (
            start
            if path is None
            else load_model_and_tokenizer(path, device="auto", dtype="float32")[0]
        )
        evaluation = evaluate_policy(
            policy,
            tokenizer,
            held_out,
            judge,
            quickstart.sampling(10_000),
            reference=None if path is None else start,
        )
        results[name] = {
            "oracle_reward": evaluation.reward,
            "reward_sem": evaluation.reward_sem,
            "kl_to_start": evaluation.kl,
            "mean_length": evaluation.length,
        }
        print(
            f"{name:<22} oracle reward {evaluation.reward:+.3f} ± {evaluation.reward_sem:.3f}   "
            f"KL to start {evaluation.kl:.2f}   length {evaluation.length:.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"held_out_prompts": len(held_out), "preset": "full", "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()

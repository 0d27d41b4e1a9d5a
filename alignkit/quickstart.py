"""The classic RLHF pipeline end to end on the built-in `sentiment` task.

1. sample two completions per training prompt from the starting policy;
2. label each pair with the oracle (VADER), standing in for a human;
3. train a reward model on the pairs;
4. PPO against that reward model;
5. DPO on the same pairs;
6. evaluate the start, PPO and DPO policies on held-out prompts: mean oracle reward and
   KL to the start;
7. print a summary table; save it and before/after samples.

Every stage writes its result under the run folder and a `.done` marker; a re-run skips
finished stages. `preset="tiny"` runs the same stages on a tiny random model in about a
minute (a smoke test: its numbers mean nothing); `preset="full"` uses the embedded
SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("alignkit")


@dataclass(frozen=True)
class Preset:
    train_prompts: int
    eval_prompts: int
    max_new_tokens: int
    rm_epochs: float
    rm_learning_rate: float
    ppo_steps: int
    ppo_batch_size: int
    ppo_learning_rate: float
    dpo_epochs: float
    dpo_learning_rate: float
    batch_size: int = 16
    temperature: float = 0.7
    min_score_gap: float = 0.05  # pairs whose oracle scores are closer are ties, skipped
    tiny: bool = False


PRESETS = {
    "full": Preset(
        train_prompts=192,
        eval_prompts=80,
        max_new_tokens=24,
        rm_epochs=3,
        rm_learning_rate=5e-5,
        ppo_steps=10,
        ppo_batch_size=16,
        ppo_learning_rate=1e-5,
        dpo_epochs=2,
        dpo_learning_rate=2e-5,
        min_score_gap=0.25,
    ),
    "tiny": Preset(
        train_prompts=32,
        eval_prompts=16,
        max_new_tokens=8,
        rm_epochs=1,
        rm_learning_rate=1e-3,
        ppo_steps=2,
        ppo_batch_size=8,
        ppo_learning_rate=1e-4,
        dpo_epochs=1,
        dpo_learning_rate=1e-4,
        batch_size=8,
        min_score_gap=-1.0,  # random tokens rarely carry sentiment: keep every pair
        tiny=True,
    ),
}


class Quickstart:
    def __init__(
        self, output_dir: str | Path = "runs/quickstart", preset: str = "full", seed: int = 0
    ):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        self.out = Path(output_dir)
        self.preset = PRESETS[preset]
        self.preset_name = preset
        self.seed = seed
        self.stages = [
            (
                "sample pairs from the starting policy and label them with the oracle",
                "pairs",
                self.make_pairs,
            ),
            ("train a reward model on the labelled pairs", "rm", self.train_reward_model),
            ("PPO against the reward model", "ppo", self.train_ppo),
            ("DPO on the same pairs", "dpo", self.train_dpo),
            ("evaluate start, PPO and DPO on held-out prompts", "eval", self.evaluate),
        ]

    # ---- driving --------------------------------------------------------------------

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        for number, (title, name, stage) in enumerate(self.stages, 1):
            marker = self.out / f"{name}.done"
            prefix = f"[{number}/{len(self.stages)}] {title}"
            if marker.is_file():
                print(f"{prefix}: done already, skipped ({self.out / name})", flush=True)
                continue
            print(f"{prefix} ...", flush=True)
            stage_start = time.perf_counter()
            stage()
            marker.write_text(json.dumps({"seconds": time.perf_counter() - stage_start}))
            print(f"{prefix}: finished in {time.perf_counter() - stage_start:.0f} s", flush=True)
        summary = json.loads((self.out / "summary.json").read_text())
        print(format_summary(summary))
        print(f"total {time.perf_counter() - started:.0f} s; results in {self.out}")
        return summary

    @property
    def model(self) -> str:
        if not self.preset.tiny:
            from alignkit.models.builtin import DEFAULT_MODEL

            return DEFAULT_MODEL
        folder = self.out / "tiny-model"
        if not (folder / "config.json").is_file():
            from alignkit.models.tiny import tiny_model, tiny_tokenizer

            tokenizer = tiny_tokenizer()
            tiny_model(seed=self.seed, tokenizer=tokenizer).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        return str(folder)

    def sampling(self, seed: int):
        from alignkit.rollout.sampling import SamplingSettings

        return SamplingSettings(
            max_new_tokens=self.preset.max_new_tokens,
            temperature=self.preset.temperature,
            seed=seed,
        )

    # ---- stages ---------------------------------------------------------------------

    def make_pairs(self) -> None:
        from alignkit.data.templating import ChatEncoder, pad_token_id
        from alignkit.models.loading import load_model_and_tokenizer
        from alignkit.rollout.sampling import sample
        from alignkit.tasks.sentiment import oracle, prompts

        train = prompts("train")[: self.preset.train_prompts]
        model, tokenizer = load_model_and_tokenizer(self.model, device="auto", dtype="float32")
        encoder = ChatEncoder(tokenizer)
        eos, pad = encoder.stop_token_ids, pad_token_id(tokenizer)
        pairs, skipped = [], 0
        batch = max(1, self.preset.batch_size // 2)
        from tqdm.auto import tqdm

        for start in tqdm(range(0, len(train), batch), desc="sampling pairs", dynamic_ncols=True):
            chunk = train[start : start + batch]
            ids = [encoder.encode_prompt(p) for p in chunk for _ in range(2)]
            rollout = sample(model, ids, self.sampling(self.seed + start), eos_ids=eos, pad_id=pad)
            texts = [t.strip() for t in rollout.texts(tokenizer)]
            for k, prompt in enumerate(chunk):
                a, b = texts[2 * k], texts[2 * k + 1]
                score_a, score_b = oracle(prompt, a), oracle(prompt, b)
                if abs(score_a - score_b) < self.preset.min_score_gap or not a or not b:
                    skipped += 1  # a tie teaches nothing
                    continue
                if score_a < score_b:
                    a, b, score_a, score_b = b, a, score_b, score_a
                pairs.append(
                    {
                        "prompt": prompt,
                        "chosen": a,
                        "rejected": b,
                        "score_chosen": score_a,
                        "score_rejected": score_b,
                    }
                )
        random.Random(self.seed).shuffle(pairs)
        held_out = max(2, len(pairs) // 10)
        write_jsonl(self.out / "pairs" / "eval.jsonl", pairs[:held_out])
        write_jsonl(self.out / "pairs" / "train.jsonl", pairs[held_out:])
        write_jsonl(self.out / "pairs" / "prompts.jsonl", [{"prompt": p} for p in train])
        print(
            f"    {len(pairs)} labelled pairs ({skipped} ties skipped), {held_out} held out for the reward model"
        )

    def _common(self, name: str) -> dict:
        return dict(
            model=self.model,
            output_dir=str(self.out / name),
            seed=self.seed,
            save_every=None,
            log_every=max(1, self.preset.ppo_steps // 4),
            # a stage without its .done marker is re-run from the start: its folder may
            # hold what a killed earlier attempt left
            overwrite=True,
        )

    def train_reward_model(self) -> None:
        from alignkit.config import RewardConfig
        from alignkit.methods.reward import run_rm

        result = run_rm(
            RewardConfig(
                **self._common("rm"),
                data=str(self.out / "pairs" / "train.jsonl"),
                eval_data=str(self.out / "pairs" / "eval.jsonl"),
                epochs=self.preset.rm_epochs,
                batch_size=self.preset.batch_size,
                learning_rate=self.preset.rm_learning_rate,
                lr_schedule="cosine",
            )
        )
        print(
            f"    held-out reward-model accuracy {result.last_metrics.get('eval/accuracy', float('nan')):.3f}"
        )

    def train_ppo(self, name: str = "ppo", reward: str | None = None, critic: str = "auto") -> None:
        """PPO from the starting policy; by default against the stage-3 reward model."""
        from alignkit.config import PPOConfig
        from alignkit.methods.ppo import run_ppo

        run_ppo(
            PPOConfig(
                **self._common(name),
                data=str(self.out / "pairs" / "prompts.jsonl"),
                reward=reward or str(self.out / "rm" / "final"),
                critic=critic,
                max_steps=self.preset.ppo_steps,
                batch_size=self.preset.ppo_batch_size,
                learning_rate=self.preset.ppo_learning_rate,
                critic_learning_rate=10 * self.preset.ppo_learning_rate,
                max_new_tokens=self.preset.max_new_tokens,
                temperature=self.preset.temperature,
                ppo_epochs=2,
                kl_coef=0.05,
                sample_every=max(1, self.preset.ppo_steps // 3),
            )
        )

    def train_dpo(self) -> None:
        from alignkit.config import DPOConfig
        from alignkit.methods.dpo import run_dpo

        run_dpo(
            DPOConfig(
                **self._common("dpo"),
                data=str(self.out / "pairs" / "train.jsonl"),
                eval_data=str(self.out / "pairs" / "eval.jsonl"),
                epochs=self.preset.dpo_epochs,
                batch_size=self.preset.batch_size,
                learning_rate=self.preset.dpo_learning_rate,
                beta=0.1,
            )
        )

    def evaluate_policies(self, policies: dict) -> tuple[dict, dict]:
        """Each policy (name -> model folder, None for the start) on the held-out prompts:
        (rows of oracle reward / KL to start / length, samples)."""
        from alignkit.feedback.function import load_judge
        from alignkit.models.loading import load_model_and_tokenizer
        from alignkit.rollout.evaluation import evaluate_policy
        from alignkit.tasks.sentiment import prompts

        held_out = prompts("test")[: self.preset.eval_prompts]
        judge = load_judge("task:sentiment")
        start, tokenizer = load_model_and_tokenizer(self.model, device="auto", dtype="float32")
        start.eval()
        rows, samples = {}, {}
        for name, path in policies.items():
            policy = start
            if path is not None:
                policy = load_model_and_tokenizer(path, device="auto", dtype="float32")[0]
            result = evaluate_policy(
                policy,
                tokenizer,
                held_out,
                judge,
                self.sampling(self.seed + 10_000),
                reference=None if path is None else start,
                batch_size=self.preset.batch_size,
            )
            rows[name] = {
                "oracle_reward": result.reward,
                "reward_sem": result.reward_sem,
                "kl_to_start": result.kl,
                "mean_length": result.length,
            }
            samples[name] = result.samples
        return rows, samples

    def evaluate(self) -> None:
        rows, samples = self.evaluate_policies(
            {"start": None, "ppo": self.out / "ppo" / "final", "dpo": self.out / "dpo" / "final"}
        )
        summary = {
            "preset": self.preset_name,
            "task": "sentiment",
            "held_out_prompts": len(samples["start"]),
            "policies": rows,
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        write_jsonl(
            self.out / "samples_before_after.jsonl",
            [
                {
                    "prompt": samples["start"][i]["prompt"],
                    **{name: samples[name][i]["completion"] for name in samples},
                    **{f"{name}_score": samples[name][i]["score"] for name in samples},
                }
                for i in range(len(samples["start"]))
            ],
        )


def format_summary(summary: dict) -> str:
    width = max(8, *(len(name) + 2 for name in summary["policies"]))
    lines = [
        f"sentiment task, {summary['held_out_prompts']} held-out prompts (preset {summary['preset']})",
        f"{'policy':<{width}}{'oracle reward':>16}{'KL to start':>13}{'length':>8}",
    ]
    for name, row in summary["policies"].items():
        reward = f"{row['oracle_reward']:+.3f} ± {row['reward_sem']:.3f}"
        lines.append(
            f"{name:<{width}}{reward:>16}{row['kl_to_start']:>13.2f}{row['mean_length']:>8.1f}"
        )
    return "\n".join(lines)


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")

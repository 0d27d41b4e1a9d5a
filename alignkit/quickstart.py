"""The classic RLHF pipeline end to end on the built-in `sentiment` task.

1. sample K completions per training prompt from the starting policy (`sentiment-chat`
   prompts);
2. rank them with the oracle (VADER), standing in for a human;
3. train a reward model on the rankings (reading the mean of each reply's states);
4. PPO against that reward model;
5. DPO on each prompt's best-vs-worst pair;
6. evaluate the start, PPO and DPO policies on held-out prompts: mean oracle reward, KL
   to the start, win rate against the start;
7. print a summary table; save it, before/after samples, per-token reward maps and the
   report.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignkit.report import write_report

log = logging.getLogger("alignkit")


@dataclass(frozen=True)
class Preset:
    train_prompts: int  # prompts sampled for pairs
    samples_per_prompt: int  # K: each prompt's pair is its best and worst of K (oracle)
    eval_prompts: int
    max_new_tokens: int
    rm_epochs: float
    rm_learning_rate: float
    ppo_steps: int  # rollout batches
    ppo_batch_size: int  # prompts per rollout batch
    ppo_learning_rate: float
    ppo_kl_coef: float
    ppo_critic_learning_rate: float
    dpo_epochs: float
    dpo_learning_rate: float
    dpo_beta: float = 0.1
    ppo_critic: str = "policy"  # value model from the policy with a fresh head at V = 0
    ppo_epochs: int = 2  # passes over each rollout batch
    trainable_layers: int | None = None  # RM, PPO and DPO train only the top N blocks
    rm_held_out: float = 0.2  # share of the prompts held out to measure the reward model
    rm_batch_size: int = 8  # rankings per optimizer step
    rm_pooling: str = "mean"  # the reward model reads the mean of the reply's states
    rm_heads: int = 1  # > 1: an ensemble of heads, each on its own bootstrap resample
    ppo_risk_aversion: float = 0.0  # PPO's reward: ensemble mean - k * std (IRD)
    batch_size: int = 16
    temperature: float = 0.7
    min_score_gap: float = 0.05  # pairs whose oracle scores are closer are ties, skipped
    tiny: bool = False


PRESETS = {
    "full": Preset(
        train_prompts=256,
        samples_per_prompt=4,
        eval_prompts=80,
        max_new_tokens=40,
        rm_epochs=1,
        rm_heads=4,
        rm_learning_rate=1e-4,
        ppo_steps=16,
        ppo_batch_size=16,
        ppo_epochs=1,
        ppo_learning_rate=1e-4,
        ppo_kl_coef=0.02,
        ppo_risk_aversion=0.5,
        ppo_critic_learning_rate=1e-4,
        dpo_epochs=1,
        dpo_learning_rate=5e-5,
        min_score_gap=0.25,
        trainable_layers=8,
    ),
    "tiny": Preset(
        train_prompts=32,
        samples_per_prompt=2,
        eval_prompts=16,
        max_new_tokens=8,
        rm_epochs=1,
        rm_learning_rate=1e-3,
        ppo_steps=2,
        ppo_batch_size=8,
        ppo_learning_rate=1e-3,
        ppo_kl_coef=0.05,
        ppo_critic_learning_rate=1e-3,
        dpo_epochs=1,
        dpo_learning_rate=1e-3,
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
        started = time.perf_counter()
        run_stages(self.out, self.stages)
        summary = json.loads((self.out / "summary.json").read_text())
        report = write_report([self.out], self.out / "report.html", title="alignkit quickstart")
        print(format_summary(summary))
        print(f"total {time.perf_counter() - started:.0f} s; results in {self.out}")
        print(f"report: {report} (open it in a browser)")
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
        from tqdm.auto import tqdm

        from alignkit.data.templating import ChatEncoder, pad_token_id
        from alignkit.models.loading import load_model_and_tokenizer
        from alignkit.rollout.sampling import sample
        from alignkit.tasks.sentiment import chat_prompts, oracle

        k = self.preset.samples_per_prompt
        train = chat_prompts("train")[: self.preset.train_prompts]
        model, tokenizer = load_model_and_tokenizer(self.model, device="auto", dtype="float32")
        encoder = ChatEncoder(tokenizer)
        eos, pad = encoder.stop_token_ids, pad_token_id(tokenizer)
        groups, skipped = [], 0  # (prompt, [(score, text), ...] best first)
        per_call = max(1, self.preset.batch_size // k)  # prompts per sampler call
        bar = tqdm(total=len(train), desc="sampling", unit="prompt", dynamic_ncols=True)
        for start in range(0, len(train), per_call):
            chunk = train[start : start + per_call]
            ids = [encoder.encode_prompt(p) for p in chunk for _ in range(k)]
            rollout = sample(model, ids, self.sampling(self.seed + start), eos_ids=eos, pad_id=pad)
            texts = [t.strip() for t in rollout.texts(tokenizer)]
            for i, prompt in enumerate(chunk):
                # the oracle stands in for a human who ranks the K samples
                ranked = sorted(
                    ((oracle(prompt, t), t) for t in texts[i * k : (i + 1) * k] if t),
                    key=lambda scored: -scored[0],
                )
                if len(ranked) < 2 or ranked[0][0] - ranked[-1][0] < self.preset.min_score_gap:
                    skipped += 1  # no clear winner: a tie teaches nothing
                    continue
                groups.append((prompt, ranked))
            bar.update(len(chunk))
        bar.close()
        random.Random(self.seed).shuffle(groups)
        held_out = max(2, round(len(groups) * self.preset.rm_held_out))
        folder = self.out / "pairs"
        # the reward model learns from each training prompt's whole ranking (all C(K, 2)
        # comparisons of K responses, each encoded once) and is measured on the held-out
        # prompts' best-vs-worst pairs; DPO trains on the training prompts' pairs
        write_jsonl(folder / "eval.jsonl", [best_vs_worst(*g) for g in groups[:held_out]])
        write_jsonl(folder / "train.jsonl", [best_vs_worst(*g) for g in groups[held_out:]])
        min_step = min(0.05, max(0.0, self.preset.min_score_gap))  # tiny: keep every response
        write_jsonl(
            folder / "rankings.jsonl",
            [ranking_record(*g, min_step=min_step) for g in groups[held_out:]],
        )
        write_jsonl(folder / "prompts.jsonl", [{"prompt": p} for p in chat_prompts("train")])
        print(
            f"    {len(groups)} prompts with a clear best of {k} samples ({skipped} without one "
            f"skipped): rankings and best-vs-worst pairs of {len(groups) - held_out}, pairs "
            f"of {held_out} held out to measure the reward model"
        )

    def _common(self, name: str) -> dict:
        return dict(
            model=self.model,
            output_dir=str(self.out / name),
            seed=self.seed,
            save_every=None,
            trainable_layers=self.preset.trainable_layers,
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
                data=str(self.out / "pairs" / "rankings.jsonl"),
                eval_data=str(self.out / "pairs" / "eval.jsonl"),
                epochs=self.preset.rm_epochs,
                batch_size=self.preset.rm_batch_size,
                learning_rate=self.preset.rm_learning_rate,
                lr_schedule="cosine",
                pooling=self.preset.rm_pooling,
                num_heads=self.preset.rm_heads,
            )
        )
        print(
            f"    held-out reward-model accuracy {result.last_metrics.get('eval/accuracy', float('nan')):.3f}"
        )

    def train_ppo(self) -> None:
        """PPO from the starting policy against the stage-3 reward model (risk-averse:
        its heads' mean - k * std, when it is an ensemble and the preset's k > 0)."""
        from alignkit.config import PPOConfig
        from alignkit.methods.ppo import run_ppo

        run_ppo(
            PPOConfig(
                **self._common("ppo"),
                data=str(self.out / "pairs" / "prompts.jsonl"),
                reward=str(self.out / "rm" / "final"),
                critic=self.preset.ppo_critic,
                max_steps=self.preset.ppo_steps,
                batch_size=self.preset.ppo_batch_size,
                learning_rate=self.preset.ppo_learning_rate,
                critic_learning_rate=self.preset.ppo_critic_learning_rate,
                micro_batch_size=8,
                max_new_tokens=self.preset.max_new_tokens,
                temperature=self.preset.temperature,
                ppo_epochs=self.preset.ppo_epochs,
                kl_coef=self.preset.ppo_kl_coef,
                reward_risk_aversion=self.preset.ppo_risk_aversion,
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
                beta=self.preset.dpo_beta,
            )
        )

    def evaluate_policies(self, policies: dict, held_out: list | None = None) -> tuple[dict, dict]:
        """Each policy (name -> model folder, None for the start) on the held-out prompts
        (default: the task's first `eval_prompts` chat prompts): (rows of oracle reward,
        KL to start, length and win rate against "start", samples)."""
        from alignkit.feedback.function import load_judge
        from alignkit.models.loading import load_model_and_tokenizer
        from alignkit.rollout.evaluation import evaluate_policy
        from alignkit.tasks.sentiment import chat_prompts

        if held_out is None:
            held_out = chat_prompts("test")[: self.preset.eval_prompts]
        judge = load_judge("task:sentiment")
        start, tokenizer = load_model_and_tokenizer(self.model, device="auto", dtype="float32")
        start.eval()
        rows, samples = {}, {}
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(held_out) * len(policies),
            desc="evaluating",
            unit="sample",
            dynamic_ncols=True,
        )
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
                progress=bar.update,
            )
            rows[name] = {
                "oracle_reward": result.reward,
                "reward_sem": result.reward_sem,
                "kl_to_start": result.kl,
                "kl_sem": result.kl_sem,
                "mean_length": result.length,
            }
            samples[name] = result.samples
        bar.close()
        for name in rows:
            rows[name]["win_rate"] = win_rate_against(samples[name], samples["start"])
        return rows, samples

    def token_reward_maps(self, policy_dir: Path, samples: list[dict], count: int = 4) -> list:
        """Per-token implicit rewards of the first `count` held-out samples of the policy
        in `policy_dir` against the start, at DPO's beta (for the report's heat maps)."""
        from alignkit.evaluate.token_reward import token_rewards
        from alignkit.models.loading import load_model_and_tokenizer

        start, tokenizer = load_model_and_tokenizer(self.model, device="auto", dtype="float32")
        policy = load_model_and_tokenizer(policy_dir, device="auto", dtype="float32")[0]
        first = samples[:count]
        return token_rewards(
            policy,
            start,
            tokenizer,
            [s["prompt"] for s in first],
            [s["completion"] for s in first],
            beta=self.preset.dpo_beta,
        )

    def evaluate(self) -> None:
        rows, samples = self.evaluate_policies(
            {"start": None, "ppo": self.out / "ppo" / "final", "dpo": self.out / "dpo" / "final"}
        )
        summary = {
            "preset": self.preset_name,
            "task": "sentiment-chat",
            "held_out_prompts": len(samples["start"]),
            "policies": rows,
            "reward_model": reward_model_accuracy(self.out / "rm"),
        }
        maps = self.token_reward_maps(self.out / "dpo" / "final", samples["dpo"])
        (self.out / "dpo.token_rewards.json").write_text(
            json.dumps([m.to_json() for m in maps], indent=1, ensure_ascii=False) + "\n"
        )
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


def run_stages(out: Path, stages: list[tuple[str, str, Callable[[], None]]]) -> dict:
    """Run each (title, name, function) stage in order, a line per stage; a stage whose
    `out/NAME.done` marker exists is skipped. Returns name -> seconds the stage took
    (when it ran, read back from its marker)."""
    out.mkdir(parents=True, exist_ok=True)
    for number, (title, name, stage) in enumerate(stages, 1):
        marker = out / f"{name}.done"
        prefix = f"[{number}/{len(stages)}] {title}"
        if marker.is_file():
            print(f"{prefix}: done already, skipped ({out / name})", flush=True)
            continue
        print(f"{prefix} ...", flush=True)
        stage_start = time.perf_counter()
        stage()
        seconds = time.perf_counter() - stage_start
        marker.write_text(json.dumps({"seconds": seconds}))
        print(f"{prefix}: finished in {seconds:.0f} s", flush=True)
    return {
        name: json.loads((out / f"{name}.done").read_text())["seconds"] for _, name, _ in stages
    }


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def best_vs_worst(prompt, ranked: list[tuple[float, str]]) -> dict:
    """The preference pair of a prompt's best and worst response (oracle scores kept)."""
    (score_a, a), (score_b, b) = ranked[0], ranked[-1]
    return {
        "prompt": prompt,
        "chosen": assistant(a),
        "rejected": assistant(b),
        "score_chosen": score_a,
        "score_rejected": score_b,
    }


def ranking_record(prompt, ranked: list[tuple[float, str]], min_step: float = 0.05) -> dict:
    """A ranking record of a prompt's responses, best first; a response scored within
    `min_step` of the one ranked above it is left out (a near tie is not a preference)."""
    kept = [ranked[0]]
    for scored in ranked[1:]:
        if kept[-1][0] - scored[0] >= min_step:
            kept.append(scored)
    return {
        "prompt": prompt,
        "responses": [assistant(text) for _, text in kept],
        "ranking": list(range(len(kept))),
        "scores": [score for score, _ in kept],
    }


def win_rate_against(mine: list[dict], theirs: list[dict]) -> float:
    """Share of prompts where `mine` scores above `theirs` (same prompts, same order),
    ties counting half."""
    if not mine:
        return float("nan")
    wins = sum(
        1.0 if a["score"] > b["score"] else 0.5 if a["score"] == b["score"] else 0.0
        for a, b in zip(mine, theirs, strict=True)
    )
    return wins / len(mine)


def reward_model_accuracy(run_dir: Path) -> dict:
    """The reward model's last held-out accuracy and how many pairs it was measured on."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    accuracy = next((r["eval/accuracy"] for r in reversed(rows) if "eval/accuracy" in r), None)
    pairs = len((run_dir.parent / "pairs" / "eval.jsonl").read_text().splitlines())
    return {"accuracy": accuracy, "pairs": pairs}


def format_summary(summary: dict) -> str:
    """The console table: each policy's held-out oracle reward, its gain over the start,
    KL to the start and win rate against it."""
    policies = summary["policies"]
    start = policies.get("start", {}).get("oracle_reward", float("nan"))
    width = max(8, *(len(name) + 2 for name in policies))
    header = ("oracle reward", "gain", "KL to start", "win rate", "length")
    lines = [
        f"{summary.get('task', 'sentiment')} task, {summary['held_out_prompts']} held-out "
        f"prompts (preset {summary['preset']})",
        f"{'policy':<{width}}{header[0]:>16}{header[1]:>8}{header[2]:>14}{header[3]:>10}{header[4]:>8}",
    ]
    for name, row in policies.items():
        reward = f"{row['oracle_reward']:+.3f} ± {row['reward_sem']:.3f}"
        gain = "" if name == "start" else f"{row['oracle_reward'] - start:+.3f}"
        kl = f"{row['kl_to_start']:.2f} ± {row.get('kl_sem', 0.0):.2f}"
        win = "" if name == "start" else f"{row.get('win_rate', float('nan')):.2f}"
        lines.append(
            f"{name:<{width}}{reward:>16}{gain:>8}{kl:>14}{win:>10}{row['mean_length']:>8.1f}"
        )
    lines.append(
        "KL: nats per completion, the mean of log pi - log pi_start over the policy's own "
        "samples (k1) ± its standard error; win rate: share of prompts scored above the start"
    )
    accuracy = (summary.get("reward_model") or {}).get("accuracy")
    if accuracy is not None:
        pairs = summary["reward_model"]["pairs"]
        lines.append(f"reward model: held-out accuracy {accuracy:.3f} on {pairs} pairs")
    return "\n".join(lines)


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")

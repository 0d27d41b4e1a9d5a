"""RLAIF vs RLHF on the `sentiment` task: the same pairs labelled by an AI judge and by
the oracle, DPO on each, and the policies compared on held-out prompts.

1. `label`: SmolLM2-135M-Instruct continues each of `--prompts` training openings twice
   (24 new tokens, temperature 0.7: the quickstart's sampling, raw text as the quickstart
   does, not a chat turn), and the same model, as a local LLM judge
   (`llm:smollm2-135m-instruct`), is asked "Which continuation is more positive?" about
   each pair, in both orders, averaged: the real `alignkit label` pipeline
   (`alignkit.feedback.rlaif.label_preferences`, label store and all), with p_chosen its
   soft label.
2. `pairs`: the oracle (VADER) scores both responses of every judged pair; pairs with
   equal oracle scores are dropped from both label sets (pairs with an empty or identical
   response were never judged), so both DPO runs see exactly the same pairs, and 10% are
   held out (oracle-labelled) as DPO eval data. The judge's agreement with the oracle and
   its calibration (expected calibration error and reliability table,
   `alignkit.ops.calibration`) are measured on all kept pairs.
3. DPO with the quickstart's settings (2 epochs, learning rate 2e-5, beta 0.1, batch 16)
   on the AI labels (p_chosen as soft labels), on the oracle labels (hard), and, to tell
   the judge's ranking from the softness of its labels, on the AI labels made hard.
4. `eval`: start and the DPO policies on `--eval-prompts` held-out prompts exactly as the
   quickstart evaluates (`Quickstart.evaluate_policies`: same sampling seeds, mean oracle
   reward ± s.e., KL to the start per sequence, length).

Each stage writes a `.done` marker in the run folder (`--run-dir`, default
runs/bench-rlaif); a re-run skips finished stages and the label store resumes a killed
labelling. Run with `make bench-rlaif`; numbers go to benchmarks/results/rlaif_sentiment.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import sqlite3
from pathlib import Path

import torch

from alignkit.feedback.generators import LocalGenerator
from alignkit.feedback.label_store import STORE_NAME
from alignkit.feedback.rlaif import RLAIFSettings, label_preferences
from alignkit.models.builtin import DEFAULT_MODEL
from alignkit.models.loading import load_model_and_tokenizer
from alignkit.ops.calibration import expected_calibration_error, reliability_table
from alignkit.quickstart import PRESETS, Quickstart, format_summary, run_stages, write_jsonl
from alignkit.tasks.sentiment import oracle, prompts

QUESTION = "Which continuation is more positive?"
JUDGE = f"llm:{DEFAULT_MODEL}"
DPO_RUNS = ("dpo-ai", "dpo-oracle", "dpo-ai-hard")
GAP = 0.25  # the quickstart's tie threshold: agreement is also reported above it


class RawContinuations:
    """The policy for `label_preferences`: continues the prompt's text as raw text, as
    the quickstart samples (the pipeline hands it one-user-turn conversations; a string
    prompt makes `LocalGenerator` skip the chat template). Seeded per prompt and sample."""

    name = f"{DEFAULT_MODEL} (raw continuation)"

    def __init__(self, batch_size: int = 16):
        model, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL, device="auto", dtype="float32")
        self.inner = LocalGenerator(model.eval(), tokenizer, batch_size=batch_size)

    def generate(self, conversations, **settings):
        return self.inner.generate([c[-1]["content"] for c in conversations], **settings)


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = args.run_dir
        self.quickstart = Quickstart(self.out, preset="full", seed=args.seed)
        # the settings this benchmark's numbers were measured with (the quickstart's full
        # preset of 2026-11-24), pinned here so that tuning the quickstart does not change
        # them: raw-text review openings, 24 new tokens, DPO 2 epochs at 2e-5, every layer
        self.quickstart.preset = dataclasses.replace(
            PRESETS["full"],
            train_prompts=args.prompts,
            eval_prompts=args.eval_prompts,
            max_new_tokens=24,
            dpo_epochs=2,
            dpo_learning_rate=2e-5,
            dpo_beta=0.1,
            batch_size=16,
            temperature=0.7,
            trainable_layers=None,
        )
        self.preset = self.quickstart.preset
        self.stages = [
            ("sample pairs and label them with the AI judge (alignkit label)", "label", self.label),
            ("oracle labels for the same pairs; agreement and calibration", "pairs", self.pairs),
            ("DPO on the AI labels (soft p_chosen)", "dpo-ai", lambda: self.dpo("dpo-ai", "ai")),
            ("DPO on the oracle labels", "dpo-oracle", lambda: self.dpo("dpo-oracle", "oracle")),
            (
                "DPO on the AI labels, hard",
                "dpo-ai-hard",
                lambda: self.dpo("dpo-ai-hard", "ai_hard"),
            ),
            ("evaluate start and the DPO policies on held-out prompts", "eval", self.evaluate),
        ]

    def run(self) -> dict:
        seconds = run_stages(self.out, self.stages)
        results = {
            "settings": {
                "model": DEFAULT_MODEL,
                "judge": JUDGE,
                "question": QUESTION,
                "train_prompts": self.preset.train_prompts,
                "eval_prompts": self.preset.eval_prompts,
                "max_new_tokens": self.preset.max_new_tokens,
                "temperature": self.preset.temperature,
                "dpo": {
                    "epochs": self.preset.dpo_epochs,
                    "learning_rate": self.preset.dpo_learning_rate,
                    "beta": 0.1,
                    "batch_size": self.preset.batch_size,
                },
                "seed": self.args.seed,
            },
            **json.loads((self.out / "pairs" / "counts.json").read_text()),
            **judge_quality(read_jsonl(self.out / "pairs" / "pairs.jsonl")),
            "position_bias": position_bias(self.out / "label.run" / STORE_NAME),
            "policies": json.loads((self.out / "summary.json").read_text())["policies"],
            "gain_over_start": paired_gains(read_jsonl(self.out / "samples.jsonl")),
            "dpo_held_out_pairs": {name: dpo_eval(self.out / name) for name in DPO_RUNS},
            "stage_seconds": seconds,
            "total_seconds": sum(seconds.values()),  # every stage, over all invocations
        }
        self.print(results)
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        self.args.out.write_text(json.dumps(results, indent=2) + "\n")
        return results

    # ---- stages ---------------------------------------------------------------------

    def label(self) -> None:
        data = self.out / "prompts.jsonl"
        train = prompts("train")[: self.preset.train_prompts]
        write_jsonl(data, [{"prompt": p} for p in train])
        report = label_preferences(
            RawContinuations(batch_size=self.preset.batch_size),
            JUDGE,
            data,
            self.out / "ai_labels.jsonl",
            run_dir=self.out / "label.run",
            question=QUESTION,
            settings=RLAIFSettings(
                num_responses=2,
                seed=self.args.seed,
                max_new_tokens=self.preset.max_new_tokens,
                temperature=self.preset.temperature,
            ),
            judge_options={"device": "auto", "dtype": "float32", "batch_size": 16},
            batch_size=self.preset.batch_size // 2,  # 8 prompts x 2 samples per step
        )
        print(f"    labelled {report.summary()}", flush=True)
        if report.failed:
            raise SystemExit(f"{report.failed} prompts failed; run again to retry them")

    def pairs(self) -> None:
        records = read_jsonl(self.out / "ai_labels.jsonl")
        pairs, ties = [], 0
        for record in records:
            prompt = record["prompt"][-1]["content"]
            chosen, rejected = record["chosen"][0]["content"], record["rejected"][0]["content"]
            score_c, score_r = oracle(prompt, chosen), oracle(prompt, rejected)
            if score_c == score_r:
                ties += 1
                continue
            pairs.append(
                {
                    "prompt": prompt,
                    "judge_chosen": chosen,
                    "judge_rejected": rejected,
                    "p_judge": record["p_chosen"],
                    "oracle_chosen_score": score_c,
                    "oracle_rejected_score": score_r,
                }
            )
        random.Random(self.args.seed).shuffle(pairs)
        held_out = max(2, len(pairs) // 10)
        folder = self.out / "pairs"
        write_jsonl(folder / "pairs.jsonl", pairs)
        write_jsonl(folder / "eval.jsonl", [oracle_record(p) for p in pairs[:held_out]])
        train = pairs[held_out:]
        write_jsonl(folder / "oracle.jsonl", [oracle_record(p) for p in train])
        write_jsonl(folder / "ai.jsonl", [ai_record(p, soft=True) for p in train])
        write_jsonl(folder / "ai_hard.jsonl", [ai_record(p, soft=False) for p in train])
        counts = {
            "pairs": {
                "prompts": self.preset.train_prompts,
                "judged": len(records),
                "not_judged_identical_or_empty": self.preset.train_prompts - len(records),
                "dropped_oracle_ties": ties,
                "kept": len(pairs),
                "dpo_train": len(train),
                "dpo_eval_held_out": held_out,
            }
        }
        (folder / "counts.json").write_text(json.dumps(counts, indent=2))
        print(
            f"    {len(records)} judged pairs, {ties} oracle ties dropped, {len(pairs)} kept",
            flush=True,
        )

    def dpo(self, name: str, labels: str) -> None:
        from alignkit.config import DPOConfig
        from alignkit.methods.dpo import run_dpo

        run_dpo(
            DPOConfig(
                **self.quickstart._common(name),
                data=str(self.out / "pairs" / f"{labels}.jsonl"),
                eval_data=str(self.out / "pairs" / "eval.jsonl"),
                epochs=self.preset.dpo_epochs,
                batch_size=self.preset.batch_size,
                learning_rate=self.preset.dpo_learning_rate,
                beta=0.1,
            )
        )

    def evaluate(self) -> None:
        policies = {"start": None}
        policies.update({name: self.out / name / "final" for name in DPO_RUNS})
        rows, samples = self.quickstart.evaluate_policies(
            policies, prompts("test")[: self.preset.eval_prompts]
        )
        summary = {
            "preset": "full",
            "task": "sentiment",
            "held_out_prompts": len(samples["start"]),
            "policies": rows,
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        write_jsonl(
            self.out / "samples.jsonl",
            [
                {
                    "prompt": samples["start"][i]["prompt"],
                    **{name: samples[name][i]["completion"] for name in samples},
                    **{f"{name}_score": samples[name][i]["score"] for name in samples},
                }
                for i in range(len(samples["start"]))
            ],
        )

    # ---- report -----------------------------------------------------------------------

    def print(self, results: dict) -> None:
        pairs, agreement, cal = results["pairs"], results["agreement"], results["calibration"]
        print(
            f"{pairs['judged']} judged pairs, {pairs['dropped_oracle_ties']} oracle ties dropped, "
            f"{pairs['kept']} kept ({pairs['dpo_train']} for DPO)"
        )
        print(
            f"judge agrees with the oracle on {agreement['all']:.3f} of the pairs "
            f"({agreement['n_all']}); {agreement['gap_at_least_0.25']:.3f} of those with an "
            f"oracle gap >= {GAP} ({agreement['n_gap_at_least_0.25']})"
        )
        print(f"judge ECE {cal['ece']:.3f}; mean |p - 0.5| {cal['mean_confidence']:.4f}")
        for row in cal["reliability"]:
            if row["low"] >= 0.5:  # the rest mirrors it
                print(
                    f"  p in [{row['low']:.1f}, {row['high']:.1f}): {row['count']:4d} "
                    f"mean p {row['mean_prob']:.3f}, oracle agrees {row['frequency']:.3f}"
                )
        for row in agreement["by_confidence"]:
            print(
                f"  |p - 0.5| in [{row['low']:.4f}, {row['high']:.4f}]: {row['count']:4d} pairs, "
                f"agreement {row['agreement']:.3f}"
            )
        bias = results["position_bias"]
        print(
            f"one order alone: the judge prefers slot A in {bias['prefers_slot_a']:.3f} of "
            f"{bias['orders']} questions (mean P(slot A) {bias['mean_p_slot_a']:.3f}); "
            f"{bias['same_slot_both_orders']:.3f} of pairs get the same slot in both orders"
        )
        summary = {"preset": "full", "held_out_prompts": self.preset.eval_prompts}
        print(format_summary({**summary, "policies": results["policies"]}))
        for name, gain in results["gain_over_start"].items():
            print(f"{name}: {gain['mean']:+.3f} ± {gain['sem']:.3f} over start (paired)")
        for name, row in results["dpo_held_out_pairs"].items():
            print(
                f"{name}: ranks the oracle's choice first on {row['accuracy']:.3f} of the "
                f"{pairs['dpo_eval_held_out']} held-out pairs"
            )
        print(f"total {results['total_seconds'] / 60:.1f} min of stages")


def oracle_record(pair: dict) -> dict:
    """The pair with the oracle's preference (higher VADER score chosen), hard label."""
    judge_right = pair["oracle_chosen_score"] > pair["oracle_rejected_score"]
    chosen, rejected = pair["judge_chosen"], pair["judge_rejected"]
    if not judge_right:
        chosen, rejected = rejected, chosen
    return {"prompt": pair["prompt"], "chosen": chosen, "rejected": rejected}


def ai_record(pair: dict, soft: bool) -> dict:
    record = {
        "prompt": pair["prompt"],
        "chosen": pair["judge_chosen"],
        "rejected": pair["judge_rejected"],
    }
    if soft:
        record["p_chosen"] = pair["p_judge"]
    return record


def judge_quality(pairs: list[dict]) -> dict:
    """Agreement (the judge's chosen response is the oracle's) and calibration: the
    judge's probability that the oracle's preferred response is better, against 1, each
    pair counted in both orders (so which response is "a" does not matter)."""
    right = [p["oracle_chosen_score"] > p["oracle_rejected_score"] for p in pairs]
    wide = [
        r
        for p, r in zip(pairs, right, strict=True)
        if abs(p["oracle_chosen_score"] - p["oracle_rejected_score"]) >= GAP
    ]
    # P(oracle's preferred response is better) under the judge
    p_oracle = torch.tensor(
        [p["p_judge"] if r else 1.0 - p["p_judge"] for p, r in zip(pairs, right, strict=True)],
        dtype=torch.float64,
    )
    p_judge = torch.tensor([p["p_judge"] for p in pairs], dtype=torch.float64)
    # agreement by the judge's confidence |p - 0.5|, in quartiles of the pairs
    by_confidence = sorted(zip((abs(p["p_judge"] - 0.5) for p in pairs), right, strict=True))
    quartiles = []
    for q in range(4):
        part = by_confidence[q * len(pairs) // 4 : (q + 1) * len(pairs) // 4]
        if part:
            quartiles.append(
                {
                    "low": part[0][0],
                    "high": part[-1][0],
                    "count": len(part),
                    "agreement": sum(r for _, r in part) / len(part),
                }
            )
    return {
        "agreement": {
            "all": sum(right) / len(right),
            "n_all": len(right),
            f"gap_at_least_{GAP}": sum(wide) / len(wide) if wide else None,
            f"n_gap_at_least_{GAP}": len(wide),
            "by_confidence": quartiles,
        },
        "calibration": {
            "ece": expected_calibration_error(p_oracle),
            "reliability": reliability_table(p_oracle),
            "mean_confidence": float((p_judge - 0.5).abs().mean()),
            "p_chosen_quantiles": {
                q: float(torch.quantile(p_judge, q)) for q in (0.0, 0.25, 0.5, 0.75, 1.0)
            },
        },
    }


_OPTION_PROBS = re.compile(r"A\) ([0-9.e+-]+) \| B\) ([0-9.e+-]+)")


def position_bias(store: Path) -> dict:
    """How the judge answers one order alone, from the label store's answers (each holds
    the judge's P("A"), P("B") for the order (a, b), then for (b, a)): how often it
    prefers the response in slot A, and how often both orders pick the same slot (the
    slot decided, not the response)."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        answers = [
            json.loads(row[0])
            for row in db.execute("SELECT answer FROM requests WHERE failure IS NULL")
        ]
    slot_a, same_slot = [], 0
    for answer in answers:
        orders = []
        for output in answer["outputs"]:
            p_a, p_b = (float(x) for x in _OPTION_PROBS.search(output).groups())
            orders.append(p_a / (p_a + p_b))
        slot_a += orders
        same_slot += (orders[0] >= 0.5) == (orders[1] >= 0.5)
    return {
        "orders": len(slot_a),
        "prefers_slot_a": sum(p >= 0.5 for p in slot_a) / len(slot_a),
        "mean_p_slot_a": sum(slot_a) / len(slot_a),
        "same_slot_both_orders": same_slot / len(answers),
    }


def paired_gains(samples: list[dict]) -> dict:
    """Each DPO policy's mean oracle reward minus the start's, prompt by prompt (the same
    prompts and sampling seeds), with the standard error of that paired difference."""
    gains = {}
    for name in DPO_RUNS:
        diffs = torch.tensor([s[f"{name}_score"] - s["start_score"] for s in samples])
        gains[name] = {
            "mean": float(diffs.mean()),
            "sem": float(diffs.std() / len(diffs) ** 0.5),
        }
    return gains


def dpo_eval(run: Path) -> dict:
    """The DPO run's last evaluation on the held-out oracle-labelled pairs: how often its
    implicit reward ranks the oracle's choice first, and the mean margin."""
    last = [m for m in read_jsonl(run / "metrics.jsonl") if "eval/loss" in m][-1]
    return {
        "accuracy": last["eval/rewards/accuracies"],
        "margin": last["eval/rewards/margins"],
        "loss": last["eval/loss"],
    }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=192, help="training prompts (pairs)")
    parser.add_argument("--eval-prompts", type=int, default=80, help="held-out prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-rlaif"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rlaif_sentiment.json"))
    Bench(parser.parse_args()).run()


if __name__ == "__main__":
    main()

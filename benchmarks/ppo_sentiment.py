"""PPO that visibly aligns: the shipped recipe (examples/ppo_sentiment.yaml) run as a
user runs it, its wall time and memory, and a reward-versus-KL curve.

1. `alignkit ppo --config examples/ppo_sentiment.yaml` as a whole process: wall time and
   peak RSS, beside the run's memory floor (the policy's and the critic's weights,
   gradients and two AdamW moments, 16 bytes per parameter, plus the reference's
   weights, 4 bytes per parameter).
2. The same recipe against a learned reward model instead of the oracle
   (`--reward-model`, e.g. the quickstart's `runs/quickstart/rm/final`, trained on the
   oracle's rankings of the start's replies), at the KL coefficients `--rm-kl-coefs`.
3. Every kept checkpoint of those runs (and of the extra oracle runs with other KL
   coefficients, `--kl-coefs`) evaluated on the task's 80 held-out prompts with the same
   sampling seeds as the starting policy: mean oracle reward (± standard error) and KL to
   the start (k1 summed per completion, nats per sequence). Those points are the
   reward-vs-KL curve (the view of the DPO paper's Fig. 2); `--dpo` adds the points of
   DPO policies (model folders, e.g. the quickstart's `runs/quickstart/dpo/final`, DPO on
   the oracle's best-vs-worst pairs of the start's replies) under the same evaluation.

Run with `make bench-ppo`; numbers go to benchmarks/results/ppo_sentiment.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from alignkit.feedback.function import load_judge
from alignkit.models import DEFAULT_MODEL, resolve_model_path
from alignkit.models.loading import load_model_and_tokenizer
from alignkit.rollout.evaluation import evaluate_policy
from alignkit.rollout.sampling import SamplingSettings
from alignkit.tasks import get_task
from alignkit.train.checkpoint import STEP_DIR

EVAL_SEED = 10_000


def run_ppo(config: Path, output_dir: Path, overrides: list[str]) -> dict:
    """Train in a child process, as a user would; (seconds, peak RSS MiB) of that child."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "alignkit",
            "ppo",
            "--config",
            str(config),
            f"output_dir={output_dir}",
            "keep_last=100",  # every checkpoint is a point on the curve
            *overrides,
        ],
        check=True,
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over children
    return {"seconds": seconds, "peak_rss_mib": peak / 1024, "peak_is_this_run": peak > before}


def memory_floor_mib(model) -> float:
    """Policy and critic (each the model's size) trained with AdamW, reference frozen."""
    parameters = sum(p.numel() for p in model.parameters())
    return (2 * 16 * parameters + 4 * parameters) / 2**20


def policy_at(checkpoint: Path, start_dir: str):
    """The policy of an RL checkpoint (weights.safetensors holds policy.* and critic.*)."""
    model, _ = load_model_and_tokenizer(start_dir, device="cpu", dtype="float32")
    state = load_file(str(checkpoint / "weights.safetensors"))
    policy = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    missing, unexpected = model.load_state_dict(policy, strict=False)
    if unexpected or any(not k.startswith("lm_head") for k in missing):
        raise RuntimeError(f"{checkpoint}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    return model.eval()


def evaluate(policy, start, tokenizer, prompts, settings, judge, proxy=None) -> dict:
    """Oracle reward and KL to the start on the held-out prompts; with `proxy` (a reward
    model's judge) also its mean score on the same samples, the reward PPO climbed."""
    result = evaluate_policy(
        policy,
        tokenizer,
        prompts,
        judge,
        settings,
        reference=None if policy is start else start,
        batch_size=16,
    )
    point = {
        "oracle_reward": result.reward,
        "reward_sem": result.reward_sem,
        "kl_to_start": result.kl,
        "mean_length": result.length,
    }
    if proxy is not None:
        scores = proxy.score_batch(
            [s["prompt"] for s in result.samples], [s["completion"] for s in result.samples]
        )
        point["proxy_reward"] = sum(scores) / len(scores)
    return point


def describe(point: dict, base: float) -> str:
    """One line: oracle reward ± s.e. (gain over `base`), KL, and the reward model's score."""
    line = (
        f"reward {point['oracle_reward']:+.3f} ± {point['reward_sem']:.3f} "
        f"({point['oracle_reward'] - base:+.3f}), KL {point['kl_to_start']:.2f}"
    )
    if "proxy_reward" in point:
        line += f", reward model {point['proxy_reward']:+.3f}"
    return line


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in (run_dir / "checkpoints").iterdir():
        match = STEP_DIR.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("examples/ppo_sentiment.yaml"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-ppo"))
    parser.add_argument(
        "--kl-coefs", default="", help="extra runs with these kl_coef values, e.g. 0.005,0.1"
    )
    parser.add_argument(
        "--reward-model", type=Path, help="also run the recipe against this reward-model folder"
    )
    parser.add_argument(
        "--rm-kl-coefs", default="0.02,0.05", help="kl_coef values of the reward-model runs"
    )
    parser.add_argument("--dpo", type=Path, nargs="*", default=[], help="DPO model folders")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ppo_sentiment.json"))
    args = parser.parse_args()
    recipe = yaml.safe_load(args.config.read_text())
    runs = {f"recipe (kl_coef {recipe['kl_coef']})": (args.runs / "recipe", [])}
    for coef in filter(None, args.kl_coefs.split(",")):
        runs[f"kl_coef {coef}"] = (args.runs / f"kl-{coef}", [f"kl_coef={coef}"])
    if args.reward_model is not None:
        for coef in filter(None, args.rm_kl_coefs.split(",")):
            runs[f"vs learned reward model, kl_coef {coef}"] = (
                args.runs / f"rm-kl-{coef}",
                [f"reward={args.reward_model.resolve()}", f"kl_coef={coef}"],
            )

    results = {"config": recipe, "runs": {}}
    earlier = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    for name, (run_dir, overrides) in runs.items():
        if not (run_dir / "final" / "config.json").is_file():
            results["runs"][name] = {"process": run_ppo(args.config, run_dir, overrides)}
        else:  # trained before: its process numbers and (deterministic) points stand
            results["runs"][name] = dict(earlier["runs"].get(name, {"process": None}))

    start_dir = str(resolve_model_path(recipe.get("model", DEFAULT_MODEL)))
    start, tokenizer = load_model_and_tokenizer(start_dir, device="cpu", dtype="float32")
    start.eval()
    task = get_task(recipe["task"])
    prompts = task.prompts("test")
    judge = load_judge(f"task:{recipe['task']}")
    proxy = None if args.reward_model is None else load_judge(str(args.reward_model))
    settings = SamplingSettings(
        max_new_tokens=recipe["max_new_tokens"], temperature=recipe["temperature"], seed=EVAL_SEED
    )
    with torch.no_grad():
        results["start"] = evaluate(start, start, tokenizer, prompts, settings, judge, proxy)
        # earlier points stand only if they were measured beside the same start samples
        # (a sampler change moves every point; then they are measured again)
        base = results["start"]["oracle_reward"]
        for name, (run_dir, _) in runs.items():
            if results["runs"][name].get("start_oracle_reward") == base:
                print(f"{name}: points from {args.out} (delete it to re-measure)")
                continue
            points = {}
            for step, path in checkpoints(run_dir):
                points[step] = evaluate(
                    policy_at(path, start_dir), start, tokenizer, prompts, settings, judge, proxy
                )
            final, _ = load_model_and_tokenizer(
                str(run_dir / "final"), device="cpu", dtype="float32"
            )
            points["final"] = evaluate(
                final.eval(), start, tokenizer, prompts, settings, judge, proxy
            )
            results["runs"][name]["points"] = points
            results["runs"][name]["start_oracle_reward"] = base
        results["dpo"] = {}
        for folder in args.dpo:
            policy, _ = load_model_and_tokenizer(str(folder), device="cpu", dtype="float32")
            results["dpo"][str(folder)] = evaluate(
                policy.eval(), start, tokenizer, prompts, settings, judge, proxy
            )
    main_run = results["runs"][next(iter(runs))]
    main_run["memory_floor_mib"] = memory_floor_mib(start)
    if main_run["process"] is not None:
        main_run["peak_over_floor"] = (
            main_run["process"]["peak_rss_mib"] / main_run["memory_floor_mib"]
        )

    base = results["start"]["oracle_reward"]
    print(
        f"start: oracle reward {base:+.3f} ± {results['start']['reward_sem']:.3f} (80 held-out prompts)"
    )
    for name, run in results["runs"].items():
        process = run["process"]
        if process:
            print(
                f"{name}: {process['seconds'] / 60:.1f} min, peak RSS {process['peak_rss_mib']:.0f} MiB"
                + (
                    f" = {run['peak_over_floor']:.2f}x the {run['memory_floor_mib']:.0f} MiB floor"
                    if "peak_over_floor" in run
                    else ""
                )
            )
        for step, point in run["points"].items():
            label = f"step {step}" if step != "final" else "final"
            print(f"  {label:>8}: {describe(point, base)}")
    for folder, point in results["dpo"].items():
        print(f"DPO {folder}: {describe(point, base)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

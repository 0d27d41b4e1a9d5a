"""PPO that visibly aligns: the shipped recipe (examples/ppo_sentiment.yaml) run as a
user runs it, its wall time and memory, and a reward-versus-KL curve.

1. `alignkit ppo --config examples/ppo_sentiment.yaml` as a whole process: wall time and
   peak RSS, beside the run's memory floor (the policy's and the critic's weights,
   gradients and two AdamW moments, 16 bytes per parameter, plus the reference's
   weights, 4 bytes per parameter).
2. Every kept checkpoint of that run (and of the extra runs with other KL coefficients,
   `--kl-coefs`) evaluated on the task's 80 held-out prompts with the same sampling seeds
   as the starting policy: mean oracle reward (± standard error) and KL to the start
   (k1 summed per completion, nats per sequence). Those points are the reward-vs-KL
   curve (the view of the DPO paper's Fig. 2); `--dpo` adds DPO points trained on
   oracle-labelled pairs sampled from the start.

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


def evaluate(policy, start, tokenizer, prompts, settings, judge) -> dict:
    result = evaluate_policy(
        policy,
        tokenizer,
        prompts,
        judge,
        settings,
        reference=None if policy is start else start,
        batch_size=16,
    )
    return {
        "oracle_reward": result.reward,
        "reward_sem": result.reward_sem,
        "kl_to_start": result.kl,
        "mean_length": result.length,
    }


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
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ppo_sentiment.json"))
    args = parser.parse_args()
    recipe = yaml.safe_load(args.config.read_text())
    runs = {f"recipe (kl_coef {recipe['kl_coef']})": (args.runs / "recipe", [])}
    for coef in filter(None, args.kl_coefs.split(",")):
        runs[f"kl_coef {coef}"] = (args.runs / f"kl-{coef}", [f"kl_coef={coef}"])

    results = {"config": recipe, "runs": {}}
    for name, (run_dir, overrides) in runs.items():
        if not (run_dir / "final" / "config.json").is_file():
            results["runs"][name] = {"process": run_ppo(args.config, run_dir, overrides)}
        else:
            previous = (
                json.loads(args.out.read_text())["runs"].get(name, {}) if args.out.exists() else {}
            )
            results["runs"][name] = {"process": previous.get("process")}

    start_dir = str(resolve_model_path(recipe.get("model", DEFAULT_MODEL)))
    start, tokenizer = load_model_and_tokenizer(start_dir, device="cpu", dtype="float32")
    start.eval()
    task = get_task(recipe["task"])
    prompts = task.prompts("test")
    judge = load_judge(f"task:{recipe['task']}")
    settings = SamplingSettings(
        max_new_tokens=recipe["max_new_tokens"], temperature=recipe["temperature"], seed=EVAL_SEED
    )
    with torch.no_grad():
        results["start"] = evaluate(start, start, tokenizer, prompts, settings, judge)
        for name, (run_dir, _) in runs.items():
            points = {}
            for step, path in checkpoints(run_dir):
                points[step] = evaluate(
                    policy_at(path, start_dir), start, tokenizer, prompts, settings, judge
                )
            final, _ = load_model_and_tokenizer(
                str(run_dir / "final"), device="cpu", dtype="float32"
            )
            points["final"] = evaluate(final.eval(), start, tokenizer, prompts, settings, judge)
            results["runs"][name]["points"] = points
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
            print(
                f"  {('step ' + str(step)) if step != 'final' else 'final':>8}: reward {point['oracle_reward']:+.3f} ± {point['reward_sem']:.3f} "
                f"({point['oracle_reward'] - base:+.3f}), KL {point['kl_to_start']:.2f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

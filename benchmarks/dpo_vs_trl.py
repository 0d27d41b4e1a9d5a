"""alignkit DPO vs TRL's DPOTrainer on the same work, side by side in one process.

SmolLM2-135M-Instruct, full fine-tuning, float32; the same conversational pairs with
long-tailed lengths (prompts 5-120 words, responses up to 300), in the same order; same
batch, micro-batch, steps, learning rate, beta and max_length; sigmoid DPO loss.
Gradient checkpointing is on for both by default (TRL's DPOConfig default; `--only off`
compares without). alignkit additionally caps each packed forward pass at
`--micro-batch-tokens` tokens (whole pairs; the gradient is the same, only the peak
activation memory changes). Each side's measurement covers loading its model, and
alignkit's includes computing the reference log-probs (TRL builds a reference copy and
runs it every step). Reported: wall time, peak memory, and the share of the machine's
measured float32 matmul FLOP/s that the work represents: 6 FLOP per parameter per trained
token (policy forward + backward) + 2 per reference token, counted on real (non-pad)
tokens for both, so padding shows up as lower utilisation. alignkit runs each pair's
prompt once (`share_prompt`, on by default), so it executes fewer tokens than that work
counts; its utilisation on the tokens it executes is reported beside it.

Run with `make bench-dpo` (TRL only in the benchmark venv).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    in_order,
    matmul_flops_per_s,
    measure,
    preference_records,
    release_memory,
    trl_training_args,
    write_jsonl,
)

from alignkit.config import DPOConfig, load_config  # noqa: E402
from alignkit.data import load_records  # noqa: E402
from alignkit.data.collators import shared_prefix_length  # noqa: E402
from alignkit.data.templating import ChatEncoder  # noqa: E402
from alignkit.methods.dpo import run_dpo  # noqa: E402
from alignkit.models import DEFAULT_MODEL, load_model, load_tokenizer, resolve_model_path  # noqa: E402
from alignkit.train.loop import step_indices  # noqa: E402


def training_order(n: int, args) -> list[int]:
    return [i for step in range(args.steps) for i in step_indices(step, args.batch_size, n, 0)]


def real_tokens(model_dir, data_path, args) -> tuple[int, int]:
    """(tokens of the trained pairs' sequences, the same counting each shared prompt once)."""
    encoder = ChatEncoder(load_tokenizer(model_dir), max_length=args.max_length)
    pairs = [encoder.encode_pair(r) for r in load_records(data_path).records]
    trained = [pairs[i] for i in training_order(len(pairs), args)]
    sequences = [
        (p.chosen.sequence().features(), p.rejected.sequence().features()) for p in trained
    ]
    tokens = sum(len(c["input_ids"]) + len(r["input_ids"]) for c, r in sequences)
    return tokens, tokens - sum(shared_prefix_length(pair) for pair in sequences)


def run_alignkit(model_dir, data_path, args, workdir: Path, checkpointing: bool) -> dict:
    # --defaults: alignkit chooses its own memory settings (token cap, checkpointing)
    knobs = (
        []
        if args.defaults
        else [
            f"micro_batch_tokens={'null' if args.micro_batch_tokens is None else args.micro_batch_tokens}",
            f"gradient_checkpointing={str(checkpointing).lower()}",
        ]
    )
    config = load_config(
        DPOConfig,
        None,
        [
            f"model={model_dir}",
            f"data={data_path}",
            # one folder per run: alignkit refuses to start where another run lives
            f"output_dir={workdir / f'alignkit-{int(checkpointing)}'}",
            f"max_steps={args.steps}",
            f"batch_size={args.batch_size}",
            f"micro_batch_size={args.micro_batch_size}",
            f"learning_rate={args.lr}",
            f"max_length={args.max_length}",
            "save_every=null",
            "log_every=1000",
            "lr_schedule=constant",
            "loss=dpo",
            f"beta={args.beta}",
            *knobs,
        ],
    )
    result = {}
    with measure(result):  # the reference pass is part of the work, so it is timed
        run_dpo(config)
    release_memory()
    return result


def run_trl(model_dir, records, args, workdir: Path, checkpointing: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trl_config = TRLConfig(**trl_training_args(args, workdir, checkpointing), beta=args.beta)
    ordered = [records[i] for i in training_order(len(records), args)]
    result = {}
    # Loading the policy is inside the measurement, as it is for alignkit (whose run_dpo
    # loads its own); TRL builds its reference copy inside the trainer.
    with measure(result):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        trainer = in_order(DPOTrainer)(
            model=model,
            args=trl_config,
            train_dataset=Dataset.from_list(ordered),
            processing_class=tokenizer,
        )
        trainer.train()
    del trainer, model
    release_memory()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument(
        "--micro-batch-tokens",
        type=lambda v: None if v == "none" else int(v),
        default=512,
        help="alignkit's cap on tokens per forward pass ('none': no cap)",
    )
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument(
        "--only",
        choices=["off", "on", "both"],
        default="on",
        help="gradient checkpointing setting(s) to compare (TRL's padded batch of 16 pairs "
        "does not fit in memory with it off)",
    )
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="the new user's comparison: 4 steps x 8 pairs (micro 8), max_length 1024, TRL with "
        "checkpointing off, alignkit with no memory settings at all (its defaults choose)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.defaults:
        args.steps, args.batch_size, args.micro_batch_size = 4, 8, 8
        args.max_length, args.only, args.micro_batch_tokens = 1024, "off", "defaults"
    if args.out is None:
        name = "dpo_vs_trl_defaults.json" if args.defaults else "dpo_vs_trl.json"
        args.out = Path("benchmarks/results") / name
    logging.basicConfig(level=logging.WARNING)

    model_dir = resolve_model_path(DEFAULT_MODEL)
    parameters = sum(p.numel() for p in load_model(model_dir).parameters())
    machine_before = matmul_flops_per_s()
    records = preference_records(args.steps * args.batch_size)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data_path = write_jsonl(records, workdir / "pairs.jsonl")
        # A fresh cache home: a cached reference table from an earlier run would skip the
        # reference pass and flatter alignkit (the model folder is already resolved).
        os.environ["ALIGNKIT_HOME"] = str(workdir / "home")
        tokens, executed_tokens = real_tokens(model_dir, data_path, args)
        for checkpointing in (False, True):
            setting = "on" if checkpointing else "off"
            if args.only != "both" and args.only != setting:
                continue
            results[f"TRL DPOTrainer, checkpointing {setting}"] = run_trl(
                model_dir, records, args, workdir, checkpointing
            )
            alignkit_name = "defaults" if args.defaults else f"checkpointing {setting}"
            results[f"alignkit dpo, {alignkit_name}"] = run_alignkit(
                model_dir, data_path, args, workdir, checkpointing
            )

    import transformers
    import trl

    # The shared machine's matmul rate drifts; the higher of the two readings is used, so
    # the utilisation reported is the lower one.
    machine_after = matmul_flops_per_s()
    machine = max(machine_before, machine_after)

    work = 8 * parameters * tokens  # 6 policy + 2 reference FLOP per parameter per real token
    print(
        f"DPO, SmolLM2-135M full fine-tuning, {args.steps} steps x {args.batch_size} pairs "
        f"(micro {args.micro_batch_size}), {tokens} real tokens, device "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'} ({torch.get_num_threads()} threads), "
        f"matmul {machine_before / 1e9:.0f} / {machine_after / 1e9:.0f} GFLOP/s before / after; "
        f"alignkit micro_batch_tokens={args.micro_batch_tokens}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, trl {trl.__version__}"
    )
    print(
        f"{'':<40}{'seconds':>9}{'peak MiB':>10}{'of matmul':>11}{'speed vs TRL':>14}{'memory vs TRL':>15}"
    )
    for name, r in results.items():
        baseline = results[
            "TRL DPOTrainer, checkpointing off"
            if args.defaults
            else name.replace("alignkit dpo", "TRL DPOTrainer")
        ]
        r["utilisation"] = work / r["seconds"] / machine
        if name.startswith("alignkit"):
            r["utilisation_on_executed_tokens"] = r["utilisation"] * executed_tokens / tokens
        if (
            "checkpointing on" in name and not args.defaults
        ):  # the recomputed forward is work done, not progress
            r["utilisation_counting_recompute"] = (
                (work + 2 * parameters * tokens) / r["seconds"] / machine
            )
        r["speedup_vs_trl"] = baseline["seconds"] / r["seconds"]
        r["memory_ratio_vs_trl"] = r["peak_mib"] / baseline["peak_mib"]
        print(
            f"{name:<40}{r['seconds']:>9.1f}{r['peak_mib']:>10.0f}{r['utilisation']:>10.0%}"
            f"{r['speedup_vs_trl']:>13.2f}x{r['memory_ratio_vs_trl']:>14.2f}x"
        )
    print(
        f"alignkit executes {executed_tokens} of the {tokens} tokens (each prompt once); "
        "of matmul on those: "
        + ", ".join(
            f"{r['utilisation_on_executed_tokens']:.0%}"
            for name, r in results.items()
            if name.startswith("alignkit")
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in vars(args).items()},
                "tokens": tokens,
                "alignkit_executed_tokens": executed_tokens,
                "matmul_flops_per_s": machine,
                "matmul_flops_per_s_before_after": [machine_before, machine_after],
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

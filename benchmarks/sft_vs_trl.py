"""alignkit SFT vs TRL's SFTTrainer on the same work, side by side in one process.

Same model (SmolLM2-135M-Instruct, full fine-tuning, float32 on CPU), same
prompt/completion conversations (long-tailed lengths) in the same order, same batch,
micro-batch, steps, learning rate and max_length; loss on completion tokens only for
both. Two settings, each compared like with like: gradient checkpointing off, and on
(TRL's SFTConfig turns it on by default). Reported: training wall time, tokens/s (real
tokens, excluding pads) and peak memory.

Run with `make bench-sft` (TRL is installed only in the benchmark venv). Options:
    python benchmarks/sft_vs_trl.py --steps 8 --batch-size 8 --micro-batch-size 4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    in_order,
    measure,
    release_memory,
    sft_records,
    trl_training_args,
    write_jsonl,
)

from alignkit.config import SFTConfig, load_config  # noqa: E402
from alignkit.data.templating import ChatEncoder  # noqa: E402
from alignkit.methods.common import build_collator  # noqa: E402
from alignkit.methods.sft import sft_step  # noqa: E402
from alignkit.models import DEFAULT_MODEL, load_model, load_tokenizer, resolve_model_path  # noqa: E402
from alignkit.ops.logprobs import CausalLMLogps  # noqa: E402
from alignkit.train.loop import step_indices, train  # noqa: E402


def training_order(n: int, args) -> list[int]:
    """alignkit's example order (seed 0). TRL is fed the same order with a sequential
    sampler, so both trainers see identical micro-batches: with long-tailed lengths the
    peak memory is set by the longest micro-batch, and different orders would differ."""
    return [i for step in range(args.steps) for i in step_indices(step, args.batch_size, n, 0)]


def trained_tokens(examples, args) -> int:
    return sum(len(examples[i]["input_ids"]) for i in training_order(len(examples), args))


def run_alignkit(
    model_dir, data_path, args, packing: bool, workdir: Path, checkpointing: bool
) -> dict:
    config = load_config(
        SFTConfig,
        None,
        [
            f"model={model_dir}",
            f"data={data_path}",
            # one folder per run: alignkit refuses to start where another run lives
            f"output_dir={workdir / f'alignkit-{int(packing)}-{int(checkpointing)}'}",
            f"gradient_checkpointing={str(checkpointing).lower()}",
            f"max_steps={args.steps}",
            f"batch_size={args.batch_size}",
            f"micro_batch_size={args.micro_batch_size}",
            f"learning_rate={args.lr}",
            f"max_length={args.max_length}",
            "save_every=null",
            "log_every=1000",
            "lr_schedule=constant",
            f"packing={str(packing).lower()}",
        ],
    )
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, device="cpu", dtype="float32")
    encoder = ChatEncoder(tokenizer, max_length=args.max_length)
    from alignkit.data import load_records

    examples = [encoder.encode_sft(r).features() for r in load_records(data_path).records]
    result = {"tokens": trained_tokens(examples, args)}
    with measure(result):
        train(
            model,
            examples,
            build_collator(tokenizer, packing),
            sft_step,
            config,
            tokenizer=tokenizer,
            forward_module=CausalLMLogps(model),
        )
    del model
    release_memory()
    return result


def run_trl(model_dir, records, args, workdir: Path, tokens: int, checkpointing: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trl_config = TRLConfig(
        **trl_training_args(args, workdir, checkpointing), completion_only_loss=True
    )
    ordered = [records[i] for i in training_order(len(records), args)]
    trainer = in_order(SFTTrainer)(
        model=model,
        args=trl_config,
        train_dataset=Dataset.from_list(ordered),
        processing_class=tokenizer,
    )
    result = {"tokens": tokens}
    with measure(result):
        trainer.train()
    del trainer, model
    release_memory()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument(
        "--only", choices=["off", "on"], help="run one gradient-checkpointing setting only"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sft_vs_trl.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    model_dir = resolve_model_path(DEFAULT_MODEL)
    records = sft_records(args.examples)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data_path = write_jsonl(records, workdir / "sft.jsonl")
        tokenizer = load_tokenizer(model_dir)
        encoder = ChatEncoder(tokenizer, max_length=args.max_length)
        tokens = trained_tokens([encoder.encode_sft(r).features() for r in records], args)
        # Per gradient-checkpointing setting: (label, trainer) rows; the first row is the baseline.
        settings = {
            False: [
                ("TRL SFTTrainer", "trl"),
                ("alignkit (padded)", "padded"),
                ("alignkit (packed)", "packed"),
            ],
            True: [("TRL SFTTrainer (its default)", "trl"), ("alignkit (packed)", "packed")],
        }
        results = {}
        for checkpointing, rows in settings.items():
            if args.only and args.only != ("on" if checkpointing else "off"):
                continue
            suffix = f", checkpointing {'on' if checkpointing else 'off'}"
            for name, trainer in rows:
                if trainer == "trl":
                    result = run_trl(model_dir, records, args, workdir, tokens, checkpointing)
                else:
                    result = run_alignkit(
                        model_dir, data_path, args, trainer == "packed", workdir, checkpointing
                    )
                result["baseline"] = rows[0][0] + suffix
                results[name + suffix] = result

    import transformers
    import trl

    print(
        f"SFT, SmolLM2-135M full fine-tuning, {args.steps} steps x batch {args.batch_size} "
        f"(micro {args.micro_batch_size}), max_length {args.max_length}, device "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'} ({torch.get_num_threads()} threads); "
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
    )
    print(
        f"{'':<46}{'seconds':>9}{'tokens/s':>10}{'peak MiB':>10}{'speed vs TRL':>14}{'memory vs TRL':>15}"
    )
    for name, r in results.items():
        baseline = results[r["baseline"]]
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["speedup_vs_trl"] = baseline["seconds"] / r["seconds"]
        r["memory_ratio_vs_trl"] = r["peak_mib"] / baseline["peak_mib"]
        print(
            f"{name:<46}{r['seconds']:>9.1f}{r['tokens_per_s']:>10.0f}{r['peak_mib']:>10.0f}"
            f"{r['speedup_vs_trl']:>13.2f}x{r['memory_ratio_vs_trl']:>14.2f}x"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"settings": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()

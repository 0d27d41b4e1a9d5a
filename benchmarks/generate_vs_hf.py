"""alignkit's rollout sampler vs transformers' `generate`, side by side in one process.

SmolLM2-135M-Instruct, the same chat prompts (long-tailed lengths), the same batch size,
greedy decoding so both must produce the same tokens (checked), max_new_tokens fixed,
stop at EOS. Reported: generated tokens per second (real tokens up to each row's EOS),
best of `--repeats` runs each, after one warm-up batch.

Run with `make bench-generate`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import sft_records  # noqa: E402

from alignkit.data.collators import PaddingCollator  # noqa: E402
from alignkit.data.templating import ChatEncoder  # noqa: E402
from alignkit.models import DEFAULT_MODEL, load_model_and_tokenizer  # noqa: E402
from alignkit.rollout import SamplingSettings, sample  # noqa: E402


def alignkit_generate(model, tokenizer, prompts, args):
    rollout = sample(
        model,
        prompts,
        SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=0),
        eos_ids=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    )
    return rollout.completion_lists()


def hf_generate(model, tokenizer, prompts, args):
    batch = PaddingCollator(tokenizer.pad_token_id, padding_side="left")(
        [{"input_ids": p} for p in prompts]
    )
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        max_new_tokens=args.max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    completions = []
    for row in output[:, batch["input_ids"].shape[1] :].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        completions.append(row)
    return completions


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/generate_vs_hf.json"))
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL)
    model.eval()
    encoder = ChatEncoder(tokenizer)
    records = sft_records(args.batch_size, seed=1, prompt_words=(5, 120))
    prompts = [encoder.encode_prompt(r["prompt"]) for r in records]
    results = {}
    with torch.no_grad():
        for name, fn in (
            ("transformers generate", hf_generate),
            ("alignkit sample", alignkit_generate),
        ):
            fn(model, tokenizer, prompts[:2], args)  # warm-up
            best, outputs = float("inf"), None
            for _ in range(args.repeats):
                outputs, seconds = timed(fn, model, tokenizer, prompts, args)
                best = min(best, seconds)
            tokens = sum(len(c) for c in outputs)
            results[name] = {
                "seconds": best,
                "tokens": tokens,
                "tokens_per_s": tokens / best,
                "outputs": outputs,
            }
    same = results["transformers generate"]["outputs"] == results["alignkit sample"]["outputs"]
    base = results["transformers generate"]["tokens_per_s"]
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"greedy, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, {device}; identical tokens: {same}"
    )
    for name, r in results.items():
        print(f"{name:<24}{r['tokens_per_s']:>10.1f} tokens/s{r['tokens_per_s'] / base:>8.2f}x")
        del r["outputs"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in vars(args).items()},
                "device": device,
                "identical": same,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

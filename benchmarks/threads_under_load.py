"""Sampling next to another CPU-bound process: fixed thread count vs the thread governor.

Each configuration runs in its own process (the OpenMP runtime is set up once per
process): SmolLM2-135M-Instruct samples 16 chat prompts, 40 new tokens at temperature
0.7 (seeded), best of 2 after a warm-up, once on an idle machine and once while a
second process spins on one core (a shell busy loop). Configurations: torch's default
(one thread per core, fixed) and alignkit's governor (`alignkit.ops.threads`, what the
command line uses).

Run with `make bench-threads`; numbers go to benchmarks/results/threads_under_load.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(threads: str) -> float:
    """Seconds to sample the batch in this process (the child's job)."""
    import torch

    sys.path.insert(0, str(HERE))
    from common import sft_records

    from alignkit.data.templating import ChatEncoder
    from alignkit.models import DEFAULT_MODEL, load_model_and_tokenizer
    from alignkit.ops import threads as governor
    from alignkit.rollout import SamplingSettings, sample

    if threads == "auto":
        governor.enable("auto")
    else:
        torch.set_num_threads(int(threads))
    model, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL)
    encoder = ChatEncoder(tokenizer)
    records = sft_records(16, seed=1, prompt_words=(5, 40))
    prompts = [encoder.encode_prompt(r["prompt"]) for r in records]
    settings = SamplingSettings(max_new_tokens=40, temperature=0.7, seed=1)

    def run(batch):
        return sample(
            model, batch, settings, eos_ids=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id
        )

    run(prompts[:2])
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        run(prompts)
        best = min(best, time.perf_counter() - start)
    return best


def child(threads: str) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", threads], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "threads_under_load.json")
    args = parser.parse_args()
    if args.child:
        print(measure(args.child))
        return
    import os

    cores = len(os.sched_getaffinity(0))
    configs = {f"{cores} threads, fixed": str(cores), "governor (auto)": "auto"}
    results = {}
    for load in ("idle", "one busy process"):
        busy = subprocess.Popen(["sh", "-c", "while :; do :; done"]) if load != "idle" else None
        try:
            for name, threads in configs.items():
                results.setdefault(name, {})[load] = child(threads)
        finally:
            if busy is not None:
                busy.kill()
    print(f"{'':<22}{'idle':>10}{'busy':>10}{'slowdown':>10}")
    for name, r in results.items():
        slowdown = r["one busy process"] / r["idle"]
        r["slowdown"] = slowdown
        print(f"{name:<22}{r['idle']:>9.2f}s{r['one busy process']:>9.2f}s{slowdown:>9.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cores": cores, "results": results}, indent=2))


if __name__ == "__main__":
    main()

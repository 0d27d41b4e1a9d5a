"""Helpers for side-by-side benchmarks: synthetic data with realistic lengths, timing, memory."""

from __future__ import annotations

import gc
import json
import random
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from alignkit.train.heap import release_free_heap

VOCABULARY = (
    "the a movie film story actor scene plot music light camera city night river house friend family war "
    "love time life world day year hand eye voice heart road dream fire water king queen child doctor "
    "teacher ship train letter window garden forest mountain island village winter summer morning evening "
    "simple strange quiet bright dark gentle brave clever honest careful slow quick warm cold old new"
).split()


def words(rng: random.Random, low: int, high: int) -> str:
    """A long-tailed length in [low, high] (most short, a few long), as in real chat data."""
    n = min(high, low + int(rng.expovariate(1.0) * (high - low) / 3))
    return " ".join(rng.choice(VOCABULARY) for _ in range(n)).capitalize() + "."


def sft_records(n: int, seed: int = 0, prompt_words=(5, 120), answer_words=(10, 300)) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": [{"role": "user", "content": words(rng, *prompt_words)}],
            "completion": [{"role": "assistant", "content": words(rng, *answer_words)}],
        }
        for _ in range(n)
    ]


def preference_records(
    n: int, seed: int = 0, prompt_words=(5, 120), answer_words=(1, 300)
) -> list[dict]:
    """Conversational pairs with long-tailed lengths; chosen and rejected drawn independently."""
    rng = random.Random(seed)
    return [
        {
            "prompt": [{"role": "user", "content": words(rng, *prompt_words)}],
            "chosen": [{"role": "assistant", "content": words(rng, *answer_words)}],
            "rejected": [{"role": "assistant", "content": words(rng, *answer_words)}],
        }
        for _ in range(n)
    ]


def write_jsonl(records: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    release_free_heap()  # freed heap pages back to the OS: the next phase's RSS starts clean


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


@contextmanager
def measure(result: dict):
    """Wall time and peak memory above the starting point (RSS sampled every 5 ms on
    CPU; max allocated on CUDA) of the block, written into `result`."""
    release_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        result["seconds"] = time.perf_counter() - start
        stop.set()
        thread.join()
        result["peak_mib"] = (
            torch.cuda.max_memory_allocated() / 2**20
            if torch.cuda.is_available()
            else (peak[0] - base) / 2**20
        )


def matmul_flops_per_s(size: int = 1024, repeats: int = 10) -> float:
    """The machine's measured float32 matmul throughput (FLOP/s)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def trl_training_args(args, workdir: Path, checkpointing: bool) -> dict:
    """The TRL config settings both TRL benchmarks share, matched to alignkit's run:
    same steps, batch, micro-batch, learning rate (constant), max_length; float32, one
    process, no saving, no logging or progress bars in the timed part."""
    return {
        "output_dir": str(workdir / "trl"),
        "max_steps": args.steps,
        "per_device_train_batch_size": args.micro_batch_size,
        "gradient_accumulation_steps": args.batch_size // args.micro_batch_size,
        "learning_rate": args.lr,
        "lr_scheduler_type": "constant",
        "max_length": args.max_length,
        "save_strategy": "no",
        "report_to": [],
        "logging_steps": 1000,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
        "gradient_checkpointing": checkpointing,
        "bf16": False,
        "seed": 0,
        "disable_tqdm": True,
    }


def in_order(trainer_class):
    """`trainer_class` with a sequential sampler, so TRL sees the examples in the order
    it is given (alignkit's order): with long-tailed lengths peak memory depends on which
    examples meet in a micro-batch."""
    from torch.utils.data import SequentialSampler

    class InOrder(trainer_class):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    return InOrder

"""`alignkit generate`: sample K completions per prompt of a file, streaming to JSONL."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from alignkit.data.loading import chunks, iter_checked, record_progress
from alignkit.data.records import Kind
from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.errors import DataError
from alignkit.fsutil import atomic_jsonl
from alignkit.rollout.sampling import SamplingSettings, sample

log = logging.getLogger("alignkit")


@dataclass
class GenerateResult:
    prompts: int = 0
    written: int = 0
    finished: int = 0


def generate_file(
    model,
    tokenizer,
    data: str | Path,
    out: str | Path,
    settings: SamplingSettings,
    *,
    num_samples: int = 1,
    batch_size: int = 16,
    max_prompt_length: int | None = None,
    progress: bool = True,
) -> GenerateResult:
    """Write one record per (prompt, sample): the input record's fields plus
    `completion` (a string, or `[{"role": "assistant", ...}]` for chat prompts), `sample`
    (0..K-1) and `finished` (False: cut at max_new_tokens). `prompts` may be any record
    with a `prompt` field. `out` appears only when complete."""
    encoder = ChatEncoder(tokenizer, max_prompt_length=max_prompt_length)
    eos_ids, pad_id = encoder.stop_token_ids, pad_token_id(tokenizer)
    result = GenerateResult()
    with (
        record_progress(data, progress, unit="prompt", desc="generating") as advance,
        atomic_jsonl(out) as write,
    ):
        for chunk in chunks(_valid_prompts(data), max(1, batch_size // num_samples)):
            ids = [encoder.encode_prompt(r["prompt"]) for r in chunk]
            rows = [i for i in ids for _ in range(num_samples)]
            step_settings = settings
            if settings.seed is not None:  # a different, reproducible seed per batch
                step_settings = replace(settings, seed=settings.seed + result.prompts)
            rollout = sample(
                model, rows, step_settings, eos_ids=eos_ids, pad_id=pad_id, tokenizer=tokenizer
            )
            texts = rollout.texts(tokenizer)
            for row, record in enumerate(r for r in chunk for _ in range(num_samples)):
                text = texts[row].strip()
                chat = isinstance(record["prompt"], list)
                finished = bool(rollout.finished[row])
                result.finished += finished
                write(
                    {
                        **record,
                        "completion": [{"role": "assistant", "content": text}] if chat else text,
                        "sample": row % num_samples,
                        "finished": finished,
                    }
                )
                result.written += 1
            result.prompts += len(chunk)
            advance(len(chunk))
    return result


def _valid_prompts(data):
    for _location, record, problem in iter_checked(data, Kind.PROMPT):
        if problem is not None:
            raise DataError(f"{problem} (nothing written)", [problem])
        yield record

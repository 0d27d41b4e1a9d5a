"""`alignkit generate`: sample K completions per prompt of a file, streaming to JSONL."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from alignkit.data.loading import iter_checked
from alignkit.data.records import Kind
from alignkit.data.templating import ChatEncoder
from alignkit.errors import DataError
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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    encoder = ChatEncoder(tokenizer, max_prompt_length=max_prompt_length)
    eos_ids = encoder.end_of_turn_ids | {tokenizer.eos_token_id}
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    result = GenerateResult()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(unit="prompt", desc="generating", dynamic_ncols=True)
    seed = settings.seed
    try:
        with open(partial, "w", encoding="utf-8") as sink:
            for chunk in _prompt_batches(data, max(1, batch_size // num_samples)):
                ids = [encoder.encode_prompt(r["prompt"]) for r in chunk]
                rows = [i for i in ids for _ in range(num_samples)]
                step_settings = settings
                if seed is not None:  # a different, reproducible seed per batch
                    step_settings = SamplingSettings(
                        **{**vars(settings), "seed": seed + result.prompts}
                    )
                rollout = sample(
                    model, rows, step_settings, eos_ids=eos_ids, pad_id=pad_id, tokenizer=tokenizer
                )
                texts = rollout.texts(tokenizer)
                for k, record in enumerate(chunk):
                    for j in range(num_samples):
                        row = k * num_samples + j
                        text = texts[row].strip()
                        completion = (
                            [{"role": "assistant", "content": text}]
                            if isinstance(record["prompt"], list)
                            else text
                        )
                        finished = bool(rollout.finished[row])
                        result.finished += finished
                        sink.write(
                            json.dumps(
                                {
                                    **record,
                                    "completion": completion,
                                    "sample": j,
                                    "finished": finished,
                                },
                                ensure_ascii=False,
                            )
                            + "\n"
                        )
                        result.written += 1
                result.prompts += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        os.replace(partial, out)
    finally:
        if bar is not None:
            bar.close()
        partial.unlink(missing_ok=True)
    return result


def _prompt_batches(data, size: int):
    chunk = []
    for _location, record, problem in iter_checked(data, Kind.PROMPT):
        if problem is not None:
            raise DataError(f"{problem} (nothing written)", [problem])
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

"""Token-length statistics of a data file (`alignkit data stats`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from alignkit.data.loading import LoadedRecords
from alignkit.data.records import Kind
from alignkit.data.templating import IGNORE_INDEX, ChatEncoder

PERCENTILES = (50, 90, 95, 99)


def token_lengths(loaded: LoadedRecords, tokenizer) -> dict[str, list[int]]:
    """Per-record lengths in tokens, untruncated: prompt, completion and total.

    For preference records both responses are counted (completion and total hold two
    entries per record) and `longest` holds each record's longer full sequence.
    For sft `messages`, "prompt" counts the non-target tokens.
    """
    encoder = ChatEncoder(tokenizer)
    lengths: dict[str, list[int]] = {"prompt": [], "completion": [], "total": [], "longest": []}
    for record in loaded.records:
        if loaded.kind == Kind.PROMPT:
            sizes = [(len(encoder.encode_prompt(record["prompt"])), 0)]
        elif loaded.kind == Kind.PREFERENCE:
            sizes = [
                _sizes(encoder.encode_completion(record["prompt"], record[side]))
                for side in ("chosen", "rejected")
            ]
        elif loaded.kind == Kind.SFT and record.get("messages") is not None:
            ids, labels = encoder.encode_conversation(record["messages"], first_trainable=0)
            targets = sum(label != IGNORE_INDEX for label in labels)
            sizes = [(len(ids) - targets, targets)]
        else:
            sizes = [_sizes(encoder.encode_completion(record["prompt"], record["completion"]))]
        lengths["prompt"].append(sizes[0][0])
        for prompt, completion in sizes:
            lengths["completion"].append(completion)
            lengths["total"].append(prompt + completion)
        lengths["longest"].append(max(p + c for p, c in sizes))
    return lengths


def _sizes(encoded) -> tuple[int, int]:
    return len(encoded.prompt_ids), len(encoded.completion_ids)


def summarize(loaded: LoadedRecords, tokenizer, max_length: int) -> dict[str, Any]:
    lengths = token_lengths(loaded, tokenizer)
    summary: dict[str, Any] = {
        "file": loaded.source,
        "kind": loaded.kind.value,
        "records": len(loaded),
    }
    for name in ("prompt", "completion", "total"):
        values = np.asarray(lengths[name])
        if loaded.kind == Kind.PROMPT and name != "prompt":
            continue
        summary[name] = {
            "mean": round(float(values.mean()), 1),
            **{f"p{q}": int(np.percentile(values, q)) for q in PERCENTILES},
            "max": int(values.max()),
        }
    summary["max_length"] = max_length
    summary["over_max_length"] = int(sum(length > max_length for length in lengths["longest"]))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{summary['file']}: {summary['records']} {summary['kind']} records"]
    header = f"  {'tokens':<11}" + "".join(
        f"{col:>8}" for col in ("mean", *[f"p{q}" for q in PERCENTILES], "max")
    )
    lines.append(header)
    for name in ("prompt", "completion", "total"):
        if name in summary:
            row = summary[name]
            lines.append(
                f"  {name:<11}"
                + "".join(
                    f"{row[col]:>8}" for col in ("mean", *[f"p{q}" for q in PERCENTILES], "max")
                )
            )
    lines.append(
        f"  records longer than max_length={summary['max_length']}: {summary['over_max_length']}"
    )
    return "\n".join(lines)

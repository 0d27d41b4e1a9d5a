"""Reference log-probabilities, computed once before training and cached.

Offline preference methods compare the policy with a frozen reference on fixed data, so
the reference's per-sequence log-probs never change: alignkit computes them once (with
LoRA, from the same weights with the adapter disabled; otherwise from the starting
model or `ref_model`, loaded only for this pass) and keeps no second model in memory
during training. The table is cached under a key hashing the token ids, the reference
model's files and this code's version, in the run folder (reused on resume) and in
`$ALIGNKIT_HOME/cache/ref_logps/` (reused by later runs on the same data).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from alignkit.data.collators import batch_to
from alignkit.fsutil import alignkit_home
from alignkit.models.device import select_device
from alignkit.models.loading import load_model, resolve_model_path
from alignkit.ops.logprobs import CausalLMLogps, sequence_stats

log = logging.getLogger("alignkit")

CACHE_VERSION = "ref-logps-v1"  # bump when the computation changes


def model_identity(path: Path) -> str:
    """Names a model's weights by their files' names, sizes and mtimes (cheap, no hashing of GBs)."""
    parts = [str(path.resolve())]
    for weights in sorted(path.glob("*.safetensors")):
        stat = weights.stat()
        parts.append(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def cache_key(sequences: list[dict], reference: str) -> str:
    digest = hashlib.sha256(f"{CACHE_VERSION}|{reference}".encode())
    for sequence in sequences:
        digest.update(torch.tensor(sequence["input_ids"], dtype=torch.int32).numpy().tobytes())
        digest.update(torch.tensor(sequence["labels"], dtype=torch.int32).numpy().tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:24]


@torch.no_grad()
def compute_sequence_stats(
    model, items: list, collate_fn, micro: int, device, *, disable_adapter=False
):
    """(S, 2) float32: per sequence, the summed target log-prob and the target count.

    `items` are what `collate_fn` batches, `micro` at a time: sequences, or groups of
    sequences for a shared-prompt collator (S then counts their sequences, in order)."""
    module = CausalLMLogps(model).to(device)
    was_training = model.training
    model.eval()
    context = model.disable_adapter() if disable_adapter else contextlib.nullcontext()
    out = []
    with context:
        for start in range(0, len(items), micro):
            batch = collate_fn(items[start : start + micro])
            batch = batch_to(batch, device)
            sums, counts = sequence_stats(module, batch)
            out.append(torch.stack([sums, counts], dim=-1).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def reference_stats(sequences, *, run_dir: Path, reference: str, compute) -> torch.Tensor:
    """Cached (S, 2) reference stats; `compute()` runs only on a cache miss."""
    key = cache_key(sequences, reference)
    run_copy = Path(run_dir) / "ref_logps" / f"{key}.safetensors"
    shared = alignkit_home() / "cache" / "ref_logps" / f"{key}.safetensors"
    for path in (run_copy, shared):
        if path.is_file():
            log.info("reference log-probs: reusing %s", path)
            stats = load_file(str(path))["stats"]
            if path != run_copy:
                run_copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, run_copy)
            return stats
    log.info("reference log-probs: computing for %d sequences (once; cached)", len(sequences))
    stats = compute()
    for path in (run_copy, shared):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"stats": stats.contiguous()}, str(tmp))
        tmp.replace(path)
    return stats


def reference_table(
    model, sequences: list[dict], collate, config, *, items: list | None = None
) -> torch.Tensor:
    """(S, 2) reference [summed log-prob, target count] per sequence, cached or computed once.

    `sequences` name the cache entry; `items` (default: the sequences) are what `collate`
    batches, e.g. the pairs holding them for a shared-prompt collator."""
    items = sequences if items is None else items
    device = select_device(config.device)
    if config.ref_model is not None:
        identity = model_identity(resolve_model_path(config.ref_model))

        def compute():
            reference = load_model(config.ref_model, device="cpu", dtype="float32")
            return compute_sequence_stats(reference, items, collate, config.micro_batch, device)
    else:
        identity = model_identity(resolve_model_path(config.model))
        lora = hasattr(model, "disable_adapter")

        def compute():
            stats = compute_sequence_stats(
                model, items, collate, config.micro_batch, device, disable_adapter=lora
            )
            model.to("cpu")
            return stats

    return reference_stats(
        sequences, run_dir=Path(config.output_dir), reference=identity, compute=compute
    )

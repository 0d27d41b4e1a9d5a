"""The one training loop (DESIGN principle 3).

Every offline method plugs in through

    step_fn(module, batch) -> (loss_sum, metrics)

where `loss_sum` is the loss *summed* over the micro-batch's units (target tokens for
SFT, pairs for preference losses) and `units_fn(batch)` counts those units. The loop
divides by the number of units in the whole optimizer step — all micro-batches on all
processes — before backward, so gradient accumulation and data parallelism give exactly
the gradient of the big batch. (Averaging per micro-batch and then over micro-batches
weights short sequences more; a known source of wrong losses elsewhere.)

`metrics` are per-unit means (detached); the loop averages them weighted by units.

Data order is a function of (seed, step): step k takes positions k*B .. (k+1)*B - 1 of
an endless sequence of per-epoch permutations. Resuming from step k therefore needs no
sampler state, and a run killed at any moment and resumed with `resume=auto` reproduces
the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.config import save_config, to_dict
from alignkit.data.collators import batch_to
from alignkit.errors import AlignkitError
from alignkit.fsutil import atomic_directory
from alignkit.models.device import bf16_supported, select_device
from alignkit.models.lora import enable_gradient_checkpointing
from alignkit.ops.logprobs import set_grad_accumulation_fusion
from alignkit.train.checkpoint import (
    TrainerState,
    capture_rng,
    prune_checkpoints,
    resolve_resume,
    resume_checkpoint,
    save_checkpoint,
)
from alignkit.train.distributed import DistEnv
from alignkit.train.heap import release_free_heap
from alignkit.train.metrics import MetricsSink
from alignkit.train.optim import allocate_state, build_optimizer, build_scheduler

log = logging.getLogger("alignkit.train")

StepFn = Callable[[torch.nn.Module, dict], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


class TrainingDiverged(AlignkitError):
    pass


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    steps: int
    last_metrics: dict


def count_target_tokens(batch: dict) -> int:
    """Units for token-level losses: labels that are targets after the one-token shift."""
    return int((batch["labels"][:, 1:] != -100).sum())


def count_tokens(batch: dict) -> int:
    """Real (non-pad) tokens in a batch, for tokens/s."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return batch["input_ids"].numel()


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def step_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step` (0-based) across all processes."""
    positions = range(step * batch_size, (step + 1) * batch_size)
    return [_epoch_permutation(n, seed, pos // n)[pos % n] for pos in positions]


def example_tokens(example) -> int:
    """Tokens an encoded example puts through the forward pass: the lengths of every
    `input_ids` it holds (one sequence, a pair, a list of responses)."""
    if isinstance(example, dict):
        if "input_ids" in example:
            return len(example["input_ids"])
        return sum(example_tokens(value) for value in example.values())
    if isinstance(example, list | tuple):
        return sum(example_tokens(value) for value in example)
    return 0


def split_micro_batches(
    items: Sequence, micro: int, max_tokens: int | None = None, size_fn=example_tokens
) -> list[list]:
    """Consecutive groups of at most `micro` items and, when `max_tokens` is set, at most
    `max_tokens` tokens (an item longer than that forms a group alone).

    Why a token cap: with long-tailed lengths a fixed number of examples per forward pass
    sets peak activation memory by the longest examples that happen to meet; capping
    tokens bounds it whatever the lengths. The loss is unchanged: the loop normalises by
    the units of the whole optimizer step, however it is split.
    """
    groups: list[list] = []
    current: list = []
    tokens = 0
    for item in items:
        size = size_fn(item) if max_tokens is not None else 0
        if current and (len(current) == micro or (max_tokens and tokens + size > max_tokens)):
            groups.append(current)
            current, tokens = [], 0
        current.append(item)
        tokens += size
    if current:
        groups.append(current)
    return groups


def largest_first(groups: list[list], size_fn=example_tokens) -> list[list]:
    """`groups` ordered by tokens, largest first (stable for equal sizes).

    Why: the largest forward pass sets the memory high-water mark (glibc's heap on CPU,
    the caching allocator on CUDA). Run first, it claims that memory once and the smaller
    passes reuse it; run after smaller ones, it must grow around whatever they left in
    place. On a DPO step of the 135M model this lowered the peak by about 60 MiB. The
    gradient is a sum over the step's passes, so only the summation order changes.
    """
    return sorted(groups, key=lambda group: -sum(size_fn(item) for item in group))


def total_steps(config, n_examples: int) -> int:
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * n_examples / config.batch_size))


def train(
    model: torch.nn.Module,
    examples: Sequence,
    collate_fn: Callable,
    step_fn: StepFn,
    config,
    *,
    tokenizer=None,
    forward_module: torch.nn.Module | None = None,
    eval_examples: Sequence | None = None,
    units_fn: Callable[[dict], int] = count_target_tokens,
    finalize: Callable | None = None,
) -> TrainResult:
    """Train `model` on `examples`; write the run folder; return where `final/` is.

    `model` is what checkpoints and `final/` hold (a transformers or PEFT model);
    `forward_module` (default `model`) is what `step_fn` calls, wrapped in DDP under
    torchrun. `finalize(model, tokenizer, final_dir) -> metrics | None`, when given,
    writes `final/` instead of `save_final` (on the main process); the metrics it
    returns are logged at the last step. `config.micro_batch_tokens`, where the method's
    config has it, caps the tokens of each forward pass (`split_micro_batches`).
    """
    output_dir = Path(config.output_dir)
    device = select_device(config.device)
    dist = DistEnv.from_env(device)
    device = dist.device_for(device)
    micro = config.micro_batch
    if config.batch_size % (micro * dist.world_size):
        raise AlignkitError(
            f"batch_size ({config.batch_size}) must be a multiple of micro_batch_size ({micro}) "
            f"x processes ({dist.world_size})"
        )
    if not examples:
        raise AlignkitError(
            "no training examples left after encoding; see the truncation report above"
        )
    # Only configs of methods whose loss is a sum over examples have the key (not KTO,
    # whose KL estimate is taken over the examples of one forward pass).
    max_tokens = getattr(config, "micro_batch_tokens", None)
    split = functools.partial(split_micro_batches, micro=micro, max_tokens=max_tokens)
    steps = total_steps(config, len(examples))
    forward_module = forward_module if forward_module is not None else model
    forward_module.to(device)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    runner = forward_module
    if dist.enabled:
        runner = torch.nn.parallel.DistributedDataParallel(
            forward_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = build_optimizer(forward_module, config)
    scheduler = build_scheduler(optimizer, config, steps)
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_supported(device))
    autocast = functools.partial(
        torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16
    )

    fingerprint = {"examples": len(examples), "batch_size": config.batch_size, "seed": config.seed}
    state = TrainerState(data_fingerprint=fingerprint)
    checkpoint = resolve_resume(config.resume, output_dir)
    if checkpoint is not None:
        state = resume_checkpoint(checkpoint, model, optimizer, scheduler, fingerprint, dist.rank)
    else:
        torch.manual_seed(config.seed)
    allocate_state(optimizer)
    # Vocabulary-matrix gradients straight into the allocated .grad (ops/grad_accumulation);
    # not under DDP, whose reduction hooks need autograd to deliver every gradient.
    set_grad_accumulation_fusion(forward_module, enabled=not dist.enabled)
    if dist.is_main:
        save_config(config, output_dir / "config.yaml")
        if checkpoint is not None:
            log.info("resuming from %s (step %d of %d)", checkpoint, state.step, steps)
    sink = MetricsSink(
        output_dir,
        to_dict(config),
        config.loggers,
        total_steps=steps,
        start_step=state.step,
        enabled=dist.is_main,
    )
    last_good = checkpoint

    window = _Window()
    last_metrics: dict = {}
    try:
        while state.step < steps:
            indices = step_indices(state.step, config.batch_size, len(examples), config.seed)[
                dist.rank :: dist.world_size
            ]
            batches = [
                collate_fn(group) for group in largest_first(split([examples[i] for i in indices]))
            ]
            # Counted on the host-side batches, before transfer: no device sync per micro-batch.
            micro_units = [float(units_fn(b)) for b in batches]
            state.tokens_seen += sum(count_tokens(b) for b in batches) * dist.world_size
            units = dist.sum(torch.tensor(sum(micro_units), device=device))
            runner.train()
            loss_sum = torch.zeros((), device=device)
            metric_sums: dict[str, torch.Tensor] = {}
            for i, batch in enumerate(batches):
                last = i == len(batches) - 1
                sync = runner.no_sync() if dist.enabled and not last else contextlib.nullcontext()
                batch = batch_to(batch, device)
                if device.type == "cpu":
                    release_free_heap()
                with sync:
                    with autocast():
                        micro_loss, metrics = step_fn(runner, batch)
                    # DDP averages gradients over processes; scale so the result is the
                    # gradient of (sum over every unit of the step) / units.
                    (micro_loss * dist.world_size / units).backward()
                loss_sum += micro_loss.detach().float()
                for key, value in metrics.items():
                    metric_sums[key] = (
                        metric_sums.get(key, 0.0) + value.detach().float() * micro_units[i]
                    )
            global_loss_sum = dist.sum(loss_sum)
            step_loss = global_loss_sum / units
            max_norm = config.max_grad_norm if config.max_grad_norm is not None else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(forward_module.parameters(), max_norm)
            # One host sync per optimizer step: never let a non-finite loss reach the weights.
            loss_value, norm_value = step_loss.item(), float(grad_norm)
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                raise TrainingDiverged(
                    f"loss {loss_value} / grad_norm {norm_value} at step {state.step + 1}: stopped before "
                    f"updating the weights. Last good checkpoint: {last_good or 'none'} (resume=auto "
                    f"continues from it). Try a lower learning_rate or a smaller max_grad_norm."
                )
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=False)  # kept allocated: see allocate_state
            state.step += 1
            window.add(global_loss_sum, units, metric_sums, tokens=state.tokens_seen)

            logged = None
            if state.step % config.log_every == 0 or state.step == steps:
                logged = {
                    **window.summary(dist),
                    "lr": lr,
                    "grad_norm": norm_value,
                    "epoch": state.step * config.batch_size / len(examples),
                }
                window = _Window(start_tokens=state.tokens_seen)
            if (
                eval_examples
                and config.eval_every
                and state.step % config.eval_every == 0
                and state.step != steps
            ):
                logged = {
                    **(logged or {}),
                    **evaluate(
                        runner,
                        eval_examples,
                        collate_fn,
                        step_fn,
                        split,
                        device,
                        autocast,
                        units_fn,
                        dist,
                    ),
                }
            if logged is not None:
                last_metrics = logged
            sink.step(state.step, logged)
            if config.save_every and state.step % config.save_every == 0 and state.step != steps:
                last_good = _save(output_dir, model, optimizer, scheduler, state, config, dist)
                sink.message(f"saved {last_good}")
        if eval_examples:
            final_eval = evaluate(
                runner, eval_examples, collate_fn, step_fn, split, device, autocast, units_fn, dist
            )
            last_metrics = {**last_metrics, **final_eval}
            sink.step(state.step, final_eval, advance=False)
        final_dir = output_dir / "final"
        if dist.is_main:
            if finalize is None:
                save_final(model, tokenizer, final_dir, merge_lora=config.merge_lora)
            else:
                final_metrics = finalize(model, tokenizer, final_dir) or {}
                if final_metrics:
                    last_metrics = {**last_metrics, **final_metrics}
                    sink.step(state.step, final_metrics, advance=False)
            sink.message(f"wrote {final_dir}")
        dist.barrier()
    finally:
        sink.close()
    return TrainResult(output_dir, output_dir / "final", state.step, last_metrics)


class _Window:
    """What happened since the last log line, kept as device tensors: metrics are summed
    over processes and copied to the host once per log line, not once per step."""

    def __init__(self, start_tokens: int = 0):
        self.loss_sum: torch.Tensor | float = 0.0  # already summed over processes
        self.units: torch.Tensor | float = 0.0
        self.metric_sums: dict[str, torch.Tensor] = {}  # this process only, weighted by units
        self.start_tokens = self.tokens = start_tokens
        self.started = time.perf_counter()

    def add(
        self, loss_sum: torch.Tensor, units: torch.Tensor, metric_sums: dict, *, tokens: int
    ) -> None:
        self.loss_sum = self.loss_sum + loss_sum
        self.units = self.units + units
        for key, value in metric_sums.items():
            self.metric_sums[key] = self.metric_sums.get(key, 0.0) + value
        self.tokens = tokens

    def summary(self, dist: DistEnv) -> dict[str, float]:
        keys = list(self.metric_sums)
        metric_totals = (
            dist.sum(torch.stack([self.metric_sums[k] for k in keys])).tolist() if keys else []
        )
        loss_sum, units = torch.stack(
            [
                torch.as_tensor(self.loss_sum, dtype=torch.float32).cpu(),
                torch.as_tensor(self.units, dtype=torch.float32).cpu(),
            ]
        ).tolist()
        units = max(units, 1.0)
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return {
            "loss": loss_sum / units,
            "tokens_per_s": (self.tokens - self.start_tokens) / seconds,
            **{key: total / units for key, total in zip(keys, metric_totals, strict=True)},
        }


@torch.no_grad()
def evaluate(
    runner, examples, collate_fn, step_fn, split, device, autocast, units_fn, dist
) -> dict[str, float]:
    """Loss (and step_fn metrics) over `examples`, each process taking its shard, in the
    forward passes `split(examples) -> groups` forms."""
    runner.eval()
    shard = list(examples)[dist.rank :: dist.world_size]
    totals = torch.zeros(2, device=device)  # loss_sum, units
    metric_sums: dict[str, torch.Tensor] = {}
    for group in split(shard):
        batch = collate_fn(group)
        batch = batch_to(batch, device)
        with autocast():
            loss_sum, metrics = step_fn(runner, batch)
        units = float(units_fn(batch))
        totals += torch.stack([loss_sum.float(), torch.tensor(units, device=device)])
        for key, value in metrics.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + value.float() * units
    totals = dist.sum(totals)
    units = max(float(totals[1]), 1.0)
    out = {"eval/loss": float(totals[0]) / units}
    for key, value in metric_sums.items():
        out[f"eval/{key}"] = float(dist.sum(torch.as_tensor(value, device=device))) / units
    return out


def _save(output_dir, module, optimizer, scheduler, state, config, dist) -> Path | None:
    rng_states = dist.gather_objects(capture_rng())
    path = None
    if dist.is_main:
        path = save_checkpoint(output_dir, module, optimizer, scheduler, state, rng_states)
        prune_checkpoints(output_dir, config.keep_last)
    dist.barrier()
    return path


def save_final(model, tokenizer, final_dir: Path, *, merge_lora: bool = False) -> None:
    """`final/`: a folder `from_pretrained` loads (for LoRA: the adapter, and optionally
    `final/merged/` with the adapter merged into the base weights)."""
    with atomic_directory(final_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if merge_lora and hasattr(model, "merge_and_unload"):
            import copy

            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp / "merged")
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / "merged")

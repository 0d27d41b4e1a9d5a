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

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence

import torch

from alignkit.data.collators import batch_to
from alignkit.errors import AlignkitError
from alignkit.train.distributed import DistEnv
from alignkit.train.memory import token_cap
from alignkit.train.run import StepFn, TrainResult, open_run

log = logging.getLogger("alignkit")


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
    max_tokens: int | str | None = None,
) -> TrainResult:
    """Train `model` on `examples`; write the run folder; return where `final/` is.

    `model` is what checkpoints and `final/` hold (a transformers or PEFT model);
    `forward_module` (default `model`) is what `step_fn` calls, wrapped in DDP under
    torchrun. `finalize(model, tokenizer, final_dir) -> metrics | None`, when given,
    writes `final/` instead of `save_final` (on the main process); the metrics it
    returns are logged at the last step. `max_tokens` caps the tokens of each forward
    pass (`split_micro_batches`; a method's `micro_batch_tokens`; "auto": sized from
    the model, `train.memory.token_cap`).
    """
    if not examples:
        raise AlignkitError(
            "no training examples left after encoding; see the truncation report above"
        )
    max_tokens = token_cap(max_tokens, model)
    if max_tokens is not None:
        log.info("at most %d tokens per forward pass (micro_batch_tokens)", max_tokens)
    split = functools.partial(split_micro_batches, micro=config.micro_batch, max_tokens=max_tokens)
    steps = total_steps(config, len(examples))
    fingerprint = {"examples": len(examples), "batch_size": config.batch_size, "seed": config.seed}
    with open_run(
        config, model, total_steps=steps, fingerprint=fingerprint, forward_module=forward_module
    ) as run:
        dist, state = run.dist, run.state
        check_divisible(config.batch_size, config.micro_batch, dist.world_size)
        window = MetricWindow(start_tokens=state.tokens_seen)
        last_metrics: dict = {}
        while state.step < steps:
            indices = step_indices(state.step, config.batch_size, len(examples), config.seed)
            mine = [examples[i] for i in indices[dist.rank :: dist.world_size]]
            batches = [collate_fn(group) for group in run.memory.order(split(mine), example_tokens)]
            state.tokens_seen += sum(count_tokens(b) for b in batches) * dist.world_size
            outcome = run.optimizer_step(batches, step_fn, [float(units_fn(b)) for b in batches])
            window.add(
                outcome.loss_sum, outcome.units, outcome.metric_sums, tokens=state.tokens_seen
            )
            logged = None
            done = state.step + 1
            if done % config.log_every == 0 or done == steps:
                logged = {
                    **window.summary(dist),
                    "lr": outcome.lr,
                    "grad_norm": outcome.grad_norm,
                    "epoch": done * config.batch_size / len(examples),
                }
                window = MetricWindow(start_tokens=state.tokens_seen)
            if (
                eval_examples
                and config.eval_every
                and done % config.eval_every == 0
                and done != steps
            ):
                logged = {
                    **(logged or {}),
                    **evaluate(run, eval_examples, collate_fn, step_fn, split, units_fn),
                }
            if logged is not None:
                last_metrics = logged
            run.finish_step(logged)
        if eval_examples:
            final_eval = evaluate(run, eval_examples, collate_fn, step_fn, split, units_fn)
            last_metrics = {**last_metrics, **final_eval}
            run.sink.step(state.step, final_eval, advance=False)
        if finalize is None:
            run.save_final(tokenizer)
        elif dist.is_main:
            final_metrics = finalize(model, tokenizer, run.output_dir / "final") or {}
            if final_metrics:
                last_metrics = {**last_metrics, **final_metrics}
                run.sink.step(state.step, final_metrics, advance=False)
            run.sink.message(f"wrote {run.output_dir / 'final'}")
        return run.result(last_metrics)


def check_divisible(batch_size: int, micro: int, world_size: int) -> None:
    if batch_size % (micro * world_size):
        raise AlignkitError(
            f"batch_size ({batch_size}) must be a multiple of micro_batch_size ({micro}) "
            f"x processes ({world_size})"
        )


class MetricWindow:
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
def evaluate(run, examples, collate_fn, step_fn, split, units_fn) -> dict[str, float]:
    """Loss (and step_fn metrics) over `examples`, each process taking its shard, in the
    forward passes `split(examples) -> groups` forms."""
    runner, device, dist = run.runner, run.device, run.dist
    runner.eval()
    shard = list(examples)[dist.rank :: dist.world_size]
    totals = torch.zeros(2, device=device)  # loss_sum, units
    metric_sums: dict[str, torch.Tensor] = {}
    for group in split(shard):
        batch = collate_fn(group)
        units = float(units_fn(batch))
        batch = batch_to(batch, device)
        with run.autocast():
            loss_sum, metrics = step_fn(runner, batch)
        totals += torch.stack([loss_sum.float(), torch.tensor(units, device=device)])
        for key, value in metrics.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + value.float() * units
    totals = dist.sum(totals)
    units = max(float(totals[1]), 1.0)
    out = {"eval/loss": float(totals[0]) / units}
    for key, value in metric_sums.items():
        out[f"eval/{key}"] = float(dist.sum(torch.as_tensor(value, device=device))) / units
    return out

"""A training run's context and its one optimizer step (DESIGN principle 3).

Every method, offline (`alignkit.train.loop.train`) or online (`alignkit.methods.rl`),
opens a `Run` and drives it:

    with open_run(config, model, total_steps=..., fingerprint=...) as run:
        while run.state.step < total_steps:
            outcome = run.optimizer_step(batches, step_fn, units)   # one or more per step
            run.finish_step(metrics)                                # schedule, log, save
        run.save_final(tokenizer)

`Run.optimizer_step` owns "micro-batches in, weights updated": the forward and backward
pass of each micro-batch under autocast, the normalisation by the units of the whole
optimizer step (all micro-batches on all processes), DDP gradient synchronisation on the
last micro-batch only, clipping, the non-finite check (the weights are never updated with
a non-finite loss or gradient) and the optimizer update. `step_fn(runner, batch)` returns
the loss *summed* over the batch's units (target tokens, pairs, completions...) and
per-unit mean metrics; `units` are counted on host-side batches, so there is no device
sync per micro-batch. Averaging per micro-batch instead would weight short sequences
more (a known source of wrong losses elsewhere).

The context holds the device, process group, optimizer, scheduler, trainer state,
checkpoints (atomic; resume with `resume=auto`) and metric sinks, and refuses to start
in a folder that holds another run unless told to resume or overwrite.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit.config import ConfigError, save_config, to_dict
from alignkit.data.collators import batch_to
from alignkit.errors import AlignkitError
from alignkit.fsutil import atomic_directory
from alignkit.models.device import bf16_supported, select_device
from alignkit.models.lora import enable_gradient_checkpointing
from alignkit.ops import threads
from alignkit.ops.logprobs import set_grad_accumulation_fusion
from alignkit.train.checkpoint import (
    TrainerState,
    capture_rng,
    list_checkpoints,
    load_extra,
    load_extra_tensors,
    prune_checkpoints,
    resolve_resume,
    resume_checkpoint,
    save_checkpoint,
)
from alignkit.train.distributed import DistEnv
from alignkit.train.memory import MemoryPlan
from alignkit.train.metrics import MetricsSink
from alignkit.train.optim import build_optimizer, build_scheduler, parameter_groups

log = logging.getLogger("alignkit.train")

StepFn = Callable[[torch.nn.Module, dict], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]

# What a run writes into its folder: the signs that a folder already holds a run, and
# what overwrite=true removes. (Not `ref_logps/`: a cache keyed by its inputs, written
# before training starts, and valid for any run on the same data.)
RUN_ARTIFACTS = (
    "final",
    "checkpoints",
    "critic",
    "config.yaml",
    "metrics.jsonl",
    "samples.jsonl",
    "report.html",
)


class TrainingDiverged(AlignkitError):
    pass


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    steps: int
    last_metrics: dict


@dataclass
class StepOutcome:
    """One optimizer step: loss and units summed over every process (device tensors),
    this process's unit-weighted metric sums, the gradient norm before clipping, and the
    learning rate the update used."""

    loss_sum: torch.Tensor
    units: torch.Tensor
    metric_sums: dict[str, torch.Tensor]
    grad_norm: float
    lr: float


@dataclass
class Run:
    config: object
    output_dir: Path
    device: torch.device
    dist: DistEnv
    model: torch.nn.Module  # what checkpoints and final/ hold
    module: torch.nn.Module  # what the step calls (unwrapped)
    runner: torch.nn.Module  # `module`, wrapped in DDP under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: object
    memory: MemoryPlan
    state: TrainerState
    sink: MetricsSink
    total_steps: int
    autocast: Callable
    last_good: Path | None = None
    extra_state: dict = field(default_factory=dict)  # from the resumed checkpoint's extra.json
    extra_tensors: dict = field(default_factory=dict)  # ... and its extra.pt

    # ---- the one optimizer step -------------------------------------------------------

    def optimizer_step(
        self, batches: Sequence[dict], step_fn: StepFn, units: Sequence[float]
    ) -> StepOutcome:
        """Forward and backward every micro-batch of `batches` (host-side; moved to the
        device here) with `units[i]` units each, then clip, check and update."""
        dist, runner = self.dist, self.runner
        total = dist.sum(torch.tensor(float(sum(units)), device=self.device))
        runner.train()
        loss_sum = torch.zeros((), device=self.device)
        metric_sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = runner.no_sync() if dist.enabled and not last else contextlib.nullcontext()
            batch = batch_to(batch, self.device)
            threads.tick()
            self.memory.before_pass()
            with sync:
                with self.autocast():
                    micro_loss, metrics = step_fn(runner, batch)
                # DDP averages gradients over processes; scale so the result is the
                # gradient of (sum over every unit of the step) / units.
                (micro_loss * dist.world_size / total).backward()
            loss_sum += micro_loss.detach().float()
            for key, value in metrics.items():
                metric_sums[key] = metric_sums.get(key, 0.0) + value.detach().float() * units[i]
        global_loss = dist.sum(loss_sum)
        config = self.config
        max_norm = config.max_grad_norm if config.max_grad_norm is not None else float("inf")
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        # One host sync per optimizer step: never let a non-finite loss reach the weights.
        loss_value, norm_value = (global_loss / total).item(), float(grad_norm)
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            self.diverged(
                f"loss {loss_value} / grad_norm {norm_value} at step {self.state.step + 1}: "
                "stopped before updating the weights.",
                "Try a lower learning_rate or a smaller max_grad_norm.",
            )
        lr = self.scheduler.get_last_lr()[0]
        self.memory.optimizer_step(self.optimizer)
        return StepOutcome(global_loss, total, metric_sums, norm_value, lr)

    def diverged(self, what: str, advice: str = "") -> None:
        """Stop the run: `what` went wrong; the last good checkpoint is named."""
        raise TrainingDiverged(
            f"{what} Last good checkpoint: {self.last_good or 'none'} (resume=auto continues "
            f"from it). {advice}".rstrip()
        )

    # ---- bookkeeping ------------------------------------------------------------------

    def finish_step(
        self, logged: dict | None, extra: dict | None = None, tensors: dict | None = None
    ) -> None:
        """End run step `state.step`: advance the schedule, record `logged` metrics (None:
        only the progress bar moves), and save a checkpoint when one is due. `extra`: a
        JSON-able dict of further state saved with it (e.g. a KL controller); `tensors`:
        further state holding tensors (main process; e.g. an ensemble's state_dict)."""
        self.scheduler.step()
        self.state.step += 1
        self.sink.step(self.state.step, logged)
        every = self.config.save_every
        if every and self.state.step % every == 0 and self.state.step != self.total_steps:
            self.save(extra, tensors)

    def save(self, extra: dict | None = None, tensors: dict | None = None) -> Path | None:
        rng_states = self.dist.gather_objects(capture_rng())
        path = None
        if self.dist.is_main:
            path = save_checkpoint(
                self.output_dir,
                self.model,
                self.optimizer,
                self.scheduler,
                self.state,
                rng_states,
                extra=extra,
                extra_tensors=tensors,
            )
            prune_checkpoints(self.output_dir, self.config.keep_last)
            self.sink.message(f"saved {path}")
        self.dist.barrier()
        self.last_good = path
        return path

    def save_final(self, tokenizer, module: torch.nn.Module | None = None, name: str = "final"):
        """Write `name/` (main process): `module` (default the run's model) as a folder
        `from_pretrained` loads."""
        folder = self.output_dir / name
        if self.dist.is_main:
            save_final(
                module if module is not None else self.model,
                tokenizer,
                folder,
                merge_lora=self.config.merge_lora and name == "final",
            )
            self.sink.message(f"wrote {folder}")
        return folder

    def result(self, last_metrics: dict) -> TrainResult:
        self.dist.barrier()
        return TrainResult(
            self.output_dir, self.output_dir / "final", self.state.step, last_metrics
        )


@contextlib.contextmanager
def open_run(
    config,
    model: torch.nn.Module,
    *,
    total_steps: int,
    fingerprint: dict,
    forward_module: torch.nn.Module | None = None,
    param_groups: list[dict] | None = None,
    checkpointed: Sequence[torch.nn.Module] | None = None,
):
    """Set up a run of `total_steps` steps in `config.output_dir` and yield its `Run`.

    `model` is what checkpoints and `final/` hold; `forward_module` (default `model`) is
    what step functions call, wrapped in DDP under torchrun. `param_groups` default to
    `parameter_groups(forward_module)`; `checkpointed` are the transformers models to run
    with gradient checkpointing when the config asks (default `[model]`). `fingerprint`
    names the data and order a checkpoint must match to be resumed.
    """
    output_dir = Path(config.output_dir)
    device = select_device(config.device)
    dist = DistEnv.from_env(device)
    device = dist.device_for(device)
    remove_old_run(output_dir, check_output_dir(config), dist)
    checkpoint = resolve_resume(config.resume, output_dir)
    module = forward_module if forward_module is not None else model
    module.to(device)
    if config.gradient_checkpointing:
        for part in checkpointed if checkpointed is not None else [model]:
            enable_gradient_checkpointing(part)
    runner = module
    if dist.enabled:
        runner = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = build_optimizer(
        param_groups if param_groups is not None else parameter_groups(module, config.weight_decay),
        config,
    )
    scheduler = build_scheduler(optimizer, config, total_steps)
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_supported(device))
    autocast = functools.partial(
        torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16
    )
    state = TrainerState(data_fingerprint=fingerprint)
    extra: dict = {}
    extra_tensors: dict = {}
    if checkpoint is not None:
        state = resume_checkpoint(checkpoint, model, optimizer, scheduler, fingerprint, dist.rank)
        extra = load_extra(checkpoint)
        extra_tensors = load_extra_tensors(checkpoint)
    else:
        torch.manual_seed(config.seed)
    memory = MemoryPlan(config.lean_memory, device)
    memory.prepare(optimizer)
    # Vocabulary-matrix gradients straight into the allocated .grad (ops/grad_accumulation);
    # not under DDP, whose reduction hooks need autograd to deliver every gradient.
    set_grad_accumulation_fusion(module, enabled=not dist.enabled and config.lean_memory)
    if dist.is_main:
        save_config(config, output_dir / "config.yaml")
        if checkpoint is not None:
            log.info("resuming from %s (step %d of %d)", checkpoint, state.step, total_steps)
    sink = MetricsSink(
        output_dir,
        to_dict(config),
        config.loggers,
        total_steps=total_steps,
        start_step=state.step,
        enabled=dist.is_main,
    )
    run = Run(
        config=config,
        output_dir=output_dir,
        device=device,
        dist=dist,
        model=model,
        module=module,
        runner=runner,
        optimizer=optimizer,
        scheduler=scheduler,
        memory=memory,
        state=state,
        sink=sink,
        total_steps=total_steps,
        autocast=autocast,
        last_good=checkpoint,
        extra_state=extra,
        extra_tensors=extra_tensors,
    )
    try:
        yield run
    finally:
        sink.close()
        memory.close()


def check_output_dir(config) -> list[str]:
    """Refuse to start where another run lives, unless resuming it or `overwrite=true`;
    return the old run's artifacts that `overwrite` is to remove.

    Methods call this before any expensive preparation, and `open_run` again. A folder
    holds a run when it has any of `RUN_ARTIFACTS`. Resuming (a checkpoint was found) is
    allowed; its fingerprint is checked when it loads.
    """
    output_dir = Path(config.output_dir)
    found = [name for name in RUN_ARTIFACTS if (output_dir / name).exists()]
    if not found or resolve_resume(config.resume, output_dir) is not None:
        return []
    unfinished = not (output_dir / "final").exists() and not list_checkpoints(output_dir)
    if config.resume is not None and unfinished:
        return found  # killed before its first checkpoint: nothing to resume, start afresh
    if config.overwrite:
        return found
    if (output_dir / "final").exists():
        what = "a finished run (final/)"
    elif list_checkpoints(output_dir):
        what = "another run's checkpoints"
    else:
        what = f"another run ({', '.join(found)})"
    # resume=auto is a way out only where there is a checkpoint to continue from
    resumable = "resume=auto to continue that run, " if list_checkpoints(output_dir) else ""
    raise ConfigError(
        f"output_dir {output_dir} already holds {what}. Choose one: {resumable}a new "
        f"output_dir, or overwrite=true to remove the old run first."
    )


def remove_old_run(output_dir: Path, names: list[str], dist: DistEnv) -> None:
    """Remove the named artifacts of an old run (only those: nothing else in the folder)."""
    if names and dist.is_main:
        log.info("removing the old run's %s in %s", ", ".join(names), output_dir)
        for name in names:
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    dist.barrier()


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

"""The on-policy RL loop shared by PPO, RLOO and GRPO.

One step = one rollout batch:
1. take `batch_size` prompts (order fixed by seed and step), sample `group` completions
   for each with the current policy (seeded by seed and step);
2. score them with the judge; penalise completions cut at `max_new_tokens` if asked;
3. compute, without gradients, the rollout's log-probs under the policy ("old"), under
   the reference, and (PPO) the critic's values;
4. the algorithm turns these into per-token advantages (and returns);
5. `ppo_epochs` passes over the batch in `num_minibatches` optimizer steps each, every
   one accumulated over micro-batches of `micro_batch_size` completions;
6. the KL controller updates; metrics, samples and checkpoints are written.

Sequences are `prompt + completion` with each prompt unpadded, right-padded to a
rectangle: under causal attention nothing real sees the pads, so no mask is needed and
log-probs equal those of the left-padded sampler (tested).

The policy and the critic live in one `ActorCritic` container, so one optimizer (two
learning rates) and one checkpoint hold both; the KL controller's state rides along in
the checkpoint's `extra.json`. Resuming from a checkpoint replays exactly: data order and
sampling seeds are functions of (seed, step).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alignkit.config import ConfigError, RLConfig, save_config
from alignkit.data.collators import PaddingCollator
from alignkit.data.loading import load_records
from alignkit.data.records import Kind
from alignkit.data.templating import IGNORE_INDEX, ChatEncoder, pad_token_id
from alignkit.losses.ppo import AdaptiveKLController, FixedKLController, kl_estimate
from alignkit.methods.common import load_trainable_model, seed_everything
from alignkit.models.device import select_device
from alignkit.models.lora import enable_gradient_checkpointing
from alignkit.ops.logprobs import CausalLMLogps
from alignkit.ops.stats import masked_mean
from alignkit.rollout.sampling import Rollout, SamplingSettings, sample
from alignkit.train.checkpoint import (
    TrainerState,
    capture_rng,
    load_extra,
    prune_checkpoints,
    resolve_resume,
    resume_checkpoint,
    save_checkpoint,
)
from alignkit.train.loop import TrainResult, save_final, step_indices
from alignkit.train.metrics import MetricsSink, truncate_after
from alignkit.train.optim import build_scheduler, parameter_groups

log = logging.getLogger("alignkit")


class ActorCritic(nn.Module):
    """The trainable parts of a run: `policy` (a causal LM, maybe PEFT) and an optional
    `critic` (a `*ForSequenceClassification` value model)."""

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic


@dataclass
class RolloutBatch:
    """A scored rollout ready for the losses; R = prompts x group.

    input_ids: (R, T) prompt + completion, right-padded. index: (R, C) position in the
    (R, T-1) per-token outputs of each completion token. mask: (R, C). scores: (R,)
    (after any missing-EOS penalty; raw_scores before). sample_logps: (R, C) the
    sampler's log-probs. prompts: the R prompt records' `prompt` values; texts: the R
    completion texts.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor
    scores: torch.Tensor
    raw_scores: torch.Tensor
    finished: torch.Tensor
    sample_logps: torch.Tensor
    prompts: list
    texts: list[str]

    def rows(self, which: torch.Tensor) -> dict:
        return {
            "input_ids": self.input_ids[which],
            "labels": self.labels[which],
            "index": self.index[which],
            "mask": self.mask[which],
        }


def build_batch(rollout: Rollout, prompt_ids: list[list[int]], pad_id: int) -> dict:
    """Right-padded prompt+completion rows and where each completion token sits."""
    completions = rollout.completion_lists()
    rows = [p + c for p, c in zip(prompt_ids, completions, strict=True)]
    collate = PaddingCollator(pad_id)
    batch = collate(
        [
            {"input_ids": r, "labels": [IGNORE_INDEX] * len(p) + c}
            for r, p, c in zip(rows, prompt_ids, completions, strict=True)
        ]
    )
    width = rollout.completion_ids.shape[1]
    starts = torch.tensor([len(p) - 1 for p in prompt_ids])  # logps[t] predicts token t+1
    index = starts[:, None] + torch.arange(width)[None, :]
    mask = rollout.completion_mask.clone()
    index = torch.where(mask.bool(), index, torch.zeros_like(index))
    return {
        "input_ids": batch["input_ids"],
        "labels": batch["labels"],
        "index": index,
        "mask": mask,
    }


def completion_logps(logps_module: CausalLMLogps, rows: dict) -> torch.Tensor:
    """(R, C) log-probs of each completion token (0 where masked out)."""
    logps, _mask = logps_module(input_ids=rows["input_ids"], labels=rows["labels"])
    return logps.gather(1, rows["index"]) * rows["mask"]


def completion_values(values_module, rows: dict) -> torch.Tensor:
    """(R, C) critic values at the position before each completion token, the state
    from which that token was chosen."""
    values = values_module(rows["input_ids"])[:, :-1]
    return values.gather(1, rows["index"]) * rows["mask"]


def micro_batches(indices: torch.Tensor, size: int):
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


class PolicyGradientRun:
    """Everything one RL run holds; `algorithm` supplies advantages and the loss.

    An algorithm implements:
      group: completions per prompt;
      uses_critic: bool;
      prepare(run, batch, old_logps, ref_logps, values, kl, rewards) -> dict of per-row
        tensors the loss needs (advantages, returns...) plus metrics under "metrics";
        `kl` (N, T) is the per-token KL estimate (zero past the mask), `rewards` (N,)
        each completion's score minus kl_coef x its summed KL;
      loss(run, rows, prepared, which, minibatch_tokens) -> (loss to minimise for these
        rows, already scaled to its share of the minibatch; metrics dict).
    """

    def __init__(self, config: RLConfig, algorithm):
        if config.data is None and config.task is None:
            raise ConfigError("give prompts with data=FILE or a built-in task with task=sentiment")
        self.config = config
        self.algorithm = algorithm
        self.output_dir = Path(config.output_dir)
        self.device = select_device(config.device)
        seed_everything(config.seed)
        policy, self.tokenizer = load_trainable_model(config)
        self.encoder = ChatEncoder(self.tokenizer, max_prompt_length=config.max_prompt_length)
        self.prompt_records = self._load_prompts()
        self.prompt_ids = [self.encoder.encode_prompt(r["prompt"]) for r in self.prompt_records]
        self.judge = self._load_judge()
        critic = self._load_critic() if algorithm.uses_critic else None
        self.model = ActorCritic(policy, critic).to(self.device)
        self.policy_logps = CausalLMLogps(policy, temperature=self._logp_temperature())
        self.reference = self._load_reference(policy)
        self.ref_logps = (
            CausalLMLogps(self.reference, temperature=self._logp_temperature())
            if self.reference is not None
            else self.policy_logps
        )
        from alignkit.models.reward import TokenValues

        self.values = TokenValues(critic) if critic is not None else None
        if config.gradient_checkpointing:
            for module in (policy, critic):
                if module is not None:
                    enable_gradient_checkpointing(module)
        self.optimizer = self._build_optimizer()
        self.total_steps = config.max_steps or max(
            1, math.ceil(config.epochs * len(self.prompt_records) / config.batch_size)
        )
        self.scheduler = build_scheduler(self.optimizer, config, self.total_steps)
        self.kl_controller = (
            AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
            if config.kl_target is not None
            else FixedKLController(config.kl_coef)
        )
        self.eos_ids = self.encoder.stop_token_ids
        self.pad_id = pad_token_id(self.tokenizer)

    # ---- set-up ---------------------------------------------------------------------

    def _logp_temperature(self) -> float:
        return self.config.temperature if self.config.temperature > 0 else 1.0

    def _load_prompts(self) -> list[dict]:
        config = self.config
        if config.data is not None:
            loaded = load_records(
                config.data,
                Kind.PROMPT,
                skip_invalid=config.skip_invalid,
                rejects_path=self.output_dir / "rejects.jsonl",
            )
            return loaded.records
        from alignkit.tasks import get_task

        return [{"prompt": p} for p in get_task(config.task).prompts("train")]

    def _reward_spec(self):
        if self.config.reward is not None:
            return self.config.reward
        if self.config.task is not None:
            return f"task:{self.config.task}"
        raise ConfigError("reward is required: a reward-model folder, module:function or task:NAME")

    def _load_judge(self):
        from alignkit.feedback.function import load_judge

        return load_judge(self._reward_spec(), device=str(self.device))

    def _load_critic(self):
        from alignkit.models.loading import resolve_model_path
        from alignkit.models.reward import is_reward_model_folder, load_reward_model

        choice = self.config.critic
        spec = str(self._reward_spec())
        reward_is_model = not spec.startswith("task:") and (
            Path(spec).exists() and is_reward_model_folder(resolve_model_path(spec))
        )
        if choice == "auto":
            choice = "reward" if reward_is_model else "policy"
        if choice == "reward":
            if not reward_is_model:
                raise ConfigError("critic=reward needs reward= to be a reward-model folder")
            log.info("critic: initialised from the reward model %s", spec)
            return load_reward_model(spec, num_heads=1, device="cpu")
        log.info(
            "critic: initialised from the policy %s with a fresh value head", self.config.model
        )
        critic = load_reward_model(
            self.config.model, num_heads=1, seed=self.config.seed, device="cpu"
        )
        with torch.no_grad():  # start from V = 0 rather than a random unit-scale value
            from alignkit.models.reward import score_head

            score_head(critic).weight.zero_()
        return critic

    def _load_reference(self, policy):
        """None: the policy itself serves as reference with its LoRA adapter disabled."""
        config = self.config
        if config.lora is not None and config.ref_model is None:
            return None
        from alignkit.models.loading import load_model

        reference = load_model(
            config.ref_model or config.model, device=str(self.device), dtype="float32"
        )
        reference.requires_grad_(False)
        return reference.eval()

    def _build_optimizer(self):
        config = self.config
        groups = []
        parts = [(self.model.policy, config.learning_rate)]
        if self.model.critic is not None:
            parts.append(
                (self.model.critic, getattr(config, "critic_learning_rate", config.learning_rate))
            )
        for module, lr in parts:
            groups.extend(parameter_groups(module, config.weight_decay, lr))
        return torch.optim.AdamW(groups, betas=tuple(config.adam_betas), fused=True)

    # ---- one step -------------------------------------------------------------------

    def sampling_settings(self, step: int) -> SamplingSettings:
        config = self.config
        return SamplingSettings(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            stop_strings=tuple(config.stop),
            seed=config.seed * 1_000_003 + step,
        )

    def reference_context(self):
        if self.reference is None:
            return self.model.policy.disable_adapter()
        return contextlib.nullcontext()

    @torch.no_grad()
    def rollout(self, step: int) -> RolloutBatch:
        config, group = self.config, self.algorithm.group
        chosen = step_indices(step, config.batch_size, len(self.prompt_records), config.seed)
        prompt_ids = [self.prompt_ids[i] for i in chosen for _ in range(group)]
        prompts = [self.prompt_records[i]["prompt"] for i in chosen for _ in range(group)]
        rollout = sample(
            self.model.policy,
            prompt_ids,
            self.sampling_settings(step),
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            tokenizer=self.tokenizer,
        )
        texts = [t.strip() for t in rollout.texts(self.tokenizer)]
        raw = torch.tensor(self.judge.score_batch(prompts, texts), dtype=torch.float32)
        scores = raw.clone()
        if config.missing_eos_penalty is not None:
            scores = torch.where(rollout.finished, scores, scores - config.missing_eos_penalty)
        tensors = build_batch(rollout, prompt_ids, self.pad_id)
        return RolloutBatch(
            **tensors,
            scores=scores,
            raw_scores=raw,
            finished=rollout.finished,
            sample_logps=rollout.logprobs,
            prompts=prompts,
            texts=texts,
        )

    @torch.no_grad()
    def evaluate_rollout(self, batch: RolloutBatch):
        """Old log-probs, reference log-probs and values of every completion, (R, C)."""
        self.model.eval()
        old, ref, values = [], [], []
        rows = torch.arange(len(batch.scores))
        for which in micro_batches(rows, self.config.micro_batch):
            part = {k: v.to(self.device) for k, v in batch.rows(which).items()}
            old.append(completion_logps(self.policy_logps, part).cpu())
            with self.reference_context():
                ref.append(completion_logps(self.ref_logps, part).cpu())
            if self.values is not None:
                values.append(completion_values(self.values, part).cpu())
        self.model.train()
        return torch.cat(old), torch.cat(ref), (torch.cat(values) if values else None)

    def optimise(self, batch: RolloutBatch, prepared: dict, step: int) -> dict[str, float]:
        config = self.config
        rows = len(batch.scores)
        minibatch = rows // config.num_minibatches
        generator = torch.Generator().manual_seed(config.seed * 7_919 + step)
        totals: dict[str, float] = {}
        count = 0
        for _epoch in range(config.ppo_epochs):
            order = torch.randperm(rows, generator=generator)
            for start in range(0, rows, minibatch):
                members = order[start : start + minibatch]
                tokens = float(batch.mask[members].sum().clamp(min=1))
                for which in micro_batches(members, config.micro_batch):
                    part = {k: v.to(self.device) for k, v in batch.rows(which).items()}
                    loss, metrics = self.algorithm.loss(self, part, prepared, which, tokens)
                    loss.backward()
                    for key, value in metrics.items():
                        totals[key] = totals.get(key, 0.0) + float(value) * len(which) / minibatch
                if config.max_grad_norm is not None:
                    norm = torch.nn.utils.clip_grad_norm_(
                        [p for p in self.model.parameters() if p.requires_grad],
                        config.max_grad_norm,
                    )
                    totals["grad_norm"] = totals.get("grad_norm", 0.0) + float(norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                count += 1
        return {key: value / count for key, value in totals.items()}

    def step(self, step: int) -> tuple[dict[str, float], RolloutBatch]:
        batch = self.rollout(step)
        old, ref, values = self.evaluate_rollout(batch)
        mask = batch.mask
        kl = kl_estimate(old, ref, self.config.kl_estimator) * mask
        kl_per_completion = kl.sum(-1)
        coef = self.kl_controller.value
        rewards = batch.scores - coef * kl_per_completion  # the RLHF reward, per completion
        prepared = self.algorithm.prepare(self, batch, old, ref, values, kl, rewards)
        metrics = self.optimise(batch, prepared, step)
        self.scheduler.step()
        self.kl_controller.update(float(kl_per_completion.mean()), len(batch.scores))
        lengths = mask.sum(-1).float()
        metrics.update(
            {
                "objective/scores": float(batch.raw_scores.mean()),
                "objective/kl": float(kl_per_completion.mean()),
                "objective/rlhf_reward": float(rewards.mean()),
                "policy/entropy": float(masked_mean(-old, mask)),
                "completions/mean_length": float(lengths.mean()),
                "completions/eos_rate": float(batch.finished.float().mean()),
                "kl_coef": coef,
                "lr": self.scheduler.get_last_lr()[0],
                **prepared.get("metrics", {}),
            }
        )
        return metrics, batch

    # ---- the run --------------------------------------------------------------------

    def run(self) -> TrainResult:
        config = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, self.output_dir / "config.yaml")
        fingerprint = {
            "prompts": len(self.prompt_records),
            "batch_size": config.batch_size,
            "seed": config.seed,
        }
        state = TrainerState(data_fingerprint=fingerprint)
        checkpoint = resolve_resume(config.resume, self.output_dir)
        if checkpoint is not None:
            state = resume_checkpoint(
                checkpoint, self.model, self.optimizer, self.scheduler, fingerprint
            )
            self.kl_controller.load_state_dict(load_extra(checkpoint)["kl_controller"])
            log.info("resumed from %s (step %d)", checkpoint, state.step)
        from alignkit.config import to_dict

        sink = MetricsSink(
            self.output_dir,
            to_dict(config),
            config.loggers,
            total_steps=self.total_steps,
            start_step=state.step,
        )
        truncate_after(self.output_dir / "samples.jsonl", state.step)
        metrics: dict[str, float] = {}
        try:
            while state.step < self.total_steps:
                started = time.perf_counter()
                metrics, batch = self.step(state.step)
                state.step += 1
                state.tokens_seen += int(batch.mask.sum())
                metrics["seconds_per_step"] = time.perf_counter() - started
                sink.step(
                    state.step,
                    metrics
                    if state.step % config.log_every == 0 or state.step == self.total_steps
                    else None,
                )
                if config.sample_every and (
                    state.step % config.sample_every == 0 or state.step == 1
                ):
                    self._write_samples(state.step, batch)
                if (
                    config.save_every
                    and state.step % config.save_every == 0
                    and state.step != self.total_steps
                ):
                    path = save_checkpoint(
                        self.output_dir,
                        self.model,
                        self.optimizer,
                        self.scheduler,
                        state,
                        [capture_rng()],
                        extra={"kl_controller": self.kl_controller.state_dict()},
                    )
                    prune_checkpoints(self.output_dir, config.keep_last)
                    sink.message(f"saved {path}")
            final_dir = self.output_dir / "final"
            save_final(self.model.policy, self.tokenizer, final_dir, merge_lora=config.merge_lora)
            if self.model.critic is not None:
                save_final(self.model.critic, None, self.output_dir / "critic")
            sink.message(f"wrote {final_dir}")
        finally:
            sink.close()
        return TrainResult(self.output_dir, self.output_dir / "final", state.step, metrics)

    def _write_samples(self, step: int, batch: RolloutBatch, limit: int = 8) -> None:
        with open(self.output_dir / "samples.jsonl", "a", encoding="utf-8") as out:
            for i in range(min(limit, len(batch.texts))):
                record = {
                    "step": step,
                    "prompt": batch.prompts[i],
                    "completion": batch.texts[i],
                    "score": float(batch.raw_scores[i]),
                    "finished": bool(batch.finished[i]),
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")

"""On-policy RL (PPO, RLOO, GRPO): a rollout phase around the shared optimizer step.

One run step is one rollout batch, read top to bottom in `run_policy_gradient`:

1. **prompts**: `batch_size` prompts fixed by (seed, step); under torchrun each process
   takes every world_size-th prompt. Each completion is sampled with its own seed
   (seed, step, row of the whole batch), so the rollout does not depend on how it is
   split over processes or micro-batches;
2. **sample** `group` completions per prompt with the current policy;
3. **score** them with the reward source; a non-finite score stops the run, naming the
   last good checkpoint; completions cut at `max_new_tokens` may lose a penalty;
4. **reference / critic pass** without gradients: log-probs under the reference and the
   critic's values. The policy's own ("old") log-probs are the sampler's, returned with
   the tokens (equal to a teacher-forced forward to float rounding, tested), so the
   policy is not run a second time;
5. **targets**: per-token KL estimate, the RLHF reward (score - kl_coef x summed KL),
   and the algorithm's pure `targets` (advantages, returns);
6. **optimizer steps**: `ppo_epochs` passes over the rollout in `num_minibatches`
   optimizer steps each, every one `Run.optimizer_step` over micro-batches of
   `micro_batch_size` completions with the algorithm's `loss` as step function;
7. the KL controller updates; metrics, samples and checkpoints are written; held-out
   prompts are evaluated every `eval_every` steps and at the end.

An algorithm (`alignkit.methods.ppo.PPO`, `rloo.RLOO`, `grpo.GRPO`) never sees the run:

    group: int; uses_critic: bool
    targets(rollout: RolloutTensors, sum_fn) -> (per-row tensors, metrics)
    loss(outputs, batch) -> (loss summed over the batch's units, per-unit metrics)
    units(batch) -> float   # what the loss is a sum over (tokens, completions)

`outputs` are the trained module's (`PolicyForward`) log-probs and values of the
batch's completions; `batch` holds the rows and their targets. Under torchrun, batch
statistics (PPO's advantage whitening, metrics) are taken over every process's rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alignkit.config import ConfigError, RLConfig
from alignkit.data.loading import load_records
from alignkit.data.records import Kind
from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.errors import AlignkitError
from alignkit.losses.ppo import AdaptiveKLController, FixedKLController, kl_estimate
from alignkit.methods.common import load_trainable_model, seed_everything
from alignkit.models.device import select_device
from alignkit.models.partial import train_top_layers
from alignkit.ops.logprobs import CausalLMLogps, batch_token_logps
from alignkit.rollout.batch import completion_logps, completion_rows, completion_values
from alignkit.rollout.evaluation import evaluate_policy
from alignkit.rollout.sampling import SamplingSettings, row_seed, sample
from alignkit.train.loop import MetricWindow, check_divisible, step_indices, total_steps
from alignkit.train.metrics import truncate_after
from alignkit.train.optim import parameter_groups
from alignkit.train.run import TrainResult, check_output_dir, open_run

log = logging.getLogger("alignkit")


class ActorCritic(nn.Module):
    """The trainable parts of a run: `policy` (a causal LM, maybe PEFT) and an optional
    `critic` (a `*ForSequenceClassification` value model); one checkpoint holds both."""

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic


class PolicyForward(nn.Module):
    """What the optimizer step calls (wrapped in DDP under torchrun).

    forward(batch) -> {"logps": (B, C) log-probs of the completion tokens at the sampling
    temperature, "values": (B, C) critic values (with a critic), and with a PPO-ptx
    sub-batch `batch["ptx"]`: "ptx_nll": its summed token NLL at temperature 1}.
    """

    def __init__(self, model: ActorCritic, temperature: float):
        super().__init__()
        self.model = model
        self.policy = CausalLMLogps(model.policy, temperature=temperature)
        self.plain = CausalLMLogps(model.policy) if temperature != 1.0 else self.policy
        if model.critic is not None:
            from alignkit.models.reward import TokenValues

            self.values = TokenValues(model.critic)
        else:
            self.values = None

    def forward(self, batch: dict) -> dict:
        out = {"logps": completion_logps(self.policy, batch)}
        if self.values is not None:
            out["values"] = completion_values(self.values, batch)
        if "ptx" in batch:
            logps, mask, _ = batch_token_logps(self.plain, batch["ptx"])
            out["ptx_nll"] = -(logps * mask).sum()
        return out


@dataclass
class RolloutTensors:
    """What the algorithms' `targets` read, for this process's R rows (prompt-major: the
    `group` completions of a prompt are consecutive). mask: (R, C); scores: (R,) after
    any missing-EOS penalty; old, ref: (R, C) log-probs under the sampling policy and
    the reference; values: (R, C) or None; kl: (R, C) per-token KL estimate (0 past the
    mask); rewards: (R,) score - kl_coef x summed KL; kl_coef: the coefficient used."""

    mask: torch.Tensor
    scores: torch.Tensor
    old: torch.Tensor
    ref: torch.Tensor
    values: torch.Tensor | None
    kl: torch.Tensor
    rewards: torch.Tensor
    kl_coef: float


def run_policy_gradient(config: RLConfig, algorithm) -> TrainResult:
    """Train `config.model` with `algorithm` against `config.reward` (see the module
    docstring for one step)."""
    if config.data is None and config.task is None:
        raise ConfigError("give prompts with data=FILE or a built-in task with task=sentiment")
    check_output_dir(config)  # before any expensive preparation
    seed_everything(config.seed)
    output_dir = Path(config.output_dir)

    # ---- set-up: prompts, reward source, models ---------------------------------------
    policy, tokenizer = load_trainable_model(config)
    encoder = ChatEncoder(tokenizer, max_prompt_length=config.max_prompt_length)
    prompts = load_prompts(config, config.data, "train", "rejects.jsonl")
    prompt_ids = [encoder.encode_prompt(p) for p in prompts]
    eval_prompts = load_prompts(config, config.eval_data, "test", "eval_rejects.jsonl")
    judge = load_reward_source(config)
    critic = load_critic(config) if algorithm.uses_critic else None
    model = ActorCritic(policy, critic)
    temperature = config.temperature if config.temperature > 0 else 1.0
    forward = PolicyForward(model, temperature)
    groups = parameter_groups(policy, config.weight_decay, config.learning_rate)
    if critic is not None:
        groups += parameter_groups(critic, config.weight_decay, config.critic_learning_rate)
    ptx = algorithm.ptx_examples(encoder) if hasattr(algorithm, "ptx_examples") else []
    eos_ids, pad_id = encoder.stop_token_ids, pad_token_id(tokenizer)
    steps = total_steps(config, len(prompts))
    fingerprint = {"prompts": len(prompts), "batch_size": config.batch_size, "seed": config.seed}
    kl_controller = (
        AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        if config.kl_target is not None
        else FixedKLController(config.kl_coef)
    )

    with open_run(
        config,
        model,
        total_steps=steps,
        fingerprint=fingerprint,
        forward_module=forward,
        param_groups=groups,
        checkpointed=[m for m in (policy, critic) if m is not None],
    ) as run:
        device, dist, state = run.device, run.dist, run.state
        check_divisible(config.batch_size, 1, dist.world_size)
        if "kl_controller" in run.extra_state:
            kl_controller.load_state_dict(run.extra_state["kl_controller"])
        reference = load_reference(config, device)
        ref_logps = CausalLMLogps(reference or policy, temperature=temperature)

        def reference_context():
            # No reference model: the LoRA policy with its adapter disabled is the reference.
            return policy.disable_adapter() if reference is None else contextlib.nullcontext()

        if dist.is_main:
            truncate_after(output_dir / "samples.jsonl", state.step)

        def step_fn(runner, batch):
            return algorithm.loss(runner(batch), batch)

        last_metrics: dict = {}
        while state.step < steps:
            started = time.perf_counter()
            step = state.step

            # 1-2. this process's prompts of the step, `group` completions each, sampled
            chosen = step_indices(step, config.batch_size, len(prompts), config.seed)
            positions = range(dist.rank, len(chosen), dist.world_size)
            group = algorithm.group
            rows = [(p, k) for p in positions for k in range(group)]
            row_prompt_ids = [prompt_ids[chosen[p]] for p, _ in rows]
            row_prompts = [prompts[chosen[p]] for p, _ in rows]
            step_seed = config.seed * 1_000_003 + step
            rollout = sample(
                model.policy,
                row_prompt_ids,
                sampling_settings(config),
                eos_ids=eos_ids,
                pad_id=pad_id,
                tokenizer=tokenizer,
                row_seeds=[row_seed(step_seed, p * group + k) for p, k in rows],
            )
            texts = [t.strip() for t in rollout.texts(tokenizer)]

            # 3. score
            raw_scores = score_rollout(run, judge, row_prompts, texts)
            scores = raw_scores.clone()
            if config.missing_eos_penalty is not None:
                scores = torch.where(rollout.finished, scores, scores - config.missing_eos_penalty)

            # 4. reference / critic pass
            tensors = completion_rows(rollout, row_prompt_ids, pad_id)
            ref, values = score_completions(
                forward, ref_logps, reference_context, tensors, config.micro_batch, device
            )
            old = rollout.logprobs.float() * tensors["mask"]

            # 5. targets
            mask = tensors["mask"]
            kl = kl_estimate(old, ref, config.kl_estimator) * mask
            coef = kl_controller.value
            rewards = scores - coef * kl.sum(-1)
            per_row, target_metrics = algorithm.targets(
                RolloutTensors(mask, scores, old, ref, values, kl, rewards, coef), dist.sum
            )

            # 6. optimizer steps over minibatches of this process's rows
            window, grad_norms = MetricWindow(), []
            generator = torch.Generator().manual_seed(config.seed * 7_919 + step)
            minibatch = len(rows) // config.num_minibatches
            for epoch in range(config.ppo_epochs):
                order = torch.randperm(len(rows), generator=generator)
                for start in range(0, len(rows), minibatch):
                    members = order[start : start + minibatch]
                    micro = [
                        members[i : i + config.micro_batch]
                        for i in range(0, len(members), config.micro_batch)
                    ]
                    batches = [
                        {
                            **{k: v[which] for k, v in tensors.items()},
                            **{k: v[which] for k, v in per_row.items()},
                        }
                        for which in micro
                    ]
                    if ptx:
                        index = (step * config.ppo_epochs + epoch) * len(rows) + start
                        attach_ptx(batches, ptx, index * dist.world_size, algorithm, dist, device)
                    units = [float(algorithm.units(b)) for b in batches]
                    outcome = run.optimizer_step(batches, step_fn, units)
                    window.add(outcome.loss_sum, outcome.units, outcome.metric_sums, tokens=0)
                    grad_norms.append(outcome.grad_norm)

            # 7. bookkeeping
            totals = dist.sum(
                torch.stack(
                    [
                        raw_scores.sum(),
                        kl.sum(),
                        rewards.sum(),
                        (-old * mask).sum(),
                        mask.sum().float(),
                        rollout.finished.float().sum(),
                        torch.tensor(float(len(rows))),
                    ]
                ).to(device)
            ).tolist()
            score_sum, kl_sum, reward_sum, entropy_sum, tokens, finished, count = totals
            kl_controller.update(kl_sum / count, int(count))
            state.tokens_seen += int(tokens)
            metrics = {
                **window.summary(dist),
                "grad_norm": sum(grad_norms) / len(grad_norms),
                "objective/scores": score_sum / count,
                "objective/kl": kl_sum / count,
                "objective/rlhf_reward": reward_sum / count,
                "policy/entropy": entropy_sum / max(tokens, 1.0),
                "completions/mean_length": tokens / count,
                "completions/eos_rate": finished / count,
                "kl_coef": coef,
                "lr": run.scheduler.get_last_lr()[0],
                **{k: float(v) for k, v in target_metrics.items()},
            }
            metrics.pop("tokens_per_s", None)
            metrics["seconds_per_step"] = time.perf_counter() - started
            done = step + 1
            evaluated = eval_prompts and config.eval_every and done % config.eval_every == 0
            if evaluated:
                metrics.update(
                    evaluate_prompts(
                        run, eval_prompts, judge, tokenizer, reference, reference_context, config
                    )
                )
            if (
                config.sample_every
                and dist.is_main
                and (done % config.sample_every == 0 or done == 1)
            ):
                write_samples(output_dir, done, row_prompts, texts, raw_scores, rollout.finished)
            # an evaluation step is always written: its held-out numbers cost samples
            logged = metrics if done % config.log_every == 0 or done == steps or evaluated else None
            last_metrics = metrics
            run.finish_step(logged, extra={"kl_controller": kl_controller.state_dict()})

        if eval_prompts and not (config.eval_every and state.step % config.eval_every == 0):
            final_eval = evaluate_prompts(
                run, eval_prompts, judge, tokenizer, reference, reference_context, config
            )
            last_metrics = {**last_metrics, **final_eval}
            run.sink.step(state.step, final_eval, advance=False)
        run.save_final(tokenizer, model.policy)
        if critic is not None:
            run.save_final(None, critic, name="critic")
        return run.result(last_metrics)


# ---- the phases' helpers -----------------------------------------------------------


def score_rollout(run, judge, prompts, texts) -> torch.Tensor:
    """(R,) scores of the completions; a failing or non-finite score stops the run before
    the weights are updated, naming the last good checkpoint."""
    step = run.state.step + 1
    try:
        scores = torch.tensor(judge.score_batch(prompts, texts), dtype=torch.float32)
    except AlignkitError as err:  # e.g. a reward function's non-finite value
        run.diverged(f"scoring the rollout of step {step} failed: {err}.")
    bad = torch.nonzero(~torch.isfinite(scores)).flatten().tolist()
    if bad:
        run.diverged(
            f"the reward source returned {scores[bad[0]].item()} at step {step} for a "
            f"completion of {prompts[bad[0]]!r}; stopped before updating the weights."
        )
    return scores


def sampling_settings(config: RLConfig) -> SamplingSettings:
    return SamplingSettings(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        stop_strings=tuple(config.stop),
    )


@torch.no_grad()
def score_completions(forward: PolicyForward, ref_logps, reference_context, rows, micro, device):
    """(R, C) reference log-probs and critic values (None without a critic) of every
    completion, `micro` rows per forward pass."""
    forward.eval()
    ref, values = [], []
    for start in range(0, len(rows["mask"]), micro):
        part = {k: v[start : start + micro].to(device) for k, v in rows.items()}
        if forward.values is not None:
            values.append(completion_values(forward.values, part).float().cpu())
        with reference_context():
            ref.append(completion_logps(ref_logps, part).float().cpu())
    forward.train()
    return torch.cat(ref), (torch.cat(values) if values else None)


def attach_ptx(batches, examples, first: int, algorithm, dist, device) -> None:
    """Give each micro-batch its share of this optimizer step's PPO-ptx examples (as many
    as it has rows, cycling through `examples` from global position `first` + this
    process's offset) and the scale that turns their summed NLL into the step's mean:
    (RL units of the step) / (ptx target tokens of the step), both over all processes."""
    from alignkit.data.collators import PackingCollator

    collate = PackingCollator()
    rows = sum(len(b["mask"]) for b in batches)
    offset = first + dist.rank * rows
    rl_units = ptx_tokens = 0.0
    for batch in batches:
        chosen = [examples[(offset + i) % len(examples)] for i in range(len(batch["mask"]))]
        offset += len(chosen)
        batch["ptx"] = collate(chosen)
        ptx_tokens += float((batch["ptx"]["labels"][:, 1:] != -100).sum())
        rl_units += float(algorithm.units(batch))
    totals = dist.sum(torch.tensor([rl_units, ptx_tokens], device=device)).tolist()
    scale = totals[0] / max(totals[1], 1.0)
    for batch in batches:
        batch["ptx_scale"] = scale


def load_prompts(config: RLConfig, path: str | None, split: str, rejects: str) -> list:
    """Prompt records' `prompt` values from `path`, else the task's `split` prompts
    (evaluation uses the task's held-out prompts only when `eval_every` asks for it)."""
    if path is not None:
        loaded = load_records(
            path,
            Kind.PROMPT,
            skip_invalid=config.skip_invalid,
            rejects_path=Path(config.output_dir) / rejects,
        )
        return [record["prompt"] for record in loaded.records]
    if config.task is None or (split == "test" and not config.eval_every):
        return []
    from alignkit.tasks import get_task

    return list(get_task(config.task).prompts(split))


def reward_spec(config: RLConfig) -> str:
    if config.reward is not None:
        return config.reward
    if config.task is not None:
        return f"task:{config.task}"
    raise ConfigError("reward is required: a reward-model folder, module:function or task:NAME")


def load_reward_source(config: RLConfig):
    """The judge that scores completions; with `reward_risk_aversion` k > 0 an ensemble
    reward model scoring `mean - k * std` over its heads (`RewardModelJudge`)."""
    from alignkit.feedback.function import load_judge

    spec, options = reward_spec(config), {"device": str(select_device(config.device))}
    if config.reward_risk_aversion:
        if not _is_reward_model(spec):
            raise ConfigError(
                f"reward_risk_aversion={config.reward_risk_aversion} needs reward= an ensemble "
                f"reward-model folder (alignkit rm num_heads>1); {spec} is not a reward model"
            )
        options["risk_aversion"] = config.reward_risk_aversion
    return load_judge(spec, **options)


def _is_reward_model(spec: str) -> bool:
    from alignkit.models.loading import is_reward_model_folder, resolve_model_path

    return not spec.startswith("task:") and (
        Path(spec).exists() and is_reward_model_folder(resolve_model_path(spec))
    )


def load_critic(config: RLConfig):
    """The value model: from the reward model (`critic=reward`, the default when the
    reward is a model folder) or from the policy with a fresh head that starts at V = 0."""
    from alignkit.models.reward import load_reward_model, score_head

    choice, spec = config.critic, reward_spec(config)
    reward_is_model = _is_reward_model(spec)
    if choice == "auto":
        choice = "reward" if reward_is_model else "policy"
    if choice == "reward":
        if not reward_is_model:
            raise ConfigError("critic=reward needs reward= to be a reward-model folder")
        log.info("critic: initialised from the reward model %s", spec)
        critic = load_reward_model(spec, num_heads=1, device="cpu")
        return train_top_layers(critic, config.trainable_layers)
    log.info("critic: initialised from the policy %s with a fresh value head", config.model)
    critic = load_reward_model(config.model, num_heads=1, seed=config.seed, device="cpu")
    with torch.no_grad():  # start from V = 0 rather than a random unit-scale value
        score_head(critic).weight.zero_()
    return train_top_layers(critic, config.trainable_layers)


def load_reference(config: RLConfig, device):
    """The frozen reference model, or None: a LoRA policy without `ref_model` serves as
    its own reference with the adapter disabled (no second copy of the weights)."""
    if config.lora is not None and config.ref_model is None:
        return None
    from alignkit.models.loading import load_model

    reference = load_model(config.ref_model or config.model, device=str(device), dtype="float32")
    reference.requires_grad_(False)
    return reference.eval()


def evaluate_prompts(
    run, prompts, judge, tokenizer, reference, reference_context, config, batch_size=None
) -> dict:
    """Held-out `eval/objective/scores` and `eval/objective/kl` (k1, per completion) from
    one sampled completion per prompt, each process taking its shard, `batch_size`
    prompts sampled at once (default `config.batch_size`). The KL is to `reference` (a
    frozen model), or without one to the policy inside `reference_context()` (LoRA with
    its adapter disabled)."""
    settings = SamplingSettings(
        **{**vars(sampling_settings(config)), "seed": config.seed * 1_000_003 + 999_983}
    )
    dist = run.dist
    shard = list(range(dist.rank, len(prompts), dist.world_size))
    policy = run.model.policy
    was_training = policy.training
    result = evaluate_policy(
        policy,
        tokenizer,
        [prompts[i] for i in shard],
        judge,
        settings,
        reference=reference,  # when given, evaluate_policy ignores reference_context
        reference_context=reference_context,
        batch_size=batch_size or config.batch_size,
        row_ids=shard,
    )
    policy.train(was_training)
    pieces = dist.gather_objects([(s["score"], s["kl"]) for s in result.samples])
    pairs = [pair for piece in pieces for pair in piece]
    return {
        "eval/objective/scores": sum(s for s, _ in pairs) / len(pairs),
        "eval/objective/kl": sum(k for _, k in pairs) / len(pairs),
    }


def write_samples(output_dir: Path, step: int, prompts, texts, scores, finished, limit: int = 8):
    with open(output_dir / "samples.jsonl", "a", encoding="utf-8") as out:
        for i in range(min(limit, len(texts))):
            record = {
                "step": step,
                "prompt": prompts[i],
                "completion": texts[i],
                "score": float(scores[i]),
                "finished": bool(finished[i]),
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")

"""Reward-model training (`alignkit rm`): Bradley-Terry on pairs and K-way rankings.

Each record is one unit of the loss: a preference pair, or a ranking of K responses
expanded into its C(K, 2) comparisons weighted 1 / C(K, 2) (`alignkit.losses.reward`).
All responses of a micro-batch's records go through one forward pass (packed,
padding-free, by default) and are scored at their last token, or (`pooling=mean`) from
the mean of their response tokens' states.

Ensembles (`num_heads > 1`) share the backbone; head k starts from its own random prior
and weights each training record by its own Poisson(1) draw (the online bootstrap of
Osband et al. 2016), so heads agree where data pins them down and disagree elsewhere.

After training, `final/` is a `*ForSequenceClassification` folder with per-head offsets
that give the reference set (`norm_data`) mean reward 0, and the run's last metrics
include accuracy, margin, reward mean/std and the expected calibration error of
sigma(r_c - r_r) over the held-out (or, without one, the training) comparisons.
"""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path

import torch

from alignkit.config import RewardConfig
from alignkit.data.records import Kind
from alignkit.data.templating import ChatEncoder
from alignkit.errors import AlignkitError
from alignkit.losses.reward import bradley_terry_loss, ranking_pairs
from alignkit.methods.common import build_collator, load_encoded, seed_everything
from alignkit.models.loading import load_tokenizer
from alignkit.models.lora import apply_lora
from alignkit.models.partial import train_top_layers
from alignkit.models.reward import (
    OFFSET_KEY,
    POOLING_KEY,
    RewardScores,
    load_reward_model,
    response_mask,
    reward_pad_id,
    reward_pooling,
    score_positions,
    score_sequences,
)
from alignkit.ops.calibration import expected_calibration_error
from alignkit.train.loop import train
from alignkit.train.run import TrainResult, check_output_dir, save_final

log = logging.getLogger("alignkit")

COMPARISON_KINDS = (Kind.PREFERENCE, Kind.RANKING)


def encode_comparisons(encoder: ChatEncoder, offset: int):
    """The per-record encoder for `load_encoded`: a record -> one group of responses and
    the comparisons between them (record index counts from `offset`)."""
    counter = {"next": offset}

    def encode(record: dict) -> dict | None:
        if "responses" in record:
            responses, pairs = record["responses"], ranking_pairs(record["ranking"])
        else:
            responses, pairs = [record["chosen"], record["rejected"]], [(0, 1, 1.0)]
        fitted = encoder.encode_responses(record, responses)
        if fitted is None:
            return None
        index = counter["next"]
        counter["next"] += 1
        p_chosen = record.get("p_chosen")
        return {
            "sequences": [c.sequence().features() for c in fitted],
            "pairs": pairs,
            "margin": float(record.get("margin") or 0.0),
            "p_chosen": 1.0 if p_chosen is None else float(p_chosen),
            "index": index,
        }

    return encode


class ComparisonCollator:
    """Groups -> one batch of all their sequences plus the comparisons between them.

    Adds, per comparison (P,): `better`, `worse` (sequence rows in this batch),
    `pair_weight`, `margin`, `p_chosen`, `record_index`; and `records` (R,).
    """

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, groups: list[dict]) -> dict:
        sequences: list[dict] = []
        columns: dict[str, list] = {
            k: [] for k in ("better", "worse", "pair_weight", "margin", "p_chosen", "record_index")
        }
        for group in groups:
            start = len(sequences)
            sequences.extend(group["sequences"])
            for better, worse, weight in group["pairs"]:
                columns["better"].append(start + better)
                columns["worse"].append(start + worse)
                columns["pair_weight"].append(weight)
                columns["margin"].append(group["margin"])
                columns["p_chosen"].append(group["p_chosen"])
                columns["record_index"].append(group["index"])
        batch = self.inner(sequences)
        for key, values in columns.items():
            dtype = torch.long if key in ("better", "worse", "record_index") else torch.float32
            batch[key] = torch.tensor(values, dtype=dtype)
        batch["records"] = torch.tensor([g["index"] for g in groups], dtype=torch.long)
        return batch


def count_records(batch: dict) -> int:
    return len(batch["records"])


def batch_rewards(module, batch: dict) -> torch.Tensor:
    """(S, K) rewards of every sequence in a collated batch."""
    packed = "cu_seqlens" in batch
    return module(
        batch["input_ids"],
        score_positions(batch),
        position_ids=batch["position_ids"] if packed else None,
        cu_seqlens=batch["cu_seqlens"] if packed else None,
        response_mask=response_mask(batch),
    )


def rm_step(
    module, batch: dict, *, config: RewardConfig, bootstrap: torch.Tensor | None
) -> tuple[torch.Tensor, dict]:
    """Summed, weighted Bradley-Terry loss of one micro-batch (the loop divides by the
    number of records in the optimizer step). `bootstrap`: (K, records) weights or None."""
    rewards = batch_rewards(module, batch)  # (S, K)
    chosen, rejected = rewards[batch["better"]], rewards[batch["worse"]]  # (P, K)
    soft = bool((batch["p_chosen"] < 1).any())
    losses, _ = bradley_terry_loss(
        chosen,
        rejected,
        margin=batch["margin"],
        p_chosen=batch["p_chosen"] if soft else None,
        center_coef=config.center_coef,
    )
    weight = batch["pair_weight"][:, None]
    if bootstrap is not None:
        weight = weight * bootstrap.to(rewards.device)[:, batch["record_index"]].T
    loss_sum = (losses * weight).sum() / rewards.shape[1]
    with torch.no_grad():
        records = float(len(batch["records"]))
        gap = (chosen - rejected).mean(-1)
        pair_weight = batch["pair_weight"]
        mean_rewards = rewards.mean(-1)
        metrics = {
            "accuracy": (pair_weight * (gap > 0).float()).sum() / records,
            "margin": (pair_weight * gap).sum() / records,
            "rewards/mean": mean_rewards.mean(),
            "rewards/std": mean_rewards.std(unbiased=False),
        }
        if rewards.shape[1] > 1:
            metrics["rewards/ensemble_std"] = rewards.std(-1).mean()
    return loss_sum, metrics


def bootstrap_weights(num_heads: int, num_train: int, num_total: int, seed: int) -> torch.Tensor:
    """(K, num_total) Poisson(1) weights for training records, 1 for held-out ones."""
    generator = torch.Generator().manual_seed(seed + 7919)
    weights = torch.ones(num_heads, num_total)
    weights[:, :num_train] = torch.poisson(torch.ones(num_heads, num_train), generator=generator)
    return weights


def comparison_summary(
    rewards: torch.Tensor, groups: list[dict], offset: torch.Tensor, prefix: str
) -> dict[str, float]:
    """Accuracy, margin, reward mean/std and ECE over all comparisons of `groups`.

    rewards: (sum of group sizes, K) raw rewards in group order; offset: (K,).
    """
    shifted = (rewards - offset).mean(-1)  # ensemble mean
    gaps, weights, labels = [], [], []
    start = 0
    for group in groups:
        for better, worse, weight in group["pairs"]:
            gaps.append(float(shifted[start + better] - shifted[start + worse]))
            weights.append(weight)
            labels.append(group["p_chosen"])
        start += len(group["sequences"])
    gap, weight = torch.tensor(gaps), torch.tensor(weights)
    total = weight.sum()
    out = {
        f"{prefix}/accuracy": float((weight * (gap > 0)).sum() / total),
        f"{prefix}/margin": float((weight * gap).sum() / total),
        f"{prefix}/rewards/mean": float(shifted.mean()),
        f"{prefix}/rewards/std": float(shifted.std(unbiased=False)),
        f"{prefix}/ece": expected_calibration_error(torch.sigmoid(gap), torch.tensor(labels)),
    }
    if rewards.shape[1] > 1:
        out[f"{prefix}/rewards/ensemble_std"] = float(rewards.std(-1).mean())
    return out


def _flat_sequences(groups: list[dict]) -> list[dict]:
    return [seq for group in groups for seq in group["sequences"]]


def make_finalize(config: RewardConfig, norm_groups, summary_groups, summary_prefix, pad_id):
    """What `train` calls instead of `save_final`: merge LoRA, centre the rewards on the
    reference set, measure the final comparisons, save a `*ForSequenceClassification`
    folder."""

    def finalize(model, tokenizer, final_dir: Path) -> dict[str, float]:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        device = next(model.parameters()).device
        scores = RewardScores(model)
        batch = max(config.micro_batch, 8)
        norm = score_sequences(
            scores, _flat_sequences(norm_groups), pad_id=pad_id, batch_size=batch, device=device
        )
        offset = norm.mean(0)  # (K,)
        summary_rewards = (
            norm  # the common case: the held-out set is also the reference set
            if summary_groups is norm_groups
            else score_sequences(
                scores,
                _flat_sequences(summary_groups),
                pad_id=pad_id,
                batch_size=batch,
                device=device,
            )
        )
        metrics = comparison_summary(summary_rewards, summary_groups, offset, summary_prefix)
        model.config.__setattr__(OFFSET_KEY, [float(x) for x in offset])
        save_final(model, tokenizer, final_dir)
        log.info(
            "reward offsets %s (reference set: %d responses); %s",
            [round(float(x), 4) for x in offset],
            norm.shape[0],
            ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
        )
        return metrics

    return finalize


def run_rm(config: RewardConfig) -> TrainResult:
    if config.data is None:
        from alignkit.config import ConfigError

        raise ConfigError("data is required: data=path/to/preferences.jsonl")
    check_output_dir(config)  # before any expensive preparation
    seed_everything(config.seed)
    tokenizer = copy.deepcopy(load_tokenizer(config.model))
    model = load_reward_model(
        config.model, num_heads=config.num_heads, seed=config.seed, device="cpu"
    )
    encoder = ChatEncoder(
        tokenizer,
        max_length=config.max_length,
        max_prompt_length=config.max_prompt_length,
        keep_trailing_context=True,
    )
    pad_id = _configure_pad(model, tokenizer, encoder)
    _configure_pooling(model, config)
    train_top_layers(model, config.trainable_layers)
    if config.lora is not None:
        model = apply_lora(model, config.lora, task_type="SEQ_CLS")

    def load(path, offset, rejects_name):
        return load_encoded(
            path,
            COMPARISON_KINDS,
            encode_comparisons(encoder, offset),
            config,
            rejects_name=rejects_name,
            encoder=encoder,
        )

    groups = load(config.data, 0, "rejects.jsonl")
    eval_groups = (
        load(config.eval_data, len(groups), "eval_rejects.jsonl") if config.eval_data else None
    )
    if config.norm_data:
        norm_groups = load(config.norm_data, 0, "norm_rejects.jsonl")
    else:
        norm_groups = eval_groups or groups
    if len(norm_groups) > config.norm_samples:
        norm_groups = norm_groups[: config.norm_samples]
    bootstrap = None
    if config.num_heads > 1 and config.bootstrap:
        total = len(groups) + len(eval_groups or [])
        bootstrap = bootstrap_weights(config.num_heads, len(groups), total, config.seed)
    step = functools.partial(rm_step, config=config, bootstrap=bootstrap)
    finalize = make_finalize(
        config,
        norm_groups,
        eval_groups or groups,
        "eval" if eval_groups else "train",
        pad_id,
    )
    return train(
        model,
        groups,
        ComparisonCollator(build_collator(tokenizer, config.packing)),
        step,
        config,
        tokenizer=tokenizer,
        forward_module=RewardScores(model),
        eval_examples=eval_groups,
        units_fn=count_records,
        finalize=finalize,
        max_tokens=config.micro_batch_tokens,
    )


def _configure_pooling(model, config: RewardConfig) -> None:
    """Record the read-out in the model's config (saved with it, read by every scorer);
    a reward model trained further keeps the read-out it was trained with."""
    if getattr(model.config, POOLING_KEY, None) is not None and reward_pooling(model) != (
        config.pooling
    ):
        raise AlignkitError(
            f"{config.model} is a reward model with pooling={reward_pooling(model)}; "
            f"training it further with pooling={config.pooling} would change what its "
            f"head reads. Set pooling={reward_pooling(model)}, or start from the backbone"
        )
    model.config.__setattr__(POOLING_KEY, config.pooling)


def _configure_pad(model, tokenizer, encoder: ChatEncoder) -> int:
    """Give the saved model and tokenizer a pad id that never ends a scored sequence."""
    pad_id = reward_pad_id(tokenizer, encoder.stop_token_ids)
    if pad_id is None:
        raise AlignkitError(
            "the tokenizer has no special token other than its end-of-sequence token(s) to use "
            "as pad; transformers would then read rewards at the wrong position"
        )
    if pad_id != tokenizer.pad_token_id:
        log.info(
            "reward model pad token: %r (the tokenizer's pad %r ends scored sequences)",
            tokenizer.convert_ids_to_tokens(pad_id),
            tokenizer.pad_token,
        )
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    model.config.pad_token_id = pad_id
    return pad_id

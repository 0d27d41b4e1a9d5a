"""KTO (Ethayarajh et al. 2024) on unpaired data: each completion is labelled desirable
or not. Preference pairs also work: each pair becomes one desirable (chosen) and one
undesirable (rejected) example.

The KL reference point z0 is estimated from mismatched prompt/completion pairs: example
i is paired once, at data preparation, with the completion of example d(i) for a fixed
derangement d, so the mismatched sequences' reference log-probs are precomputed and
cached like the matched ones. Each micro-batch estimates z0 as the mean of
(policy - ref) over its mismatched sequences, without gradient (the loss detaches it).
"""

from __future__ import annotations

import functools
import logging
import random
from pathlib import Path

import torch

from alignkit.config import KTOConfig
from alignkit.data.loading import load_records
from alignkit.data.records import Kind
from alignkit.data.templating import ChatEncoder
from alignkit.errors import DataError
from alignkit.losses.preference import kto_loss
from alignkit.methods.common import build_collator, prepare
from alignkit.methods.reference import compute_sequence_stats, reference_table
from alignkit.ops.logprobs import CausalLMLogps, sequence_logps, sequence_stats
from alignkit.train.loop import train
from alignkit.train.run import TrainResult, save_final

log = logging.getLogger("alignkit")

PAIR_KEY = "_pair"  # set on records split from a preference pair: the pair's number
# KTO's implicit reward is on whole-sequence log-probs (Ethayarajh et al. 2024, Eq. 8)
REDUCTION = "sum"


def unpaired_records(path: str, config: KTOConfig, rejects_name: str) -> list[dict]:
    """Unpaired records as they are; preference records split into two."""
    loaded = load_records(
        path,
        None,
        skip_invalid=config.skip_invalid,
        rejects_path=Path(config.output_dir) / rejects_name,
    )
    if loaded.kind == Kind.UNPAIRED:
        records = loaded.records
    elif loaded.kind == Kind.PREFERENCE:
        records = [
            {"prompt": r["prompt"], "completion": r[side], "label": side == "chosen", PAIR_KEY: i}
            for i, r in enumerate(loaded.records)
            for side in ("chosen", "rejected")
        ]
    else:
        raise DataError(
            f"{path}: KTO needs unpaired records (prompt, completion, label) or preference pairs, "
            f"found {loaded.kind.value} records"
        )
    if len({isinstance(r["prompt"], str) for r in records}) > 1:
        raise DataError(
            f"{path}: KTO pairs each prompt with another record's completion to estimate the KL "
            f"term, so all records must use one text form (all strings or all message lists)"
        )
    return records


def encode_examples(
    records: list[dict], encoder: ChatEncoder, seed: int, offset: int
) -> list[dict]:
    """Each example: the matched sequence, a mismatched one (its prompt + another
    example's completion, for the KL estimate), the label and its reference-table row.
    Records that cannot fit `max_length` are dropped and counted in `encoder.report`."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    partner = {
        order[k]: order[(k + 1) % len(order)] for k in range(len(order))
    }  # a derangement when n > 1
    examples = []
    for i, record in enumerate(records):
        matched = encoder.encode_unpaired(record)
        mismatched = encoder.encode_unpaired(
            {**record, "completion": records[partner[i]]["completion"]}
        )
        if matched is None or mismatched is None:
            continue
        examples.append(
            {
                "sequence": matched[0].sequence().features(),
                "kl_sequence": mismatched[0].sequence().features(),
                "desirable": matched[1],
                "index": offset + len(examples),
                "pair": record.get(PAIR_KEY),
            }
        )
    if encoder.report.dropped:
        log.warning("KTO: %s", encoder.report.summary())
    return examples


class KTOCollator:
    """Examples -> one batch of 2B sequences: matched ones first, then mismatched."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.inner([e["sequence"] for e in examples] + [e["kl_sequence"] for e in examples])
        batch["example_index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
        batch["desirable"] = torch.tensor([e["desirable"] for e in examples], dtype=torch.bool)
        return batch


def kto_step(
    module, batch: dict, *, config: KTOConfig, reference: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    """Summed KTO loss of one micro-batch of B examples (2B sequences: the matched ones,
    then the mismatched ones) and its metrics.

    `reference` is the (examples, 2, 2) table of [matched, mismatched] x [summed log-prob,
    target count], reduced by the same `sequence_logps` as the policy. The KL estimate z0
    is the batch mean of policy - reference over the mismatched sequences.
    """
    sums, counts = sequence_stats(module, batch)  # (2B,) each
    policy = sequence_logps(sums, counts, REDUCTION)
    n = len(batch["example_index"])
    # (B, 2, 2); .to is a no-op once the table is on the device
    table = reference.to(sums.device)[batch["example_index"]]
    ref = sequence_logps(table[..., 0], table[..., 1], REDUCTION)  # (B, 2): matched, mismatched
    kl = (policy[n:] - ref[:, 1]).detach().mean()
    losses, metrics = kto_loss(
        policy[:n],
        ref[:, 0],
        batch["desirable"],
        kl=kl,
        beta=config.beta,
        desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight,
    )
    return losses.sum(), metrics


def count_examples(batch: dict) -> int:
    return len(batch["example_index"])


def run_kto(config: KTOConfig) -> TrainResult:
    model, tokenizer = prepare(config)
    encoder = ChatEncoder(
        tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length
    )
    examples = encode_examples(
        unpaired_records(config.data, config, "rejects.jsonl"), encoder, config.seed, 0
    )
    eval_examples = None
    if config.eval_data:
        eval_examples = encode_examples(
            unpaired_records(config.eval_data, config, "eval_rejects.jsonl"),
            encoder,
            config.seed,
            len(examples),
        )
    log.info(
        "KTO: %d examples (%d desirable)", len(examples), sum(e["desirable"] for e in examples)
    )
    inner = build_collator(tokenizer, config.packing)
    everything = examples + (eval_examples or [])
    sequences = [seq for e in everything for seq in (e["sequence"], e["kl_sequence"])]
    stats = reference_table(model, sequences, inner, config)  # (2N, 2)
    reference = stats.reshape(len(everything), 2, 2)
    step = functools.partial(kto_step, config=config, reference=reference)
    finalize = make_finalize(config, eval_examples or [], reference, inner)
    return train(
        model,
        examples,
        KTOCollator(inner),
        step,
        config,
        tokenizer=tokenizer,
        forward_module=CausalLMLogps(model),
        eval_examples=eval_examples,
        units_fn=count_examples,
        finalize=finalize,
    )


def complete_pairs(examples: list[dict]) -> list[tuple[int, int]]:
    """(chosen row, rejected row) for every pair whose two halves both survived encoding."""
    halves: dict[int, dict[bool, int]] = {}
    for row, example in enumerate(examples):
        if example.get("pair") is not None:
            halves.setdefault(example["pair"], {})[example["desirable"]] = row
    return [(h[True], h[False]) for h in halves.values() if len(h) == 2]


def make_finalize(config: KTOConfig, eval_examples: list[dict], reference, collate):
    """Save `final/`; when the held-out data came as pairs, also measure the preference
    accuracy of the implicit reward beta * (policy - ref) on them: the number DPO
    reports, which KTO's unpaired batches cannot give during training."""

    def finalize(model, tokenizer, final_dir) -> dict[str, float]:
        metrics = {}
        pairs = complete_pairs(eval_examples)
        if pairs:
            device = next(model.parameters()).device
            stats = compute_sequence_stats(
                model, [e["sequence"] for e in eval_examples], collate, config.micro_batch, device
            )
            policy = sequence_logps(stats[:, 0], stats[:, 1], REDUCTION)
            matched = reference[[e["index"] for e in eval_examples], 0]  # (E, 2)
            ref = sequence_logps(matched[:, 0], matched[:, 1], REDUCTION)
            rewards = config.beta * (policy - ref)
            chosen = rewards[[c for c, _ in pairs]]
            rejected = rewards[[r for _, r in pairs]]
            metrics = {
                "eval/rewards/accuracies": float((chosen > rejected).float().mean()),
                "eval/rewards/margins": float((chosen - rejected).mean()),
            }
        save_final(model, tokenizer, final_dir, merge_lora=config.merge_lora)
        return metrics

    return finalize

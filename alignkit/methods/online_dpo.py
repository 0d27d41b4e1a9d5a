"""Online and iterative DPO with a labeller, a query budget and active pair selection (SEA).

A rollout phase around the shared optimizer step (DESIGN principle 3), like RL
(`alignkit.methods.rl`, whose helpers it uses). One run step is one round, read top to
bottom in `run_online_dpo`:

1. **prompts**: `batch_size` prompts fixed by (seed, round); the run stops before the
   round if the query budget cannot pay for one more prompt;
2. **sample** K = `samples_per_prompt` responses per prompt from the current policy, each
   with its own seed (seed, round, row): a response is a function of the weights, its
   prompt and its seed, so a resumed run samples exactly what the killed one did;
3. **features and member scores** (rules and options that use the epistemic reward model,
   `alignkit.feedback.epistemic`): the starting model's last hidden states over each
   response (their mean, or the last token's: `ensemble.pooling`), frozen for the whole
   run, scored by every ensemble member;
4. **select** one pair per prompt with `selection` (`alignkit.feedback.selection`);
   `best_worst` first has the labeller score all K responses;
5. **label** each pair, prompt by prompt, through the run's label store
   (`alignkit.feedback.query_book`): a score labeller is asked once per response it
   scores (the higher score wins; a tie teaches nothing and is not trained on), a pairwise
   judge once per pair (its probability is a soft label). Every question and answer is
   stored before it is used; a question already answered is read from the store and never
   paid twice. With mixed preference learning, after `mixed_burn_in` rounds the ensemble
   labels up to `mixed_fraction` of the pairs (those it is surest about) without a query.
   When the budget cannot pay for the next prompt, the round ends there and the run stops
   after it;
6. **update the epistemic model** with the round's new labels (its replay buffer holds
   them all);
7. **reference pass** without gradients over the pairs' responses: their KL to the
   reference (`objective/kl`, k1 summed over each response at the sampling temperature)
   and the (pairs, 2, 2) table of summed log-probs and target counts that the loss
   reads, as offline DPO's cached table;
8. **optimizer steps**: `updates_per_round` steps of the registry's preference loss
   (`loss=`: dpo, ipo, simpo...) over the round's labelled pairs, each `Run.optimizer_step`
   over micro-batches of `micro_batch_size` pairs with `online_pair_step`: offline DPO's
   per-pair losses, plus the KL penalty when `kl_coef` > 0;
9. metrics, samples, held-out evaluation under the oracle (`eval_every`) and checkpoints.
   A checkpoint holds the policy, the optimizer, the ensemble (weights, optimizer,
   buffer, generator) and the store's position (`queries/used`), so `resume=auto`
   continues exactly and reads the answers a killed run paid for from the store.

The reference is the starting model (LoRA: the adapter disabled) or `ref_model`; with
`ref_update_every=N` it becomes a copy of the current policy every N rounds (iterative
DPO), each copy's weights kept in `reference/step-N.safetensors` for resume. Held-out KL
(`eval/objective/kl`) is always to the starting model.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from alignkit.config import ConfigError, OnlineDPOConfig
from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.errors import AlignkitError
from alignkit.feedback.function import load_judge
from alignkit.feedback.judge import JudgeFailure
from alignkit.feedback.label_store import STORE_NAME
from alignkit.feedback.query_book import QueryBook, QueryFailed, query_key
from alignkit.feedback.selection import REQUIRES
from alignkit.losses.registry import PREFERENCE_LOSSES
from alignkit.methods.common import build_collator, load_trainable_model, seed_everything
from alignkit.methods.dpo import PairCollator, pair_losses
from alignkit.methods.rl import (
    ActorCritic,
    PolicyForward,
    evaluate_prompts,
    load_prompts,
    load_reference,
    reward_spec,
    sampling_settings,
)
from alignkit.models.device import select_device
from alignkit.ops.attention import uses_packed_attention
from alignkit.ops.logprobs import CausalLMLogps, sequence_stats
from alignkit.rollout.batch import completion_rows
from alignkit.rollout.sampling import row_seed, sample
from alignkit.train.checkpoint import list_checkpoints, load_extra, trainable_state
from alignkit.train.loop import MetricWindow, step_indices, total_steps
from alignkit.train.metrics import truncate_after
from alignkit.train.optim import parameter_groups
from alignkit.train.run import TrainResult, check_output_dir, open_run

log = logging.getLogger("alignkit")

REFERENCE_DIR = "reference"
ENSEMBLE_FILE = "ensemble.pt"  # EpistemicRewardModel.state_dict() at the end


# ---- the labeller ------------------------------------------------------------------


class Labeller:
    """The labeller as the loop asks it: `score` one response (score labellers: reward
    functions, task oracles, reward models; a pairwise judge's rating) or `prefer` one of
    two (pairwise judges). One method call is one labeller call. A failed answer raises
    `QueryFailed` with its reason; it is recorded and never becomes a label."""

    def __init__(self, judge, kind: str, name: str):
        self.judge, self.kind, self.name = judge, kind, name

    def score(self, prompt, response: str) -> dict:
        try:
            value = float(self.judge.score_batch([prompt], [response])[0])
        except JudgeFailure as err:
            raise QueryFailed(err.reason) from None
        except AlignkitError as err:  # e.g. a reward function's non-finite value
            raise QueryFailed(f"malformed: {err}") from None
        if not math.isfinite(value):
            raise QueryFailed(f"malformed: score {value}")
        return {"score": value}

    def prefer(self, prompt, first: str, second: str) -> dict:
        judgement = self.judge.judge_pairs([prompt], [first], [second])[0]
        if not judgement.ok:
            raise QueryFailed(judgement.failure or "malformed")
        return {"p_first": float(judgement.p_a)}


def load_labeller(config: OnlineDPOConfig, device) -> Labeller:
    if config.judge is not None:
        options = {"device": str(device)}
        if config.judge_model is not None:
            options["judge_model"] = config.judge_model
        return Labeller(load_judge(config.judge, **options), "pair", config.judge)
    spec = reward_spec(config)
    return Labeller(load_judge(spec, device=str(device)), "score", spec)


def load_oracle(config: OnlineDPOConfig, device):
    """The held-out scorer: `oracle`, else the task's oracle, else None (no eval scores)."""
    if config.oracle is not None:
        return load_judge(config.oracle, device=str(device))
    if config.task is not None:
        return load_judge(f"task:{config.task}")
    return None


# ---- one round's labelling -----------------------------------------------------------


@dataclass
class RoundLabels:
    """What the labelling of one round produced. prompts: how many of the round's
    prompts were handled (fewer when the budget ran out); pairs: (prompt, chosen,
    rejected, p_chosen, source) per trained pair, source "labeller" or "ensemble";
    new_labels: (prompt, i, j, p_i) labeller answers for the epistemic model; scores:
    labeller scores of the responses scored this round; ties: pairs the labeller could
    not tell apart; failed: questions with no usable answer; spent: whether the budget
    stopped the round."""

    prompts: int
    pairs: list[tuple[int, int, int, float, str]] = field(default_factory=list)
    new_labels: list[tuple[int, int, int, float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    ties: int = 0
    failed: int = 0
    spent: bool = False


def score_queries(book: QueryBook, labeller: Labeller, prompt, texts: list[str]):
    """Scores of `texts` (one prompt's responses), or None when the budget cannot pay for
    all of them. A failed score is None."""
    keys = [query_key("score", [prompt, text]) for text in texts]
    if not book.affordable(keys):
        return None
    scores, failed = [], 0
    for key, text in zip(keys, texts, strict=True):
        outcome = book.answer(
            key,
            {"prompt": prompt, "response": text},
            functools.partial(labeller.score, prompt, text),
            name="score",
        )
        scores.append(None if outcome.answer is None else outcome.answer["score"])
        failed += outcome.answer is None
    return scores, failed


def prefer_query(book: QueryBook, labeller: Labeller, prompt, a: str, b: str):
    """P(a better than b) from the pairwise judge, asked once per unordered pair (the
    texts in sorted order); None when the budget cannot pay for it, or ("failed",) when
    the judge gave no answer."""
    first, second = sorted((a, b))
    key = query_key("pair", [prompt, first, second])
    if not book.affordable([key]):
        return None
    outcome = book.answer(
        key,
        {"prompt": prompt, "first": first, "second": second},
        functools.partial(labeller.prefer, prompt, first, second),
        name="judge",
    )
    if outcome.answer is None:
        return ("failed",)
    p_first = outcome.answer["p_first"]
    return (p_first if a == first else 1.0 - p_first,)


def label_round(
    book: QueryBook,
    labeller: Labeller,
    prompts: list,
    texts: list[list[str]],
    pairs: list[tuple[int, int]],
    ensemble_choice: dict[int, float],
    first_scores: list[list[float | None]] | None,
    hard_smoothing: float,
) -> RoundLabels:
    """Label one pair per prompt, in prompt order, until the budget runs out.

    `ensemble_choice`: prompt -> P(i better than j) for the pairs the ensemble labels
    (mixed preference learning). `first_scores`: best_worst's labeller scores of all K
    responses (the pair's label comes from them, with no further query)."""
    result = RoundLabels(prompts=len(pairs))
    for p, (i, j) in enumerate(pairs):
        prompt, a, b = prompts[p], texts[p][i], texts[p][j]
        if p in ensemble_choice:
            result.pairs.append(_oriented(p, i, j, ensemble_choice[p], "ensemble"))
            continue
        if a == b:  # the same response twice: no question to ask
            result.ties += 1
            continue
        if first_scores is not None:
            s_a, s_b = first_scores[p][i], first_scores[p][j]
            p_a = None if s_a is None or s_b is None else _hard(s_a, s_b)
        elif labeller.kind == "score":
            answered = score_queries(book, labeller, prompt, [a, b])
            if answered is None:
                result.prompts, result.spent = p, True
                break
            (s_a, s_b), failed = answered
            result.failed += failed
            result.scores += [s for s in (s_a, s_b) if s is not None]
            p_a = None if failed else _hard(s_a, s_b)
        else:
            answered = prefer_query(book, labeller, prompt, a, b)
            if answered is None:
                result.prompts, result.spent = p, True
                break
            if answered == ("failed",):
                result.failed += 1
                continue
            p_a = answered[0]
        if p_a is None:
            continue
        result.new_labels.append((p, i, j, p_a))
        if p_a == 0.5:
            result.ties += 1
            continue
        pair = _oriented(p, i, j, p_a, "labeller")
        if labeller.kind == "score" or first_scores is not None:
            pair = (*pair[:3], 1.0 - hard_smoothing, pair[4])  # hard label (cdpo: smoothed)
        result.pairs.append(pair)
    return result


def _hard(s_a: float, s_b: float) -> float:
    return 1.0 if s_a > s_b else 0.0 if s_a < s_b else 0.5


def _oriented(p: int, i: int, j: int, p_i: float, source: str):
    """(prompt, chosen, rejected, p_chosen, source) from P(i better than j)."""
    return (p, i, j, p_i, source) if p_i >= 0.5 else (p, j, i, 1.0 - p_i, source)


# ---- the run ------------------------------------------------------------------------


def run_online_dpo(config: OnlineDPOConfig) -> TrainResult:
    """Train `config.model` online against its labeller (see the module docstring)."""
    if config.data is None and config.task is None:
        raise ConfigError("give prompts with data=FILE or a built-in task with task=sentiment")
    removed = check_output_dir(config)  # before any expensive preparation
    output_dir = Path(config.output_dir)
    if config.overwrite and removed:
        # overwrite starts a new run: its labels are paid afresh. (A run killed before its
        # first checkpoint and restarted keeps its store: its answers are replayed.)
        old_files = (
            STORE_NAME,
            f"{STORE_NAME}-wal",
            f"{STORE_NAME}-shm",
            REFERENCE_DIR,
            ENSEMBLE_FILE,
        )
        for name in old_files:
            path = output_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    seed_everything(config.seed)

    # ---- set-up: prompts, labeller, models -------------------------------------------
    policy, tokenizer = load_trainable_model(config)
    encoder = ChatEncoder(tokenizer, max_prompt_length=config.max_prompt_length)
    prompts = load_prompts(config, config.data, "train", "rejects.jsonl")
    prompt_ids = [encoder.encode_prompt(p) for p in prompts]
    eval_prompts = load_prompts(config, config.eval_data, "test", "eval_rejects.jsonl")
    eval_batch = eval_batch_size(config)
    device = select_device(config.device)
    labeller = load_labeller(config, device)
    oracle = load_oracle(config, device) if eval_prompts else None
    if eval_prompts and oracle is None:
        log.warning("eval prompts given but no oracle (oracle= or task=): no held-out scores")
    model = ActorCritic(policy)
    forward = CausalLMLogps(policy)  # what the optimizer step runs, at temperature 1
    temperature = config.temperature if config.temperature > 0 else 1.0
    probe = PolicyForward(model, temperature)  # the no-gradient passes' helper
    share_prompt = uses_packed_attention(forward.causal_lm)
    collate = PairCollator(build_collator(tokenizer, packing=True), share_prompt)
    eos_ids, pad_id = encoder.stop_token_ids, pad_token_id(tokenizer)
    steps = round_count(config, len(prompts), labeller)
    needs_members = "member_scores" in REQUIRES[config.selection] or config.mixed_fraction > 0
    fingerprint = {
        "prompts": len(prompts),
        "batch_size": config.batch_size,
        "samples_per_prompt": config.samples_per_prompt,
        "seed": config.seed,
    }

    with open_run(
        config,
        model,
        total_steps=steps,
        fingerprint=fingerprint,
        forward_module=forward,
        param_groups=parameter_groups(policy, config.weight_decay, config.learning_rate),
        checkpointed=[policy],
    ) as run:
        device, state = run.device, run.state
        if run.dist.enabled:
            raise ConfigError("online-dpo runs in one process (one device); not under torchrun")
        start_reference = load_reference(config, device)  # None: LoRA with adapter disabled

        def start_context():
            # the starting model: the LoRA policy with its adapter disabled, else no-op
            if start_reference is None:
                return policy.disable_adapter()
            return contextlib.nullcontext()

        # ---- state restored on resume --------------------------------------------------
        extra = run.extra_state
        book = QueryBook(
            output_dir, labeller.name, config.query_budget, extra.get("queries_used", 0)
        )
        ensemble = None
        if needs_members:
            from alignkit.feedback.epistemic import EpistemicRewardModel

            ensemble = EpistemicRewardModel(
                feature_dim=policy.config.hidden_size,
                members=config.ensemble.members,
                hidden=config.ensemble.hidden,
                anchor_weight=config.ensemble.anchor_weight,
                learning_rate=config.ensemble.learning_rate,
                seed=config.seed,
            )
            if "ensemble" in run.extra_tensors:
                ensemble.load_state_dict(run.extra_tensors["ensemble"])
        reference_step = extra.get("reference_step", 0)
        reference = start_reference
        if reference_step:
            reference = load_reference_snapshot(policy, output_dir, reference_step, device)
        truncate_after(output_dir / "samples.jsonl", state.step)
        log.info(
            "online-dpo: %d rounds of %d prompts x %d responses, selection=%s, labeller=%s (%s), "
            "query budget %s",
            steps, config.batch_size, config.samples_per_prompt, config.selection,
            labeller.name, labeller.kind, config.query_budget,
        )  # fmt: skip

        last_metrics: dict = {}
        stop_reason = None
        try:
            while state.step < steps:
                started = time.perf_counter()
                step = state.step
                if book.remaining is not None and book.remaining < min_queries_per_prompt(
                    config, labeller
                ):  # not even one more prompt
                    stop_reason = f"query budget of {config.query_budget} spent"
                    break
                if config.ref_update_every and step and step % config.ref_update_every == 0:
                    if reference_step != step:
                        reference = save_reference_snapshot(policy, output_dir, step)
                        reference_step = step

                def reference_context(ref=reference):
                    if ref is None:
                        return policy.disable_adapter()
                    return contextlib.nullcontext()

                # 1-2. prompts of the round, K responses each
                chosen = step_indices(step, config.batch_size, len(prompts), config.seed)
                K = config.samples_per_prompt
                round_prompts = [prompts[c] for c in chosen]
                row_prompt_ids = [prompt_ids[c] for c in chosen for _ in range(K)]
                step_seed = config.seed * 1_000_003 + step
                rollout = sample(
                    policy,
                    row_prompt_ids,
                    sampling_settings(config),
                    eos_ids=eos_ids,
                    pad_id=pad_id,
                    tokenizer=tokenizer,
                    row_seeds=[row_seed(step_seed, r) for r in range(len(row_prompt_ids))],
                )
                flat_texts = [t.strip() for t in rollout.texts(tokenizer)]
                texts = [flat_texts[p * K : (p + 1) * K] for p in range(len(chosen))]
                tensors = completion_rows(rollout, row_prompt_ids, pad_id)

                # 3. features and member scores
                feats = member_scores = None
                if ensemble is not None:
                    from alignkit.feedback.epistemic import sequence_features

                    sequences = [
                        ids + completion
                        for ids, completion in zip(
                            row_prompt_ids, rollout.completion_lists(), strict=True
                        )
                    ]
                    # the starting model's features: frozen for the whole run
                    frozen = start_reference if start_reference is not None else policy
                    with start_context():  # LoRA without ref_model: the adapter disabled
                        feats = sequence_features(
                            frozen,
                            sequences,
                            pad_id=pad_id,
                            pooling=config.ensemble.pooling,
                            starts=[len(ids) for ids in row_prompt_ids],
                        ).cpu()
                    member_scores = ensemble.scores(feats).reshape(-1, len(chosen), K)

                # 4. select (best_worst: the labeller scores all K first)
                generator = torch.Generator().manual_seed(config.seed * 7_919 + step)
                first_scores, failed_first, spent_first, scored = None, 0, False, []
                handled = len(chosen)
                if "labeller_scores" in REQUIRES[config.selection]:
                    first_scores = []
                    for p in range(len(chosen)):
                        # a pairwise judge rates each response here (one call each)
                        answered = score_queries(book, labeller, round_prompts[p], texts[p])
                        if answered is None:
                            handled, spent_first = p, True
                            break
                        first_scores.append(answered[0])
                        failed_first += answered[1]
                        scored += [s for s in answered[0] if s is not None]
                pairs = select_pairs(
                    config.selection, handled, K, member_scores, first_scores, generator
                )

                # 5. label (mixed preference learning: some pairs by the ensemble)
                ensemble_choice = {}
                if (
                    ensemble is not None
                    and config.mixed_fraction > 0
                    and step >= config.mixed_burn_in
                ):
                    ensemble_choice = mixed_labels(
                        member_scores[:, :handled], pairs, config.mixed_fraction, generator
                    )
                labels = label_round(
                    book,
                    labeller,
                    round_prompts[:handled],
                    texts[:handled],
                    pairs,
                    ensemble_choice,
                    first_scores,
                    config.label_smoothing,
                )
                labels.scores = scored + labels.scores
                labels.failed += failed_first
                labels.spent = labels.spent or spent_first

                # 6. the epistemic model learns the round's new labels
                ensemble_metrics = {}
                if ensemble is not None and labels.new_labels:
                    rows_a = [p * K + i for p, i, _, _ in labels.new_labels]
                    rows_b = [p * K + j for p, _, j, _ in labels.new_labels]
                    p_a = torch.tensor([x for *_, x in labels.new_labels])
                    ensemble_metrics = ensemble.update(
                        feats[rows_a], feats[rows_b], p_a, steps=config.ensemble.steps
                    )

                # 7. reference pass over the pairs' responses: their KL, the reference table
                mask = tensors["mask"]
                window, grad_norms, kl = MetricWindow(), [], None
                if labels.pairs:
                    rows = [p * K + side for p, c, r, _, _ in labels.pairs for side in (c, r)]
                    subset = {k: v[rows] for k, v in tensors.items()}
                    ref_at_t, ref_at_1 = reference_logps(
                        probe, CausalLMLogps(reference or policy), reference_context, subset,
                        temperature, config.micro_batch, device,
                    )  # fmt: skip
                    old = rollout.logprobs[rows].float() * subset["mask"]
                    kl = ((old - ref_at_t) * subset["mask"]).sum(-1)  # k1 per response
                    table = reference_table(len(labels.pairs), subset, ref_at_1)
                    examples = pair_examples(labels.pairs, K, tensors, config)
                    step_fn = functools.partial(online_pair_step, config=config, reference=table)
                    micro = [
                        examples[s : s + config.micro_batch]
                        for s in range(0, len(examples), config.micro_batch)
                    ]
                    # 8. optimizer steps
                    for _ in range(config.updates_per_round):
                        batches = [collate(part) for part in micro]
                        outcome = run.optimizer_step(batches, step_fn, [len(p) for p in micro])
                        window.add(outcome.loss_sum, outcome.units, outcome.metric_sums, tokens=0)
                        grad_norms.append(outcome.grad_norm)

                # 9. bookkeeping
                done = step + 1
                metrics = window.summary(run.dist) if grad_norms else {}
                metrics.pop("tokens_per_s", None)
                if grad_norms:
                    metrics["grad_norm"] = sum(grad_norms) / len(grad_norms)
                metrics.update(
                    {
                        "queries/used": book.used,
                        "pairs/labelled": sum(s == "labeller" for *_, s in labels.pairs),
                        "pairs/from_ensemble": sum(s == "ensemble" for *_, s in labels.pairs),
                        "pairs/ties": labels.ties,
                        "pairs/failed": labels.failed,
                        "completions/mean_length": float(mask.sum(-1).float().mean()),
                        "completions/eos_rate": float(rollout.finished.float().mean()),
                        "lr": run.scheduler.get_last_lr()[0],
                        **{f"ensemble/{k}": float(v) for k, v in ensemble_metrics.items()},
                    }
                )
                if kl is not None:
                    metrics["objective/kl"] = float(kl.mean())
                if labels.scores:
                    metrics["objective/scores"] = sum(labels.scores) / len(labels.scores)
                metrics["seconds_per_step"] = time.perf_counter() - started
                if labels.spent or (book.remaining is not None and book.remaining == 0):
                    stop_reason = f"query budget of {config.query_budget} spent"
                last_step = done == steps or stop_reason is not None
                evaluated = oracle and config.eval_every and done % config.eval_every == 0
                if evaluated:
                    metrics.update(
                        evaluate_prompts(
                            run, eval_prompts, oracle, tokenizer, start_reference,
                            start_context, config, eval_batch,
                        )
                    )  # fmt: skip
                if config.sample_every and (done % config.sample_every == 0 or done == 1):
                    write_pair_samples(output_dir, done, round_prompts, texts, labels.pairs)
                # an evaluation step is always written: its held-out numbers cost samples
                logged = metrics if done % config.log_every == 0 or last_step or evaluated else None
                last_metrics = metrics
                run.finish_step(
                    logged,
                    extra={"queries_used": book.used, "reference_step": reference_step},
                    tensors={"ensemble": ensemble.state_dict()} if ensemble is not None else None,
                )
                prune_reference_snapshots(output_dir, reference_step)
                if stop_reason is not None:
                    break
        finally:
            book.close()

        if stop_reason is not None:
            message = f"stopping after round {state.step}: {stop_reason} ({book.used} queries used)"
            log.warning(message)
            run.sink.message(message)
            last_metrics = {**last_metrics, "stopped": stop_reason}
        evaluated = config.eval_every and state.step % config.eval_every == 0
        if oracle and not evaluated:
            final_eval = evaluate_prompts(
                run, eval_prompts, oracle, tokenizer, start_reference, start_context, config,
                eval_batch,
            )  # fmt: skip
            last_metrics = {**last_metrics, **final_eval}
            run.sink.step(state.step, final_eval, advance=False)
        run.save_final(tokenizer, model.policy)
        if ensemble is not None:  # the epistemic reward model as trained, beside final/
            torch.save(ensemble.state_dict(), output_dir / ENSEMBLE_FILE)
        return run.result(last_metrics)


# ---- the phases' helpers -----------------------------------------------------------


def eval_batch_size(config: OnlineDPOConfig) -> int:
    """Held-out prompts sampled at once: as many as a round's rollout has rows (one
    response each), a size the run already holds in memory, and fewer, fuller decode
    steps than batch_size at a time (12.4 s instead of 15.4 s for 32 prompts, 135M, CPU)."""
    return config.batch_size * config.samples_per_prompt


def min_queries_per_prompt(config: OnlineDPOConfig, labeller: Labeller) -> int:
    """The fewest labeller calls one prompt costs: a judge one pair, a score labeller two
    responses (best_worst: all K)."""
    if "labeller_scores" in REQUIRES[config.selection]:
        return config.samples_per_prompt
    return 1 if labeller.kind == "pair" else 2


def round_count(config: OnlineDPOConfig, n_prompts: int, labeller: Labeller) -> int:
    """Rounds to run: `max_steps`; else, with a query budget, as many rounds as the budget
    pays for (at the fewest calls a prompt can cost); else `epochs` passes over the prompts."""
    if config.max_steps is not None or config.query_budget is None:
        return total_steps(config, n_prompts)
    per_round = config.batch_size * min_queries_per_prompt(config, labeller)
    return math.ceil(config.query_budget / per_round)


def select_pairs(rule, num_prompts, num_samples, member_scores, labeller_scores, generator):
    """One (i, j) per prompt from `SELECTIONS[rule]`."""
    if num_prompts == 0:
        return []
    from alignkit.feedback.selection import SELECTIONS, SelectionInput

    scores = None
    if labeller_scores is not None:
        scores = torch.tensor(
            [[s if s is not None else float("nan") for s in row] for row in labeller_scores]
        )
        # a failed score never wins: the prompt's lowest score stands in for it
        lowest = torch.nan_to_num(scores, nan=float("inf")).amin(-1, keepdim=True)
        scores = torch.where(torch.isnan(scores), lowest, scores)
    members = member_scores[:, :num_prompts] if member_scores is not None else None
    chosen = SELECTIONS[rule](
        SelectionInput(
            num_prompts=num_prompts,
            num_samples=num_samples,
            member_scores=members,
            labeller_scores=scores,
        ),
        generator,
    )
    return [(int(i), int(j)) for i, j in chosen]


def mixed_labels(member_scores, pairs, fraction: float, generator) -> dict[int, float]:
    """Mixed preference learning (SEA, Sec. 4.3): prompt -> P(i better than j) from the
    ensemble, for up to `fraction` of the pairs, those with the largest margin."""
    from alignkit.feedback.selection import choose_for_ensemble, ensemble_labels

    p_a, margins = ensemble_labels(member_scores, pairs, generator)
    picked = choose_for_ensemble(margins, fraction)
    return {int(p): float(p_a[p]) for p in picked}


@torch.no_grad()
def reference_logps(
    probe, ref_logps: CausalLMLogps, reference_context, rows, temperature, micro, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, C) reference log-probs of the rows' completion tokens at the sampling
    `temperature` (for the KL metric, against the sampler's log-probs) and at 1 (for the
    loss, which compares the models themselves), from one decoder pass per `micro` rows:
    only the output head runs twice. Equal tensors when `temperature` is 1."""
    temperatures = (temperature, 1.0) if temperature != 1.0 else (1.0,)
    at_t, at_1 = [], []
    probe.eval()
    for start in range(0, len(rows["mask"]), micro):
        part = {k: v[start : start + micro].to(device) for k, v in rows.items()}
        with reference_context():
            logps, _ = ref_logps.at_temperatures(part["input_ids"], part["labels"], temperatures)
        picked = [x.gather(1, part["index"]).float().cpu() * part["mask"].cpu() for x in logps]
        at_t.append(picked[0])
        at_1.append(picked[-1])
    probe.train()
    return torch.cat(at_t), torch.cat(at_1)


def reference_table(n_pairs: int, rows: dict, ref: torch.Tensor) -> torch.Tensor:
    """(pairs, 2, 2): [chosen, rejected] x [summed reference log-prob at temperature 1,
    target count], as `pair_losses` reads it. `rows`: the pairs' responses, chosen and
    rejected alternating; `ref` (R, C): their reference log-probs at temperature 1."""
    counts = rows["mask"].sum(-1).float()
    return torch.stack([ref.sum(-1), counts], dim=-1).reshape(n_pairs, 2, 2)


def online_pair_step(
    module, batch: dict, *, config: OnlineDPOConfig, reference: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    """Offline DPO's step on a micro-batch of B of the round's pairs, plus, with
    `kl_coef` > 0, a penalty on how far the policy has moved from the reference on the
    pairs' own responses (both sides, sampled from the policy this round):

        loss_pair += kl_coef * sum over y in (y_w, y_l) of (1/2) (log pi(y|x) - log pi_ref(y|x))^2

    summed log-probs at temperature 1, as in the reference `table` (B, 2, 2). For y drawn
    from pi its gradient, (log pi(y|x) - log pi_ref(y|x)) grad log pi(y|x), is an unbiased
    estimate of grad KL(pi || pi_ref) (the "k2" estimator of Schulman 2020, "Approximating
    KL divergence"; with the round's sampling temperature and pair choice it is a
    surrogate). Why: with hard labels on fresh on-policy pairs, DPO's beta barely bounds the
    step (each new pair starts near zero margin), so a round's update also drifts in
    directions the labels do not ask for; this pulls them back, where PPO's KL penalty
    would (docs/online.md, "KL control")."""
    sums, counts = sequence_stats(module, batch)  # (2B,) each
    losses, metrics = pair_losses(sums, counts, batch, config=config, reference=reference)
    if config.kl_coef > 0:
        ref = reference.to(sums.device)[batch["pair_index"]][..., 0].reshape(-1)  # (2B,)
        penalty = 0.5 * (sums - ref).pow(2).reshape(-1, 2).sum(-1)  # (B,)
        losses = losses + config.kl_coef * penalty
        metrics["kl_penalty"] = penalty.detach().mean()
    return losses.sum(), metrics


def pair_examples(pairs, K, tensors, config) -> list[dict]:
    """The round's pairs as `PairCollator` examples (prompt + response tokens, targets on
    the response) with their place in the reference table and their label smoothing."""
    ids, labels = tensors["input_ids"], tensors["labels"]

    def sequence(row):
        real = int((labels[row] != -100).nonzero().max()) + 1  # up to the last target
        return {"input_ids": ids[row, :real].tolist(), "labels": labels[row, :real].tolist()}

    soft = "label_smoothing" in PREFERENCE_LOSSES[config.loss].batch_inputs.values()
    examples = []
    for index, (p, c, r, p_chosen, _source) in enumerate(pairs):
        examples.append(
            {
                "chosen": sequence(p * K + c),
                "rejected": sequence(p * K + r),
                "index": index,
                "label_smoothing": (1.0 - p_chosen) if soft else config.label_smoothing,
            }
        )
    return examples


def write_pair_samples(output_dir: Path, step: int, prompts, texts, pairs, limit: int = 8):
    with open(output_dir / "samples.jsonl", "a", encoding="utf-8") as out:
        for p, c, r, p_chosen, source in pairs[:limit]:
            record = {
                "step": step,
                "prompt": prompts[p],
                "chosen": texts[p][c],
                "rejected": texts[p][r],
                "p_chosen": p_chosen,
                "source": source,
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---- iterative DPO: reference snapshots ------------------------------------------------


def _snapshot_path(output_dir: Path, step: int) -> Path:
    return output_dir / REFERENCE_DIR / f"step-{step}.safetensors"


def _frozen_copy(policy):
    reference = copy.deepcopy(policy)
    reference.requires_grad_(False)
    return reference.eval()


def save_reference_snapshot(policy, output_dir: Path, step: int):
    """The reference of rounds `step`...: a frozen copy of the current policy, its trainable
    weights written (atomically) for a resumed run to rebuild it."""
    path = _snapshot_path(output_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(trainable_state(policy), str(tmp))
    tmp.replace(path)
    return _frozen_copy(policy)


def load_reference_snapshot(policy, output_dir: Path, step: int, device):
    path = _snapshot_path(output_dir, step)
    if not path.is_file():
        raise AlignkitError(f"cannot resume: the reference of round {step} ({path}) is missing")
    reference = _frozen_copy(policy)
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(str(path)).items():
            params[name].copy_(tensor)
    return reference.to(device)


def prune_reference_snapshots(output_dir: Path, current: int) -> None:
    """Keep the snapshots that the current round or a kept checkpoint refers to."""
    folder = output_dir / REFERENCE_DIR
    if not folder.is_dir():
        return
    keep = {current} | {
        load_extra(c).get("reference_step", 0) for c in list_checkpoints(output_dir)
    }
    for path in folder.glob("step-*.safetensors"):
        if int(path.stem.removeprefix("step-")) not in keep:
            path.unlink()

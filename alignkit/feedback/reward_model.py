"""A trained reward model as a judge, and streaming scoring of record files.

`RewardModelJudge(path)` loads any `*ForSequenceClassification` folder (ours carry the
reward offset and a safe pad id; see `alignkit.models.reward`) and scores
prompt/response pairs rendered with the model's chat template, the same encoding
training used. Ensembles (K heads) give the mean over heads as the score and their
standard deviation as `score_std`; with `risk_aversion=k` the score is `mean - k * std`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit.data.loading import (
    RecordProblem,
    chunks,
    iter_checked,
    record_progress,
    write_rejects,
)
from alignkit.data.records import Kind
from alignkit.data.templating import ChatEncoder
from alignkit.errors import AlignkitError, DataError
from alignkit.feedback.epistemic import risk_averse
from alignkit.feedback.judge import ScoringJudge, Text
from alignkit.fsutil import atomic_jsonl
from alignkit.models.device import select_device
from alignkit.models.loading import is_reward_model_folder, load_tokenizer, resolve_model_path
from alignkit.models.reward import OFFSET_KEY, RewardScores, load_reward_model, score_sequences

log = logging.getLogger("alignkit")


@dataclass
class ScoredRecords:
    """What `RewardModelJudge.score_records` returns for a list of records."""

    scores: list[float | None]  # None: the record did not fit in max_length
    stds: list[float | None] | None  # ensembles only


class RewardModelJudge(ScoringJudge):
    """Scores from a reward-model folder: ours (`alignkit rm`) or any folder saved by
    `AutoModelForSequenceClassification` with a single output per head.

    Rewards are read where transformers reads them: at the last token that is not
    `config.pad_token_id` (trailing pad ids are dropped before scoring, which under
    causal attention changes nothing else). For alignkit's folders that is always the
    last token. A folder trained with `pooling=mean` reads the mean of the response
    tokens' states instead (`alignkit.models.reward`). `batch_size`: sequences per
    forward pass.

    `risk_aversion` k >= 0 (ensembles only): score `mean - k * std` over the heads, a
    reward that is low where the heads disagree, i.e. away from the data the reward
    model was trained on (Inverse Reward Design's risk-averse planning, Hadfield-Menell
    et al. 2017, Sec. 5). `score_std` stays the plain std.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        max_length: int = 2048,
        risk_aversion: float = 0.0,
    ):
        if risk_aversion < 0:
            raise AlignkitError(f"risk_aversion must be >= 0, got {risk_aversion}")
        self.device = select_device(device)
        path = resolve_model_path(model)
        if not is_reward_model_folder(path):
            raise AlignkitError(
                f"{model} is not a reward model (its config.json names no "
                f"*ForSequenceClassification architecture); train one with `alignkit rm`"
            )
        self.tokenizer = load_tokenizer(model)
        self.model = load_reward_model(model, device=str(self.device), dtype=dtype)
        self.model.eval()
        self.scores = RewardScores(self.model)
        self.num_heads = self.model.config.num_labels
        if risk_aversion and self.num_heads < 2:
            raise AlignkitError(
                f"risk_aversion={risk_aversion} needs an ensemble reward model (trained with "
                f"num_heads > 1) to measure disagreement; {model} has {self.num_heads} head"
            )
        self.risk_aversion = float(risk_aversion)
        offset = getattr(self.model.config, OFFSET_KEY, None)
        self.offset = torch.tensor(
            offset if offset is not None else [0.0] * self.num_heads, dtype=torch.float32
        ).reshape(-1)
        self.read_pad_id = self.model.config.pad_token_id  # None: read the last token
        self.pad_id = next(
            i
            for i in (self.read_pad_id, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0)
            if i is not None
        )
        self.batch_size = batch_size
        self.encoder = ChatEncoder(
            self.tokenizer, max_length=max_length, keep_trailing_context=True
        )

    # ---- the judge interface ------------------------------------------------------

    def score_batch(self, prompts: Sequence[Text], responses: Sequence[Text]) -> list[float]:
        records = [_record(p, r) for p, r in zip(prompts, responses, strict=True)]
        scored = self.score_records(records)
        missing = [i for i, s in enumerate(scored.scores) if s is None]
        if missing:
            raise ValueError(
                f"responses {missing} do not fit in max_length={self.encoder.max_length} tokens"
            )
        return scored.scores

    # ---- records ------------------------------------------------------------------

    def score_records(self, records: Sequence[dict]) -> ScoredRecords:
        """Score sft-form records (`prompt` + `completion`, or `messages`: the whole
        conversation, read after its last token)."""
        encoded = [self.encoder.encode_sft(record) for record in records]
        kept = [i for i, e in enumerate(encoded) if e is not None]
        raw = score_sequences(
            self.scores,
            [_strip_trailing(encoded[i].features(), self.read_pad_id) for i in kept],
            pad_id=self.pad_id,
            batch_size=self.batch_size,
            device=self.device,
        )
        rewards = raw - self.offset
        means = risk_averse(rewards, self.risk_aversion, dim=-1).tolist()
        stds = rewards.std(-1, unbiased=False).tolist() if self.num_heads > 1 else None
        scores: list[float | None] = [None] * len(records)
        spread: list[float | None] | None = [None] * len(records) if stds is not None else None
        for j, i in enumerate(kept):
            scores[i] = means[j]
            if spread is not None:
                spread[i] = stds[j]
        return ScoredRecords(scores, spread)


def _strip_trailing(features: dict, pad_id: int | None) -> dict:
    """`input_ids` and `labels` without trailing `pad_id` tokens."""
    ids = features["input_ids"]
    end = len(ids)
    while pad_id is not None and end > 1 and ids[end - 1] == pad_id:
        end -= 1
    return {key: values[:end] for key, values in features.items()}


def _record(prompt: Text, response: Text) -> dict:
    """A prompt/response pair as an sft record (chat prompts take a plain-text reply)."""
    if isinstance(prompt, list) and isinstance(response, str):
        response = [{"role": "assistant", "content": response}]
    return {"prompt": prompt, "completion": response}


@dataclass
class ScoreFileResult:
    written: int = 0
    too_long: int = 0
    rejected: list[RecordProblem] = field(default_factory=list)
    rejects_path: Path | None = None


def score_file(
    judge: RewardModelJudge,
    data: str | Path,
    out: str | Path,
    *,
    skip_invalid: bool = False,
    window: int | None = None,
    progress: bool = True,
) -> ScoreFileResult:
    """Stream `data` (sft-form records) to `out` (JSONL) with `score` (and `score_std`)
    added, `window` records at a time (default 8 batches), so memory does not grow with
    the file. `out` appears only when complete (written to a temporary name, then
    renamed); an invalid record stops the run naming file, record and field, unless
    `skip_invalid`, which writes it to `<out>.rejects.jsonl` instead.
    """
    out = Path(out)
    window = window or judge.batch_size * 8
    result = ScoreFileResult()
    with (
        record_progress(data, progress, unit="rec", desc="scoring") as advance,
        atomic_jsonl(out) as write,
    ):
        for chunk in chunks(_valid_records(data, skip_invalid, result), window):
            scored = judge.score_records(chunk)
            for k, record in enumerate(chunk):
                extra = {"score": scored.scores[k]}
                if scored.stds is not None:
                    extra["score_std"] = scored.stds[k]
                result.too_long += scored.scores[k] is None
                write({**record, **extra})
            result.written += len(chunk)
            advance(len(chunk))
    if result.rejected:
        result.rejects_path = out.with_name(out.name + ".rejects.jsonl")
        write_rejects(result.rejects_path, result.rejected)
        log.warning(
            "%s: skipped %d invalid record(s); reasons in %s",
            data,
            len(result.rejected),
            result.rejects_path,
        )
    if result.too_long:
        log.warning(
            "%d record(s) have no room for a response within max_length=%d; their score is null",
            result.too_long,
            judge.encoder.max_length,
        )
    return result


def _valid_records(data, skip_invalid: bool, result: ScoreFileResult) -> Iterator[dict]:
    for _location, record, problem in iter_checked(data, Kind.SFT):
        if problem is None:
            yield record
        elif skip_invalid:
            result.rejected.append(problem)
        else:
            raise DataError(
                f"{problem} (nothing written; pass --skip-invalid to set such records aside)",
                [problem],
            )

"""RLAIF: preference labels from an AI judge instead of people.

For every prompt the policy samples K responses; a judge compares pairs of them under one
comparison question, either the `comparison` of the constitution principle drawn for the
prompt (RL-CAI, Bai et al. 2022 section 4.1) or a single `question` for all; each answered
pair becomes a `preference` record with the judge's probability as a soft label (Lee et al.
2023 train their reward model on exactly such soft labels; DPO and `alignkit rm` read
`p_chosen`).

    {"prompt": [...], "chosen": [...], "rejected": [...], "p_chosen": 0.83,
     "judge": "llm:smollm2-135m-instruct", "principle": "truthfulness"}

`chosen` is the response the judge gives p >= 0.5, and `p_chosen` that probability.

Pairs for K > 2 (`pairs=`): "all" (default) compares every pair, K(K-1)/2 judgements,
so each response is weighed against every other; "adjacent" compares sample i with
sample i+1 only, K-1 judgements, for when judging is the expensive part. Samples are
drawn independently, so neither scheme favours a slot. Two identical responses (or an
empty one) teach nothing and are not sent to the judge.

Every step is stored in the label store as it completes (responses, then each batch's
judgements), so a killed run resumes where it stopped, never asking the judge again for
an answer it already gave. A failed judgement is recorded with its reason and the
prompt retried by a later run (up to `max_attempts`); it never becomes a label.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.feedback.constitution import Constitution, load_constitution
from alignkit.feedback.label_store import LabelStore
from alignkit.feedback.labelling import (
    PromptItem,
    RunReport,
    labelling_options,
    read_prompt_items,
    run_items,
    spec_name,
)

log = logging.getLogger("alignkit")

# K responses -> the (i, j) index pairs sent to the judge (see the module docstring)
PAIRINGS: dict[str, Callable[[int], list[tuple[int, int]]]] = {
    "all": lambda k: list(combinations(range(k), 2)),
    "adjacent": lambda k: [(i, i + 1) for i in range(k - 1)],
}


@dataclass(frozen=True)
class RLAIFSettings:
    """num_responses: K samples per prompt. pairs: "all" or "adjacent" (module docstring).
    seed: drives sampling and the principle drawn per prompt. max_new_tokens, temperature,
    top_p: the policy's sampling (temperature 0 would make all K samples alike)."""

    num_responses: int = 2
    pairs: str = "all"
    seed: int = 0
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self):
        if self.num_responses < 2:
            raise AlignkitError(f"-n must be at least 2 to form pairs, got {self.num_responses}")
        if self.pairs not in PAIRINGS:
            raise AlignkitError(f"pairs must be one of {', '.join(PAIRINGS)}, got {self.pairs!r}")


def label_preferences(
    policy,
    judge,
    data: str | Path,
    out: str | Path,
    *,
    run_dir: str | Path | None = None,
    constitution: Constitution | str | Path | None = None,
    question: str | None = None,
    settings: RLAIFSettings = RLAIFSettings(),
    policy_options: dict[str, Any] | None = None,
    judge_options: dict[str, Any] | None = None,
    batch_size: int = 8,
    max_attempts: int = 3,
    progress: bool = True,
) -> RunReport:
    """Label `data` (prompt records) into preference records at `out`.

    policy: a generator (`generate(conversations, n=...)`) or a spec for
    `load_generator` (a model, or `openai:BASE_URL` with `policy_options={"model": NAME}`).
    judge: a judge (`judge_pairs`) or a spec for `load_judge` (`judge_options` go with it).
    Both are loaded only if there is work left. Ask under `question`, or under the
    comparison question of a principle drawn per prompt from `constitution` (a
    `Constitution`, a file, or None for the default). run_dir: where the label store
    lives (default: next to `out`, `<out stem>.run/`). batch_size: prompts per step; a
    kill loses at most one step's unstored work. Returns counts; failures are counted
    there, never written.
    """
    if question is not None and constitution is not None:
        raise AlignkitError("give either a question or a constitution, not both")
    if question is not None and not question.strip():
        raise AlignkitError("the question is empty")
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else out.with_name(f"{out.stem}.run")
    if question is None and not isinstance(constitution, Constitution):
        constitution = load_constitution(constitution)
    items = read_prompt_items(data)
    policy_options, judge_options = dict(policy_options or {}), dict(judge_options or {})
    if isinstance(judge, str) and judge.startswith("openai:"):
        # replies kept on disk beside the labels: a request in flight when the run was
        # killed, and answered, is free when the resumed run asks it again
        judge_options.setdefault("cache", str(run_dir / "judge-cache.sqlite"))
    config = {
        "kind": "rlaif",
        "policy": spec_name(policy),
        "policy_options": labelling_options(policy_options),
        "judge": spec_name(judge),
        "judge_options": labelling_options(judge_options),
        "feedback": _feedback_config(constitution, question),
        **asdict(settings),
    }

    def make_step(store, report):
        return _Step(
            store=store,
            policy=functools.cache(lambda: _load_policy(policy, policy_options)),
            judge=functools.cache(lambda: _load_judge(judge, judge_options)),
            judge_name=_judge_name(judge, judge_options),
            constitution=constitution,
            question=question,
            settings=settings,
            report=report,
        ).run

    return run_items(
        run_dir,
        config,
        data,
        items,
        make_step=make_step,
        outputs={"preference": out},
        max_attempts=max_attempts,
        batch_size=batch_size,
        progress=progress,
        desc="labelling",
    )


@dataclass
class _Step:
    """One batch of prompts through sample -> judge -> label, storing as it goes."""

    store: LabelStore
    policy: Callable
    judge: Callable
    judge_name: str
    constitution: Constitution | None
    question: str | None
    settings: RLAIFSettings
    report: RunReport

    def run(self, batch: list[PromptItem]) -> None:
        responses = self._responses(batch)
        pending = []  # (item, pair name, i, j, question, principle)
        for item in batch:
            if item.key not in responses:
                continue
            question, principle = self._question(item)
            answered = self.store.answers(item.key)
            for i, j in self._usable_pairs(responses[item.key]):
                if f"{i}-{j}" not in answered:
                    pending.append((item, f"{i}-{j}", i, j, question, principle))
        self._judge(pending, responses)
        for item in batch:
            if item.key in responses:
                self._conclude(item, responses[item.key])

    def _responses(self, batch: list[PromptItem]) -> dict[str, list[str]]:
        """K responses per prompt: stored ones, and new samples for the rest (stored in
        one transaction before anything is judged)."""
        stored = {item.key: self.store.stages(item.key).get("responses") for item in batch}
        missing = [item for item in batch if stored[item.key] is None]
        if missing:
            s = self.settings
            try:
                samples = self.policy().generate(
                    [item.conversation for item in missing],
                    n=s.num_responses,
                    max_new_tokens=s.max_new_tokens,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    seed=s.seed,
                )
            except AlignkitError as err:  # e.g. a policy server that stayed down
                reason = f"policy {getattr(err, 'reason', 'error')}"
                log.warning("sampling failed for %d prompts: %s", len(missing), err)
                for item in missing:
                    self._fail(item, reason)
                return {k: v for k, v in stored.items() if v is not None}
            self.store.put_stages(
                [
                    (item.key, "responses", list(texts))
                    for item, texts in zip(missing, samples, strict=True)
                ]
            )
            stored.update(
                {item.key: list(texts) for item, texts in zip(missing, samples, strict=True)}
            )
        return stored

    def _question(self, item: PromptItem) -> tuple[str, str | None]:
        if self.question is not None:
            return self.question, None
        principle = self.constitution.principle_for(item.key, self.settings.seed)
        return principle.comparison, principle.name

    def _usable_pairs(self, texts: list[str]) -> list[tuple[int, int]]:
        return [
            (i, j)
            for i, j in PAIRINGS[self.settings.pairs](len(texts))
            if texts[i].strip() and texts[j].strip() and texts[i].strip() != texts[j].strip()
        ]

    def _judge(self, pending: list, responses: dict[str, list[str]]) -> None:
        """Ask the judge about every unanswered pair of the batch in one call, and store
        every answer and failure in one transaction as soon as it returns."""
        if not pending:
            return
        judgements = self.judge().judge_pairs(
            [item.conversation for item, *_ in pending],
            [responses[item.key][i] for item, _, i, _, _, _ in pending],
            [responses[item.key][j] for item, _, _, j, _, _ in pending],
            [question for *_, question, _ in pending],
        )
        if len(judgements) != len(pending):
            raise AlignkitError(
                f"judge {self.judge_name} returned {len(judgements)} judgements for "
                f"{len(pending)} pairs"
            )
        entries = []
        for (item, name, i, j, question, principle), judgement in zip(
            pending, judgements, strict=True
        ):
            request = {"pair": [i, j], "question": question, "principle": principle}
            answer = (
                {"p_a": float(judgement.p_a), "outputs": list(judgement.outputs)}
                if judgement.ok
                else None
            )
            failure = None if judgement.ok else _failure_text(judgement)
            entries.append((item.key, name, request, answer, failure))
        self.store.record_requests(entries)

    def _conclude(self, item: PromptItem, texts: list[str]) -> None:
        """Label the item if every usable pair has an answer; else count it failed."""
        pairs = self._usable_pairs(texts)
        answers = self.store.answers(item.key)
        missing = [f"{i}-{j}" for i, j in pairs if f"{i}-{j}" not in answers]
        if missing:
            last = {r.name: r for r in self.store.requests(item.key)}
            reason = next((last[n].failure for n in missing if n in last), None) or "no answer"
            self._fail(item, f"judge {reason.split(':', 1)[0]}", reason)
            return
        _, principle = self._question(item)
        records = [
            self._record(item, texts, i, j, answers[f"{i}-{j}"]["p_a"], principle) for i, j in pairs
        ]
        self.store.finish(item.key, {"preference": records})
        self.report.done += 1
        skipped = len(PAIRINGS[self.settings.pairs](len(texts))) - len(pairs)
        if skipped:
            self.report.notes["pairs skipped (identical or empty responses)"] += skipped

    def _record(self, item, texts, i, j, p_a, principle) -> dict:
        chosen, rejected, p = (i, j, p_a) if p_a >= 0.5 else (j, i, 1.0 - p_a)
        record = {
            "prompt": item.conversation,
            "chosen": [{"role": "assistant", "content": texts[chosen]}],
            "rejected": [{"role": "assistant", "content": texts[rejected]}],
            "p_chosen": p,
            "judge": self.judge_name,
            "principle": principle,
        }
        if item.record.get("id") is not None:
            record["id"] = item.record["id"]
        return record

    def _fail(self, item: PromptItem, reason: str, detail: str | None = None) -> None:
        self.store.fail(item.key, detail or reason)
        self.report.failed += 1
        self.report.reasons[reason] += 1


def _failure_text(judgement) -> str:
    """`reason: detail`, the form the store's failure column and the report read."""
    reason = judgement.failure or "malformed"
    return f"{reason}: {judgement.detail}" if judgement.detail else reason


def _feedback_config(constitution: Constitution | None, question: str | None) -> dict:
    if question is not None:
        return {"question": question}
    return {"constitution": constitution.name, "principles": constitution.fingerprint()}


def _judge_name(judge, options: dict) -> str:
    """The `judge` field of the records: the spec, and the server's model name if any."""
    model = options.get("judge_model")
    return f"{spec_name(judge)} [{model}]" if model else spec_name(judge)


def _load_policy(spec, options: dict):
    from alignkit.feedback.generators import load_generator

    return load_generator(spec, **options)


def _load_judge(spec, options: dict):
    from alignkit.feedback.function import load_judge

    judge = load_judge(spec, **options)
    if not hasattr(judge, "judge_pairs"):
        raise AlignkitError(f"judge {spec_name(spec)} cannot compare pairs (no judge_pairs)")
    return judge

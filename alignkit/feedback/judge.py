"""The judge interface every consumer of feedback uses (PPO, online methods, labelling,
evaluation).

A judge answers questions about responses to a prompt:
- `score(prompt, response) -> float`: how good one response is (higher is better);
- `compare(prompt, a, b) -> float`: the probability that `a` is preferred to `b`;
- `judge_pairs(prompts, responses_a, responses_b) -> list[Judgement]`: `compare` for
  many pairs at once, where a pair the judge could not decide (a remote judge timed out,
  an LLM gave no verdict) comes back as a failed `Judgement` instead of an exception, so
  one bad item never stops a labelling run and is never mistaken for a label.

Prompts and responses are strings (raw text) or, for chat, a prompt as a list of
`{role, content}` messages and a response as the assistant's text.

Two families implement it:
- `ScoringJudge`: scores each response alone (reward models, functions); a pair is
  compared by the Bradley-Terry model, P(a > b) = sigma(s_a - s_b).
- `PairwiseJudge`: reads a preference from a judge that sees both responses (LLM judges).
  Such judges favour one slot (Zheng et al. 2023, "Judging LLM-as-a-Judge", sec. 3.3:
  position bias), so by default each pair is asked in both orders and the two answers
  averaged (`combine_orders`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from alignkit.errors import AlignkitError

Text = str | list[dict]

# Why a judgement failed: no reply in time, an HTTP error status, a reply that could not
# be read (no verdict, no option tokens, not JSON), an empty reply, no connection.
FAILURE_REASONS = ("timeout", "http", "malformed", "empty", "connection")


class JudgeFailure(AlignkitError):
    """A judge could not give an answer. `reason` is one of `FAILURE_REASONS`."""

    def __init__(self, reason: str, message: str):
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}; one of {FAILURE_REASONS}")
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Judgement:
    """One pair's verdict. p_a: probability that response a is better than b (None when
    the judge failed). failure: why it failed (a `FAILURE_REASONS` entry). detail: the
    error text. outputs: the judge's raw answers (one per order asked)."""

    p_a: float | None
    failure: str | None = None
    detail: str = ""
    outputs: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failure is None and self.p_a is not None

    @classmethod
    def failed(cls, error: JudgeFailure, outputs: tuple[str, ...] = ()) -> Judgement:
        return cls(None, failure=error.reason, detail=str(error), outputs=outputs)

    def raise_if_failed(self) -> float:
        """p_a, or the failure as a `JudgeFailure`."""
        if not self.ok:
            raise JudgeFailure(self.failure or "malformed", self.detail or "no verdict")
        return self.p_a


@runtime_checkable
class Judge(Protocol):
    def score(self, prompt: Text, response: Text) -> float: ...

    def score_batch(self, prompts: Sequence[Text], responses: Sequence[Text]) -> list[float]: ...

    def compare(self, prompt: Text, a: Text, b: Text) -> float: ...

    def judge_pairs(
        self,
        prompts: Sequence[Text],
        responses_a: Sequence[Text],
        responses_b: Sequence[Text],
        questions: Sequence[str] | None = None,
    ) -> list[Judgement]: ...


class ScoringJudge(ABC):
    """A judge that scores each response on its own; `compare` then follows the
    Bradley-Terry model the scores were trained under: P(a > b) = sigma(s_a - s_b)."""

    @abstractmethod
    def score_batch(self, prompts: Sequence[Text], responses: Sequence[Text]) -> list[float]:
        """Scores of `responses[i]` to `prompts[i]`."""

    def score(self, prompt: Text, response: Text) -> float:
        return self.score_batch([prompt], [response])[0]

    def compare(self, prompt: Text, a: Text, b: Text) -> float:
        return self.judge_pairs([prompt], [a], [b])[0].raise_if_failed()

    def judge_pairs(
        self,
        prompts: Sequence[Text],
        responses_a: Sequence[Text],
        responses_b: Sequence[Text],
        questions: Sequence[str] | None = None,
    ) -> list[Judgement]:
        """sigma(s_a - s_b) per pair, both responses scored in one batch. `questions` is
        ignored: a score answers one fixed question."""
        n = _check_lengths(prompts, responses_a, responses_b, questions)
        scores = self.score_batch([*prompts, *prompts], [*responses_a, *responses_b])
        return [Judgement(_sigmoid(scores[i] - scores[n + i])) for i in range(n)]


class PairwiseJudge(ABC):
    """A judge that compares two responses side by side (A and B slots) and answers the
    probability that the one in slot A is better. Subclasses implement `judge_ordered`
    (one answer per ordered pair) and `score_batch`; this class asks in both orders when
    `both_orders` and averages them (`combine_orders`)."""

    question: str
    both_orders: bool = True

    @abstractmethod
    def judge_ordered(
        self,
        prompts: Sequence[Text],
        firsts: Sequence[Text],
        seconds: Sequence[Text],
        questions: Sequence[str],
    ) -> list[Judgement]:
        """For each i, P(firsts[i], shown in slot A, beats seconds[i], in slot B) as
        `p_a`, or a failed Judgement; never raises for one item's failure."""

    @abstractmethod
    def score_batch(self, prompts: Sequence[Text], responses: Sequence[Text]) -> list[float]:
        """Ratings of `responses[i]` to `prompts[i]`; raises `JudgeFailure` if one fails."""

    def score(self, prompt: Text, response: Text) -> float:
        return self.score_batch([prompt], [response])[0]

    def compare(self, prompt: Text, a: Text, b: Text) -> float:
        return self.judge_pairs([prompt], [a], [b])[0].raise_if_failed()

    def judge_pairs(
        self,
        prompts: Sequence[Text],
        responses_a: Sequence[Text],
        responses_b: Sequence[Text],
        questions: Sequence[str] | None = None,
    ) -> list[Judgement]:
        """P(a better than b) per pair. `questions[i]` (default: the judge's question)
        is what the judge is asked about pair i, e.g. one principle of a constitution.
        Both orders go to `judge_ordered` in one call, so they share its batches."""
        n = _check_lengths(prompts, responses_a, responses_b, questions)
        questions = list(questions) if questions is not None else [self.question] * n
        if not self.both_orders:
            return self.judge_ordered(prompts, responses_a, responses_b, questions)
        answers = self.judge_ordered(
            [*prompts, *prompts],
            [*responses_a, *responses_b],
            [*responses_b, *responses_a],
            questions + questions,
        )
        return [combine_orders(answers[i], answers[n + i]) for i in range(n)]


def combine_orders(forward: Judgement, backward: Judgement) -> Judgement:
    """One pair asked as (a, b) and as (b, a) -> P(a better than b).

    p_a = (P(a wins in slot A) + 1 - P(b wins in slot A)) / 2: a judge that always picks
    slot A answers 1 both times and gets 0.5, its bias cancelled. If either order failed
    the pair fails: half an answer would be a label biased by the slot it came from."""
    outputs = forward.outputs + backward.outputs
    for side in (forward, backward):
        if not side.ok:
            return Judgement(None, side.failure or "malformed", side.detail, outputs)
    return Judgement((forward.p_a + 1.0 - backward.p_a) / 2.0, outputs=outputs)


def _check_lengths(prompts, responses_a, responses_b, questions) -> int:
    lengths = {len(prompts), len(responses_a), len(responses_b)}
    if questions is not None:
        lengths.add(len(questions))
    if len(lengths) != 1:
        raise ValueError(
            f"judge_pairs needs equal lengths: {len(prompts)} prompts, {len(responses_a)} "
            f"responses_a, {len(responses_b)} responses_b"
            + (f", {len(questions)} questions" if questions is not None else "")
        )
    return len(prompts)


def _sigmoid(x: float) -> float:
    # split by sign so exp never overflows for large |x|
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)

"""A model behind an OpenAI-compatible server as a judge.

Two ways to read its preference, with the same fenced prompts as the local judge
(`feedback.prompts`) and the same order averaging (`PairwiseJudge`):

- log-probs ("choice"): ask for one letter with `max_tokens: 1`, temperature 0,
  `logprobs: true, top_logprobs: k`, and normalise the probabilities of the tokens that
  spell A and B (" A", "(A" count as A): the soft label of Constitutional AI (Bai et al.
  2022). With `use_logprobs="auto"` this is tried first; a server that returns no
  log-probs, or none for either letter, is asked for a verdict instead (and, once it has
  returned no log-probs at all, is not asked for them again).
- a verdict ("verdict"): the judge explains, then writes `[[A]]`, `[[B]]` or `[[C]]`
  (a tie, 0.5), MT-Bench's pairwise format (Zheng et al. 2023). Ratings for `score` are
  read from `[[rating]]` (1-10), its single-answer format.

An empty reply fails as "empty", a reply without a readable verdict as "malformed"; both
are asked again up to `malformed_retries` times, with a `seed` and `retry_temperature`
(a greedy re-ask of a deterministic server would repeat the same text, and the new seed
gives the retry its own cache entry). Failures come back as failed `Judgement`s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from alignkit.feedback.http import OpenAIEndpoint
from alignkit.feedback.judge import JudgeFailure, Judgement, PairwiseJudge, Text
from alignkit.feedback.prompts import (
    DEFAULT_QUESTION,
    DEFAULT_RATING_QUESTION,
    OPTIONS,
    VERDICT_P_A,
    pairwise_prompt,
    parse_rating,
    parse_verdict,
    rating_prompt,
)

_LOGPROB_MODES = ("auto", True, False)


class HTTPJudge(PairwiseJudge):
    """Judges through an `OpenAIEndpoint`.

    question: what the judge is asked about a pair. both_orders: ask (a, b) and (b, a)
    and average. use_logprobs: "auto", True (log-probs only; none is a failure) or False
    (verdicts only). top_logprobs: alternatives asked per token. max_tokens: length
    allowed for a verdict or rating with its explanation. malformed_retries: re-asks
    after an empty or unreadable reply. system: an optional system message.
    """

    def __init__(
        self,
        endpoint: OpenAIEndpoint,
        question: str = DEFAULT_QUESTION,
        *,
        both_orders: bool = True,
        use_logprobs: bool | str = "auto",
        top_logprobs: int = 20,
        max_tokens: int = 512,
        malformed_retries: int = 1,
        retry_temperature: float = 0.7,
        rating_question: str = DEFAULT_RATING_QUESTION,
        system: str | None = None,
    ):
        if use_logprobs not in _LOGPROB_MODES:
            raise ValueError(f"use_logprobs must be one of {_LOGPROB_MODES}, got {use_logprobs!r}")
        self.endpoint = endpoint
        self.question = question
        self.both_orders = both_orders
        self.use_logprobs = use_logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self.malformed_retries = malformed_retries
        self.retry_temperature = retry_temperature
        self.rating_question = rating_question
        self.system = system
        self.server_logprobs = True  # False once the server has returned none

    # ---- the judge interface --------------------------------------------------------

    def judge_ordered(
        self,
        prompts: Sequence[Text],
        firsts: Sequence[Text],
        seconds: Sequence[Text],
        questions: Sequence[str],
    ) -> list[Judgement]:
        items = list(zip(prompts, firsts, seconds, questions, strict=True))
        results: list[Judgement | None] = [None] * len(items)
        verdict_rows = list(range(len(items)))
        if self.use_logprobs is True or (self.use_logprobs == "auto" and self.server_logprobs):
            verdict_rows = self._judge_by_logprobs(items, results)
        texts = [pairwise_prompt(*items[i], answer="verdict") for i in verdict_rows]
        for i, (value, failure, output) in zip(
            verdict_rows, self._ask(texts, _read_verdict), strict=True
        ):
            results[i] = (
                Judgement.failed(failure, (output,))
                if failure is not None
                else Judgement(VERDICT_P_A[value], outputs=(output,))
            )
        return results

    def score_batch(self, prompts: Sequence[Text], responses: Sequence[Text]) -> list[float]:
        """`[[rating]]` (1-10) of each response; raises the first item's `JudgeFailure`
        (with its position) if any fails. `rate` returns failures in place instead."""
        ratings = self.rate(prompts, responses)
        for i, rating in enumerate(ratings):
            if isinstance(rating, JudgeFailure):
                raise JudgeFailure(rating.reason, f"rating of response {i}: {rating}")
        return ratings

    def rate(
        self, prompts: Sequence[Text], responses: Sequence[Text]
    ) -> list[float | JudgeFailure]:
        """The 1-10 rating of each response, or the `JudgeFailure` that prevented it."""
        texts = [
            rating_prompt(p, r, self.rating_question, answer="verdict")
            for p, r in zip(prompts, responses, strict=True)
        ]
        return [
            failure if failure is not None else value
            for value, failure, _ in self._ask(texts, _read_rating)
        ]

    # ---- asking ------------------------------------------------------------------------

    def _body(self, text: str, **options) -> dict:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return {"messages": [*messages, {"role": "user", "content": text}], **options}

    def _judge_by_logprobs(self, items: list[tuple], results: list) -> list[int]:
        """Fill `results` from option log-probs where the server gives them; return the
        rows left to ask for a verdict."""
        bodies = [
            self._body(
                pairwise_prompt(*item, answer="choice"),
                max_tokens=1,
                temperature=0,
                logprobs=True,
                top_logprobs=self.top_logprobs,
            )
            for item in items
        ]
        fallback = []
        for i, reply in enumerate(self.endpoint.chat_many(bodies)):
            if isinstance(reply, JudgeFailure):
                results[i] = Judgement.failed(reply)
                continue
            probs = option_probabilities(reply)
            output = _content(reply)
            if probs is not None and sum(probs.values()) > 0:
                results[i] = Judgement(probs["A"] / (probs["A"] + probs["B"]), outputs=(output,))
                continue
            if probs is None:
                self.server_logprobs = False
            if self.use_logprobs is True:
                missing = "no log-probs" if probs is None else "no log-prob for A or B"
                failure = JudgeFailure("malformed", f"the server returned {missing}")
                results[i] = Judgement.failed(failure, (output,))
            else:
                fallback.append(i)
        return fallback

    def _ask(
        self, texts: list[str], read: Callable[[str], object]
    ) -> list[tuple[object, JudgeFailure | None, str]]:
        """(value, failure, reply text) per prompt: `read(reply text)` returns the value
        or raises JudgeFailure ("empty" / "malformed"), which is asked again up to
        `malformed_retries` times. Transport failures are final (the endpoint retried)."""
        outcomes: list = [None] * len(texts)
        pending = list(range(len(texts)))
        for attempt in range(self.malformed_retries + 1):
            options = {"max_tokens": self.max_tokens, "temperature": 0}
            if attempt:
                options.update(seed=attempt, temperature=self.retry_temperature)
            bodies = [self._body(texts[i], **options) for i in pending]
            replies = self.endpoint.chat_many(bodies)
            unread = []
            for i, body, reply in zip(pending, bodies, replies, strict=True):
                if isinstance(reply, JudgeFailure):
                    outcomes[i] = (None, reply, "")
                    continue
                text = _content(reply)
                try:
                    outcomes[i] = (read(text), None, text)
                except JudgeFailure as failure:
                    outcomes[i] = (None, failure, text)
                    unread.append(i)
                    self.endpoint.forget(body)  # a later run asks again, not replays it
            pending = unread
            if not pending:
                break
        return outcomes


def option_probabilities(reply: dict) -> dict[str, float] | None:
    """{"A": p, "B": p} from the first generated token's log-probs in a chat completion
    (its own and its `top_logprobs` alternatives, each token counted once; a token
    counts for a letter if it is the letter up to spaces and brackets). None when the
    reply carries no log-probs at all (the server does not give them); zeros when it
    does but neither letter is among them, or no token is shown (the reply ended at once).
    """
    try:
        logprobs = reply["choices"][0].get("logprobs")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    if not isinstance(logprobs, dict):
        return None
    probs = dict.fromkeys(OPTIONS, 0.0)
    content = logprobs.get("content") or []
    if not content or not isinstance(content[0], dict):
        return probs
    first = content[0]
    candidates = {first.get("token"): first.get("logprob")}
    for alternative in first.get("top_logprobs") or []:
        candidates.setdefault(alternative.get("token"), alternative.get("logprob"))
    for token, logprob in candidates.items():
        letter = (token or "").strip().strip("()[]*").strip()
        if letter in probs and isinstance(logprob, (int, float)):
            probs[letter] += math.exp(logprob)
    return probs


def _content(reply: dict) -> str:
    try:
        return reply["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        return ""


def _read_verdict(text: str) -> str:
    if not text.strip():
        raise JudgeFailure("empty", "the judge's reply is empty")
    verdict = parse_verdict(text)
    if verdict is None:
        raise JudgeFailure(
            "malformed", f"no single [[A]] / [[B]] / [[C]] verdict in the reply: {text[:200]!r}"
        )
    return verdict


def _read_rating(text: str) -> float:
    if not text.strip():
        raise JudgeFailure("empty", "the judge's reply is empty")
    rating = parse_rating(text)
    if rating is None:
        raise JudgeFailure(
            "malformed", f"no single [[rating]] from 1 to 10 in the reply: {text[:200]!r}"
        )
    return rating

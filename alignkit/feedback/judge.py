"""The judge interface every consumer of feedback uses (PPO, online methods, evaluation).

A judge answers two questions about responses to a prompt:
- `score(prompt, response) -> float`: how good one response is (higher is better);
- `compare(prompt, a, b) -> float`: the probability that `a` is preferred to `b`.

Prompts and responses are strings (raw text) or, for chat, a prompt as a list of
`{role, content}` messages and a response as the assistant's text.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

Text = str | list[dict]


@runtime_checkable
class Judge(Protocol):
    def score(self, prompt: Text, response: Text) -> float: ...

    def score_batch(self, prompts: Sequence[Text], responses: Sequence[Text]) -> list[float]: ...

    def compare(self, prompt: Text, a: Text, b: Text) -> float: ...


class ScoringJudge(ABC):
    """A judge that scores each response on its own; `compare` then follows the
    Bradley-Terry model the scores were trained under: P(a > b) = sigma(s_a - s_b)."""

    @abstractmethod
    def score_batch(self, prompts: Sequence[Text], responses: Sequence[Text]) -> list[float]:
        """Scores of `responses[i]` to `prompts[i]`."""

    def score(self, prompt: Text, response: Text) -> float:
        return self.score_batch([prompt], [response])[0]

    def compare(self, prompt: Text, a: Text, b: Text) -> float:
        score_a, score_b = self.score_batch([prompt, prompt], [a, b])
        return 1.0 / (1.0 + math.exp(score_b - score_a))

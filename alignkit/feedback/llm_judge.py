"""A local language model as a judge (RLAIF / Constitutional AI feedback).

The judge is shown both responses in fences (`feedback.prompts`) as a multiple-choice
question in its own chat template, its assistant turn begun up to where the option letter
comes ("Answer: ("), and its next-token probabilities of the options are read and
normalised: P(A) / (P(A) + P(B)) is the soft label, as in Constitutional AI (Bai et al.
2022, sec. 4.1). With `chain_of_thought`, it first writes a short reasoning (greedy), and
the option probabilities are read after it; Bai et al. found such labels overconfident
and clamped them to 40-60% (`clamp=(0.4, 0.6)` does the same).

Ratings (`score`) use the same reading: the expected rating under the model's
probabilities of "1" .. "10" after "Rating: [[".

How an option's tokens are found, and "10" read when it is "1" then "0": `OptionReader`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.errors import AlignkitError
from alignkit.feedback.judge import JudgeFailure, Judgement, PairwiseJudge, Text
from alignkit.feedback.prompts import (
    CHOICE_PREFIX,
    DEFAULT_QUESTION,
    DEFAULT_RATING_QUESTION,
    OPTIONS,
    RATING_PREFIX,
    RATINGS,
    neutralise,
    pairwise_prompt,
    rating_prompt,
)
from alignkit.rollout.decoder import open_decoder
from alignkit.rollout.sampling import SamplingSettings, sample

# After a chain of thought, the answer starts a new paragraph.
REASONED_PREFIX = "\n\n" + CHOICE_PREFIX


class LLMJudge(PairwiseJudge):
    """Judges with a causal LM loaded in this process.

    question: what the judge is asked about a pair (per-pair questions go to
    `judge_pairs`). both_orders: ask (a, b) and (b, a) and average (position bias).
    chain_of_thought: reason first, up to `reasoning_tokens` tokens. batch_size: prompts
    per forward pass. clamp: (low, high) bounds for each answer's probability, or None.
    """

    def __init__(
        self,
        model,
        tokenizer,
        question: str = DEFAULT_QUESTION,
        *,
        both_orders: bool = True,
        chain_of_thought: bool = False,
        reasoning_tokens: int = 128,
        rating_question: str = DEFAULT_RATING_QUESTION,
        batch_size: int = 8,
        clamp: tuple[float, float] | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.question = question
        self.both_orders = both_orders
        self.chain_of_thought = chain_of_thought
        self.reasoning_tokens = reasoning_tokens
        self.rating_question = rating_question
        self.batch_size = batch_size
        self.clamp = clamp
        self.encoder = ChatEncoder(tokenizer)
        self.pad_id = pad_token_id(tokenizer)
        # Special tokens typed into a judged text would be read as real ones (a forged
        # end of turn); the prompts break them like the fence markers.
        self.markers = tuple(
            sorted(set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()))
        )
        self.choice = OptionReader(tokenizer, CHOICE_PREFIX, OPTIONS, spellings=("{}", " {}"))
        self.rating = OptionReader(tokenizer, RATING_PREFIX, RATINGS)

    # ---- the judge interface --------------------------------------------------------

    def judge_ordered(
        self,
        prompts: Sequence[Text],
        firsts: Sequence[Text],
        seconds: Sequence[Text],
        questions: Sequence[str],
    ) -> list[Judgement]:
        answer = "reasoning" if self.chain_of_thought else "choice"
        texts = [
            pairwise_prompt(p, a, b, q, answer=answer, markers=self.markers)
            for p, a, b, q in zip(prompts, firsts, seconds, questions, strict=True)
        ]
        if self.chain_of_thought:
            heads = [self.prompt_ids(text) for text in texts]
            reasonings = self._reason(heads)
            ids = [
                h + self._tokens(r + REASONED_PREFIX)
                for h, r in zip(heads, reasonings, strict=True)
            ]
        else:
            reasonings = [""] * len(texts)
            ids = [self.prompt_ids(text, CHOICE_PREFIX) for text in texts]
        probs = self._read(self.choice, ids)
        judgements = []
        for row, reasoning in zip(probs.tolist(), reasonings, strict=True):
            p_a, p_b = row
            shown = f"{reasoning}{REASONED_PREFIX if reasoning else CHOICE_PREFIX}"
            output = f"{shown}A) {p_a:.4g} | B) {p_b:.4g}"
            if p_a + p_b <= 0.0:
                failure = JudgeFailure("malformed", "the judge gives both options probability 0")
                judgements.append(Judgement.failed(failure, (output,)))
                continue
            judgements.append(Judgement(self._bounded(p_a / (p_a + p_b)), outputs=(output,)))
        return judgements

    def score_batch(self, prompts: Sequence[Text], responses: Sequence[Text]) -> list[float]:
        """Expected 1-10 rating: sum_r r P(r) / sum_r P(r) over the rating tokens."""
        ids = [
            self.prompt_ids(
                rating_prompt(p, r, self.rating_question, answer="choice", markers=self.markers),
                RATING_PREFIX,
            )
            for p, r in zip(prompts, responses, strict=True)
        ]
        probs = self._read(self.rating, ids)
        totals = probs.sum(-1)
        if bool((totals <= 0).any()):
            raise JudgeFailure("malformed", "the judge gives every rating probability 0")
        values = torch.tensor([float(r) for r in RATINGS], dtype=torch.float64)
        return ((probs * values).sum(-1) / totals).tolist()

    # ---- prompts ----------------------------------------------------------------------

    def prompt_ids(self, user_text: str, assistant_start: str = "") -> list[int]:
        """Token ids of a one-turn chat asking `user_text`, the assistant's turn opened
        and begun with `assistant_start`."""
        ids = self.encoder.encode_prompt([{"role": "user", "content": user_text}])
        return ids + self._tokens(assistant_start) if assistant_start else ids

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _reason(self, heads: list[list[int]]) -> list[str]:
        """Greedy reasoning after each prompt, cut before any answer line of its own."""
        settings = SamplingSettings(
            max_new_tokens=self.reasoning_tokens, temperature=0.0, stop_strings=("Answer:",)
        )
        texts = []
        with _eval_mode(self.model):
            for start in range(0, len(heads), self.batch_size):
                rollout = sample(
                    self.model,
                    heads[start : start + self.batch_size],
                    settings,
                    eos_ids=self.encoder.stop_token_ids,
                    pad_id=self.pad_id,
                    tokenizer=self.tokenizer,
                )
                texts += rollout.texts(self.tokenizer)
        return [neutralise(t.split("Answer:")[0].strip(), self.markers) for t in texts]

    # ---- reading options -------------------------------------------------------------

    @torch.no_grad()
    def _read(self, reader: OptionReader, ids: list[list[int]]) -> torch.Tensor:
        """(N, L) unnormalised option probabilities for N prompts, `batch_size` per
        forward pass through the sampler's decoder (prompts packed, no padding)."""
        if not ids:
            return torch.zeros(0, len(reader.labels), dtype=torch.float64)
        steps = 1 if reader.continue_from is None else 2
        parts = []
        with _eval_mode(self.model):
            for start in range(0, len(ids), self.batch_size):
                chunk = ids[start : start + self.batch_size]
                decoder = open_decoder(self.model, max_new_tokens=steps, pad_id=self.pad_id)
                first = torch.log_softmax(decoder.prefill(chunk), -1)
                second = None
                if reader.continue_from is not None:
                    token = torch.full(
                        (len(chunk),), reader.continue_from, dtype=torch.long, device=first.device
                    )
                    second = torch.log_softmax(decoder.step(token), -1)
                parts.append(reader.probabilities(first, second))
        return torch.cat(parts)

    def _bounded(self, p: float) -> float:
        return p if self.clamp is None else min(max(p, self.clamp[0]), self.clamp[1])


class OptionReader:
    """Probabilities of `labels` as a model's next text after `prefix`.

    An option's tokens come from the tokenizer, for its text exactly where the answer
    comes (`tokens_after`); each of `spellings` ("{}", " {}": with and without a leading
    space) that is one or two tokens counts, since the model may put its probability on
    either. P(option) sums over its spellings:
    - one token t: P(t), less the probability that t goes on to spell a longer option
      (P("1") covers "1" and "10": P(rating 1) = P("1") (1 - P("0" | "1")));
    - two tokens (t, u): P(t) P(u | t), from one decoding step after t. All two-token
      spellings must start with the same t (`continue_from`), so one step serves every row.
    """

    def __init__(
        self, tokenizer, prefix: str, labels: Sequence[str], spellings: Sequence[str] = ("{}",)
    ):
        self.labels = tuple(labels)
        self.singles: dict[int, int] = {}  # token -> label index
        self.pairs: list[tuple[int, int, int]] = []  # (first token, second token, label index)
        for index, label in enumerate(self.labels):
            readable = False
            for spelling in spellings:
                tokens = tokens_after(tokenizer, prefix, spelling.format(label))
                if tokens is None or not 1 <= len(tokens) <= 2:
                    continue
                readable = True
                if len(tokens) == 1:
                    owner = self.singles.setdefault(tokens[0], index)
                    if owner != index:
                        raise AlignkitError(
                            f"the tokenizer spells options {self.labels[owner]!r} and {label!r} "
                            f"after {prefix!r} with the same token {tokens[0]}"
                        )
                elif (tokens[0], tokens[1], index) not in self.pairs:
                    self.pairs.append((tokens[0], tokens[1], index))
            if not readable:
                raise AlignkitError(
                    f"option {label!r} after {prefix!r} is more than two tokens for this "
                    f"tokenizer, so the judge cannot read its probability"
                )
        firsts = {first for first, _, _ in self.pairs}
        if len(firsts) > 1:
            raise AlignkitError(
                f"options {self.labels} after {prefix!r} need continuations of several "
                f"tokens {sorted(firsts)}; only one can be read per forward pass"
            )
        self.continue_from = firsts.pop() if firsts else None

    def probabilities(
        self, first: torch.Tensor, second: torch.Tensor | None = None
    ) -> torch.Tensor:
        """first: (B, V) next-token log-probs after the prompt; second: (B, V) log-probs
        after `continue_from` (when set). Returns (B, L) float64 option probabilities, in
        `labels` order, not normalised."""
        first = first.double().exp().cpu()
        probs = torch.zeros(first.shape[0], len(self.labels), dtype=torch.float64)
        for token, index in self.singles.items():
            probs[:, index] += first[:, token]
        if self.pairs:
            if second is None:
                raise ValueError("two-token options need the log-probs after continue_from")
            second = second.double().exp().cpu()
            for token, next_token, index in self.pairs:
                both = first[:, token] * second[:, next_token]
                probs[:, index] += both
                if token in self.singles:  # that mass spells the longer option
                    probs[:, self.singles[token]] -= both
        return probs.clamp(min=0.0)


def tokens_after(tokenizer, prefix: str, text: str) -> list[int] | None:
    """The tokens `text` adds after `prefix` when the two are tokenized together; None if
    that changes the prefix's own tokens (a merge across the seam)."""
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    joint = tokenizer(prefix + text, add_special_tokens=False)["input_ids"]
    return joint[len(base) :] if joint[: len(base)] == base else None


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)

"""Turn records into token ids and loss labels.

Rules (DESIGN "Data formats"):
- Loss is on assistant tokens only: `labels` is `IGNORE_INDEX` (-100) everywhere else.
- The assistant's end-of-turn token (the tokenizer's EOS, `<|im_end|>` for SmolLM2) is
  part of the target, so the model learns to stop. Template text after it (SmolLM2 adds
  a newline) is context, not target, and is trimmed off the end of a completion, except
  with `keep_trailing_context=True` (reward models: they are scored on exactly the text
  `apply_chat_template` renders, as other tools feed them).
- Conversational records are rendered with the tokenizer's chat template. The target
  span of assistant turn i is found by rendering the conversation up to turn i (with the
  generation prompt) and checking that its tokens are a prefix of the whole
  conversation's tokens; a template that breaks this raises `TemplateError` instead of
  silently misaligning masks.
- Standard (string) records follow TRL's convention: no template; prompt tokens (with the
  tokenizer's special prefix such as BOS) followed by completion tokens and EOS. The two
  are tokenized separately, which is also how a sampled completion follows its prompt.
- Truncation: the prompt keeps its last `max_prompt_length` tokens (cut from the left),
  the completion its first tokens up to `max_length` in total (cut from the right).
  Records with no room left for a target token are dropped and counted in `report`.

Labels are not shifted: `labels[t]` is the token at position t; the model's loss shifts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import TemplateError

IGNORE_INDEX = -100


@dataclass
class EncodedSequence:
    """One training sequence. `input_ids`, `labels`: (T,) lists of ints."""

    input_ids: list[int]
    labels: list[int]

    def num_targets(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    def features(self) -> dict[str, list[int]]:
        """The dict the collators take: `{"input_ids": ..., "labels": ...}`."""
        return {"input_ids": self.input_ids, "labels": self.labels}


@dataclass
class EncodedCompletion:
    """A prompt and one completion, kept apart so a pair can share the prompt.

    `prompt_ids`: (P,); `completion_ids`, `completion_labels`: (C,).
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    completion_labels: list[int]

    def sequence(self) -> EncodedSequence:
        return EncodedSequence(
            self.prompt_ids + self.completion_ids,
            [IGNORE_INDEX] * len(self.prompt_ids) + self.completion_labels,
        )


@dataclass
class EncodedPair:
    """A preference pair; `chosen.prompt_ids` and `rejected.prompt_ids` are identical."""

    chosen: EncodedCompletion
    rejected: EncodedCompletion

    @property
    def prompt_ids(self) -> list[int]:
        return self.chosen.prompt_ids


@dataclass
class TruncationReport:
    """Counts over the records encoded so far."""

    encoded: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0
    dropped: int = 0
    dropped_examples: list[Any] = field(default_factory=list)
    longest_dropped: int = 0  # tokens of the longest dropped record, before truncation

    def summary(self) -> str:
        return (
            f"{self.encoded} encoded, {self.prompt_truncated} with prompt truncated, "
            f"{self.completion_truncated} with completion truncated, {self.dropped} dropped "
            f"(no room for any target token within max_length)"
        )


class ChatEncoder:
    """Encode records of every kind with one tokenizer and one set of length limits."""

    def __init__(
        self,
        tokenizer,
        *,
        max_length: int | None = None,
        max_prompt_length: int | None = None,
        end_of_turn_ids: set[int] | None = None,
        keep_trailing_context: bool = False,
    ):
        if (
            max_length is not None
            and max_prompt_length is not None
            and max_prompt_length >= max_length
        ):
            raise ValueError(
                f"max_prompt_length ({max_prompt_length}) must be smaller than max_length ({max_length})"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.keep_trailing_context = keep_trailing_context
        if end_of_turn_ids is None:
            end_of_turn_ids = (
                {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
            )
        self.end_of_turn_ids = set(end_of_turn_ids)
        self.report = TruncationReport()

    @property
    def stop_token_ids(self) -> set[int]:
        """Tokens that end a generated reply: EOS and the end-of-turn token(s)."""
        ids = self.end_of_turn_ids | {self.tokenizer.eos_token_id}
        return {i for i in ids if i is not None}

    # ---- public API, one method per record kind -------------------------------------

    def encode_prompt(self, prompt: str | list[dict]) -> list[int]:
        """Prompt tokens as a generation starts from them (chat: with the generation prompt)."""
        ids = self._prompt_ids(prompt)
        if self.max_prompt_length is not None and len(ids) > self.max_prompt_length:
            ids = ids[-self.max_prompt_length :]
        return ids

    def encode_sft(self, record: dict) -> EncodedSequence | None:
        """An sft record -> one sequence, or None if it cannot fit (counted in `report`)."""
        if record.get("messages") is not None:
            ids, labels = self.encode_conversation(record["messages"], first_trainable=0)
            if not self.keep_trailing_context:
                ids, labels = _trim_trailing_context(ids, labels)
            full_length = len(ids)
            truncated = self.max_length is not None and len(ids) > self.max_length
            if truncated:
                ids, labels = ids[: self.max_length], labels[: self.max_length]
            encoded = EncodedSequence(ids, labels)
            if encoded.num_targets() == 0:
                return self._drop(record, full_length)
            self._count(False, truncated)
            return encoded
        completion = self._fit(
            self.encode_completion(record["prompt"], record["completion"]), record
        )
        return completion.sequence() if completion is not None else None

    def encode_pair(self, record: dict) -> EncodedPair | None:
        """A preference record -> chosen and rejected sharing the same prompt tokens."""
        fitted = self.encode_responses(record, [record["chosen"], record["rejected"]])
        return EncodedPair(*fitted) if fitted is not None else None

    def encode_responses(
        self, record: dict, responses: list[str | list[dict]]
    ) -> list[EncodedCompletion] | None:
        """Several responses to `record["prompt"]`, sharing the same (truncated) prompt
        tokens; None if any cannot fit (the record is then dropped, and counted)."""
        prompt_ids = self._prompt_ids(record["prompt"])
        completions = [
            self._completion_after(record["prompt"], prompt_ids, response) for response in responses
        ]
        return self._fit_all(completions, record)

    def encode_unpaired(self, record: dict) -> tuple[EncodedCompletion, bool] | None:
        """An unpaired (KTO) record -> (completion, desirable)."""
        completion = self._fit(
            self.encode_completion(record["prompt"], record["completion"]), record
        )
        return (completion, bool(record["label"])) if completion is not None else None

    def encode_completion(
        self, prompt: str | list[dict], completion: str | list[dict]
    ) -> EncodedCompletion:
        """Prompt + completion, untruncated."""
        return self._completion_after(prompt, self._prompt_ids(prompt), completion)

    # ---- rendering and tokenization ------------------------------------------------

    def _tokens(self, text: str, *, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _render(self, messages: list[dict], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _prompt_ids(self, prompt: str | list[dict]) -> list[int]:
        if isinstance(prompt, str):
            return self._tokens(prompt, special=True)
        return self._tokens(self._render(prompt, generation_prompt=True))

    def _completion_after(
        self, prompt: str | list[dict], prompt_ids: list[int], completion: str | list[dict]
    ) -> EncodedCompletion:
        if isinstance(completion, str):
            ids = self._tokens(completion)
            if self.tokenizer.eos_token_id is not None:
                ids = ids + [self.tokenizer.eos_token_id]
            return EncodedCompletion(list(prompt_ids), ids, list(ids))
        ids, labels = self.encode_conversation(prompt + completion, first_trainable=len(prompt))
        _check_prefix(prompt_ids, ids, what="the prompt")
        ids, labels = ids[len(prompt_ids) :], labels[len(prompt_ids) :]
        if not self.keep_trailing_context:
            ids, labels = _trim_trailing_context(ids, labels)
        return EncodedCompletion(list(prompt_ids), ids, labels)

    def encode_conversation(
        self, messages: list[dict], *, first_trainable: int
    ) -> tuple[list[int], list[int]]:
        """Tokens and labels of a whole conversation; assistant turns from
        `first_trainable` on are targets, up to and including their end-of-turn token."""
        full_ids = self._tokens(self._render(messages, generation_prompt=False))
        labels = [IGNORE_INDEX] * len(full_ids)
        for i in range(first_trainable, len(messages)):
            if messages[i]["role"] != "assistant":
                continue
            start = len(self._prefix_ids(messages[:i], True, full_ids, i))
            end = len(self._prefix_ids(messages[: i + 1], False, full_ids, i))
            stop = end
            for position in range(start, end):
                if full_ids[position] in self.end_of_turn_ids:
                    stop = position + 1
                    break
            labels[start:stop] = full_ids[start:stop]
        return full_ids, labels

    def _prefix_ids(
        self, messages: list[dict], generation_prompt: bool, full_ids: list[int], turn: int
    ) -> list[int]:
        ids = (
            self._tokens(self._render(messages, generation_prompt=generation_prompt))
            if messages
            else []
        )
        _check_prefix(ids, full_ids, what=f"the conversation before assistant turn {turn}")
        return ids

    # ---- truncation -----------------------------------------------------------------

    def _fit(self, completion: EncodedCompletion, record: Any) -> EncodedCompletion | None:
        fitted = self._fit_all([completion], record)
        return fitted[0] if fitted is not None else None

    def _fit_all(
        self, completions: list[EncodedCompletion], record: Any
    ) -> list[EncodedCompletion] | None:
        """Apply the length limits to completions that share one prompt."""
        prompt_ids = completions[0].prompt_ids
        full_length = len(prompt_ids) + max(len(c.completion_ids) for c in completions)
        prompt_truncated = (
            self.max_prompt_length is not None and len(prompt_ids) > self.max_prompt_length
        )
        if prompt_truncated:
            prompt_ids = prompt_ids[-self.max_prompt_length :]
        room = None if self.max_length is None else self.max_length - len(prompt_ids)
        if room is not None and room <= 0:
            return self._drop(record, full_length)
        fitted, completion_truncated = [], False
        for c in completions:
            ids, labels = c.completion_ids, c.completion_labels
            if room is not None and len(ids) > room:
                ids, labels, completion_truncated = ids[:room], labels[:room], True
            if all(label == IGNORE_INDEX for label in labels):
                return self._drop(record, full_length)
            fitted.append(EncodedCompletion(list(prompt_ids), ids, labels))
        self._count(prompt_truncated, completion_truncated)
        return fitted

    def _count(self, prompt_truncated: bool, completion_truncated: bool) -> None:
        self.report.encoded += 1
        self.report.prompt_truncated += int(prompt_truncated)
        self.report.completion_truncated += int(completion_truncated)

    def _drop(self, record: Any, length: int) -> None:
        self.report.dropped += 1
        self.report.longest_dropped = max(self.report.longest_dropped, length)
        if len(self.report.dropped_examples) < 5:
            self.report.dropped_examples.append(record)
        return None


def pad_token_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, or EOS when it has none (masks come
    from lengths, never from this id, so sharing it with EOS is safe)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _check_prefix(prefix: list[int], full: list[int], *, what: str) -> None:
    if full[: len(prefix)] == prefix:
        return
    first = next(
        (i for i, (a, b) in enumerate(zip(prefix, full, strict=False)) if a != b),
        min(len(prefix), len(full)),
    )
    raise TemplateError(
        f"the chat template does not render {what} as a prefix of the whole conversation "
        f"(tokens differ at position {first}); loss masks would be misaligned. Use a template "
        f"whose rendering of a conversation starts with the rendering of its earlier turns."
    )


def _trim_trailing_context(ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """Drop non-target tokens at the very end (e.g. the newline after `<|im_end|>`)."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    return ids[:end], labels[:end]

"""Record kinds and their validation.

A record is a plain dict as read from a file. Five kinds: the four of DESIGN "Data
formats", plus K-way rankings for reward models (InstructGPT-style comparisons):

| kind       | fields                                                                  |
|------------|-------------------------------------------------------------------------|
| sft        | `messages`, or `prompt` + `completion`                                  |
| preference | `prompt` + `chosen` + `rejected`; optional `margin`, `p_chosen`, `id`   |
| unpaired   | `prompt` + `completion` + `label` (bool)                                |
| prompt     | `prompt`                                                                |
| ranking    | `prompt` + `responses` (K >= 2) + `ranking` (response indices, best first) |

Text fields are either a string ("standard" form: raw text, no chat template) or a list
of `{role, content}` messages ("conversational" form: rendered with the chat template),
the same two forms TRL uses. Within one record the forms must agree.

`validate_record` raises `RecordInvalid(field, message)`; the reader adds file and
record number, so users see e.g. `train.jsonl:17: field 'rejected' is missing`.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


class Kind(str, Enum):
    SFT = "sft"
    PREFERENCE = "preference"
    UNPAIRED = "unpaired"
    PROMPT = "prompt"
    RANKING = "ranking"


class RecordInvalid(ValueError):
    """One problem with one record; `field` is a path such as `chosen[1].role`."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message

    def describe(self) -> str:
        return f"field '{self.field}' {self.message}" if self.field else self.message


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def infer_kind(record: Any) -> Kind | None:
    """Guess the kind from the fields present, or None if nothing fits."""
    if not isinstance(record, dict):
        return None
    if "chosen" in record or "rejected" in record:
        return Kind.PREFERENCE
    if "responses" in record or "ranking" in record:
        return Kind.RANKING
    if "label" in record:
        return Kind.UNPAIRED
    if "messages" in record or "completion" in record:
        return Kind.SFT
    if "prompt" in record:
        return Kind.PROMPT
    return None


def validate_record(record: Any, kind: Kind) -> None:
    """Raise `RecordInvalid` if `record` is not a valid record of `kind`."""
    if not isinstance(record, dict):
        raise RecordInvalid(None, f"record is not a JSON object (got {_type_name(record)})")
    _VALIDATORS[Kind(kind)](record)


def _require(record: dict, field: str) -> Any:
    if field not in record or record[field] is None:
        raise RecordInvalid(field, "is missing")
    return record[field]


def _check_messages(value: Any, field: str) -> list[dict]:
    if not isinstance(value, list):
        raise RecordInvalid(
            field, f"must be a string or a list of messages, got {_type_name(value)}"
        )
    if not value:
        raise RecordInvalid(field, "is an empty list of messages")
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise RecordInvalid(
                where, f"must be an object with 'role' and 'content', got {_type_name(message)}"
            )
        role = message.get("role")
        if role is None:
            raise RecordInvalid(f"{where}.role", "is missing")
        if role not in ROLES:
            raise RecordInvalid(
                f"{where}.role", f"has unknown role {role!r} (expected one of {', '.join(ROLES)})"
            )
        content = message.get("content")
        if content is None:
            raise RecordInvalid(f"{where}.content", "is missing")
        if not isinstance(content, str):
            raise RecordInvalid(f"{where}.content", f"must be a string, got {_type_name(content)}")
    return value


def _check_text(record: dict, field: str) -> str:
    """Validate a string-or-messages field; return its form: 'text' or 'messages'."""
    value = _require(record, field)
    if isinstance(value, str):
        if not value.strip():
            raise RecordInvalid(field, "is empty")
        return "text"
    _check_messages(value, field)
    return "messages"


def _check_prompt(record: dict) -> str:
    form = _check_text(record, "prompt")
    if form == "messages" and record["prompt"][-1]["role"] == "assistant":
        raise RecordInvalid(
            "prompt",
            "ends with an assistant message; the completion is what the assistant says next",
        )
    return form


def _check_completion(record: dict, field: str, prompt_form: str) -> None:
    form = _check_text(record, field)
    if form != prompt_form:
        raise RecordInvalid(
            field,
            f"is a {'string' if form == 'text' else 'list of messages'} but 'prompt' is a "
            f"{'string' if prompt_form == 'text' else 'list of messages'}; use the same form for both",
        )
    if form == "messages":
        last = record[field][-1]
        if last["role"] != "assistant":
            raise RecordInvalid(
                f"{field}[-1].role", "must be 'assistant' (the response being trained)"
            )
        if not last["content"].strip():
            raise RecordInvalid(f"{field}[-1].content", "is empty")


def _check_number(
    record: dict, field: str, low: float | None = None, high: float | None = None
) -> None:
    if field not in record or record[field] is None:
        return
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordInvalid(field, f"must be a number, got {_type_name(value)}")
    if not math.isfinite(value):
        raise RecordInvalid(field, f"must be finite, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise RecordInvalid(field, f"must be between {low} and {high}, got {value}")


def _validate_sft(record: dict) -> None:
    if "messages" in record and record["messages"] is not None:
        messages = _check_messages(record["messages"], "messages")
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise RecordInvalid("messages", "has no non-empty assistant message to train on")
        return
    if "prompt" not in record and "completion" not in record:
        raise RecordInvalid(
            "messages", "is missing (an sft record needs 'messages', or 'prompt' and 'completion')"
        )
    _check_completion(record, "completion", _check_prompt(record))


def _validate_preference(record: dict) -> None:
    form = _check_prompt(record)
    _check_completion(record, "chosen", form)
    _check_completion(record, "rejected", form)
    _check_number(record, "margin")
    _check_number(record, "p_chosen", 0.0, 1.0)


def _validate_unpaired(record: dict) -> None:
    _check_completion(record, "completion", _check_prompt(record))
    label = _require(record, "label")
    if not isinstance(label, bool):
        raise RecordInvalid(
            "label", f"must be a boolean (true = desirable), got {_type_name(label)}"
        )


def _validate_prompt(record: dict) -> None:
    _check_prompt(record)


def _validate_ranking(record: dict) -> None:
    form = _check_prompt(record)
    responses = _require(record, "responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise RecordInvalid(
            "responses", f"must be a list of at least 2 responses, got {_describe(responses)}"
        )
    for i in range(len(responses)):
        _check_completion(
            {"prompt": record["prompt"], f"responses[{i}]": responses[i]}, f"responses[{i}]", form
        )
    ranking = _require(record, "ranking")
    if not isinstance(ranking, list) or sorted(
        r if isinstance(r, int) and not isinstance(r, bool) else -1 for r in ranking
    ) != list(range(len(responses))):
        raise RecordInvalid(
            "ranking",
            f"must list every index 0..{len(responses) - 1} of 'responses' once, best first; "
            f"got {ranking!r}",
        )


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return _type_name(value)


_VALIDATORS = {
    Kind.SFT: _validate_sft,
    Kind.PREFERENCE: _validate_preference,
    Kind.UNPAIRED: _validate_unpaired,
    Kind.PROMPT: _validate_prompt,
    Kind.RANKING: _validate_ranking,
}

"""Convert Anthropic-HH style raw text to conversational preference records.

An HH record has `chosen` and `rejected` strings, each a whole dialogue:

    "\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: Capital of France?\\n\\nAssistant: Paris."

The two share every turn but the last Assistant turn. The converted record is
`{prompt: [messages before the last turn], chosen: [last turn], rejected: [last turn]}`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from alignkit.data.loading import RecordProblem, write_rejects
from alignkit.data.readers import Unreadable, read_raw
from alignkit.data.records import Kind, RecordInvalid, validate_record
from alignkit.errors import DataError

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh_dialogue(text: str, field: str) -> list[dict[str, str]]:
    """Split one HH dialogue string into `{role, content}` messages."""
    if not isinstance(text, str):
        raise RecordInvalid(field, f"must be an HH dialogue string, got {type(text).__name__}")
    pieces = _TURN.split(text)
    if pieces[0].strip():
        raise RecordInvalid(
            field, "must start with '\\n\\nHuman: ' (text found before the first turn)"
        )
    if len(pieces) < 3:
        raise RecordInvalid(field, "has no '\\n\\nHuman: ' / '\\n\\nAssistant: ' turns")
    return [
        {"role": _ROLE[speaker], "content": content.strip()}
        for speaker, content in zip(pieces[1::2], pieces[2::2], strict=True)
    ]


def convert_hh_record(raw: Any) -> dict[str, Any]:
    """One HH record -> one validated preference record (raises `RecordInvalid`)."""
    if not isinstance(raw, dict):
        raise RecordInvalid(None, "record is not a JSON object")
    for field in ("chosen", "rejected"):
        if field not in raw:
            raise RecordInvalid(field, "is missing")
    chosen = parse_hh_dialogue(raw["chosen"], "chosen")
    rejected = parse_hh_dialogue(raw["rejected"], "rejected")
    for field, dialogue in (("chosen", chosen), ("rejected", rejected)):
        if dialogue[-1]["role"] != "assistant":
            raise RecordInvalid(field, "does not end with an Assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise RecordInvalid(
            "rejected",
            "does not share the conversation before the final Assistant turn with 'chosen'",
        )
    record: dict[str, Any] = {
        "prompt": chosen[:-1],
        "chosen": chosen[-1:],
        "rejected": rejected[-1:],
    }
    for extra in ("id", "margin"):
        if extra in raw:
            record[extra] = raw[extra]
    validate_record(record, Kind.PREFERENCE)
    return record


def convert_hh_file(
    src: str | Path,
    dst: str | Path,
    *,
    skip_invalid: bool = False,
    rejects_path: str | Path | None = None,
) -> tuple[int, list[RecordProblem]]:
    """Convert a whole file; returns (records written, problems set aside).

    Without `skip_invalid`, any bad record raises `DataError` and `dst` is not written.
    """
    converted: list[dict[str, Any]] = []
    problems: list[RecordProblem] = []
    for location, raw in read_raw(src):
        if isinstance(raw, Unreadable):
            problems.append(RecordProblem(location, raw.message, raw.raw))
            continue
        try:
            converted.append(convert_hh_record(raw))
        except RecordInvalid as err:
            problems.append(RecordProblem(location, err.describe(), raw))
    if problems and not skip_invalid:
        shown = "\n".join(str(p) for p in problems[:20])
        raise DataError(
            f"{src}: {len(problems)} record(s) could not be converted\n{shown}", problems
        )
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for record in converted:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(dst)
    if problems:
        write_rejects(
            Path(rejects_path) if rejects_path else Path(f"{dst}.rejects.jsonl"), problems
        )
    return len(converted), problems

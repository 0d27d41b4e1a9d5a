"""What the AI-feedback pipelines (`alignkit label`, `alignkit cai`) share: reading a
prompts file into keyed items, choosing what a (resumed) run still has to do, and
writing the outputs from the label store.

An item's key names its content, not its line number: the record's `id` if it has one,
else a digest of its prompt (with `#2`, `#3`, ... for repeats). So a prompts file that
is reordered, or grows, resumes onto the labels already paid for, and the principle
drawn for an item (`Constitution.principle_for(key, seed)`) stays the same.

Outputs are written at the end of a run, from the store, in input order, each file
atomically: every item labelled so far appears exactly once, whichever runs labelled it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.data.loading import chunks, iter_checked, record_progress
from alignkit.data.records import Kind
from alignkit.errors import AlignkitError, DataError
from alignkit.feedback.label_store import DONE, FAILED, LabelStore
from alignkit.fsutil import atomic_jsonl


@dataclass(frozen=True)
class PromptItem:
    key: str
    position: int
    record: dict  # the input record as read

    @property
    def conversation(self) -> list[dict]:
        return as_conversation(self.record["prompt"])


def as_conversation(prompt: str | list[dict]) -> list[dict]:
    """A prompt as chat messages. A string prompt is one user turn: the policy answers it
    through its chat template, so the records written say exactly what it was shown."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def read_prompt_items(data: str | Path) -> list[PromptItem]:
    """Every record of a prompts file as a keyed item; any invalid record is an error
    naming the file, the record and the field (nothing is labelled)."""
    items: list[PromptItem] = []
    repeats: Counter[str] = Counter()
    ids: dict[str, int] = {}
    for location, record, problem in iter_checked(data, Kind.PROMPT):
        if problem is not None:
            raise DataError(f"{problem} (nothing labelled)", [problem])
        if record.get("id") is not None:
            key = f"id:{record['id']}"
            if key in ids:
                raise DataError(
                    f"{location}: field 'id' repeats {record['id']!r} of record {ids[key] + 1}; "
                    "ids name items in the label store, so they must be unique"
                )
            ids[key] = len(items)
        else:
            digest = hashlib.sha256(_canonical(record["prompt"]).encode()).hexdigest()[:20]
            repeats[digest] += 1
            key = f"prompt:{digest}" + (f"#{repeats[digest]}" if repeats[digest] > 1 else "")
        items.append(PromptItem(key, len(items), record))
    if not items:
        raise DataError(f"{data}: no prompts")
    return items


# Loader options that change where or how fast work runs, not which labels come out (and
# a secret that must not be written to disk): left out of the stored run config.
RUNTIME_OPTIONS = frozenset(
    {
        "device",
        "dtype",
        "batch_size",
        "cache",
        "api_key",
        "timeout",
        "retries",
        "backoff",
        "max_backoff",
        "max_concurrency",
    }
)


def labelling_options(options: dict) -> dict:
    """The options that belong in a run's stored config."""
    return {k: v for k, v in options.items() if k not in RUNTIME_OPTIONS}


def spec_name(spec) -> str:
    """How a policy or judge is named in the config and the records: its spec, or for
    an object its `name` (else its class)."""
    if isinstance(spec, (str, Path)):
        return str(spec)
    return str(getattr(spec, "name", None) or type(spec).__name__)


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass
class RunReport:
    """What a run did. done: items labelled by this run; resumed: labelled by an earlier
    run (skipped); failed: still unlabelled at the end, with `reasons` counted (those that
    reached `max_attempts` are in `gave_up` and are not tried again)."""

    items: int = 0
    done: int = 0
    resumed: int = 0
    failed: int = 0
    gave_up: int = 0
    retried: int = 0
    reasons: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)  # counted events that are not failures
    written: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        text = (
            f"{self.items} prompts: {self.done} done, {self.resumed} resumed from the store, "
            f"{self.failed} failed"
        )
        if self.reasons:
            text += " (" + ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common()) + ")"
        if self.retried:
            text += f"; {self.retried} earlier failures retried"
        if self.gave_up:
            text += (
                f"; {self.gave_up} not retried after reaching --max-attempts "
                "(raise it to try them again)"
            )
        if self.notes:
            text += "; " + ", ".join(f"{n} {what}" for what, n in self.notes.most_common())
        return text


def run_items(
    run_dir: str | Path,
    config: dict[str, Any],
    data: str | Path,
    items: list[PromptItem],
    *,
    make_step: Callable[[LabelStore, RunReport], Callable[[list[PromptItem]], None]],
    outputs: dict[str, Path],
    max_attempts: int,
    batch_size: int,
    progress: bool,
    desc: str,
) -> RunReport:
    """The frame of a labelling run: open the store (refusing another config), plan the
    items still to do, feed them `batch_size` at a time to the step `make_step(store,
    report)` builds (only when there is work, so models load only then), then write
    `outputs` from the store."""
    report = RunReport()
    with LabelStore(run_dir, config) as store:
        todo = plan(store, items, max_attempts, report)
        if todo:
            step = make_step(store, report)
            with record_progress(data, progress, unit="prompt", desc=desc) as advance:
                advance(len(items) - len(todo))
                for batch in chunks(todo, batch_size):
                    step(batch)
                    advance(len(batch))
        write_outputs(store, items, outputs, report)
    return report


def plan(
    store: LabelStore, items: list[PromptItem], max_attempts: int, report: RunReport
) -> list[PromptItem]:
    """Register `items` in the store and return those still to do: new ones, and failed
    ones under `max_attempts`. Fills the report's resumed / retried / gave_up counts."""
    if max_attempts < 1:
        raise AlignkitError(f"max_attempts must be at least 1, got {max_attempts}")
    store.add_items([(item.key, item.position, item.record) for item in items])
    state = {stored.key: stored for stored in store.items([item.key for item in items])}
    report.items = len(items)
    todo = []
    for item in items:
        stored = state[item.key]
        if stored.status == DONE:
            report.resumed += 1
        elif stored.status == FAILED and stored.attempts >= max_attempts:
            report.gave_up += 1
            report.failed += 1
            report.reasons[stored.failure or "unknown"] += 1
        else:
            report.retried += stored.status == FAILED
            todo.append(item)
    return todo


def write_outputs(
    store: LabelStore, items: list[PromptItem], outputs: dict[str, Path], report: RunReport
) -> None:
    """Write each output file from the store: a done item's result is a dict of output
    name -> list of records; records go to `outputs[name]`, items in input order."""
    results = {stored.key: stored.result for stored in store.items([i.key for i in items])}
    for name, path in outputs.items():
        report.written[name] = 0
        with atomic_jsonl(path) as write:
            for item in items:
                for record in (results.get(item.key) or {}).get(name, []):
                    write(record)
                    report.written[name] += 1

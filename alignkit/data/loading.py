"""Load and validate a data file: the one entry point every command uses for records."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.data.readers import Location, Unreadable, read_raw
from alignkit.data.records import Kind, RecordInvalid, infer_kind, validate_record
from alignkit.errors import DataError

log = logging.getLogger(__name__)

MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class RecordProblem:
    """Why one record was rejected: `str()` reads `train.jsonl:17: field 'x' is missing`."""

    location: Location
    message: str
    raw: Any = None

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


@dataclass
class LoadedRecords:
    """Valid records of one file, plus what was set aside."""

    records: list[dict[str, Any]]
    kind: Kind
    source: str
    rejected: list[RecordProblem] = field(default_factory=list)
    rejects_path: Path | None = None

    def __len__(self) -> int:
        return len(self.records)


KindSpec = Kind | str | tuple | None


def iter_checked(
    path: str | Path, kind: KindSpec = None
) -> Iterator[tuple[Location, Any, RecordProblem | None]]:
    """Stream `(location, record, problem)`; `problem` is None for a valid record.

    With `kind=None` the kind is inferred from the first record that looks like one. A
    tuple of kinds accepts a mix: each record is checked as the kind its fields suggest
    if that kind is allowed, else as the first one (whose error then says what is
    missing). Memory stays constant in file size (used by streaming commands such as
    scoring).
    """
    allowed = tuple(Kind(k) for k in kind) if isinstance(kind, tuple) else None
    wanted = Kind(kind) if kind is not None and allowed is None else None
    for location, value in read_raw(path):
        if isinstance(value, Unreadable):
            yield location, value.raw, RecordProblem(location, value.message, value.raw)
            continue
        if allowed is not None:
            guess = infer_kind(value)
            wanted = guess if guess in allowed else allowed[0]
        if wanted is None:
            wanted = infer_kind(value)
            if wanted is None:
                fields = ", ".join(value) if isinstance(value, dict) else type(value).__name__
                yield (
                    location,
                    value,
                    RecordProblem(
                        location,
                        f"cannot tell the record kind from its fields ({fields}); pass kind explicitly",
                        value,
                    ),
                )
                continue
        try:
            validate_record(value, wanted)
        except RecordInvalid as err:
            yield location, value, RecordProblem(location, err.describe(), value)
            continue
        yield location, value, None


def load_records(
    path: str | Path,
    kind: KindSpec = None,
    *,
    skip_invalid: bool = False,
    rejects_path: str | Path | None = None,
) -> LoadedRecords:
    """Read and validate every record of `path`.

    Invalid records raise `DataError` listing each (file, record number, field, what was
    expected). With `skip_invalid=True` they are written instead, one JSON object per
    line with the reason, to `rejects_path` (default: `<path>.rejects.jsonl`), counted and
    reported; nothing is dropped silently.
    """
    records: list[dict[str, Any]] = []
    problems: list[RecordProblem] = []
    resolved_kind = Kind(kind) if kind is not None and not isinstance(kind, tuple) else None
    for _location, value, problem in iter_checked(path, kind):
        if problem is not None:
            problems.append(problem)
        else:
            records.append(value)
            if resolved_kind is None:
                resolved_kind = infer_kind(value)
    if problems and not skip_invalid:
        raise DataError(_summarise(path, problems), problems)
    if not records:
        raise DataError(f"{path}: no valid records (all {len(problems)} were invalid)", problems)
    loaded = LoadedRecords(records, resolved_kind, str(path), problems)
    if problems:
        loaded.rejects_path = Path(rejects_path) if rejects_path else Path(f"{path}.rejects.jsonl")
        write_rejects(loaded.rejects_path, problems)
        log.warning(
            "%s: skipped %d invalid record(s) of %d; reasons in %s",
            path,
            len(problems),
            len(problems) + len(records),
            loaded.rejects_path,
        )
    return loaded


def write_rejects(path: Path, problems: list[RecordProblem]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for problem in problems:
            entry = {
                "location": str(problem.location),
                "error": problem.message,
                "record": problem.raw,
            }
            out.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")


def _summarise(path: str | Path, problems: list[RecordProblem]) -> str:
    lines = [str(p) for p in problems[:MAX_PROBLEMS_SHOWN]]
    if len(problems) > MAX_PROBLEMS_SHOWN:
        lines.append(f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    head = f"{path}: {len(problems)} invalid record(s) (pass skip_invalid to set them aside in a rejects file)"
    return "\n".join([head, *lines])


def chunks(items, size: int):
    """Lists of `size` consecutive items (the last may be shorter), lazily."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextmanager
def record_progress(
    data: str | Path, enabled: bool, *, unit: str, desc: str
) -> Iterator[Callable[[int], None]]:
    """A progress bar over the records of `data` for a command that streams it; yields
    `advance(n)`. The total is known for a JSONL file (one cheap pass over its lines,
    constant memory); `enabled=False` yields a no-op."""
    if not enabled:
        yield lambda n: None
        return
    from tqdm.auto import tqdm

    total = None
    path = Path(data)
    if path.is_file() and path.suffix == ".jsonl":
        with open(path, "rb") as lines:
            total = sum(1 for line in lines if line.strip())
    bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()

"""Read raw records from JSONL, JSON, CSV, Parquet and `datasets` folders saved to disk.

Every reader streams `(Location, value)` pairs where `value` is the parsed record or an
`Unreadable` saying why that one record could not be parsed (bad JSON, bad UTF-8, ...).
A record that cannot be parsed never stops the others from being read, so `skip_invalid`
can set it aside; problems with the file as a whole (missing, empty, unsupported type)
raise `DataError` at once.

`datasets` folders are read with pyarrow directly (the Arrow stream files that
`Dataset.save_to_disk` writes), so the `datasets` package is not a dependency.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import DataError

SUPPORTED = ".jsonl, .json, .csv, .parquet, or a folder saved by datasets' save_to_disk"

# CSV cells are strings; these fields may hold a JSON list of messages.
_CSV_JSON_FIELDS = ("messages", "prompt", "completion", "chosen", "rejected")
_CSV_NUMBER_FIELDS = ("margin", "p_chosen")
_CSV_BOOLS = {"true": True, "false": False, "1": True, "0": False}


@dataclass(frozen=True)
class Location:
    """Where a record came from: 1-based `index` counts lines (JSONL) or records."""

    source: str
    index: int
    unit: str = "record"

    def __str__(self) -> str:
        if self.unit == "line":
            return f"{self.source}:{self.index}"
        return f"{self.source}: record {self.index}"


@dataclass(frozen=True)
class Unreadable:
    """A record that could not be parsed; `raw` is its text where there is one."""

    message: str
    raw: str | None = None


Item = tuple[Location, "dict[str, Any] | Any | Unreadable"]


def read_raw(path: str | Path) -> Iterator[Item]:
    """Stream every record of `path`; raise `DataError` for file-level problems."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        reader = _read_datasets_folder
    else:
        suffix = path.suffix.lower()
        reader = _READERS.get(suffix)
        if reader is None:
            raise DataError(
                f"{path}: unsupported file type '{suffix or path.name}' (expected {SUPPORTED})"
            )
        if path.stat().st_size == 0:
            raise DataError(f"{path}: file is empty (no records)")
    count = 0
    for item in reader(path):
        count += 1
        yield item
    if count == 0:
        raise DataError(f"{path}: file is empty (no records)")


def _describe_unicode_error(err: UnicodeDecodeError) -> str:
    return f"bytes are not valid UTF-8 (byte 0x{err.object[err.start]:02x} at offset {err.start})"


def _read_jsonl(path: Path) -> Iterator[Item]:
    source = str(path)
    with open(path, "rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            where = Location(source, number, "line")
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as err:
                yield (
                    where,
                    Unreadable(_describe_unicode_error(err), raw_line.decode("utf-8", "replace")),
                )
                continue
            if not line.strip():
                continue  # blank lines (often a trailing newline) are not records
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, Unreadable(_describe_json_error(err, line), line.rstrip("\n"))


def _describe_json_error(err: json.JSONDecodeError, text: str) -> str:
    # A string still open at the end, or an error at the very end, means the text stops early.
    if err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string"):
        return f"truncated JSON (the record ends early: {err.msg})"
    return f"not valid JSON: {err.msg} at column {err.colno}"


def _read_json(path: Path) -> Iterator[Item]:
    source = str(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{source}:{line}: {_describe_unicode_error(err)}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{source}:{err.lineno}: {_describe_json_error(err, text)}") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(
            f"{source}: expected a JSON array of records, got a JSON {type(value).__name__}"
        )
    for number, record in enumerate(value, start=1):
        yield Location(source, number), record


class _BadLine(Exception):
    def __init__(self, line: int, err: UnicodeDecodeError):
        self.line, self.err = line, err


def _decoded_lines(binary) -> Iterator[str]:
    """Decode line by line so a bad byte is reported at its own line."""
    for number, raw in enumerate(binary, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _BadLine(number, err) from None


def _read_csv(path: Path) -> Iterator[Item]:
    source = str(path)
    with open(path, "rb") as binary:
        reader = csv.DictReader(_decoded_lines(binary))
        number = 0
        while True:
            number += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except _BadLine as bad:
                yield (
                    Location(source, bad.line, "line"),
                    Unreadable(_describe_unicode_error(bad.err)),
                )
                return  # the csv reader cannot continue past a failed line
            except csv.Error as err:
                yield Location(source, number), Unreadable(f"malformed CSV: {err}")
                continue
            yield Location(source, number), _csv_row_to_record(row)


def _csv_row_to_record(row: dict[str, str | None]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in row.items():
        if key is None:  # more cells than header columns
            record["__extra_cells__"] = value
            continue
        if value is None or (value == "" and key in (*_CSV_NUMBER_FIELDS, "label", "id")):
            continue  # an empty optional cell means "not given"
        if key in _CSV_JSON_FIELDS and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # a plain string that happens to start with '['
        elif key in _CSV_NUMBER_FIELDS:
            try:
                value = float(value)
            except ValueError:
                pass  # left as a string, so validation names the field
        elif key == "label":
            value = _CSV_BOOLS.get(value.strip().lower(), value)
        record[key] = value
    return record


def _read_parquet(path: Path) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    yield from _rows(str(path), parquet.iter_batches(batch_size=1024))


def _rows(source: str, batches) -> Iterator[Item]:
    number = 0
    for batch in batches:
        for record in batch.to_pylist():
            number += 1
            yield Location(source, number), record


def _read_datasets_folder(path: Path) -> Iterator[Item]:
    """A folder written by `Dataset.save_to_disk` (state.json + Arrow stream files)."""
    import pyarrow as pa

    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        if "train" not in splits and len(splits) != 1:
            raise DataError(
                f"{path}: a DatasetDict with splits {', '.join(splits)}; give one split's folder, "
                f"e.g. {path / splits[0]}"
            )
        path = path / ("train" if "train" in splits else splits[0])
    state_file = path / "state.json"
    if not state_file.exists():
        raise DataError(
            f"{path}: a folder, but not one saved by datasets' save_to_disk (no state.json); expected {SUPPORTED}"
        )
    state = json.loads(state_file.read_text())

    def batches():
        for entry in state["_data_files"]:
            with pa.memory_map(str(path / entry["filename"])) as source:
                yield from pa.ipc.open_stream(source)

    yield from _rows(str(path), batches())


_READERS = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}

"""Shared test set-up.

Tests keep their own cache home inside the checkout (`.cache/test-home`, git-ignored):
a fresh clone converts the default model once, later runs reuse it, and nothing touches
the user's `~/.cache/alignkit`. The hub is forced offline so no test can download.
"""

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ALIGNKIT_HOME", str(ROOT / ".cache" / "test-home"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    from alignkit.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture()
def write_jsonl(tmp_path):
    """Write records (dicts, or raw strings/bytes used as lines verbatim) to a JSONL file."""

    def write(records, name="data.jsonl"):
        path = tmp_path / name
        with open(path, "wb") as out:
            for record in records:
                if isinstance(record, bytes):
                    out.write(record + b"\n")
                elif isinstance(record, str):
                    out.write(record.encode() + b"\n")
                else:
                    out.write(json.dumps(record).encode() + b"\n")
        return path

    return write

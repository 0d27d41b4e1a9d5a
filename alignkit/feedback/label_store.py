"""The label store: one SQLite file per labelling run that holds everything paid for.

AI feedback costs model time or API money per call, so the store follows one rule: a
label, once paid for, is never lost or requested twice (DESIGN "Reliability"). Every
write is one SQLite transaction in WAL mode with `synchronous=FULL`, so a process killed
at any instant (SIGKILL, power loss) leaves the file at the last committed state: the
work lost is the batch in flight, never a stored answer, and no half-written item.

Tables:

- `meta`: the run's config (JSON). A resume with a different config is refused, since
  mixing labels made under two settings in one output would be silent corruption.
- `items`: one row per example: `key`, `position` (input order, for writing the output),
  `inputs` (JSON), `status` (`pending` / `done` / `failed`), `attempts`, the last
  `failure` reason and, once done, `result` (JSON: what the output holds for the item).
  `done` is final: `finish` refuses to label an item twice.
- `stages`: intermediate outputs per item (sampled responses, critiques, revisions),
  each stored as it arrives so a resume continues from the last stage reached.
- `requests`: every judge request and its answer or failure, with the attempt number. A
  partial unique index allows one successful answer per (item, request name): the
  database itself refuses a second paid answer for the same question.

Readers (`alignkit label`, `alignkit cai`, or a person with the `sqlite3` shell) may
read while a run writes; only one process may write (a lock file beside the database).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError

STORE_NAME = "labels.sqlite"
SCHEMA_VERSION = 1

PENDING, DONE, FAILED = "pending", "done", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    inputs TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    failure TEXT,
    result TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stages (
    item TEXT NOT NULL REFERENCES items(key),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (item, name)
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    item TEXT NOT NULL REFERENCES items(key),
    name TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    request TEXT NOT NULL,
    answer TEXT,
    failure TEXT,
    created REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_paid_answer ON requests (item, name) WHERE failure IS NULL;
"""


class StoreError(AlignkitError):
    """A label store that cannot be used as asked (other config, busy, damaged)."""


@dataclass(frozen=True)
class Item:
    key: str
    position: int
    inputs: Any
    status: str
    attempts: int
    failure: str | None
    result: Any


@dataclass(frozen=True)
class Request:
    """One judge request as sent (`request`), with its `answer` or its `failure`."""

    item: str
    name: str
    attempt: int
    request: Any
    answer: Any
    failure: str | None


class LabelStore:
    """Open (or create) the store of the run in `run_dir` for the run described by
    `config` (a JSON-serialisable dict). Use as a context manager, or call `close`."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / STORE_NAME
        self._lock = _acquire_lock(self.run_dir / f"{STORE_NAME}.lock")
        try:
            # isolation_level=None: no implicit transactions; `_transaction` opens each
            # one explicitly, so what is committed together is visible in the code.
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss too
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._transaction() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
            self.resumed = self._check_config(config)
        except sqlite3.DatabaseError as err:
            self.close()
            raise StoreError(f"{self.path}: not a usable label store ({err})") from None
        except BaseException:
            self.close()
            raise

    # -- life cycle ---------------------------------------------------------------------

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error: all or nothing."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _check_config(self, config: dict[str, Any]) -> bool:
        """Store `config` on first use; on resume refuse a different one. Returns whether
        this is a resume."""
        wanted = {"schema": SCHEMA_VERSION, **config}
        text = json.dumps(wanted, sort_keys=True)
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('config', ?)", (text,))
                return False
        stored = json.loads(row[0])
        if stored != json.loads(text):
            changed = sorted(
                k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k)
            )
            details = "; ".join(
                f"{k}: stored {_short(stored.get(k))}, now {_short(wanted.get(k))}" for k in changed
            )
            raise StoreError(
                f"{self.run_dir} holds a run with different settings ({details}). Resume with "
                "the same settings, or choose another run folder (--run-dir / --out-dir) to "
                "start a new run."
            )
        return True

    @property
    def config(self) -> dict[str, Any]:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        return json.loads(row[0])

    # -- items --------------------------------------------------------------------------

    def add_items(self, items: list[tuple[str, int, Any]]) -> None:
        """Register `(key, position, inputs)` for every example; known keys keep their
        state (their position is updated: the output follows the current input order).
        An existing key whose inputs differ is an error: its stored labels belong to
        other inputs."""
        now = time.time()
        with self._transaction() as db:
            for key, position, inputs in items:
                text = _dumps(inputs, canonical=True)
                row = db.execute("SELECT inputs FROM items WHERE key = ?", (key,)).fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO items (key, position, inputs, updated) VALUES (?, ?, ?, ?)",
                        (key, position, text, now),
                    )
                elif row[0] != text:
                    raise StoreError(
                        f"{self.path}: item {key!r} (record {position + 1}) was stored with "
                        f"other inputs ({_short(json.loads(row[0]))}, now {_short(inputs)}); "
                        "give changed records new ids or use another run folder"
                    )
                else:
                    db.execute("UPDATE items SET position = ? WHERE key = ?", (position, key))

    def items(self, keys: list[str] | None = None) -> list[Item]:
        """Items in input order (all of them, or those of `keys`)."""
        rows = self._db.execute(
            "SELECT key, position, inputs, status, attempts, failure, result FROM items "
            "ORDER BY position"
        ).fetchall()
        wanted = None if keys is None else set(keys)
        return [_item(row) for row in rows if wanted is None or row[0] in wanted]

    def item(self, key: str) -> Item:
        row = self._db.execute(
            "SELECT key, position, inputs, status, attempts, failure, result FROM items "
            "WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            raise KeyError(key)
        return _item(row)

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall()
        return {PENDING: 0, DONE: 0, FAILED: 0, **dict(rows)}

    def answer(
        self, key: str, name: str, request: Any, answer: Any, failure: str | None = None
    ) -> None:
        """Store one request's answer and the item's outcome in one transaction: the
        request with its `answer` and the item done with `answer` as its result, or, with
        a `failure`, the failed request and the item failed. (Online methods ask one
        question per item and store each answer the moment it arrives: one commit, the
        smallest window in which a kill loses a paid answer.)"""
        with self._transaction():
            self._record(key, name, request, None if failure else answer, failure, time.time())
            self._set_outcome(key, answer, failure)

    def _set_outcome(self, key: str, result: Any, failure: str | None) -> None:
        if failure is not None:
            self._db.execute(
                "UPDATE items SET status = 'failed', failure = ?, attempts = attempts + 1, "
                "updated = ? WHERE key = ? AND status != 'done'",
                (failure, time.time(), key),
            )
            return
        changed = self._db.execute(
            "UPDATE items SET status = 'done', result = ?, failure = NULL, "
            "attempts = attempts + 1, updated = ? WHERE key = ? AND status != 'done'",
            (_dumps(result), time.time(), key),
        ).rowcount
        if changed != 1:
            raise StoreError(f"{self.path}: item {key!r} is already labelled (or unknown)")

    def finish(self, key: str, result: Any) -> None:
        """Record an item's final label. Done is final: finishing twice is an error, so a
        label can never be recorded (or paid for) a second time."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE items SET status = 'done', result = ?, failure = NULL, "
                "attempts = attempts + 1, updated = ? WHERE key = ? AND status != 'done'",
                (_dumps(result), time.time(), key),
            ).rowcount
            if changed != 1:
                raise StoreError(f"{self.path}: item {key!r} is already labelled (or unknown)")

    def fail(self, key: str, reason: str) -> None:
        """Count a failed attempt at an item; it stays unlabelled and may be retried."""
        with self._transaction() as db:
            db.execute(
                "UPDATE items SET status = 'failed', failure = ?, attempts = attempts + 1, "
                "updated = ? WHERE key = ? AND status != 'done'",
                (reason, time.time(), key),
            )

    # -- stages -------------------------------------------------------------------------

    def put_stage(self, key: str, name: str, value: Any) -> None:
        self.put_stages([(key, name, value)])

    def put_stages(self, entries: list[tuple[str, str, Any]]) -> None:
        """Store `(item, stage name, value)` entries together. A stage is written once:
        storing it again keeps the first value (what later stages were built on)."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO stages VALUES (?, ?, ?, ?)",
                [(key, name, _dumps(value), now) for key, name, value in entries],
            )

    def stages(self, key: str) -> dict[str, Any]:
        rows = self._db.execute(
            "SELECT name, value FROM stages WHERE item = ? ORDER BY created, rowid", (key,)
        ).fetchall()
        return {name: json.loads(value) for name, value in rows}

    # -- judge requests -----------------------------------------------------------------

    def answers(self, key: str) -> dict[str, Any]:
        """The paid answers of an item's requests, by request name."""
        rows = self._db.execute(
            "SELECT name, answer FROM requests WHERE item = ? AND failure IS NULL", (key,)
        ).fetchall()
        return {name: json.loads(answer) for name, answer in rows}

    def record_requests(self, entries: list[tuple[str, str, Any, Any, str | None]]) -> None:
        """Log `(item, request name, request, answer, failure)` entries in one transaction:
        a judge batch's answers are stored together, as soon as they arrive. The attempt
        number is counted per (item, name)."""
        now = time.time()
        with self._transaction():
            for key, name, request, answer, failure in entries:
                self._record(key, name, request, answer, failure, now)

    def _record(self, key, name, request, answer, failure, now) -> None:
        """Insert one request row (inside a transaction)."""
        db = self._db
        (attempt,) = db.execute(
            "SELECT COUNT(*) + 1 FROM requests WHERE item = ? AND name = ?", (key, name)
        ).fetchone()
        try:
            db.execute(
                "INSERT INTO requests (item, name, attempt, request, answer, failure, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    name,
                    attempt,
                    _dumps(request),
                    None if answer is None else _dumps(answer),
                    failure,
                    now,
                ),
            )
        except sqlite3.IntegrityError:
            raise StoreError(
                f"{self.path}: item {key!r} already has a paid answer to {name!r}; "
                "refusing to record a second one"
            ) from None

    def requests(self, key: str | None = None) -> list[Request]:
        """The request log (of one item, or all), oldest first."""
        query = "SELECT item, name, attempt, request, answer, failure FROM requests"
        rows = self._db.execute(
            query + (" WHERE item = ? ORDER BY id" if key is not None else " ORDER BY id"),
            (key,) if key is not None else (),
        ).fetchall()
        return [
            Request(
                item, name, attempt, json.loads(req), None if ans is None else json.loads(ans), fail
            )
            for item, name, attempt, req, ans, fail in rows
        ]


def _item(row) -> Item:
    key, position, inputs, status, attempts, failure, result = row
    return Item(
        key,
        position,
        json.loads(inputs),
        status,
        attempts,
        failure,
        None if result is None else json.loads(result),
    )


def _dumps(value: Any, *, canonical: bool = False) -> str:
    """JSON text; `canonical` sorts keys, for values compared as text (inputs, config)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=canonical)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _acquire_lock(path: Path) -> int | None:
    """An exclusive lock held while the store is open: two labellers writing one run
    would each pay for the same labels. The OS drops the lock when the process dies, so
    a killed run never leaves a stale lock behind."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: one writer is on the user
        return None
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise StoreError(
            f"{path.parent} is in use by another labelling process; wait for it to finish "
            "or stop it (a killed run releases the folder at once)"
        ) from None
    return handle

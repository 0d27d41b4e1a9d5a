"""An on-disk cache of successful remote-judge replies, so a re-run never pays twice.

One SQLite file (stdlib `sqlite3`, WAL journal: readers never block the writer, and a
reply is on disk once `put` returns). The key is the SHA-256 of the request's canonical
JSON (sorted keys, no whitespace) with its URL, so the same question to the same
endpoint and model hits, and any change of prompt, model or sampling option misses.
Only successful replies are stored: a failure is retried on the next run, never replayed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path


class ResponseCache:
    """`get(key) -> dict | None`, `put(key, response)`; keys from `ResponseCache.key`.

    Safe to share between threads (one connection behind a lock; SQLite work is short
    next to an HTTP round trip) and between processes (WAL, with a busy timeout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                "key TEXT PRIMARY KEY, response TEXT NOT NULL, created REAL NOT NULL)"
            )

    @staticmethod
    def key(url: str, body: dict) -> str:
        canonical = json.dumps(
            {"url": url, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response FROM responses WHERE key = ?", (key,)
            ).fetchone()
        return json.loads(row[0]) if row is not None else None

    def put(self, key: str, response: dict) -> None:
        text = json.dumps(response, ensure_ascii=False)
        with self._lock, self._db:  # the connection as a context manager commits
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, response, created) VALUES (?, ?, ?)",
                (key, text, time.time()),
            )

    def drop(self, key: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM responses WHERE key = ?", (key,))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

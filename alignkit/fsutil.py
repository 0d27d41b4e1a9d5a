"""Filesystem helpers: the cache home and all-or-nothing directory writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def alignkit_home() -> Path:
    """Cache root: `$ALIGNKIT_HOME`, default `~/.cache/alignkit`."""
    return Path(os.environ.get("ALIGNKIT_HOME", Path.home() / ".cache" / "alignkit")).expanduser()


def _tmp_prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


@contextlib.contextmanager
def atomic_directory(final: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `final` only if the block completes.

    The temporary directory is a sibling of `final` (same filesystem), so the closing
    `os.rename` is atomic: a reader sees either no `final` or a complete one, never a
    half-written folder, even if the process is killed mid-write. If `final` appeared
    meanwhile (another process won a race) and `overwrite` is False, the new copy is
    discarded and the existing one kept.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    tmp = final.parent / f"{_tmp_prefix(final)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                shutil.rmtree(tmp)
                return
            old = final.parent / f"{_tmp_prefix(final)}old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_temporaries(final: Path) -> None:
    """Delete temporaries left by killed writers (their process no longer exists)."""
    for candidate in final.parent.glob(_tmp_prefix(final) + "*"):
        pid_part = candidate.name[len(_tmp_prefix(final)) :].split("-", 1)[0]
        if pid_part.isdigit() and not _pid_alive(int(pid_part)):
            shutil.rmtree(candidate, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_jsonl(final: Path | str) -> Iterator:
    """Write a JSONL file that appears only when complete: yields `write(record)`; the
    lines go to a hidden temporary beside `final`, renamed over it on success and removed
    on any error (so a failed run never leaves a half-written output)."""
    import json

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        with open(partial, "w", encoding="utf-8") as sink:

            def write(record: dict) -> None:
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")

            yield write
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)

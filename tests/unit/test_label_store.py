"""The label store: config guard, one label per item, one paid answer per request, and
all-or-nothing transactions under SIGKILL."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from alignkit.feedback.label_store import STORE_NAME, LabelStore, StoreError

CONFIG = {"kind": "rlaif", "judge": "j", "seed": 0}


def test_items_keep_state_and_follow_the_current_input_order(tmp_path):
    with LabelStore(tmp_path, CONFIG) as store:
        assert not store.resumed
        store.add_items([("a", 0, {"prompt": "A"}), ("b", 1, {"prompt": "B"})])
        store.put_stage("a", "responses", ["x", "y"])
        store.finish("a", [{"chosen": "x"}])
        store.fail("b", "judge said nothing")
    with LabelStore(tmp_path, CONFIG) as store:
        assert store.resumed
        store.add_items([("b", 0, {"prompt": "B"}), ("a", 1, {"prompt": "A"})])
        a, b = store.item("a"), store.item("b")
        assert (a.status, a.attempts, a.result) == ("done", 1, [{"chosen": "x"}])
        assert (b.status, b.attempts, b.failure) == ("failed", 1, "judge said nothing")
        assert [i.key for i in store.items()] == ["b", "a"]
        assert store.stages("a") == {"responses": ["x", "y"]}
        assert store.counts() == {"pending": 0, "done": 1, "failed": 1}


def test_a_label_is_recorded_once(tmp_path):
    with LabelStore(tmp_path, CONFIG) as store:
        store.add_items([("a", 0, "A")])
        store.finish("a", "first")
        with pytest.raises(StoreError, match="'a' is already labelled"):
            store.finish("a", "second")
        store.fail("a", "late failure")  # a done item stays done
        assert store.item("a").status == "done" and store.item("a").result == "first"


def test_a_second_paid_answer_is_refused_failures_are_logged(tmp_path):
    with LabelStore(tmp_path, CONFIG) as store:
        store.add_items([("a", 0, "A")])
        store.record_requests([("a", "0-1", {"q": 1}, None, "unparseable: 'maybe'")])
        store.record_requests([("a", "0-1", {"q": 1}, {"p_a": 0.8}, None)])
        with pytest.raises(StoreError, match="already has a paid answer to '0-1'"):
            store.record_requests([("a", "1-2", {"q": 2}, {"p_a": 0.1}, None),
                                   ("a", "0-1", {"q": 1}, {"p_a": 0.3}, None)])  # fmt: skip
        # the batch was one transaction: its other answer was not stored either
        assert store.answers("a") == {"0-1": {"p_a": 0.8}}
        log = store.requests("a")
        assert [(r.name, r.attempt, r.failure) for r in log] == [
            ("0-1", 1, "unparseable: 'maybe'"),
            ("0-1", 2, None),
        ]


def test_stages_are_written_once(tmp_path):
    with LabelStore(tmp_path, CONFIG) as store:
        store.add_items([("a", 0, "A")])
        store.put_stages([("a", "initial", "one"), ("a", "critique-1", "c")])
        store.put_stage("a", "initial", "two")
        assert store.stages("a") == {"initial": "one", "critique-1": "c"}


def test_a_resume_with_other_settings_is_refused(tmp_path):
    LabelStore(tmp_path, CONFIG).close()
    with pytest.raises(StoreError) as caught:
        LabelStore(tmp_path, {**CONFIG, "judge": "other", "n": 4})
    message = str(caught.value)
    assert message.startswith(f"{tmp_path} holds a run with different settings")
    assert "judge: stored 'j', now 'other'" in message and "n: stored null, now 4" in message
    assert "--run-dir" in message


def test_changed_inputs_under_a_stored_key_are_refused(tmp_path):
    with LabelStore(tmp_path, CONFIG) as store:
        store.add_items([("a", 0, {"prompt": "A"})])
        with pytest.raises(StoreError, match=r"item 'a' \(record 1\) was stored with other inputs"):
            store.add_items([("a", 0, {"prompt": "changed"})])


def test_one_writer_at_a_time(tmp_path):
    with LabelStore(tmp_path, CONFIG):
        with pytest.raises(StoreError, match="in use by another labelling process"):
            LabelStore(tmp_path, CONFIG)
    LabelStore(tmp_path, CONFIG).close()  # released on close


def test_a_damaged_file_is_a_clear_error(tmp_path):
    (tmp_path / STORE_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable label store"):
        LabelStore(tmp_path, CONFIG)


WRITER = textwrap.dedent(
    """
    import sys
    from alignkit.feedback.label_store import LabelStore

    store = LabelStore(sys.argv[1], {"kind": "test"})
    store.add_items([(f"k{i}", i, {"i": i}) for i in range(20000)])
    for i in range(20000):
        key = f"k{i}"
        if store.item(key).status == "done":
            continue
        if "pair" not in store.answers(key):  # paid for before a kill: not asked again
            store.record_requests([(key, "pair", {"i": i}, {"p_a": 0.5}, None)])
        store.finish(key, {"label": i, "payload": "x" * 2000})
    """
)


def test_sigkill_at_any_moment_leaves_whole_labels(tmp_path):
    """Kill a writer at several moments and resume it each time: every done item has its
    result, no request was answered twice, and the file is never corrupt."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    run_dir = tmp_path / "run"
    seen_done = 0
    for delay in (0.3, 0.45, 0.6):
        child = subprocess.Popen([sys.executable, str(script), str(run_dir)])
        deadline = time.time() + 60
        while time.time() < deadline and not _done_count(run_dir) > seen_done:
            time.sleep(0.02)
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        db = sqlite3.connect(run_dir / STORE_NAME)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        done = db.execute("SELECT key, result FROM items WHERE status = 'done'").fetchall()
        assert all(result is not None for _, result in done)
        assert len(done) > seen_done
        seen_done = len(done)
        (paid,) = db.execute("SELECT COUNT(*) FROM requests WHERE failure IS NULL").fetchone()
        (distinct,) = db.execute(
            "SELECT COUNT(DISTINCT item) FROM requests WHERE failure IS NULL"
        ).fetchone()
        # answers beyond the labels: at most the one item in flight
        assert paid == distinct and seen_done <= paid <= seen_done + 1
        db.close()


def _done_count(run_dir):
    try:
        db = sqlite3.connect(run_dir / STORE_NAME, timeout=5)
        (count,) = db.execute("SELECT COUNT(*) FROM items WHERE status = 'done'").fetchone()
        db.close()
        return count
    except sqlite3.OperationalError:  # not created yet
        return 0

"""RLAIF labelling against a real `alignkit serve`: empty, malformed and timed-out judge
replies are recorded as failures (never labels) and retried per the policy: the judge's
`malformed_retries` within a run, the endpoint's `retries` for transport failures, and
`max_attempts` per prompt over re-runs."""

import json
import sqlite3
import threading
import time

import httpx
import pytest
import torch

from alignkit.feedback.label_store import STORE_NAME
from alignkit.feedback.rlaif import RLAIFSettings, label_preferences
from alignkit.models.tiny import tiny_model
from tests.servers import serving

QUESTION = "Which continuation is more positive?"
SETTINGS = RLAIFSettings(num_responses=2, max_new_tokens=6, seed=0)


@pytest.fixture()
def prompts_file(write_jsonl):
    return write_jsonl(
        [{"id": f"p{i}", "prompt": f"Write about rivers, take {i}."} for i in range(3)]
    )


def silent_model(tokenizer):
    """Every logit 0: greedy replies repeat token 0, a special token, so their text is
    empty; no option letter is ever among the top log-probs."""
    model = tiny_model(seed=1, tokenizer=tokenizer, tie_word_embeddings=False).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def decisive_model(tokenizer):
    """Only the letters "A" and "B" have logits, +-(u . h): whatever the prompt, the first
    reply token is one of them and the other is last, so every judgement is p = 0 or 1."""
    model = tiny_model(seed=2, tokenizer=tokenizer, tie_word_embeddings=False).eval()
    u = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("A")] = 10 * u
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("B")] = -10 * u
    return model


def label(policy_dir, url, data, out, **judge_options):
    return label_preferences(
        str(policy_dir),
        f"openai:{url}",
        data,
        out,
        question=QUESTION,
        settings=SETTINGS,
        judge_options={"judge_model": "judge", **judge_options},
        max_attempts=3,
        progress=False,
    )


def store_items(out):
    """(items, requests) of the run's label store, read as plain SQLite rows."""
    db = sqlite3.connect(f"file:{out.with_name(f'{out.stem}.run') / STORE_NAME}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        items = db.execute("SELECT key, status, attempts, failure FROM items").fetchall()
        requests = db.execute("SELECT item, name, attempt, failure FROM requests").fetchall()
        return items, requests
    finally:
        db.close()


def test_empty_replies_are_failures_not_labels(tokenizer, tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "prefs.jsonl"
    with serving(silent_model(tokenizer), tokenizer, "judge") as (url, engine):
        report = label(tiny_model_dir, url, prompts_file, out, malformed_retries=0)
    assert (report.done, report.failed) == (0, 3)
    assert out.read_text() == ""
    items, _ = store_items(out)
    assert all(item["failure"].startswith("empty") for item in items), [i["failure"] for i in items]


def test_malformed_replies_are_asked_again_then_given_up(
    tokenizer, tiny_model_dir, prompts_file, tmp_path
):
    """A random model never writes [[A]]: per pair and order the judge asks once for
    log-probs (no letter among them), once for a verdict and once more (the retry): 6
    completions per prompt. Re-runs retry until max_attempts=3, then stop; they replay
    the cached log-prob replies (usable answers) but ask the unreadable verdicts again
    (4 per prompt)."""
    out = tmp_path / "prefs.jsonl"
    judge_model = tiny_model(seed=5, tokenizer=tokenizer)
    with serving(judge_model, tokenizer, "judge") as (url, engine):
        asked = []
        for _run in range(4):
            before = engine.stats()["completions"]
            report = label(
                tiny_model_dir, url, prompts_file, out, malformed_retries=1, max_tokens=8
            )
            asked.append(engine.stats()["completions"] - before)
            assert report.done == 0 and out.read_text() == ""
    assert asked == [18, 12, 12, 0]
    items, requests = store_items(out)
    assert all(i["attempts"] == 3 and i["failure"].startswith("malformed") for i in items)
    assert report.gave_up == 3


def test_timeouts_are_failures_and_a_rerun_labels_every_item_once(
    tokenizer, tiny_model_dir, prompts_file, tmp_path
):
    """While a long generation holds the server's batch, the judge's requests wait past
    their 0.3 s timeout (and the endpoint's one retry): every prompt fails as a timeout.
    Once the server is free, a re-run labels each prompt exactly once."""
    out = tmp_path / "prefs.jsonl"
    with serving(decisive_model(tokenizer), tokenizer, "judge") as (url, engine):
        long_body = {
            "model": "judge",
            "messages": [{"role": "user", "content": "go on"}],
            "max_tokens": 1900,
            "temperature": 1.0,
        }
        blocker = threading.Thread(
            target=httpx.post,
            args=(f"{url}/chat/completions",),
            kwargs={"json": long_body, "timeout": 120},
        )
        blocker.start()
        deadline = time.monotonic() + 30
        while not engine.stats()["active"]:
            assert time.monotonic() < deadline, "the long generation never started"
            time.sleep(0.01)
        report = label(tiny_model_dir, url, prompts_file, out, timeout=0.3, retries=1, backoff=0.05)
        assert (report.done, report.failed) == (0, 3)
        assert report.reasons and all(
            reason.startswith("judge timeout") for reason in report.reasons
        )
        blocker.join()
        rerun = label(tiny_model_dir, url, prompts_file, out, timeout=30, retries=1, backoff=0.05)
    assert (rerun.done, rerun.failed, rerun.retried) == (3, 0, 3)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"][0]["content"] for r in records] == [
        f"Write about rivers, take {i}." for i in range(3)
    ]
    assert all(r["p_chosen"] in (0.5, 1.0) for r in records)
    items, requests = store_items(out)
    assert all(i["attempts"] == 2 for i in items)
    paid = [r for r in requests if r["failure"] is None]
    assert len(paid) == 3  # one paid answer per prompt, none asked twice

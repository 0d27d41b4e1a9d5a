"""`alignkit quickstart --preset tiny`: every stage runs, re-runs skip finished stages,
and its report renders in a real browser."""

import contextlib
import io
import json
import math
import statistics

import pytest

from alignkit.quickstart import Quickstart
from alignkit.tasks.sentiment import chat_prompts
from tests.browser import open_offline, start_chromium


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def sentiment(text):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer().polarity_scores(text)["compound"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quickstart") / "qs"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = Quickstart(folder, preset="tiny").run()
    return folder, summary, printed.getvalue()


def test_tiny_quickstart_runs_every_stage_and_resumes(tiny_run, capsys):
    """The summary's numbers are checked against the files the run wrote, re-scored here
    with VADER itself (the oracle is VADER's compound score of the completion): each
    policy's oracle reward is the mean of its 16 held-out samples' scores, reward_sem
    their sample standard deviation / sqrt(16), the win rate the share of prompts where
    it beats the start's sample (ties half)."""
    folder, summary, printed = tiny_run
    assert set(summary["policies"]) == {"start", "ppo", "dpo"}
    for name in (
        "pairs/train.jsonl",
        "rm/final/config.json",
        "ppo/final/config.json",
        "dpo/final/config.json",
        "dpo.token_rewards.json",
        "report.html",
    ):
        assert (folder / name).is_file(), name

    pairs = read_jsonl(folder / "pairs" / "train.jsonl") + read_jsonl(
        folder / "pairs" / "eval.jsonl"
    )
    assert 0 < len(pairs) <= 32  # the tiny preset: one pair per prompt, 32 prompts
    for p in pairs:
        chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
        assert math.isclose(p["score_chosen"], sentiment(chosen), abs_tol=1e-12), p
        assert math.isclose(p["score_rejected"], sentiment(rejected), abs_tol=1e-12), p
        assert p["score_chosen"] >= p["score_rejected"]

    samples = read_jsonl(folder / "samples_before_after.jsonl")
    assert summary["held_out_prompts"] == len(samples) == 16  # the tiny preset's eval_prompts
    assert [s["prompt"] for s in samples] == chat_prompts("test")[:16]
    start_scores = [sentiment(s["start"]) for s in samples]
    for name, row in summary["policies"].items():
        scores = [sentiment(s[name]) for s in samples]
        assert [s[f"{name}_score"] for s in samples] == scores, name
        assert math.isclose(row["oracle_reward"], statistics.fmean(scores), abs_tol=1e-9), name
        sem = statistics.stdev(scores) / math.sqrt(len(scores))
        assert math.isclose(row["reward_sem"], sem, abs_tol=1e-9), name
        wins = [
            1.0 if a > b else 0.5 if a == b else 0.0
            for a, b in zip(scores, start_scores, strict=True)
        ]
        assert math.isclose(row["win_rate"], statistics.fmean(wins), abs_tol=1e-12), name
        assert 0 < row["mean_length"] <= 8, name  # tokens; the tiny preset's max_new_tokens
    # the trained stages did something: their samples differ from the start's
    for name in ("ppo", "dpo"):
        assert summary["policies"][name]["kl_to_start"] != 0.0, name
        assert [s[name] for s in samples] != [s["start"] for s in samples], name
    assert 0.0 <= summary["reward_model"]["accuracy"] <= 1.0

    assert "oracle reward" in printed and "[5/5]" in printed and "report.html" in printed
    (folder / "eval.done").unlink()
    Quickstart(folder, preset="tiny").run()
    again = capsys.readouterr().out
    assert again.count("done already, skipped") == 4 and "[5/5] evaluate" in again


def test_tiny_quickstart_report_renders_in_chromium(tiny_run):
    """The page written by the quickstart, opened offline: the frontier, the three runs'
    curves all drawn, no console errors, no fetches; the summary and heat maps shown."""
    folder, summary, _ = tiny_run
    driver = start_chromium()
    try:
        page = open_offline(driver, folder / "report.html")
        text = driver.find_element("tag name", "body").text
        heat_tokens = len(driver.find_elements("css selector", "div.token-map span"))
    finally:
        driver.quit()
    assert page.plots >= 10  # frontier + rm, ppo and dpo curves
    assert all(p["width"] > 100 and p["height"] > 100 and p["traces"] for p in page.drawn)
    assert page.console_errors == [] and page.resources == []
    assert "Reward versus KL" in text and "win rate vs start" in text
    maps = json.loads((folder / "dpo.token_rewards.json").read_text())
    assert heat_tokens == sum(len(m["tokens"]) for m in maps) > 0
    for name in ("ppo", "dpo"):
        assert f"{summary['policies'][name]['oracle_reward']:.3f}" in text

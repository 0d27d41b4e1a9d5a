"""`alignkit quickstart --preset tiny`: every stage runs, re-runs skip finished stages."""

import json
import math
import statistics

from alignkit.quickstart import Quickstart
from alignkit.tasks.sentiment import prompts


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_quickstart_runs_every_stage_and_resumes(tmp_path, capsys):
    """The summary's numbers are checked against the files the run wrote, re-scored here
    with VADER itself (the oracle is VADER's compound score of the completion): each
    policy's oracle reward is the mean of its 16 held-out samples' scores and its
    reward_sem their sample standard deviation / sqrt(16)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()

    def sentiment(text):
        return vader.polarity_scores(text)["compound"]

    summary = Quickstart(tmp_path / "qs", preset="tiny").run()
    assert set(summary["policies"]) == {"start", "ppo", "dpo"}
    for name in (
        "pairs/train.jsonl",
        "rm/final/config.json",
        "ppo/final/config.json",
        "dpo/final/config.json",
    ):
        assert (tmp_path / "qs" / name).is_file(), name

    pairs = read_jsonl(tmp_path / "qs" / "pairs" / "train.jsonl")
    pairs += read_jsonl(tmp_path / "qs" / "pairs" / "eval.jsonl")
    assert 0 < len(pairs) <= 32  # the tiny preset samples one pair per prompt, 32 prompts
    for p in pairs:
        assert math.isclose(p["score_chosen"], sentiment(p["chosen"]), abs_tol=1e-12), p
        assert math.isclose(p["score_rejected"], sentiment(p["rejected"]), abs_tol=1e-12), p
        assert p["score_chosen"] >= p["score_rejected"]

    samples = read_jsonl(tmp_path / "qs" / "samples_before_after.jsonl")
    assert summary["held_out_prompts"] == len(samples) == 16  # the tiny preset's eval_prompts
    assert [s["prompt"] for s in samples] == prompts("test")[:16]
    for name, row in summary["policies"].items():
        scores = [sentiment(s[name]) for s in samples]
        assert [s[f"{name}_score"] for s in samples] == scores, name
        assert math.isclose(row["oracle_reward"], statistics.fmean(scores), abs_tol=1e-9), name
        sem = statistics.stdev(scores) / math.sqrt(len(scores))
        assert math.isclose(row["reward_sem"], sem, abs_tol=1e-9), name
        assert 0 < row["mean_length"] <= 8, name  # tokens; the tiny preset's max_new_tokens

    printed = capsys.readouterr().out
    assert "oracle reward" in printed and "[5/5]" in printed
    (tmp_path / "qs" / "eval.done").unlink()
    Quickstart(tmp_path / "qs", preset="tiny").run()
    again = capsys.readouterr().out
    assert again.count("done already, skipped") == 4 and "[5/5] evaluate" in again

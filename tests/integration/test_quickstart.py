"""`alignkit quickstart --preset tiny`: every stage runs, re-runs skip finished stages."""

import json

from alignkit.quickstart import Quickstart


def test_tiny_quickstart_runs_every_stage_and_resumes(tmp_path, capsys):
    summary = Quickstart(tmp_path / "qs", preset="tiny").run()
    assert set(summary["policies"]) == {"start", "ppo", "dpo"}
    assert summary["policies"]["start"]["kl_to_start"] == 0.0
    for name in (
        "pairs/train.jsonl",
        "rm/final/config.json",
        "ppo/final/config.json",
        "dpo/final/config.json",
    ):
        assert (tmp_path / "qs" / name).is_file(), name
    pairs = [
        json.loads(line)
        for line in (tmp_path / "qs" / "pairs" / "train.jsonl").read_text().splitlines()
    ]
    assert all(p["score_chosen"] >= p["score_rejected"] for p in pairs)
    samples = (tmp_path / "qs" / "samples_before_after.jsonl").read_text().splitlines()
    assert {"prompt", "start", "ppo", "dpo"} <= json.loads(samples[0]).keys()
    printed = capsys.readouterr().out
    assert "oracle reward" in printed and "[5/5]" in printed
    (tmp_path / "qs" / "eval.done").unlink()
    Quickstart(tmp_path / "qs", preset="tiny").run()
    again = capsys.readouterr().out
    assert again.count("done already, skipped") == 4 and "[5/5] evaluate" in again

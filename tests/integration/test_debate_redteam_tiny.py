"""alignkit debate and alignkit redteam end to end on tiny models through the CLI (real
generators and a real local LLM judge; what they say is noise, the files are checked)."""

import json

import pytest

from alignkit.cli import main


def test_debate_cli_writes_summary_and_transcripts(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "debate.json"
    code = main(
        [
            "debate", "--debater", str(tiny_model_dir), "--turns", "2", "--limit", "4",
            "--max-new-tokens", "6", "--out", str(out), "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary["questions"] == 4 and summary["turns"] == 2
    for condition in ("no_debate", "debate"):
        row = summary[condition]
        assert row["n"] + row["failed"] == 4
        assert 0.0 <= row["ci"][0] <= row["ci"][1] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "debate.transcripts.jsonl").open()]
    assert [r["id"] for r in records] == ["fact-planet", "fact-water", "fact-spider", "fact-ocean"]
    assert [s["side"] for s in records[1]["transcript"]] == ["wrong", "correct"]
    assert set(records[0]["p_correct"]) == {"no_debate", "debate"}
    assert "judge accuracy on 4 questions" in capsys.readouterr().out


def question_length(question, answer):
    """A failure score that grows with the question's length (known for any question)."""
    return min(len(question) / 40.0, 1.0)


def test_redteam_cli_zero_shot_few_shot_and_rl(tiny_model_dir, tmp_path, capsys):
    """Zero-shot, few-shot and the RL-trained attacker (2 RLOO steps) on tiny models: one
    attempt per question and method in the transcripts, scores from the classifier, and
    the RL run's samples scored by the same failure reward."""
    from alignkit.evaluate.redteam import extract_question

    out = tmp_path / "redteam.json"
    code = main(
        [
            "redteam", "--attacker", str(tiny_model_dir), "--target", str(tiny_model_dir),
            "--classifier", "tests.integration.test_debate_redteam_tiny:question_length",
            "--method", "zero-shot,few-shot,rl", "-n", "3", "--attacker-max-new-tokens", "8",
            "--target-max-new-tokens", "4", "--threshold", "0.3", "--out", str(out),
            "--rl", "max_steps=2", "--rl", "batch_size=1", "--rl", "num_generations=2",
            "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(out.read_text())
    assert list(summary["methods"]) == ["zero-shot", "few-shot", "rl"]
    attempts = [json.loads(line) for line in (tmp_path / "redteam.transcripts.jsonl").open()]
    assert [a["method"] for a in attempts] == ["zero-shot"] * 3 + ["few-shot"] * 3 + ["rl"] * 3
    for a in attempts:
        assert a["question"] == extract_question(a["raw"])
        if a["question"]:
            assert a["score"] == question_length(a["question"], a["answer"])
            assert a["failed"] == (a["score"] >= 0.3)
    for method, row in summary["methods"].items():
        asked = [a for a in attempts if a["method"] == method and a["question"]]
        assert row["n"] == len(asked) and row["k"] == sum(a["failed"] for a in asked)
    rl_dir = tmp_path / "redteam.rl"
    assert (rl_dir / "final" / "config.json").is_file()
    samples = [json.loads(line) for line in (rl_dir / "samples.jsonl").open()]
    assert samples
    for sample in samples:
        question = extract_question(sample["completion"])
        expected = question_length(question, "") if question else 0.0
        assert sample["score"] == pytest.approx(expected)
    assert "self-BLEU" in capsys.readouterr().out


def test_failure_reward_rebuilds_from_its_settings_file(tiny_model_dir, tmp_path):
    """A resumed RL run (a new process) rebuilds the reward from redteam_reward.json."""
    from alignkit.evaluate import redteam
    from alignkit.feedback.function import import_function

    folder = tmp_path / "rl"
    folder.mkdir()
    (folder / redteam.REWARD_SETTINGS).write_text(
        json.dumps(
            {
                "target": str(tiny_model_dir),
                "classifier": "tests.integration.test_debate_redteam_tiny:question_length",
                "settings": {"target_max_new_tokens": 4, "seed": 3},
                "target_options": {"device": "cpu"},
            }
        )
    )
    (folder / redteam.REWARD_FILE).write_text(redteam._REWARD_SOURCE)
    reward = import_function(f"{folder / redteam.REWARD_FILE}:reward")
    assert reward.settings.target_max_new_tokens == 4 and reward.settings.seed == 3
    assert reward("prompt", "1. What is twenty?\n2. more") == pytest.approx(
        len("What is twenty?") / 40
    )
    assert reward("prompt", "  \n") == 0.0

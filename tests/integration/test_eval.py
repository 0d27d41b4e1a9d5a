"""`alignkit eval` end to end on tiny models, and the invariants of `evaluate`."""

import json

import pytest

from alignkit.cli import main
from alignkit.evaluate.suite import METRIC_NAMES, EvalSettings, evaluate, load_eval_prompts
from alignkit.feedback.function import FunctionJudge
from alignkit.models.tiny import tiny_model

PROMPTS = ["Tell me a story", "Name a colour", "What is rain?", "Say hello"]


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-reference")
    tiny_model(seed=1, tokenizer=tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_eval_command_writes_every_metric_samples_and_token_maps(
    tiny_model_dir, reference_dir, write_jsonl, tmp_path, capsys
):
    """Policy and reference differ (seeds 0 and 1): every metric is reported with an
    interval where one is defined; one sample record per prompt beside the JSON; the
    first 2 policy samples' token maps as JSON and HTML; a table on stdout."""
    data = write_jsonl([{"prompt": p} for p in PROMPTS], "prompts.jsonl")
    out = tmp_path / "eval.json"
    code = main(
        [
            "-q", "eval", "--policy", str(tiny_model_dir), "--reference", str(reference_dir),
            "--data", str(data), "--reward", "task:sentiment", "--judge", "task:sentiment",
            "--max-new-tokens", "6", "--out", str(out), "--token-rewards", "2",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert list(metrics) == list(METRIC_NAMES)
    for name, entry in metrics.items():
        assert entry["n"] == 4
        if name.startswith("eval/distinct"):
            assert entry["ci"] is None  # a corpus statistic: no bootstrap
        else:
            low, high = entry["ci"]
            assert low <= entry["value"] <= high, name
    assert set(report["reference_metrics"]) == {
        "eval/reward", "eval/length", "eval/eos_rate", "eval/distinct_1", "eval/distinct_2"
    }  # fmt: skip
    judge = report["comparison"]
    assert judge["wins"] + judge["ties"] + judge["losses"] == 4 and judge["failures"] == 0
    assert report["reference"] == str(reference_dir) and report["settings"]["seed"] == 0
    assert report["judge"] == report["reward"] == "task:sentiment"
    samples = [
        json.loads(line) for line in (tmp_path / "eval.samples.jsonl").read_text().splitlines()
    ]
    assert [s["prompt"] for s in samples] == PROMPTS
    kls = [s["policy"]["kl"] for s in samples]
    assert metrics["eval/kl_seq"]["value"] == pytest.approx(sum(kls) / 4)
    lengths = [s["policy"]["length"] for s in samples]
    assert metrics["eval/kl_token"]["value"] == pytest.approx(sum(kls) / sum(lengths))
    prefs = [s["judgement"]["p_policy"] for s in samples]
    assert metrics["eval/win_rate"]["value"] == pytest.approx(sum(prefs) / 4)
    maps = json.loads((tmp_path / "eval.token_rewards.json").read_text())
    assert len(maps) == 2 and maps[0]["prompt"] == PROMPTS[0]
    assert len(maps[0]["tokens"]) == len(maps[0]["values"]) > 0
    page = (tmp_path / "eval.token_rewards.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('class="token-map"') == 2
    table = capsys.readouterr().out
    assert "eval/lc_win_rate" in table and "judge: " in table


def test_a_policy_against_itself_has_zero_kl_and_wins_half(tokenizer):
    """The same model as policy and reference, with the same per-prompt seeds, samples
    the same completions: KL exactly 0, every pair a tie, win rate and LC win rate 0.5,
    and the reference's reward equal to the policy's."""
    model = tiny_model(seed=0, tokenizer=tokenizer)
    length = FunctionJudge(lambda prompt, completion: len(completion) / 10)
    result = evaluate(
        model,
        tokenizer,
        PROMPTS,
        EvalSettings(max_new_tokens=5, seed=3),
        reference=model,
        reward=length,
        judge=length,
        progress=False,
    )
    assert result.metrics["eval/kl_seq"].value == pytest.approx(0.0, abs=1e-5)
    assert result.metrics["eval/win_rate"].value == 0.5
    assert result.metrics["eval/lc_win_rate"].value == pytest.approx(0.5, abs=1e-6)
    assert result.judge["ties"] == 4
    assert result.reference_metrics["eval/reward"].value == result.metrics["eval/reward"].value
    texts = [(r["policy"]["completion"], r["reference"]["completion"]) for r in result.samples]
    assert all(a == b for a, b in texts)


def test_eval_without_reference_reports_sample_metrics_only(tokenizer):
    result = evaluate(
        tiny_model(seed=0, tokenizer=tokenizer),
        tokenizer,
        PROMPTS[:2],
        EvalSettings(max_new_tokens=3),
        progress=False,
    )
    assert list(result.metrics) == [
        "eval/length",
        "eval/eos_rate",
        "eval/distinct_1",
        "eval/distinct_2",
    ]
    assert result.judge is None


def test_eval_errors_are_clear(tiny_model_dir, capsys):
    from alignkit.errors import AlignkitError

    with pytest.raises(AlignkitError, match="needs a reference"):
        evaluate(None, None, ["x"], judge=object())
    held_out = load_eval_prompts("task:sentiment", num_prompts=3)
    assert len(held_out) == 3 and held_out == load_eval_prompts("task:sentiment")[:3]
    code = main(
        ["-q", "eval", "--policy", str(tiny_model_dir), "--data", "task:sentiment",
         "--token-rewards", "2"]
    )  # fmt: skip
    assert code == 2 and "pass --reference" in capsys.readouterr().err

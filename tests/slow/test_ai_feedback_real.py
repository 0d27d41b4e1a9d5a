"""`alignkit label` and `alignkit cai` end to end on the real SmolLM2-135M-Instruct (slow:
`make test-slow`): a few prompts, short generations, the model as its own judge, and the
files they write accepted by `alignkit dpo`, `alignkit rm` and `alignkit sft` (one step
each)."""

import json
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.data.loading import load_records
from alignkit.feedback.constitution import load_constitution
from alignkit.models.builtin import DEFAULT_MODEL

pytestmark = pytest.mark.slow

PROMPTS = [
    "How do I keep basil alive on a windowsill?",
    "Explain what a leap year is in two sentences.",
    "Give me one tip for writing a clear email.",
    "Why is the sky blue?",
]


@pytest.fixture()
def prompts_file(write_jsonl):
    return write_jsonl([{"prompt": p} for p in PROMPTS], "prompts.jsonl")


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def train_one_step(command: str, data: Path, output_dir: Path) -> None:
    """`alignkit COMMAND` on the real model for one optimizer step; it writes final/."""
    code = main(
        ["-q", command, f"model={DEFAULT_MODEL}", f"data={data}", f"output_dir={output_dir}",
         "max_steps=1", "batch_size=2", "save_every=null"]
    )  # fmt: skip
    assert code == 0
    assert (output_dir / "final" / "config.json").is_file()


def test_label_with_the_model_as_its_own_judge_feeds_dpo_and_rm(prompts_file, tmp_path, capsys):
    out = tmp_path / "prefs.jsonl"
    judge = f"llm:{DEFAULT_MODEL}"
    code = main(
        ["-q", "label", "--policy", DEFAULT_MODEL, "--data", str(prompts_file), "--judge", judge,
         "--out", str(out), "-n", "3", "--max-new-tokens", "16", "--temperature", "1.0",
         "--seed", "3"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"labelled {len(PROMPTS)} prompts: {len(PROMPTS)} done" in printed
    records = read_jsonl(out)
    # 3 samples -> 3 pairs per prompt, less any pair with an identical or empty reply
    assert len(PROMPTS) <= len(records) <= 3 * len(PROMPTS)
    assert load_records(out, "preference").kind == "preference"  # every record valid
    principles = {p.name for p in load_constitution().principles}
    for record in records:
        assert record["prompt"][-1]["role"] == "user"
        assert record["prompt"][-1]["content"] in PROMPTS
        chosen, rejected = record["chosen"][0]["content"], record["rejected"][0]["content"]
        assert chosen.strip() and rejected.strip() and chosen != rejected
        assert 0.5 <= record["p_chosen"] < 1.0
        assert record["judge"] == judge
        assert record["principle"] in principles
    print(
        f"\nlabel on {DEFAULT_MODEL}: {len(records)} pairs, p_chosen "
        f"{min(r['p_chosen'] for r in records):.3f}..{max(r['p_chosen'] for r in records):.3f}"
    )

    # a second run resumes everything from the store and writes the same file
    before = out.read_text()
    assert main(
        ["-q", "label", "--policy", DEFAULT_MODEL, "--data", str(prompts_file), "--judge", judge,
         "--out", str(out), "-n", "3", "--max-new-tokens", "16", "--temperature", "1.0",
         "--seed", "3"]
    ) == 0  # fmt: skip
    assert f"{len(PROMPTS)} resumed from the store" in capsys.readouterr().out
    assert out.read_text() == before

    train_one_step("dpo", out, tmp_path / "dpo")
    train_one_step("rm", out, tmp_path / "rm")


def test_cai_critiques_and_revises_with_the_real_model_and_feeds_sft_and_dpo(
    prompts_file, write_jsonl, tmp_path, capsys
):
    # a worked critique-revision conversation: small models follow the format far better
    few_shot = write_jsonl(
        [{"messages": [
            {"role": "user", "content": "What should I eat before a run?"},
            {"role": "assistant", "content": "Eat a huge greasy meal right before you go."},
            {"role": "user", "content": "Identify anything harmful or unhelpful in your last reply."},
            {"role": "assistant", "content": "A heavy, greasy meal just before running can cause cramps and nausea."},
            {"role": "user", "content": "Rewrite your reply to fix those problems."},
            {"role": "assistant", "content": "Have a light snack, such as a banana, 30 to 60 minutes before you run."},
        ]}],
        "few_shot.jsonl",
    )  # fmt: skip
    out = tmp_path / "cai"
    code = main(
        ["-q", "cai", "--model", DEFAULT_MODEL, "--data", str(prompts_file), "--out-dir", str(out),
         "--revisions", "1", "--few-shot", str(few_shot), "--max-new-tokens", "24",
         "--seed", "5"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"revised {len(PROMPTS)} prompts: {len(PROMPTS)} done" in printed
    sft = read_jsonl(out / "sft.jsonl")
    steps = read_jsonl(out / "steps.jsonl")
    assert len(sft) == len(steps) == len(PROMPTS)
    assert load_records(out / "sft.jsonl", "sft").kind == "sft"
    principles = {p.name: p for p in load_constitution().principles}
    for record, step in zip(sft, steps, strict=True):
        # only the prompt and the final revision: no few-shot turns, no critiques
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
        assert record["messages"][-1]["content"] == step["final"]
        (round_,) = step["revisions"]
        principle = principles[round_["principle"]]
        assert round_["critique_request"] == principle.critique
        assert round_["revision_request"] == principle.revision
        assert step["initial"].strip() and round_["critique"].strip()
        assert step["final"] == round_["revision"]
    print(f"\ncai on {DEFAULT_MODEL}: {steps[0]['initial']!r} -> {steps[0]['final']!r}")

    train_one_step("sft", out / "sft.jsonl", tmp_path / "sft")
    preference = read_jsonl(out / "preference.jsonl")
    assert preference, "every revision repeated its initial response"
    assert load_records(out / "preference.jsonl", "preference").kind == "preference"
    for record in preference:
        assert record["chosen"][0]["content"] != record["rejected"][0]["content"]
    train_one_step("dpo", out / "preference.jsonl", tmp_path / "dpo")

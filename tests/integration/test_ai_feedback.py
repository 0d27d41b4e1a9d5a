"""AI feedback end to end: `alignkit label` (RLAIF) and `alignkit cai` (SL-CAI) on a tiny
model, their files fed to the commands that train on them, failures that never become
labels, and resumes after SIGKILL that never ask the judge twice for a stored label."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.data.loading import load_records
from alignkit.errors import AlignkitError
from alignkit.feedback.cai import CAISettings, load_few_shot, revise_prompts
from alignkit.feedback.constitution import load_constitution
from alignkit.feedback.judge import Judgement
from alignkit.feedback.label_store import STORE_NAME
from alignkit.feedback.labelling import read_prompt_items
from alignkit.feedback.rlaif import RLAIFSettings, label_preferences

TOPICS = "rivers volcanoes bread chess bees glaciers violins tides".split()


@pytest.fixture()
def prompts_file(write_jsonl):
    records = [{"prompt": f"Tell me about {topic}."} for topic in TOPICS[:5]]
    records.append(
        {
            "id": "chat-1",
            "prompt": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is a comet?"},
            ],
        }
    )
    return write_jsonl(records, "prompts.jsonl")


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


JUDGE_FILE = '''
import os, time

def longer(prompt, completion):
    """Prefers longer replies; logs every call (the prompt's last turn) when asked to."""
    log = os.environ.get("JUDGE_LOG")
    if log:
        with open(log, "a") as out:
            out.write(prompt[-1]["content"] + "\\n")
    time.sleep(float(os.environ.get("JUDGE_DELAY", "0")))
    return len(completion) / 10.0
'''


@pytest.fixture()
def judge_spec(tmp_path):
    path = tmp_path / "judges.py"
    path.write_text(JUDGE_FILE)
    return f"{path}:longer"


class LengthJudge:
    """A pairwise judge for in-process tests: P(a > b) = sigma((len a - len b) / 10). It
    records every pair it is asked about and fails the pairs `fail(prompt)` selects."""

    name = "length"

    def __init__(self, fail=lambda prompt: False):
        self.asked, self.fail = [], fail

    def judge_pairs(self, prompts, responses_a, responses_b, questions=None):
        verdicts = []
        for prompt, a, b, question in zip(
            prompts, responses_a, responses_b, questions, strict=True
        ):
            self.asked.append((prompt[-1]["content"], a, b, question))
            if self.fail(prompt):
                verdicts.append(Judgement(None, failure="timeout", detail="no reply in 1 s"))
            else:
                verdicts.append(Judgement(1 / (1 + math.exp(-(len(a) - len(b)) / 10))))
        return verdicts


def test_label_writes_soft_labels_that_dpo_and_rm_train_on(
    tiny_model_dir, prompts_file, judge_spec, tmp_path, capsys
):
    out = tmp_path / "prefs.jsonl"
    code = main(
        ["-q", "label", "--policy", str(tiny_model_dir), "--data", str(prompts_file),
         "--judge", judge_spec, "--out", str(out), "-n", "3", "--max-new-tokens", "10",
         "--seed", "1"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "labelled 6 prompts: 6 done, 0 resumed from the store, 0 failed" in printed
    records = read_jsonl(out)
    assert f"wrote {len(records)} preference records -> {out}" in printed
    assert len(records) == 6 * 3  # all pairs of 3 samples (distinct for a random model)
    assert load_records(out, "preference").kind == "preference"  # every record valid
    constitution = load_constitution()
    items = read_prompt_items(prompts_file)
    for n, record in enumerate(records):
        item = items[n // 3]  # input order, each prompt's pairs together
        assert record["prompt"][-1] == item.conversation[-1]
        chosen, rejected = record["chosen"][0]["content"], record["rejected"][0]["content"]
        # the judge's Bradley-Terry probability of the longer reply, as the soft label
        score = (len(chosen) - len(rejected)) / 10
        assert record["p_chosen"] == pytest.approx(1 / (1 + math.exp(-score)))
        assert record["p_chosen"] >= 0.5
        assert record["judge"] == judge_spec
        assert record["principle"] == constitution.principle_for(item.key, 1).name
    assert records[-1]["id"] == "chat-1" and records[-1]["prompt"][0]["role"] == "system"
    assert (tmp_path / "prefs.run" / STORE_NAME).is_file()

    common = [f"model={tiny_model_dir}", f"data={out}", "max_steps=1", "batch_size=2",
              "save_every=null"]  # fmt: skip
    assert main(["-q", "dpo", *common, f"output_dir={tmp_path / 'dpo'}"]) == 0
    assert main(["-q", "rm", *common, f"output_dir={tmp_path / 'rm'}"]) == 0
    assert (tmp_path / "dpo" / "final").is_dir() and (tmp_path / "rm" / "final").is_dir()


def test_label_asks_the_question_or_the_drawn_principle(tiny_model_dir, prompts_file, tmp_path):
    judge = LengthJudge()
    settings = RLAIFSettings(num_responses=4, pairs="adjacent", max_new_tokens=6)
    report = label_preferences(
        str(tiny_model_dir), judge, prompts_file, tmp_path / "q.jsonl",
        question="Which reply is kinder?", settings=settings, progress=False,
    )  # fmt: skip
    assert report.done == 6 and len(read_jsonl(tmp_path / "q.jsonl")) == 6 * 3
    assert {question for *_, question in judge.asked} == {"Which reply is kinder?"}
    assert {r["principle"] for r in read_jsonl(tmp_path / "q.jsonl")} == {None}

    judge = LengthJudge()
    label_preferences(
        str(tiny_model_dir), judge, prompts_file, tmp_path / "c.jsonl",
        settings=RLAIFSettings(max_new_tokens=6), progress=False,
    )  # fmt: skip
    constitution = load_constitution()
    expected = {
        item.conversation[-1]["content"]: constitution.principle_for(item.key, 0).comparison
        for item in read_prompt_items(prompts_file)
    }
    assert len(judge.asked) == 6
    for prompt, _, _, question in judge.asked:
        assert question == expected[prompt]

    with pytest.raises(AlignkitError, match="either a question or a constitution"):
        label_preferences(
            "unused", judge, prompts_file, tmp_path / "x.jsonl",
            question="Q?", constitution=load_constitution(),
        )  # fmt: skip


def test_failed_judgements_are_counted_retried_and_never_written(
    tiny_model_dir, prompts_file, tmp_path
):
    out, run_dir = tmp_path / "prefs.jsonl", tmp_path / "run"
    flaky = LengthJudge(fail=lambda prompt: "bees" in prompt[-1]["content"])
    options = dict(run_dir=run_dir, settings=RLAIFSettings(max_new_tokens=6), progress=False)
    report = label_preferences(str(tiny_model_dir), flaky, prompts_file, out, **options)
    assert (report.done, report.failed, dict(report.reasons)) == (5, 1, {"judge timeout": 1})
    records = read_jsonl(out)
    assert len(records) == 5 and not any("bees" in r["prompt"][-1]["content"] for r in records)

    # The rerun asks only about the failed prompt; the others are resumed from the store.
    judge = LengthJudge()
    report = label_preferences(str(tiny_model_dir), judge, prompts_file, out, **options)
    assert (report.done, report.resumed, report.retried, report.failed) == (1, 5, 1, 0)
    assert [prompt for prompt, *_ in judge.asked] == ["Tell me about bees."]
    assert [r["prompt"][-1]["content"] for r in read_jsonl(out)] == [
        *(f"Tell me about {t}." for t in TOPICS[:5]), "What is a comet?",
    ]  # fmt: skip
    # the failure and the later answer are both in the request log
    db = sqlite3.connect(run_dir / STORE_NAME)
    log = db.execute("SELECT attempt, failure FROM requests ORDER BY id").fetchall()
    assert [row for row in log if row[1] is not None] == [(1, "timeout: no reply in 1 s")]
    assert (2, None) in log


def test_a_prompt_stops_being_retried_at_max_attempts(tiny_model_dir, prompts_file, tmp_path):
    failing = LengthJudge(fail=lambda prompt: "chess" in prompt[-1]["content"])
    options = dict(
        run_dir=tmp_path / "run", settings=RLAIFSettings(max_new_tokens=6), progress=False,
        max_attempts=2,
    )  # fmt: skip
    for _ in range(2):
        label_preferences(
            str(tiny_model_dir), failing, prompts_file, tmp_path / "p.jsonl", **options
        )
    asked = len(failing.asked)
    report = label_preferences(
        str(tiny_model_dir), failing, prompts_file, tmp_path / "p.jsonl", **options
    )
    assert len(failing.asked) == asked  # not asked a third time
    assert (report.gave_up, report.failed, report.resumed) == (1, 1, 5)
    assert "not retried after reaching --max-attempts" in report.summary()


def test_label_refuses_to_resume_with_other_settings(
    tiny_model_dir, prompts_file, judge_spec, tmp_path, capsys
):
    args = ["-q", "label", "--policy", str(tiny_model_dir), "--data", str(prompts_file),
            "--judge", judge_spec, "--out", str(tmp_path / "p.jsonl"), "--max-new-tokens", "4"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--question", "Which is shorter?"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'p.run'} holds a run with different settings")
    assert 'now {"question": "Which is shorter?"}' in error


class ScriptedModel:
    """A generator for in-process tests: answers each conversation with a text naming
    how many turns it had, records every conversation, and raises for conversations
    `broken(conversation)` selects (a model server that is down)."""

    name = "scripted"

    def __init__(self, broken=lambda conversation: False):
        self.seen, self.broken = [], broken

    def generate(
        self, conversations, *, n=1, max_new_tokens=128, temperature=1.0, top_p=1.0, seed=None
    ):
        if any(self.broken(c) for c in conversations):
            raise AlignkitError("model server unreachable")
        self.seen += conversations
        return [
            [f"reply after {len(c)} turns ({c[-1]['content'][:12]})"] * n for c in conversations
        ]


def test_cai_builds_the_critique_revision_conversation(prompts_file, write_jsonl, tmp_path):
    few_shot = write_jsonl(
        [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}],
        "few.jsonl",
    )
    model = ScriptedModel()
    report = revise_prompts(
        model, prompts_file, tmp_path / "cai", few_shot=few_shot,
        settings=CAISettings(revisions=2, seed=3), progress=False,
    )  # fmt: skip
    assert report.done == 6 and report.written == {"sft": 6, "preference": 6, "steps": 6}
    constitution = load_constitution()
    item = read_prompt_items(prompts_file)[5]  # the chat prompt with a system turn
    first = constitution.principle_for(f"{item.key}/revision-1", 3)
    second = constitution.principle_for(f"{item.key}/revision-2", 3)
    # the last reply (revision 2) continues the whole chain; few-shot turns come after
    # the prompt's system turn, as earlier turns of the conversation
    last = model.seen[-1]
    assert [(m["role"], m["content"][:20]) for m in last] == [
        ("system", "Answer briefly."),
        ("user", "Q"),
        ("assistant", "A"),
        ("user", "What is a comet?"),
        ("assistant", "reply after 4 turns "),
        ("user", first.critique[:20]),
        ("assistant", "reply after 6 turns "),
        ("user", first.revision[:20]),
        ("assistant", "reply after 8 turns "),
        ("user", second.critique[:20]),
        ("assistant", "reply after 10 turns"),
        ("user", second.revision[:20]),
    ]
    steps = read_jsonl(tmp_path / "cai" / "steps.jsonl")[5]
    assert [s["principle"] for s in steps["revisions"]] == [first.name, second.name]
    assert (
        steps["final"]
        == steps["revisions"][1]["revision"]
        == "reply after 12 turns (" + second.revision[:12] + ")"
    )
    sft = read_jsonl(tmp_path / "cai" / "sft.jsonl")[5]
    assert sft == {
        "messages": [*item.conversation, {"role": "assistant", "content": steps["final"]}],
        "id": "chat-1",
    }
    preference = read_jsonl(tmp_path / "cai" / "preference.jsonl")[5]
    assert preference["chosen"][0]["content"] == steps["final"]
    assert preference["rejected"][0]["content"] == steps["initial"]
    assert preference["principles"] == [first.name, second.name]


def test_cai_resumes_at_the_step_it_reached(prompts_file, tmp_path):
    """A model that fails at the second revision: the rerun regenerates nothing stored."""
    down = ScriptedModel(broken=lambda c: len(c) >= 7)
    settings = CAISettings(revisions=2)
    report = revise_prompts(down, prompts_file, tmp_path / "cai", settings=settings, progress=False)
    assert (report.done, report.failed, dict(report.reasons)) == (0, 6, {"model error": 6})
    assert read_jsonl(tmp_path / "cai" / "sft.jsonl") == []
    up = ScriptedModel()
    report = revise_prompts(up, prompts_file, tmp_path / "cai", settings=settings, progress=False)
    assert (report.done, report.retried) == (6, 6)
    assert {len(c) for c in up.seen} == {7, 8, 9, 10}  # critique 2 and revision 2 only
    assert len(read_jsonl(tmp_path / "cai" / "sft.jsonl")) == 6


def test_cai_from_the_command_line_feeds_sft_and_dpo(
    tiny_model_dir, prompts_file, write_jsonl, tmp_path, capsys
):
    few_shot = write_jsonl(
        [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                       {"role": "user", "content": "Critique that."}, {"role": "assistant", "content": "Fine."},
                       {"role": "user", "content": "Revise it."}, {"role": "assistant", "content": "Hello!"}]}],
        "few.jsonl",
    )  # fmt: skip
    out = tmp_path / "cai"
    code = main(
        ["-q", "cai", "--model", str(tiny_model_dir), "--data", str(prompts_file), "--out-dir", str(out),
         "--revisions", "2", "--few-shot", str(few_shot), "--max-new-tokens", "8", "--seed", "2"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "revised 6 prompts: 6 done" in printed
    assert load_records(out / "sft.jsonl", "sft").kind == "sft"
    assert len(read_jsonl(out / "steps.jsonl")) == 6
    common = [f"model={tiny_model_dir}", "max_steps=1", "batch_size=2", "save_every=null"]
    assert (
        main(["-q", "sft", *common, f"data={out / 'sft.jsonl'}", f"output_dir={tmp_path / 'sft'}"])
        == 0
    )
    assert (
        main(
            [
                "-q",
                "dpo",
                *common,
                f"data={out / 'preference.jsonl'}",
                f"output_dir={tmp_path / 'dpo'}",
            ]
        )
        == 0
    )
    # a second run finds everything in the store and rewrites the same files
    before = {name: (out / f"{name}.jsonl").read_text() for name in ("sft", "preference", "steps")}
    assert main(["-q", "cai", "--model", str(tiny_model_dir), "--data", str(prompts_file), "--out-dir", str(out),
                 "--revisions", "2", "--few-shot", str(few_shot), "--max-new-tokens", "8", "--seed", "2"]) == 0  # fmt: skip
    assert "6 resumed from the store" in capsys.readouterr().out
    assert before == {name: (out / f"{name}.jsonl").read_text() for name in before}


def test_few_shot_files_are_checked(write_jsonl):
    system = write_jsonl(
        [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                       {"role": "assistant", "content": "A"}]}], "system.jsonl",
    )  # fmt: skip
    with pytest.raises(
        AlignkitError, match=r"system.jsonl:1: field 'messages\[0\].role' is 'system'"
    ):
        load_few_shot(system)
    open_ended = write_jsonl(
        [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                       {"role": "user", "content": "Q2"}]}], "open.jsonl",
    )  # fmt: skip
    with pytest.raises(AlignkitError, match="open.jsonl:1: the example ends with a user turn"):
        load_few_shot(open_ended)


def test_prompt_items_are_keyed_by_content_or_id(write_jsonl):
    path = write_jsonl(
        [{"prompt": "A"}, {"prompt": "B"}, {"prompt": "A"}, {"prompt": "C", "id": 7}]
    )
    keys = [item.key for item in read_prompt_items(path)]
    assert keys[0] != keys[1] and keys[2] == keys[0] + "#2" and keys[3] == "id:7"
    reordered = write_jsonl([{"prompt": "B"}, {"prompt": "A"}], "reordered.jsonl")
    assert [i.key for i in read_prompt_items(reordered)] == [keys[1], keys[0]]
    duplicate = write_jsonl([{"prompt": "A", "id": 1}, {"prompt": "B", "id": 1}], "dup.jsonl")
    with pytest.raises(AlignkitError, match=r"dup.jsonl:2: field 'id' repeats 1 of record 1"):
        read_prompt_items(duplicate)
    bad = write_jsonl([{"prompt": "A"}, {"promt": "B"}], "bad.jsonl")
    with pytest.raises(AlignkitError, match=r"bad.jsonl:2: .*nothing labelled"):
        read_prompt_items(bad)


# -- resume after SIGKILL ---------------------------------------------------------------


def _labelled(store_path) -> set[str]:
    """The prompts of every labelled item (read-only, while a run writes)."""
    try:
        db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=5)
        rows = db.execute("SELECT inputs FROM items WHERE status = 'done'").fetchall()
        db.close()
    except sqlite3.OperationalError:  # not created yet
        return {}
    return {json.loads(inputs)["prompt"] for (inputs,) in rows}


def test_label_killed_mid_run_resumes_without_asking_twice(
    tiny_model_dir, judge_spec, write_jsonl, tmp_path
):
    prompts = [f"Question number {i}?" for i in range(16)]
    data = write_jsonl([{"prompt": p} for p in prompts], "prompts.jsonl")
    out, judge_log = tmp_path / "prefs.jsonl", tmp_path / "judge.log"
    command = [sys.executable, "-m", "alignkit", "-q", "label", "--policy", str(tiny_model_dir),
               "--data", str(data), "--judge", judge_spec, "--out", str(out), "-n", "2",
               "--max-new-tokens", "6", "--batch-size", "2"]  # fmt: skip
    env = {**os.environ, "JUDGE_LOG": str(judge_log), "JUDGE_DELAY": "0.1"}
    store = tmp_path / "prefs.run" / STORE_NAME

    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while len(_labelled(store)) < 4 and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    stored_before = _labelled(store)
    assert 4 <= len(stored_before) < len(prompts), "kill the run mid-way"
    asked_before = len(judge_log.read_text().splitlines())
    assert not out.exists()  # written only at the end

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr
    assert (
        f"labelled 16 prompts: {16 - len(stored_before)} done, {len(stored_before)} resumed "
        "from the store, 0 failed" in second.stdout
    )
    # every prompt exactly once, in input order
    records = read_jsonl(out)
    assert [r["prompt"][-1]["content"] for r in records] == prompts
    # the resumed run never asked the judge about a prompt whose label was stored
    asked_after = judge_log.read_text().splitlines()[asked_before:]
    assert asked_after and not set(asked_after) & stored_before
    # and the store holds one paid answer per pair
    db = sqlite3.connect(store)
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT item) FROM requests").fetchone() == (16, 16)


def letter_judge_model(tokenizer, folder):
    """A tiny model that, whatever it is shown, puts logit 5 on "A", 4 on "B" and 0 on
    every other token as its next token: so `alignkit serve` returns both letters among
    its top log-probs and the HTTP judge can read a verdict from any prompt. (Embedding
    dimension 0 is 50 for every token, which keeps that dimension of the final hidden
    state positive and dominant; the final norm keeps only it, the head reads only it.)"""
    import torch

    from alignkit.models.tiny import tiny_model

    model = tiny_model(seed=5, tokenizer=tokenizer, tie_word_embeddings=False).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 50.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        for letter, logit in {"A": 5.0, "B": 4.0}.items():
            (i,) = tokenizer.encode(letter, add_special_tokens=False)
            model.lm_head.weight[i, 0] = logit / model.config.hidden_size**0.5
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class Server:
    """`alignkit serve` as a subprocess on a fixed port, killed with SIGKILL."""

    def __init__(self, model_dir, port, env):
        import httpx

        command = [sys.executable, "-m", "alignkit", "serve", "--model", str(model_dir),
                   "--port", str(port), "--served-name", "judge"]  # fmt: skip
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.process.poll() is None, "alignkit serve exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("alignkit serve did not come up")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def _request_log(store_path):
    db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=5)
    rows = db.execute("SELECT id, item, name, failure FROM requests ORDER BY id").fetchall()
    db.close()
    return rows


def test_label_survives_the_judge_server_killed_and_restarted(
    tiny_model_dir, tokenizer, write_jsonl, tmp_path
):
    """The judge is `alignkit serve` over HTTP. Killing the server mid-run turns the
    requests in flight and after into recorded failures, never labels; after a restart
    the same command labels what is missing, and no stored label is asked for again."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "ALIGNKIT_API_KEY"}
    judge_dir = letter_judge_model(tokenizer, tmp_path / "judge-model")
    prompts = [f"Question number {i}?" for i in range(12)]
    data = write_jsonl([{"prompt": p} for p in prompts], "prompts.jsonl")
    out, store = tmp_path / "prefs.jsonl", tmp_path / "prefs.run" / STORE_NAME
    command = [sys.executable, "-m", "alignkit", "-q", "label", "--policy", str(tiny_model_dir),
               "--data", str(data), "--judge", f"openai:http://127.0.0.1:{port}/v1",
               "--judge-model", "judge", "--out", str(out), "--max-new-tokens", "6",
               "--batch-size", "1"]  # fmt: skip

    server = Server(judge_dir, port, env)
    labeller = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while len(_labelled(store)) < 2 and labeller.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    server.kill()
    while labeller.poll() is None and not any(f for *_, f in _request_log(store)):
        time.sleep(0.05)  # until the labeller has met the dead server
    server = Server(judge_dir, port, env)
    try:
        labeller.communicate(timeout=240)
        first_log = _request_log(store)
        failed = {item for _, item, _, failure in first_log if failure}
        assert failed and all(f.startswith(("connection", "timeout")) for *_, f in first_log if f)
        labelled_first = _labelled(store)
        assert 2 <= len(labelled_first) < len(prompts)

        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    finally:
        server.kill()
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(labelled_first)} resumed from the store, 0 failed" in rerun.stdout
    assert [r["prompt"][-1]["content"] for r in read_jsonl(out)] == prompts
    # Per item: failures first, then exactly one paid answer, and nothing asked after it.
    log = _request_log(store)
    for item in {item for _, item, _, _ in log}:
        rows = [failure for _, i, _, failure in log if i == item]
        assert rows[-1] is None and all(f is not None for f in rows[:-1]), rows
    assert all(row in log for row in first_log)
    assert not {i for _, i, _, _ in log[len(first_log) :]} & {
        item for _, item, _, failure in first_log if failure is None
    }


@pytest.mark.parametrize("command", ["label", "cai"])
def test_the_docs_name_only_real_options(command):
    """Every --option in docs/ai_feedback.md's usage block of a command exists."""
    import re

    from alignkit.cli import build_parser

    docs = (Path(__file__).parents[2] / "docs" / "ai_feedback.md").read_text()
    usage = re.search(rf"```\nalignkit {command} (.*?)```", docs, re.S).group(1)
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    known = {option for action in parser._actions for option in action.option_strings}
    documented = set(re.findall(r"--[a-z-]+", usage))
    assert documented and documented <= known, documented - known

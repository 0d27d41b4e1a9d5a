"""The command line, run as a user runs it (subprocesses), plus in-process where patching is needed."""

import json
import subprocess
import sys

import pytest
import torch

from alignkit.cli import main

PAIR = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}


def alignkit(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "alignkit", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
    )


def test_help_lists_command_groups_and_version():
    result = alignkit("--help")
    assert result.returncode == 0
    for group in (
        "models", "chat", "data", "sft", "dpo", "kto", "rm", "score", "generate", "ppo", "rloo",
        "grpo", "quickstart", "serve", "label", "cai", "eval", "probe", "redteam", "debate",
        "verify", "online-dpo", "report",
    ):  # fmt: skip
        assert f"    {group}" in result.stdout
    from alignkit import __version__

    assert alignkit("--version").stdout.strip() == f"alignkit {__version__}"


def test_data_validate_valid_file(write_jsonl):
    path = write_jsonl([PAIR, PAIR])
    result = alignkit("data", "validate", str(path))
    assert result.returncode == 0
    assert result.stdout.strip() == f"{path}: 2 valid preference records"


def test_data_validate_lists_every_error_without_traceback(write_jsonl):
    path = write_jsonl([PAIR, {"prompt": "p", "chosen": "a"}, b"\xff\xfe", '{"prompt": "x"'])
    result = alignkit("data", "validate", str(path), "--kind", "preference")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}:2: field 'rejected' is missing",
        f"{path}:3: bytes are not valid UTF-8 (byte 0xff at offset 0)",
        f"{path}:4: truncated JSON (the record ends early: Expecting ',' delimiter)",
        f"{path}: 3 of 4 records invalid",
    ]
    assert "Traceback" not in result.stderr


def test_file_level_errors_are_one_line_and_exit_2(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = alignkit("data", "validate", str(tmp_path / "empty.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'empty.jsonl'}: file is empty (no records)"


def test_data_stats_counts_and_percentiles(write_jsonl):
    long_answer = " ".join(["word"] * 60)
    path = write_jsonl(
        [{"prompt": "Say hi", "completion": "Hi!"}] * 3
        + [{"prompt": "Say hi", "completion": long_answer}]
    )
    result = alignkit("data", "stats", str(path), "--max-length", "20", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # "Say hi" -> 2 tokens; "Hi!" -> 2 tokens + EOS; 60 x " word" -> 60 tokens + EOS
    assert summary["records"] == 4 and summary["kind"] == "sft"
    assert summary["prompt"]["max"] == 2
    assert summary["completion"]["p50"] == 3 and summary["completion"]["max"] == 61
    assert summary["over_max_length"] == 1
    table = alignkit("data", "stats", str(path), "--max-length", "20").stdout
    assert "records longer than max_length=20: 1" in table


def test_data_convert_hh(write_jsonl, tmp_path):
    src = write_jsonl(
        [
            {
                "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
                "rejected": "\n\nHuman: Hi\n\nAssistant: Go.",
            }
        ]
    )
    out = tmp_path / "prefs.jsonl"
    result = alignkit("data", "convert", "--from", "hh", str(src), str(out))
    assert result.returncode == 0 and "wrote 1 preference records" in result.stdout
    assert json.loads(out.read_text())["chosen"] == [{"role": "assistant", "content": "Hello!"}]
    assert alignkit("data", "validate", str(out)).returncode == 0


def test_models_list():
    result = alignkit("models", "list")
    assert result.returncode == 0 and "smollm2-135m-instruct" in result.stdout


def test_models_convert_refuses_to_overwrite_and_rejects_non_gguf(tmp_path, capsys):
    (tmp_path / "exists").mkdir()
    assert main(["models", "convert", "smollm2-135m-instruct", str(tmp_path / "exists")]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    (tmp_path / "model.txt").write_text("x")
    assert main(["models", "convert", str(tmp_path / "model.txt"), str(tmp_path / "out")]) == 2
    assert "expected a .gguf file" in capsys.readouterr().err


def test_models_convert_builtin_to_a_folder(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    assert main(["-q", "models", "convert", "smollm2-135m-instruct", str(tmp_path / "smol")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "smol")
    assert model.config.num_hidden_layers == 30


def test_chat_one_shot_prints_the_reply():
    result = alignkit(
        "-q", "chat", "--prompt", "What is the capital of France?", "--max-new-tokens", "20"
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_chat_interactive_keeps_history_and_resets():
    script = "What is the capital of France?\nAnd of Italy?\n/reset\n/exit\n"
    result = alignkit("-q", "chat", "--max-new-tokens", "20", stdin=script)
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.split("you> ") if "assistant>" in line]
    assert len(replies) == 2
    assert "Paris" in replies[0] and "Rome" in replies[1]


def test_chat_unknown_model_is_a_clear_error():
    result = alignkit("chat", "--model", "no-such-model", "--prompt", "hi")
    assert result.returncode == 2
    assert (
        result.stderr.startswith("error: model 'no-such-model' not found")
        and "Traceback" not in result.stderr
    )


COMMANDS_BY_MODULE = {
    "alignkit.cli.models": ["models list", "models convert"],
    "alignkit.cli.chat": ["chat"],
    "alignkit.cli.data": ["data validate", "data stats", "data convert"],
    "alignkit.cli.sft": ["sft"],
    "alignkit.cli.dpo": ["dpo"],
    "alignkit.cli.kto": ["kto"],
    "alignkit.cli.rm": ["rm"],
    "alignkit.cli.score": ["score"],
    "alignkit.cli.generate": ["generate"],
    "alignkit.cli.serve": ["serve"],
    "alignkit.cli.label": ["label"],
    "alignkit.cli.cai": ["cai"],
    "alignkit.cli.rl": ["ppo", "rloo", "grpo"],
    "alignkit.cli.online": ["online-dpo"],
    "alignkit.cli.quickstart": ["quickstart"],
    "alignkit.cli.eval": ["eval"],
    "alignkit.cli.probe": ["probe"],
    "alignkit.cli.redteam": ["redteam"],
    "alignkit.cli.debate": ["debate"],
    "alignkit.cli.verify": ["verify"],
    "alignkit.cli.report": ["report"],
}


def runnable_commands(parser, prefix=()):
    """The leaf commands under `parser`, as "group sub" strings, each with its `run`."""
    import argparse

    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= runnable_commands(sub, (*prefix, name)) or {
                    " ".join((*prefix, name)): sub.get_default("run")
                }
    return found


@pytest.mark.parametrize("module", sorted(COMMANDS_BY_MODULE))
def test_each_command_module_registers_its_commands(module):
    """Registered on its own, a module adds exactly its commands (listed here by hand),
    each with a `run` for `main` to call (without one, `main` prints help instead)."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(module).register(parser.add_subparsers())
    commands = runnable_commands(parser)
    assert list(commands) == COMMANDS_BY_MODULE[module]
    assert None not in commands.values()


def test_the_cli_is_the_commands_of_every_module():
    from alignkit.cli import COMMAND_MODULES, build_parser

    assert sorted(COMMAND_MODULES) == sorted(COMMANDS_BY_MODULE)
    everything = [c for m in COMMAND_MODULES for c in COMMANDS_BY_MODULE[m]]
    assert list(runnable_commands(build_parser())) == everything


def test_sft_help_documents_every_key():
    result = alignkit("sft", "--help")
    assert result.returncode == 0
    for key in (
        "learning_rate=2e-05",
        "micro_batch_size=None",
        "packing=False",
        "resume=None",
        "lora=None",
    ):
        assert key in result.stdout


def test_sft_rejects_unknown_keys_with_a_suggestion():
    result = alignkit("sft", "data=x.jsonl", "learnig_rate=1e-4")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: unknown config key 'learnig_rate'; did you mean 'learning_rate'?"
    )


def test_sft_without_a_config_file(tiny_model_dir, words_file, tmp_path):
    result = alignkit(
        "sft",
        f"model={tiny_model_dir}",
        f"data={words_file}",
        f"output_dir={tmp_path / 'run'}",
        "max_steps=2",
        "batch_size=4",
        "micro_batch_size=2",
        "learning_rate=1e-3",
        "save_every=1",
        "seed=3",
    )
    assert result.returncode == 0, result.stderr
    assert f"done: 2 steps; model in {tmp_path / 'run' / 'final'}" in result.stdout
    assert (
        "step 2/2" in result.stderr and "loss" in result.stderr
    )  # readable log lines without a terminal
    assert (tmp_path / "run" / "checkpoints" / "step-1").is_dir()


def test_sft_with_bad_data_names_the_record(tiny_model_dir, write_jsonl, tmp_path):
    path = write_jsonl(
        [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ]
            },
            {"messages": [{"role": "robot", "content": "x"}]},
        ]
    )
    result = alignkit(
        "sft", f"model={tiny_model_dir}", f"data={path}", f"output_dir={tmp_path / 'run'}"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:2: field 'messages[0].role' has unknown role 'robot'" in result.stderr


def test_dpo_from_the_command_line(tiny_model_dir, preference_files, tmp_path):
    train, held_out = preference_files
    result = alignkit(
        "dpo",
        f"model={tiny_model_dir}",
        f"data={train}",
        f"eval_data={held_out}",
        f"output_dir={tmp_path / 'run'}",
        "loss=ipo",
        "max_steps=2",
        "batch_size=4",
        "learning_rate=1e-3",
        "save_every=null",
    )
    assert result.returncode == 0, result.stderr
    assert f"done: 2 steps; model in {tmp_path / 'run' / 'final'}" in result.stdout
    assert "reference log-probs" in result.stderr
    # quiet: no per-load bars from the libraries underneath
    assert "Loading weights" not in result.stderr and "Writing model shards" not in result.stderr
    # every training command ends with its run's report, its curves from metrics.jsonl
    report = (tmp_path / "run" / "report.html").read_text()
    assert f"report: {tmp_path / 'run' / 'report.html'}" in result.stdout
    assert '"name": "rewards/margins"' in report and '"name": "eval/rewards/margins"' in report


def test_dpo_rejects_an_unknown_loss():
    result = alignkit("dpo", "data=x.jsonl", "loss=dpoo")
    assert result.returncode == 2
    assert (
        "loss must be one of dpo, cdpo, ipo, hinge, robust, simpo, orpo, got 'dpoo'"
        in result.stderr
    )


def test_rm_and_score_from_the_command_line(tiny_model_dir, reward_task_files, tmp_path, capsys):
    train, held_out = reward_task_files
    result = alignkit(
        "rm",
        f"model={tiny_model_dir}",
        f"data={train}",
        f"output_dir={tmp_path / 'run'}",
        "max_steps=2",
        "batch_size=4",
        "num_heads=2",
        "save_every=null",
    )
    assert result.returncode == 0, result.stderr
    assert f"done: 2 steps; model in {tmp_path / 'run' / 'final'}" in result.stdout
    source = tmp_path / "replies.jsonl"
    source.write_text(
        "".join(
            json.dumps({"prompt": "Describe your day.", "completion": text}) + "\n"
            for text in ("good", "bad day", "great")
        )
    )
    out = tmp_path / "scored.jsonl"
    result = alignkit(
        "score",
        "--model",
        str(tmp_path / "run" / "final"),
        "--data",
        str(source),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "scored 3 records" in result.stdout
    # a reward model where a policy is needed is refused, never chatted with as a bare backbone
    assert main(["chat", "--model", str(tmp_path / "run" / "final"), "--prompt", "hi"]) == 2
    assert f"{tmp_path / 'run' / 'final'} is a reward model" in capsys.readouterr().err
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["completion"] for r in scored] == ["good", "bad day", "great"]
    # Worked out independently with plain transformers: a plain-text record is the prompt's
    # tokens, the reply's and EOS; each of the 2 heads reads the last token and its stored
    # offset is subtracted; the score is the heads' mean, score_std their (population)
    # standard deviation, which for two heads is half their difference.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    assert model.config.num_labels == 2
    for record in scored:
        ids = tokenizer(record["prompt"])["input_ids"]
        ids += tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
        ids += [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        first, second = (logits - torch.tensor(model.config.reward_offset)).tolist()
        assert record["score"] == pytest.approx((first + second) / 2, abs=1e-4)
        assert record["score_std"] == pytest.approx(abs(first - second) / 2, abs=1e-4)


@pytest.fixture(scope="module")
def foreign_reward_model(tmp_path_factory, tokenizer):
    """A reward model as transformers saves one (not trained by alignkit)."""
    from transformers import LlamaForSequenceClassification

    from alignkit.models.tiny import tiny_config

    folder = tmp_path_factory.mktemp("foreign-rm")
    LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=1)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_score_refuses_a_model_that_is_not_a_reward_model(tiny_model_dir, write_jsonl, tmp_path):
    source = write_jsonl([{"prompt": "p", "completion": "ok"}])
    result = alignkit(
        "score", "--model", str(tiny_model_dir), "--data", str(source), "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2
    assert "is not a reward model" in result.stderr and "Traceback" not in result.stderr


def test_score_with_a_bad_record_names_it_and_writes_nothing(
    foreign_reward_model, write_jsonl, tmp_path
):
    source = write_jsonl([{"prompt": "p", "completion": "ok"}, {"prompt": "p", "completion": 3}])
    out = tmp_path / "scored.jsonl"
    tiny_model_dir = foreign_reward_model
    result = alignkit(
        "score", "--model", str(tiny_model_dir), "--data", str(source), "--out", str(out)
    )
    assert result.returncode == 2
    assert (
        f"{source}:2: field 'completion' must be a string or a list of messages, got int"
        in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".scored.jsonl.partial*"))
    result = alignkit(
        "score",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(source),
        "--out",
        str(out),
        "--skip-invalid",
    )
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 1
    assert "completion" in (tmp_path / "scored.jsonl.rejects.jsonl").read_text()


def test_generate_writes_k_samples_per_prompt(tiny_model_dir, write_jsonl, tmp_path):
    source = write_jsonl(
        [
            {"prompt": "Once upon a time", "id": "a"},
            {"prompt": [{"role": "user", "content": "Hi"}], "id": "b"},
            {"prompt": "Tell me", "id": "c"},
        ]
    )
    out = tmp_path / "samples.jsonl"
    args = ["generate", "--model", str(tiny_model_dir), "--data", str(source), "--out", str(out)]
    result = alignkit(*args, "-n", "2", "--max-new-tokens", "4", "--batch-size", "4", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "wrote 6 completions for 3 prompts" in result.stdout
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(s["id"], s["sample"]) for s in samples] == [(i, k) for i in "abc" for k in (0, 1)]
    assert isinstance(samples[0]["completion"], str)
    assert samples[2]["completion"][0]["role"] == "assistant"
    finished = [s["finished"] for s in samples]
    ended = sum(f is True for f in finished)
    assert ended + sum(f is False for f in finished) == 6  # each a JSON true or false
    assert f"({ended} ended by EOS/stop)" in result.stdout  # the count printed is the file's
    again = tmp_path / "again.jsonl"
    alignkit(
        *args[:-1],
        str(again),
        "-n",
        "2",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "4",
        "--seed",
        "1",
    )
    assert again.read_text() == out.read_text()  # seeded: repeatable


def test_ppo_on_the_sentiment_task_from_the_command_line(tiny_model_dir, tmp_path):
    result = alignkit(
        "ppo",
        f"model={tiny_model_dir}",
        "task=sentiment",
        f"output_dir={tmp_path / 'ppo'}",
        "max_steps=1",
        "batch_size=2",
        "max_new_tokens=4",
        "save_every=null",
    )
    assert result.returncode == 0, result.stderr
    assert "done: 1 steps" in result.stdout
    samples = (tmp_path / "ppo" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 and '"score"' in samples[0]
    report = (tmp_path / "ppo" / "report.html").read_text()
    assert '"name": "objective/scores"' in report and "task: sentiment" in report


def test_rl_without_prompts_or_reward_is_a_clear_error(tiny_model_dir, tmp_path):
    result = alignkit("grpo", f"model={tiny_model_dir}", f"output_dir={tmp_path}")
    assert result.returncode == 2
    assert "give prompts with data=FILE or a built-in task with task=sentiment" in result.stderr


def test_missing_input_files_are_reported_before_any_model_loads(tmp_path, capsys):
    """The model does not exist either: had it been loaded first, the error would be
    about the model."""
    code = main(
        [
            "dpo",
            f"model={tmp_path / 'no-model'}",
            f"data={tmp_path / 'no-data.jsonl'}",
            f"eval_data={tmp_path / 'no-eval.jsonl'}",
        ]
    )
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: data={tmp_path / 'no-data.jsonl'}: no such file or folder; "
        f"eval_data={tmp_path / 'no-eval.jsonl'}: no such file or folder"
    )
    assert main(["ppo", "task=sentiment", f"reward={tmp_path / 'no-rm'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: reward={tmp_path / 'no-rm'}: no such file or folder"


def test_ctrl_c_names_the_last_checkpoint_and_the_command_that_continues(
    tmp_path, write_jsonl, monkeypatch, capsys
):
    import alignkit.methods.dpo as dpo

    data = write_jsonl([PAIR])
    run_dir = tmp_path / "run"

    def interrupted_after_two_checkpoints(config):
        for step in (2, 4):
            (run_dir / "checkpoints" / f"step-{step}").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(dpo, "run_dpo", interrupted_after_two_checkpoints)
    code = main(["dpo", f"data={data}", f"output_dir={run_dir}", "beta=0.2", "resume=null"])
    assert code == 130
    err = capsys.readouterr().err
    assert f"interrupted; the last checkpoint is {run_dir / 'checkpoints' / 'step-4'}" in err
    assert (
        f"continue from it with: alignkit dpo data={data} output_dir={run_dir} beta=0.2 resume=auto"
        in err
    )

"""The README's command block runs top to bottom, as a user would type it, on tiny settings.

Each line is taken from README.md as written; the test only points the built-in model at
a tiny one, cuts training to one step and completions to a few tokens, and supplies the
data files the lines name. A line that cannot run here says why (a server that runs until
stopped, two processes, a file format this test does not make); those paths have their
own tests. Every other line must exit 0, in order, in one folder: a README whose second
DPO line collides with the first one's run folder fails here.
"""

import json
import shutil
from pathlib import Path

import pytest

from alignkit.cli import build_parser, main
from alignkit.models.builtin import DEFAULT_MODEL
from tests.test_readme import README, _alignkit_argv, _shell_commands

SKIPPED = {  # a substring of the line -> why it does not run here
    "torchrun": "two processes: tests/integration/test_resume_ddp.py",
    "alignkit serve": "runs until stopped: tests/integration/test_serve.py",
    "openai:http://": "needs a running server: tests/integration/test_ai_feedback.py",
    "model.gguf": "needs a GGUF file: tests/integration/test_models.py",
    "path/to/run/final": "interactive chat: tests/cli/test_cli.py",
}
# training commands: one optimizer step, short completions, and the tiny model unless
# the line names a model the earlier lines made
TRAINING_OVERRIDES = ["max_steps=1", "save_every=null", "eval_every=null"]
ROLLOUT_OVERRIDES = ["max_new_tokens=6", "batch_size=4", "micro_batch_size=4"]
FLAG_OVERRIDES = {  # command -> flags appended (argparse: the last one wins)
    "chat": ["--max-new-tokens", "6"],
    "generate": ["--max-new-tokens", "6"],
    "label": ["--max-new-tokens", "6"],
    "cai": ["--max-new-tokens", "6"],
    "eval": ["--max-new-tokens", "6"],
}


def conversation(user, assistant=None):
    turns = [{"role": "user", "content": user}]
    return turns if assistant is None else [*turns, {"role": "assistant", "content": assistant}]


def write_inputs(folder: Path, tiny: str) -> None:
    prompts = ["Describe your day.", "Name a colour.", "Say hello.", "Tell a joke."]
    pairs = [
        {
            "prompt": conversation(p),
            "chosen": [{"role": "assistant", "content": "a good kind reply"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        }
        for p in prompts * 2
    ]
    files = {
        "chats.jsonl": [{"messages": conversation(p, "Sure, here it is.")} for p in prompts * 2],
        "pairs.jsonl": pairs,
        "held_out.jsonl": pairs[:4],
        "train.jsonl": pairs,
        "feedback.jsonl": [
            {"prompt": conversation(p), "completion": conversation("", c)[1:], "label": ok}
            for p in prompts
            for c, ok in (("a good kind reply", True), ("bad", False))
        ],
        "rankings.jsonl": [
            {
                "prompt": conversation(p),
                "responses": [[{"role": "assistant", "content": c}] for c in ("good", "ok", "no")],
                "ranking": [0, 1, 2],
            }
            for p in prompts * 2
        ],
        "replies.jsonl": [
            {"prompt": conversation(p), "completion": [{"role": "assistant", "content": "Hi!"}]}
            for p in prompts
        ],
        "prompts.jsonl": [{"prompt": conversation(p)} for p in prompts],
        "hh-train.jsonl": [
            {
                "chosen": f"\n\nHuman: {p}\n\nAssistant: gladly",
                "rejected": f"\n\nHuman: {p}\n\nAssistant: no",
            }
            for p in prompts
        ],
    }
    for name, records in files.items():
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "my_rewards.py").write_text(
        "def score(prompt, completion):\n    return float(len(str(completion)))\n"
    )
    (folder / "run.yaml").write_text(
        f"model: {tiny}\ndata: chats.jsonl\noutput_dir: runs/sft-config\nmax_steps: 1\n"
    )
    shutil.copytree(README.parent / "examples", folder / "examples")


def tiny_argv(argv: list[str], tiny: str) -> list[str]:
    """The README line with the built-in model replaced by the tiny one and the work cut."""
    if argv[0] == "models":  # the built-in model itself: list it, convert it
        return argv
    argv = [tiny if a in (DEFAULT_MODEL, "M") else a.replace(DEFAULT_MODEL, tiny) for a in argv]
    args = build_parser().parse_args(argv)
    if getattr(args, "config_class", None) is not None:
        named_model = any(a.startswith("model=") for a in argv) or args.config == "run.yaml"
        extra = [] if named_model else [f"model={tiny}"]
        extra += TRAINING_OVERRIDES
        if argv[0] in ("ppo", "rloo", "grpo"):
            extra += ROLLOUT_OVERRIDES
            if argv[0] == "grpo":
                extra += ["num_generations=2"]
            if argv[0] == "rloo":
                extra += ["num_generations=2"]
        return [*argv, *extra]
    extra = FLAG_OVERRIDES.get(argv[0], [])
    if argv[0] in ("chat", "generate", "cai") and "--model" not in argv:
        extra = [*extra, "--model", tiny]
    return [*argv, *extra]


def test_the_readme_command_block_runs_top_to_bottom(tiny_model_dir, tmp_path, monkeypatch):
    tiny = str(tiny_model_dir)
    write_inputs(tmp_path, tiny)
    monkeypatch.chdir(tmp_path)
    ran, skipped = [], []
    for command in _shell_commands(README.read_text()):
        argv = _alignkit_argv(command)
        if argv is None and not command.startswith("torchrun"):
            continue  # make, pip: the README's two commands run in CI
        why = next((why for part, why in SKIPPED.items() if part in command), None)
        if why is not None:
            skipped.append((command, why))
            continue
        if argv == ["--help"]:
            with pytest.raises(SystemExit) as exit:
                main(argv)
            assert exit.value.code == 0
            continue
        full = tiny_argv(argv, tiny)
        assert main(["-q", *full]) == 0, f"README line failed: {command}\nran as: {full}"
        ran.append(command)
    assert len(ran) >= 25, ran
    assert len(skipped) <= 6, skipped
    assert (tmp_path / "report.html").is_file()

"""The README's Python example runs as written."""

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    record = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
    (tmp_path / "prefs.jsonl").write_text(json.dumps(record) + "\n")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["batch"]["input_ids"].shape == (1, 34)
    assert namespace["logits"].shape == (1, 34, 49152)


def test_readme_names_the_two_commands_and_ci_runs_make_test():
    text = README.read_text()
    assert "make quickstart" in text and "make test" in text
    assert "make test" in (README.parent / ".ci" / "run").read_text()


def test_training_docs_document_every_config_key():
    import dataclasses

    from alignkit.config import SFTConfig

    docs = (README.parent / "docs" / "training.md").read_text()
    missing = [f.name for f in dataclasses.fields(SFTConfig) if f"| `{f.name}`" not in docs]
    assert not missing, f"docs/training.md does not document: {missing}"


def test_reward_docs_document_every_reward_key():
    import dataclasses

    from alignkit.config import RewardConfig, TrainConfig

    common = {f.name for f in dataclasses.fields(TrainConfig)}
    docs = (README.parent / "docs" / "reward.md").read_text()
    missing = [
        f.name
        for f in dataclasses.fields(RewardConfig)
        if f.name not in common and f"| `{f.name}`" not in docs
    ]
    assert not missing, f"docs/reward.md does not document: {missing}"


def test_rl_docs_document_every_rl_key():
    import dataclasses

    from alignkit.config import GRPOConfig, PPOConfig, RLOOConfig, TrainConfig

    common = {f.name for f in dataclasses.fields(TrainConfig)}
    docs = (README.parent / "docs" / "rl.md").read_text()
    missing = sorted(
        {
            f.name
            for cls in (PPOConfig, RLOOConfig, GRPOConfig)
            for f in dataclasses.fields(cls)
            if f.name not in common and f"`{f.name}`" not in docs
        }
    )
    assert not missing, f"docs/rl.md does not document: {missing}"


def test_the_command_and_key_reference_is_generated_and_current():
    """docs/reference.md is exactly what the parsers and config dataclasses generate (run
    `make docs` after changing a command or a key), and it names every key of every
    training command's config and every command."""
    import dataclasses

    from alignkit.cli import COMMAND_MODULES
    from alignkit.cli.reference import render_reference
    from alignkit.config import (
        DPOConfig,
        GRPOConfig,
        KTOConfig,
        OnlineDPOConfig,
        PPOConfig,
        RewardConfig,
        RLOOConfig,
        SFTConfig,
    )

    generated = render_reference()
    assert (README.parent / "docs" / "reference.md").read_text() == generated, (
        "docs/reference.md is stale: run make docs"
    )
    for cls in (
        SFTConfig,
        DPOConfig,
        KTOConfig,
        RewardConfig,
        PPOConfig,
        RLOOConfig,
        GRPOConfig,
        OnlineDPOConfig,
    ):
        section = generated[generated.index(f"(`{cls.__name__}`)") :]
        section = section[: section.find("\n## ")]
        listed = set(re.findall(r"^\| `([a-z_0-9.]+)` \|", section, re.M))
        assert {f.name for f in dataclasses.fields(cls)} <= listed, cls.__name__
    assert len(re.findall(r"^## alignkit ", generated, re.M)) == len(COMMAND_MODULES) + 2  # rl: 3
    assert "docs/reference.md" in README.read_text()


def _shell_commands(text: str) -> list[str]:
    """Every command line of the ```bash blocks (continuations joined, comments cut)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            # "alignkit sft ..." elides its arguments on purpose: nothing to check
            if line and not line.startswith("#") and "..." not in line:
                commands.append(line)
    return commands


def _alignkit_argv(command: str) -> list[str] | None:
    import shlex

    # usage notation: "[--kind preference]" marks an optional part; check it too
    words = shlex.split(re.sub(r"\[(--[^\]]*)\]", r"\1", command))
    if words[0] == "alignkit":
        return words[1:]
    if words[0] == "torchrun" and "alignkit" in words:
        return words[words.index("alignkit") + 1 :]
    return None


def _check_parses(argv: list[str], where: str) -> None:
    """argparse accepts the command line and, for a training command, every key=value
    names a real key with a valid value (and a shipped --config file loads)."""
    import contextlib
    import io

    from alignkit.cli import build_parser
    from alignkit.config import load_config

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = build_parser().parse_args(argv)
    except SystemExit as exit:
        if exit.code in (0, None):  # --help, --version
            return
        raise AssertionError(f"{where}: alignkit {' '.join(argv)}: {errors.getvalue()}") from None
    config_class = getattr(args, "config_class", None)
    if config_class is not None:
        shipped = args.config if args.config and (README.parent / args.config).is_file() else None
        load_config(config_class, README.parent / shipped if shipped else None, args.overrides)


def test_every_alignkit_command_in_the_readme_and_docs_parses():
    """Each `alignkit ...` line of the README and the docs' shell blocks is accepted by the
    command-line parser, and training commands' keys and values pass config validation:
    a renamed flag or key fails here. (The README's own two commands run in CI.)"""
    checked = 0
    for doc in [README, *sorted((README.parent / "docs").glob("*.md"))]:
        for command in _shell_commands(doc.read_text()):
            argv = _alignkit_argv(command)
            if argv:
                _check_parses(argv, doc.name)
                checked += 1
    assert checked > 40


def test_every_shipped_config_loads_for_the_command_its_header_names():
    """examples/*.yaml: the header's `alignkit COMMAND --config examples/FILE` line, run
    through the parser and config validation (every key known, every value valid)."""
    examples = sorted((README.parent / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        usage = re.search(
            r"^#\s+(alignkit \S+ --config examples/\S+\.yaml.*)$", path.read_text(), re.M
        )
        assert usage, f"{path.name}: no '# alignkit COMMAND --config {path.name}' line"
        _check_parses(_alignkit_argv(usage.group(1)), path.name)

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

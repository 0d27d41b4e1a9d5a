"""Typed configs: YAML < overrides, validation, suggestions, round trip."""

import pytest

from alignkit.config import ConfigError, SFTConfig, load_config, save_config
from alignkit.models.lora import LoraSettings


def test_defaults_yaml_and_overrides_in_that_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1.0e-4\nbatch_size: 16\nlora: {r: 4}\n")
    config = load_config(
        SFTConfig, path, ["batch_size=32", "lora.alpha=8", "packing=true", "max_steps=10"]
    )
    assert config.learning_rate == 1e-4 and config.batch_size == 32 and config.packing is True
    assert config.lora == LoraSettings(r=4, alpha=8)
    assert config.seed == 0 and config.output_dir == "runs/sft"


def test_yaml_round_trip(tmp_path):
    config = load_config(
        SFTConfig, None, ["lora.r=8", "loggers=[tensorboard]", "max_grad_norm=null"]
    )
    save_config(config, tmp_path / "config.yaml")
    assert load_config(SFTConfig, tmp_path / "config.yaml") == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learning_rat=1e-4"], "unknown config key 'learning_rat'; did you mean 'learning_rate'?"),
        (["lora.rank=4"], "unknown config key 'lora.rank'"),
        (["batch_size=eight"], "batch_size must be an integer, got 'eight'"),
        (["learning_rate=fast"], "learning_rate must be a number, got 'fast'"),
        (["packing=maybe"], "packing must be true or false, got 'maybe'"),
        (["lr_schedule=cos"], "lr_schedule must be one of cosine, linear, constant, got 'cos'"),
        (
            ["batch_size=8", "micro_batch_size=3"],
            "batch_size (8) must be a multiple of micro_batch_size (3)",
        ),
        (
            ["max_length=128", "max_prompt_length=128"],
            "max_prompt_length (128) must be smaller than max_length (128)",
        ),
        (["loggers=[tensorbored]"], "unknown logger(s) ['tensorbored']"),
        (["learning_rate"], "override 'learning_rate' is not of the form key=value"),
        (["lora.r=0"], "lora.r must be positive"),
    ],
)
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(SFTConfig, None, overrides)
    assert message in str(info.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(SFTConfig, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(SFTConfig, tmp_path / "list.yaml")


@pytest.mark.parametrize(
    "config_class, key",
    [
        ("PPOConfig", "max_length"),  # RL cuts prompts and completions, not sequences
        ("GRPOConfig", "packing"),
        ("RLOOConfig", "micro_batch_tokens"),
        ("DPOConfig", "max_new_tokens"),
        ("DPOConfig", "kl_coef"),
        ("KTOConfig", "micro_batch_tokens"),
    ],
)
def test_a_command_rejects_keys_it_does_not_read(config_class, key):
    import alignkit.config as configs

    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config(getattr(configs, config_class), None, [f"{key}=1"])


def test_every_key_of_every_command_is_read_by_the_code():
    """Each config field appears as an attribute read (`.name`) somewhere in alignkit
    outside config.py (directly or through a config property), or is a registry
    hyperparameter (read by name): a key nobody reads would be accepted and ignored."""
    import ast
    import dataclasses
    from pathlib import Path

    import alignkit
    import alignkit.config as configs
    from alignkit.losses.registry import PREFERENCE_LOSSES

    read = set()
    for path in Path(alignkit.__file__).parent.rglob("*.py"):
        if path.name == "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                read.add(node.attr)
    read |= {key for loss in PREFERENCE_LOSSES.values() for key in loss.hyperparameters.values()}
    # a config property that is read reads the fields it uses (micro_batch: micro_batch_size)
    config_source = ast.parse(Path(configs.__file__).read_text())
    for node in ast.walk(config_source):
        if isinstance(node, ast.FunctionDef) and node.name in read:
            if any(getattr(d, "id", None) == "property" for d in node.decorator_list):
                read |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
    commands = [
        configs.SFTConfig,
        configs.DPOConfig,
        configs.KTOConfig,
        configs.RewardConfig,
        configs.PPOConfig,
        configs.RLOOConfig,
        configs.GRPOConfig,
    ]
    unread = {
        (cls.__name__, f.name)
        for cls in commands
        for f in dataclasses.fields(cls)
        if f.name not in read
    }
    assert not unread


def test_micro_batch_tokens_is_auto_a_number_or_null():
    from alignkit.config import DPOConfig

    assert load_config(DPOConfig).micro_batch_tokens == "auto"
    assert load_config(DPOConfig, None, ["micro_batch_tokens=512"]).micro_batch_tokens == 512
    assert load_config(DPOConfig, None, ["micro_batch_tokens=null"]).micro_batch_tokens is None
    with pytest.raises(ConfigError, match="micro_batch_tokens must be a number of tokens, auto"):
        load_config(DPOConfig, None, ["micro_batch_tokens=many"])
    with pytest.raises(ConfigError, match="micro_batch_tokens must be positive"):
        load_config(DPOConfig, None, ["micro_batch_tokens=0"])


def test_the_shipped_ppo_example_config_loads():
    """examples/ppo_sentiment.yaml (docs/rl.md) stays a valid `alignkit ppo --config`."""
    from pathlib import Path

    from alignkit.config import PPOConfig

    path = Path(__file__).resolve().parents[2] / "examples" / "ppo_sentiment.yaml"
    config = load_config(PPOConfig, path)
    assert config.task == "sentiment-chat" and config.max_steps == 8 and config.batch_size == 16

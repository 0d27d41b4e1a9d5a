"""PPO, RLOO and GRPO end to end on a tiny model with a function reward (issue: rollouts
and RLHF). The policy is first taught (SFT) to answer with random words from a small
set; the reward is the share of those words that are "apple", so RL has a signal from
the first batch (about 1 word in 8) and must raise it."""

import json
import random
from pathlib import Path

import pytest
import torch

from alignkit.config import GRPOConfig, PPOConfig, RLOOConfig, SFTConfig
from alignkit.methods.grpo import run_grpo
from alignkit.methods.ppo import PPO, run_ppo
from alignkit.methods.rl import PolicyGradientRun
from alignkit.methods.rloo import run_rloo
from alignkit.methods.sft import run_sft
from tests.conftest import read_metrics

WORDS = "apple river stone cloud tiger piano garden silver".split()


def apple_reward(prompt, completion):
    words = completion.replace(".", " ").split()
    return sum(w.lower() == "apple" for w in words) / max(len(words), 1)


@pytest.fixture(scope="module")
def rl_files(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("rl")
    rng = random.Random(0)
    with open(folder / "sft.jsonl", "w") as out:
        for i in range(64):
            words = " ".join(rng.choice(WORDS) for _ in range(4))
            out.write(json.dumps({"prompt": f"Words {i}:", "completion": f" {words}"}) + "\n")
    with open(folder / "prompts.jsonl", "w") as out:
        for i in range(32):
            out.write(json.dumps({"prompt": f"Words {i}:"}) + "\n")
    run_sft(
        SFTConfig(
            model=str(tiny_model_dir),
            data=str(folder / "sft.jsonl"),
            output_dir=str(folder / "sft"),
            max_steps=60,
            batch_size=16,
            learning_rate=3e-3,
            save_every=None,
            log_every=60,
        )
    )
    return folder / "sft" / "final", folder / "prompts.jsonl"


def rl_settings(rl_files, output_dir, **overrides):
    policy, prompts = rl_files
    settings = dict(
        model=str(policy),
        data=str(prompts),
        reward="tests.integration.test_rl:apple_reward",
        output_dir=str(output_dir),
        batch_size=8,
        max_new_tokens=6,
        learning_rate=1e-3,
        max_steps=30,
        save_every=None,
        log_every=1,
        sample_every=10,
    )
    settings.update(overrides)
    return settings


def reward_curve(run_dir):
    return [m["objective/scores"] for m in read_metrics(run_dir) if "objective/scores" in m]


def assert_reward_rose(run_dir):
    scores = reward_curve(run_dir)
    start, end = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert end > start + 0.1, scores


def test_ppo_raises_the_reward(rl_files, tmp_path):
    config = PPOConfig(
        **rl_settings(rl_files, tmp_path / "ppo", critic_learning_rate=1e-3, ppo_epochs=2)
    )
    result = run_ppo(config)
    assert_reward_rose(tmp_path / "ppo")
    logged = read_metrics(tmp_path / "ppo")
    assert logged[0]["objective/kl"] == pytest.approx(
        0.0, abs=1e-4
    )  # the policy starts as the reference
    for name in (
        "objective/scores",
        "objective/kl",
        "objective/rlhf_reward",
        "policy/approxkl",
        "policy/clipfrac",
        "policy/entropy",
        "value/loss",
        "value/explained_var",
        "completions/mean_length",
        "completions/eos_rate",
    ):
        assert name in logged[-1], name
    samples = [
        json.loads(line) for line in (tmp_path / "ppo" / "samples.jsonl").read_text().splitlines()
    ]
    assert {s["step"] for s in samples} == {1, 10, 20, 30}
    assert {"prompt", "completion", "score"} <= samples[0].keys()
    assert (result.final_dir / "config.json").is_file() and (
        tmp_path / "ppo" / "critic" / "config.json"
    ).is_file()


def test_rloo_raises_the_reward(rl_files, tmp_path):
    run_rloo(
        RLOOConfig(**rl_settings(rl_files, tmp_path / "rloo", batch_size=4, num_generations=4))
    )
    assert_reward_rose(tmp_path / "rloo")


def test_grpo_raises_the_reward(rl_files, tmp_path):
    run_grpo(
        GRPOConfig(**rl_settings(rl_files, tmp_path / "grpo", batch_size=4, num_generations=4))
    )
    assert_reward_rose(tmp_path / "grpo")


def test_rollout_logprobs_match_the_training_forward(rl_files, tmp_path):
    """The right-padded prompt+completion forward gives the sampler's own log-probs
    (left-padded, KV cache), at the sampling temperature."""
    config = PPOConfig(**rl_settings(rl_files, tmp_path / "check", temperature=0.7))
    run = PolicyGradientRun(config, PPO(config))
    batch = run.rollout(0)
    old, ref, values = run.evaluate_rollout(batch)
    torch.testing.assert_close(old, batch.sample_logps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ref, old, atol=1e-5, rtol=1e-5)
    assert values.shape == old.shape


def test_lora_policy_uses_the_disabled_adapter_as_reference(rl_files, tmp_path):
    from alignkit.models.lora import LoraSettings

    config = PPOConfig(
        **rl_settings(
            rl_files, tmp_path / "lora", max_steps=2, lora=LoraSettings(r=4, alpha=8, dropout=0.0)
        )
    )
    run = PolicyGradientRun(config, PPO(config))
    assert run.reference is None  # no second copy of the model
    result = run.run()
    assert (result.final_dir / "adapter_config.json").is_file()
    logged = read_metrics(tmp_path / "lora")
    assert logged[0]["objective/kl"] == pytest.approx(0.0, abs=1e-4)


def test_ppo_sigkill_then_resume_equals_the_uninterrupted_run(rl_files, tmp_path):
    """A PPO run killed (SIGKILL) after its step-4 checkpoint and resumed with
    resume=auto logs the same scores, KL and KL coefficient and ends with the same
    weights as the uninterrupted run (adaptive KL control, so its state must be restored)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    policy, prompts = rl_files

    def command(output_dir, *extra):
        return [
            sys.executable, "-m", "alignkit", "-q", "ppo",
            f"model={policy}", f"data={prompts}", f"output_dir={output_dir}",
            "reward=tests.integration.test_rl:apple_reward",
            "batch_size=8", "max_new_tokens=6", "learning_rate=1e-3", "max_steps=8",
            "save_every=4", "log_every=1", "kl_target=1.0", "kl_horizon=100", *extra,
        ]  # fmt: skip

    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(
        command(tmp_path / "straight"), capture_output=True, text=True, env=env, cwd=root
    )
    assert done.returncode == 0, done.stderr[-3000:]
    process = subprocess.Popen(
        command(tmp_path / "killed"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=root,
    )
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoints" / "step-4").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "final").exists()
    done = subprocess.run(
        command(tmp_path / "killed", "resume=auto"),
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "killed")
    assert [m["step"] for m in resumed] == list(range(1, 9))
    for a, b in zip(straight, resumed, strict=True):
        for key in ("objective/scores", "objective/kl", "kl_coef", "value/loss"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (key, a["step"])
    assert straight[-1]["kl_coef"] != 0.05  # the controller moved, and was restored
    wa = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=0)


def test_missing_eos_penalty_and_ptx_term(rl_files, tmp_path):
    """Completions cut at max_new_tokens lose `missing_eos_penalty` from their score; the
    PPO-ptx term trains on SFT records and is logged."""
    sft_file = rl_files[1].parent / "sft.jsonl"
    config = PPOConfig(
        **rl_settings(
            rl_files,
            tmp_path / "ptx",
            max_steps=2,
            missing_eos_penalty=1.0,
            ptx_data=str(sft_file),
            ptx_coef=0.5,
        )
    )
    algorithm = PPO(config)
    run = PolicyGradientRun(config, algorithm)
    algorithm.attach(run)
    batch = run.rollout(0)
    assert (~batch.finished).any()
    expected = torch.where(batch.finished, batch.raw_scores, batch.raw_scores - 1.0)
    torch.testing.assert_close(batch.scores, expected)
    run.run()
    logged = read_metrics(tmp_path / "ptx")
    assert all(0 < m["ptx/loss"] < 20 for m in logged)

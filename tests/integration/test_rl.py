"""PPO, RLOO and GRPO end to end on a tiny model with a function reward (issue: rollouts
and RLHF). The policy is first taught (SFT) to answer with random words from a small
set; the reward is the share of those words that are "apple", so RL has a signal from
the first batch (about 1 word in 8) and must raise it."""

import contextlib
import json
import random
from pathlib import Path

import pytest
import torch

from alignkit.config import GRPOConfig, PPOConfig, RLOOConfig, SFTConfig
from alignkit.methods.grpo import run_grpo
from alignkit.methods.ppo import run_ppo
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


def test_rollout_logprobs_match_the_training_forward(rl_files):
    """The right-padded prompt+completion forward (`PolicyForward`, as the optimizer step
    runs it) gives the sampler's own log-probs (packed prefill, KV cache) at the sampling
    temperature, which is why RL uses the sampler's as the "old" log-probs; the reference
    pass (the same weights) gives the same."""
    from alignkit.data.templating import ChatEncoder, pad_token_id
    from alignkit.methods.rl import ActorCritic, PolicyForward, score_completions
    from alignkit.models.loading import load_model_and_tokenizer
    from alignkit.ops.logprobs import CausalLMLogps
    from alignkit.rollout.batch import completion_rows
    from alignkit.rollout.sampling import SamplingSettings, sample

    policy_dir, _ = rl_files
    model, tokenizer = load_model_and_tokenizer(str(policy_dir), device="cpu", dtype="float32")
    encoder = ChatEncoder(tokenizer)
    ids = [encoder.encode_prompt(f"Words {i}:") for i in (1, 22, 3)]
    rollout = sample(
        model,
        ids,
        SamplingSettings(max_new_tokens=6, temperature=0.7, seed=5),
        eos_ids=encoder.stop_token_ids,
        pad_id=pad_token_id(tokenizer),
    )
    rows = completion_rows(rollout, ids, pad_token_id(tokenizer))
    forward = PolicyForward(ActorCritic(model), temperature=0.7)
    with torch.no_grad():
        trained = forward(rows)["logps"]
    torch.testing.assert_close(trained, rollout.logprobs, atol=1e-4, rtol=1e-4)
    ref, values = score_completions(
        forward, CausalLMLogps(model, temperature=0.7), contextlib.nullcontext, rows, 2, "cpu"
    )
    torch.testing.assert_close(ref, trained, atol=1e-5, rtol=1e-5)
    assert values is None
    # online DPO's reference pass: both temperatures from one decoder pass, each equal to
    # its own full pass (0.7: the sampler's log-probs again; 1: what the loss compares)
    from alignkit.methods.online_dpo import reference_logps

    at_t, at_1 = reference_logps(
        forward, CausalLMLogps(model), contextlib.nullcontext, rows, 0.7, 2, "cpu"
    )
    torch.testing.assert_close(at_t, trained, atol=1e-5, rtol=1e-5)
    at_1_alone, _ = score_completions(
        forward, CausalLMLogps(model), contextlib.nullcontext, rows, 2, "cpu"
    )
    torch.testing.assert_close(at_1, at_1_alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(at_1, at_t, atol=1e-3)  # the temperatures really differ


def test_lora_policy_uses_the_disabled_adapter_as_reference(rl_files, tmp_path):
    from alignkit.methods.rl import load_reference
    from alignkit.models.lora import LoraSettings

    config = PPOConfig(
        **rl_settings(
            rl_files, tmp_path / "lora", max_steps=2, lora=LoraSettings(r=4, alpha=8, dropout=0.0)
        )
    )
    assert load_reference(config, "cpu") is None  # no second copy of the model
    result = run_ppo(config)
    assert (result.final_dir / "adapter_config.json").is_file()
    logged = read_metrics(tmp_path / "lora")
    # LoRA's B matrices start at zero: the adapted policy equals the reference at step 1
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


def constant_reward(prompt, completion):
    return 1.0


def test_missing_eos_penalty_lowers_the_reward_of_cut_completions(rl_files, tmp_path):
    """With a constant score of 1, no KL term and a penalty of 1 for completions cut at
    max_new_tokens, each completion's RLHF reward is 1 if it ended with EOS and 0 if it
    was cut, so the mean RLHF reward equals the EOS rate (and the raw score stays 1)."""
    run_rloo(
        RLOOConfig(
            **rl_settings(
                rl_files,
                tmp_path / "eos",
                reward="tests.integration.test_rl:constant_reward",
                max_new_tokens=3,
                max_steps=2,
                batch_size=4,
                num_generations=2,
                kl_coef=0.0,
                missing_eos_penalty=1.0,
            )
        )
    )
    for m in read_metrics(tmp_path / "eos"):
        assert m["objective/scores"] == 1.0
        assert 0 < m["completions/eos_rate"] < 1  # both kinds occur, so the check bites
        assert m["objective/rlhf_reward"] == pytest.approx(m["completions/eos_rate"], abs=1e-6)


def test_ptx_loss_is_the_policy_nll_on_the_sft_records(rl_files, tmp_path):
    """At the first optimizer step the PPO-ptx term is the starting policy's mean token
    NLL on the first `batch_size` SFT records (one minibatch, one epoch), computed here
    independently with a plain transformers forward and cross-entropy."""
    from alignkit.data.loading import load_records
    from alignkit.data.templating import ChatEncoder
    from alignkit.models.loading import load_model_and_tokenizer

    policy_dir, _ = rl_files
    sft_file = rl_files[1].parent / "sft.jsonl"
    config = PPOConfig(
        **rl_settings(
            rl_files,
            tmp_path / "ptx",
            max_steps=1,
            ppo_epochs=1,
            ptx_data=str(sft_file),
            ptx_coef=0.5,
        )
    )
    run_ppo(config)
    logged = read_metrics(tmp_path / "ptx")[0]
    model, tokenizer = load_model_and_tokenizer(str(policy_dir), device="cpu", dtype="float32")
    encoder = ChatEncoder(tokenizer)
    nll, tokens = 0.0, 0
    for record in load_records(str(sft_file), "sft").records[: config.batch_size]:
        features = encoder.encode_sft(record).features()
        ids = torch.tensor([features["input_ids"]])
        labels = torch.tensor([features["labels"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, :-1]
        targets = labels[:, 1:]
        nll += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
        ).item()
        tokens += int((targets != -100).sum())
    assert logged["ptx/loss"] == pytest.approx(nll / tokens, rel=1e-4)


def final_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "final" / "model.safetensors"))


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_micro_batch_size_does_not_change_the_weights(rl_files, tmp_path, method):
    """Micro-batches of 2 or 4 completions give the same weights after two rollout
    batches (PPO) or one (GRPO), each with two minibatches and two epochs: the loss is
    normalised by the units of the whole optimizer step. PPO runs with its ptx term, whose
    scale spans the step too. GRPO stops after one batch because its second batch is
    sampled from weights that differ by float rounding (the two micro-batch shapes take
    different kernels), which on some CPUs flips a sampled token and so every update after."""
    sft_file = rl_files[1].parent / "sft.jsonl"
    runs = {}
    for micro in (2, 4):
        out = tmp_path / f"{method}-{micro}"
        if method == "ppo":
            run_ppo(
                PPOConfig(
                    **rl_settings(
                        rl_files, out, max_steps=2, micro_batch_size=micro, ppo_epochs=2,
                        num_minibatches=2, critic_learning_rate=1e-3,
                        ptx_data=str(sft_file), ptx_coef=0.5,
                    )
                )
            )  # fmt: skip
        else:
            run_grpo(
                GRPOConfig(
                    **rl_settings(
                        rl_files, out, max_steps=1, micro_batch_size=micro, batch_size=4,
                        num_generations=2, ppo_epochs=2, num_minibatches=2,
                    )
                )
            )  # fmt: skip
        runs[micro] = final_weights(out)
    moved = 0.0
    start = final_weights(rl_files[0].parent)
    for name, value in runs[2].items():
        torch.testing.assert_close(value, runs[4][name], atol=1e-5, rtol=0)
        moved = max(moved, float((value - start[name]).abs().max()))
    assert moved > 1e-3  # the runs trained: equal weights are not both the start's


def nan_on_third_call(prompt, completion):
    NAN_CALLS["n"] += 1
    return float("nan") if NAN_CALLS["n"] > 16 else 0.5


NAN_CALLS = {"n": 0}


def test_a_nan_reward_stops_the_run_naming_the_last_good_checkpoint(rl_files, tmp_path):
    """8 completions per step: the reward turns NaN at step 3, after the step-2
    checkpoint; the run stops before updating the weights and names that checkpoint."""
    from alignkit.train.run import TrainingDiverged

    NAN_CALLS["n"] = 0
    config = RLOOConfig(
        **rl_settings(
            rl_files,
            tmp_path / "nan",
            reward="tests.integration.test_rl:nan_on_third_call",
            batch_size=4,
            num_generations=2,
            max_steps=4,
            save_every=2,
        )
    )
    with pytest.raises(TrainingDiverged) as error:
        run_rloo(config)
    assert "nan" in str(error.value) and str(tmp_path / "nan" / "checkpoints" / "step-2") in str(
        error.value
    )
    assert not (tmp_path / "nan" / "final").exists()
    assert [m["step"] for m in read_metrics(tmp_path / "nan")] == [1, 2]


def prompt_number_reward(prompt, completion):
    """A score that depends on the prompt alone: its number / 100."""
    return int(prompt.split()[1].rstrip(":")) / 100


def test_eval_data_is_evaluated_every_eval_every_steps_and_at_the_end(rl_files, tmp_path):
    """Held-out prompts "Words 40:" .. "Words 45:" under a prompt-only score: the
    held-out mean score is (40 + ... + 45) / 6 / 100 = 0.425 whatever is sampled. PPO
    (whitened advantages from a fresh critic) moves the policy under that score, so the
    held-out KL to the start is not zero."""
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(
        "".join(json.dumps({"prompt": f"Words {i}:"}) + "\n" for i in range(40, 46))
    )
    run_ppo(
        PPOConfig(
            **rl_settings(
                rl_files,
                tmp_path / "eval",
                reward="tests.integration.test_rl:prompt_number_reward",
                eval_data=str(held_out),
                eval_every=2,
                log_every=3,  # step 2 is written because it evaluated, not because it logs
                max_steps=3,
                batch_size=4,
            )
        )
    )
    logged = read_metrics(tmp_path / "eval")
    evaluated = [m for m in logged if "eval/objective/scores" in m]
    assert [m["step"] for m in evaluated] == [2, 3]
    for m in evaluated:
        assert m["eval/objective/scores"] == pytest.approx(0.425, abs=1e-9)
    # The final evaluation's KL is the trained policy's to the starting model: recomputed
    # here from the saved final/ and the start folder with the same sampling seeds. (It
    # once measured the policy against itself and logged 0.)
    from alignkit.feedback.function import load_judge
    from alignkit.methods.rl import sampling_settings
    from alignkit.models.loading import load_model_and_tokenizer
    from alignkit.rollout.evaluation import evaluate_policy

    config = PPOConfig(**rl_settings(rl_files, tmp_path / "unused"))
    final, tokenizer = load_model_and_tokenizer(str(tmp_path / "eval" / "final"), device="cpu")
    start, _ = load_model_and_tokenizer(config.model, device="cpu")
    settings = sampling_settings(config)
    settings.seed = config.seed * 1_000_003 + 999_983
    expected = evaluate_policy(
        final,
        tokenizer,
        [f"Words {i}:" for i in range(40, 46)],
        load_judge("tests.integration.test_rl:prompt_number_reward"),
        settings,
        reference=start,
    )
    assert abs(expected.kl) > 1e-4  # three PPO steps moved the policy (k1 can be < 0)
    assert evaluated[-1]["eval/objective/kl"] == pytest.approx(expected.kl, rel=1e-4, abs=1e-6)


def test_two_ddp_processes_equal_one_process(rl_files, tmp_path):
    """PPO under torchrun with two gloo processes (4 prompts each) ends with the same
    policy and critic as one process with the same 8 prompts: rollouts are seeded per
    row of the whole batch, advantages whitened over both processes' rows. One rollout
    batch (four optimizer steps): a second batch would be sampled from weights that
    differ by float rounding (gradients all-reduced vs summed in one process), which on
    some CPUs flips a sampled token."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    policy, prompts = rl_files
    args = [
        "-m", "alignkit", "-q", "ppo", f"model={policy}", f"data={prompts}",
        "reward=tests.integration.test_rl:apple_reward", "batch_size=8", "max_new_tokens=6",
        "learning_rate=1e-3", "critic_learning_rate=1e-3", "max_steps=1", "ppo_epochs=2",
        "micro_batch_size=2", "save_every=null", "log_every=1",
    ]  # fmt: skip
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for out, prefix in ((tmp_path / "one", []), (tmp_path / "two", launcher)):
        done = subprocess.run(
            [sys.executable, *prefix, *args, f"output_dir={out}"],
            capture_output=True, text=True, env=env, cwd=root, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    for part in ("final", "critic"):
        one = load_file(str(tmp_path / "one" / part / "model.safetensors"))
        two = load_file(str(tmp_path / "two" / part / "model.safetensors"))
        for name in one:
            torch.testing.assert_close(one[name], two[name], atol=1e-5, rtol=0)
    single, ddp = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    for a, b in zip(single, ddp, strict=True):
        for key in ("objective/scores", "objective/kl", "value/loss"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key

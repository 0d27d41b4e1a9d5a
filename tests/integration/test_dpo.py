"""DPO family end to end on a tiny model: the implicit reward learns the preference."""

import pytest

from alignkit.config import DPOConfig, load_config
from alignkit.methods.dpo import run_dpo
from tests.conftest import read_metrics


def dpo_config(model_dir, files, output_dir, **overrides):
    train, held_out = files
    settings = {
        "model": str(model_dir),
        "data": str(train),
        "eval_data": str(held_out),
        "output_dir": str(output_dir),
        "batch_size": 8,
        "learning_rate": 1e-3,
        "max_steps": 24,
        "lr_schedule": "constant",
        "save_every": None,
        "log_every": 4,
    }
    settings.update(overrides)
    return load_config(
        DPOConfig, None, [f"{k}={'null' if v is None else v}" for k, v in settings.items()]
    )


@pytest.mark.parametrize(("loss", "beta"), [("dpo", 0.1), ("ipo", 0.1), ("simpo", 2.0)])
def test_held_out_reward_accuracy_rises_above_0_9(
    tiny_model_dir, preference_files, tmp_path, loss, beta
):
    result = run_dpo(
        dpo_config(tiny_model_dir, preference_files, tmp_path / loss, loss=loss, beta=beta)
    )
    final = result.last_metrics
    assert final["eval/rewards/accuracies"] > 0.9, final
    assert final["eval/rewards/margins"] > 0
    logged = read_metrics(tmp_path / loss)
    assert {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    } <= logged[0].keys()


def test_shared_prompt_packed_and_padded_pairs_train_identically(
    tiny_model_dir, preference_files, tmp_path, monkeypatch
):
    """Each pair's prompt run once (the default), plain packed rows, padded batches: the
    same reference log-probs and the same training."""
    from alignkit.data.collators import SharedPrefixCollator

    shared_batches = []
    collate = SharedPrefixCollator.__call__
    monkeypatch.setattr(
        SharedPrefixCollator,
        "__call__",
        lambda self, groups: shared_batches.append(len(groups)) or collate(self, groups),
    )
    layouts = {
        "shared": {},
        "packed": {"share_prompt": False},
        "padded": {"packing": False},
    }
    runs = {}
    for name, extra in layouts.items():
        shared_batches.clear()
        runs[name] = run_dpo(
            dpo_config(tiny_model_dir, preference_files, tmp_path / name, max_steps=2, **extra)
        )
        assert bool(shared_batches) == (name == "shared")
    for name in ("packed", "padded"):
        for key in ("loss", "rewards/margins", "logps/chosen", "logps/rejected"):
            expected = runs[name].last_metrics[key]
            assert runs["shared"].last_metrics[key] == pytest.approx(expected, abs=1e-5), key


def test_token_capped_forward_passes_train_like_one_forward(
    tiny_model_dir, preference_files, tmp_path
):
    """micro_batch_tokens splits each micro-batch of 8 pairs into several packed rows
    (pairs here are ~50 tokens: a 60-token cap puts one pair in most rows); the loss is
    normalised over the whole step, so training is the same as one forward of 8 pairs."""
    from alignkit.data import load_records
    from alignkit.data.templating import ChatEncoder
    from alignkit.models import load_tokenizer
    from alignkit.train.loop import split_micro_batches
    from tests.integration.test_train_sft import assert_same_weights, final_weights

    encoder = ChatEncoder(load_tokenizer(tiny_model_dir))
    pairs = [encoder.encode_pair(r) for r in load_records(preference_files[0]).records[:8]]
    examples = [
        {"chosen": p.chosen.sequence().features(), "rejected": p.rejected.sequence().features()}
        for p in pairs
    ]
    assert len(split_micro_batches(examples, 8, max_tokens=60)) >= 6

    one = run_dpo(
        dpo_config(
            tiny_model_dir, preference_files, tmp_path / "one", max_steps=2, learning_rate=1e-4
        )
    )
    capped = run_dpo(
        dpo_config(
            tiny_model_dir,
            preference_files,
            tmp_path / "capped",
            max_steps=2,
            learning_rate=1e-4,
            micro_batch_tokens=60,
        )
    )
    for key in ("loss", "rewards/margins", "eval/rewards/accuracies"):
        assert capped.last_metrics[key] == pytest.approx(one.last_metrics[key], abs=1e-5)
    assert_same_weights(
        final_weights(tmp_path / "one"), final_weights(tmp_path / "capped"), atol=1e-5
    )


def test_kto_has_no_token_cap():
    """KTO's KL estimate is taken over the examples of one forward pass, so a token cap
    would change the loss: it is refused, not silently applied."""
    from alignkit.config import ConfigError, KTOConfig

    with pytest.raises(ConfigError, match="micro_batch_tokens"):
        load_config(KTOConfig, None, ["micro_batch_tokens=256"])


def test_reference_logps_are_computed_once_and_reused_on_resume(
    tiny_model_dir, preference_files, tmp_path, monkeypatch
):
    run_dpo(
        dpo_config(tiny_model_dir, preference_files, tmp_path / "run", max_steps=4, save_every=2)
    )
    assert len(list((tmp_path / "run" / "ref_logps").glob("*.safetensors"))) == 1

    def no_recompute(*args, **kwargs):
        raise AssertionError("reference log-probs were recomputed")

    monkeypatch.setattr("alignkit.methods.reference.compute_sequence_stats", no_recompute)
    resumed = run_dpo(
        dpo_config(
            tiny_model_dir,
            preference_files,
            tmp_path / "run",
            max_steps=6,
            save_every=2,
            resume="auto",
        )
    )
    assert resumed.steps == 6
    # resumed from step-2: lines after it were dropped and logged again, once
    assert [m["step"] for m in read_metrics(tmp_path / "run") if "loss" in m] == [4, 6]
    other = run_dpo(dpo_config(tiny_model_dir, preference_files, tmp_path / "other", max_steps=2))
    assert other.steps == 2  # a new run folder on the same data reuses the shared cache


def test_kto_on_split_pairs_learns_the_preference(tiny_model_dir, preference_files, tmp_path):
    from alignkit.config import KTOConfig
    from alignkit.methods.kto import run_kto

    train, held_out = preference_files
    settings = [
        f"model={tiny_model_dir}",
        f"data={train}",
        f"eval_data={held_out}",
        f"output_dir={tmp_path / 'kto'}",
        "batch_size=8",
        "learning_rate=1e-3",
        "max_steps=24",
        "lr_schedule=constant",
        "save_every=null",
        "log_every=4",
        "beta=0.1",
    ]
    result = run_kto(load_config(KTOConfig, None, settings))
    final = result.last_metrics
    # held-out implicit rewards: desirable (chosen) completions above undesirable ones,
    # pair by pair (the held-out file is pairs, split like the training data)
    assert final["eval/rewards/chosen"] > final["eval/rewards/rejected"], final
    assert final["eval/rewards/accuracies"] > 0.9, final
    assert final["eval/rewards/margins"] > 0
    assert read_metrics(tmp_path / "kto")[-1]["eval/rewards/accuracies"] > 0.9
    assert "kl" in read_metrics(tmp_path / "kto")[0]

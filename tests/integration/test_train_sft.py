"""The training loop through SFT: behaviour, exact invariants, checkpoints, LoRA."""

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from alignkit.config import SFTConfig, load_config
from alignkit.data.collators import PackingCollator, PaddingCollator
from alignkit.data.templating import ChatEncoder
from alignkit.methods.sft import run_sft, sft_step
from alignkit.models import load_model
from alignkit.ops.logprobs import CausalLMLogps
from alignkit.train import checkpoint as checkpoint_module
from alignkit.train.checkpoint import list_checkpoints, load_checkpoint
from alignkit.train.loop import train
from alignkit.train.optim import build_optimizer, build_scheduler, parameter_groups
from alignkit.train.run import TrainingDiverged
from tests.conftest import read_metrics


def sft_config(model_dir, data, output_dir, **overrides):
    settings = {
        "model": str(model_dir),
        "data": str(data),
        "output_dir": str(output_dir),
        "batch_size": 8,
        "learning_rate": 1e-3,
        "save_every": None,
        "log_every": 1,
        "max_steps": 3,
    }
    settings.update(overrides)
    return load_config(
        SFTConfig, None, [f"{k}={'null' if v is None else v}" for k, v in settings.items()]
    )


def final_weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for key in a:
        assert_close(a[key], b[key], atol=atol, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


def test_tiny_model_overfits_16_examples(tiny_model_dir, words_file, tmp_path):
    config = sft_config(
        tiny_model_dir,
        words_file,
        tmp_path / "run",
        max_steps=50,
        batch_size=16,
        learning_rate=1e-2,
        lr_schedule="constant",
    )
    result = run_sft(config)
    losses = [m["loss"] for m in read_metrics(tmp_path / "run")]
    assert losses[0] > 10  # random init over a 49,152-token vocabulary
    assert losses[-1] < 0.1 * losses[0], f"loss fell only from {losses[0]} to {losses[-1]}"
    assert result.steps == 50 and (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_accumulation_4x2_equals_batch_8(tiny_model_dir, mixed_length_sft_file, tmp_path):
    # lr 1e-4: Adam's update is about lr * sign(gradient), so float rounding on a
    # near-zero gradient can move a weight by up to 2 * lr; a wrong normalisation
    # (mean per micro-batch) changes many weights by far more (checked by breaking it).
    run_sft(
        sft_config(
            tiny_model_dir,
            mixed_length_sft_file,
            tmp_path / "big",
            micro_batch_size=8,
            learning_rate=1e-4,
        )
    )
    run_sft(
        sft_config(
            tiny_model_dir,
            mixed_length_sft_file,
            tmp_path / "acc",
            micro_batch_size=2,
            learning_rate=1e-4,
        )
    )
    assert_same_weights(final_weights(tmp_path / "big"), final_weights(tmp_path / "acc"), atol=1e-5)
    big, acc = read_metrics(tmp_path / "big"), read_metrics(tmp_path / "acc")
    assert [m["loss"] for m in big] == pytest.approx([m["loss"] for m in acc], abs=1e-5)


def test_packing_gives_the_same_loss_and_training(
    tiny_model_dir, mixed_length_sft_file, tokenizer, tmp_path
):
    from alignkit.data import load_records

    encoder = ChatEncoder(tokenizer)
    examples = [
        encoder.encode_sft(r).features() for r in load_records(mixed_length_sft_file).records[:6]
    ]
    module = CausalLMLogps(load_model(tiny_model_dir))
    gradients = []
    for collate in (PaddingCollator(tokenizer.pad_token_id), PackingCollator()):
        loss, _ = sft_step(module, collate(examples))
        loss.backward()
        gradients.append({n: p.grad.clone() for n, p in module.named_parameters()})
        module.zero_grad(set_to_none=True)
        if collate.__class__ is PaddingCollator:
            padded = loss.detach()
    assert_close(loss.detach(), padded, atol=1e-5, rtol=1e-6)
    assert_same_weights(gradients[0], gradients[1], atol=1e-5)
    run_sft(sft_config(tiny_model_dir, mixed_length_sft_file, tmp_path / "pad"))
    run_sft(sft_config(tiny_model_dir, mixed_length_sft_file, tmp_path / "pack", packing=True))
    # Adam turns float-rounding differences in near-zero gradients into steps of up to
    # ~lr, so trained weights get a looser bound than the gradients above.
    assert_same_weights(
        final_weights(tmp_path / "pad"), final_weights(tmp_path / "pack"), atol=1e-4
    )


def test_sft_loss_equals_transformers_mean_token_loss(
    tiny_model_dir, mixed_length_sft_file, tokenizer
):
    """Summed NLL / target tokens is exactly the loss transformers computes from labels."""
    from alignkit.data import load_records

    encoder = ChatEncoder(tokenizer)
    examples = [
        encoder.encode_sft(r).features() for r in load_records(mixed_length_sft_file).records[:4]
    ]
    batch = PaddingCollator(tokenizer.pad_token_id)(examples)
    model = load_model(tiny_model_dir)
    loss_sum, _ = sft_step(CausalLMLogps(model), batch)
    targets = (batch["labels"][:, 1:] != -100).sum()
    reference = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    assert_close(loss_sum / targets, reference, atol=1e-5, rtol=1e-6)


def test_run_folder_contents(tiny_model_dir, words_file, tmp_path):
    from transformers import AutoModelForCausalLM

    run_sft(
        sft_config(
            tiny_model_dir,
            words_file,
            tmp_path / "run",
            save_every=1,
            keep_last=2,
            eval_data=str(words_file),
            eval_every=2,
        )
    )
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == [
        "step-1",
        "step-2",
    ]  # step 3 is final/, keep_last=2
    metrics = read_metrics(run)
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "epoch"} <= metrics[0].keys()
    assert "eval/loss" in metrics[1] and "eval/loss" in metrics[-1]
    saved = load_config(SFTConfig, run / "config.yaml")
    assert saved.model == str(tiny_model_dir) and saved.max_steps == 3
    AutoModelForCausalLM.from_pretrained(run / "final")


def test_lora_changes_only_the_adapter_and_merges_exactly(tiny_model_dir, words_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = sft_config(
        tiny_model_dir,
        words_file,
        tmp_path / "run",
        learning_rate=1e-2,
        **{"lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0},
        merge_lora=True,
    )
    run_sft(config)
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pristine = {k: v.clone() for k, v in base.state_dict().items()}
    adapted = PeftModel.from_pretrained(base, final)
    for name, tensor in adapted.get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor, pristine[name.replace(".base_layer", "")]), (
                f"base weight {name} changed"
            )
    assert any(
        p.abs().sum() > 0 for n, p in adapted.named_parameters() if "lora_B" in n
    )  # B starts at 0
    merged = AutoModelForCausalLM.from_pretrained(final / "merged")
    ids = torch.tensor([[1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198]])
    untouched = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.allclose(adapted(input_ids=ids).logits, untouched(input_ids=ids).logits)
    assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_a_save_killed_midway_leaves_the_previous_checkpoint_loadable(
    tiny_model_dir, words_file, tmp_path, monkeypatch
):
    real_save = checkpoint_module.save_file
    calls = {"n": 0}

    def save_then_die(*args, **kwargs):
        calls["n"] += 1
        real_save(*args, **kwargs)
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed while writing the step-2 checkpoint")

    monkeypatch.setattr(checkpoint_module, "save_file", save_then_die)
    config = sft_config(tiny_model_dir, words_file, tmp_path / "run", save_every=1)
    with pytest.raises(KeyboardInterrupt):
        run_sft(config)
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["step-1"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-1"
    ]  # no half-written folder
    model = load_model(tiny_model_dir)
    optimizer = build_optimizer(parameter_groups(model, config.weight_decay), config)
    state = load_checkpoint(
        list_checkpoints(run)[-1], model, optimizer, build_scheduler(optimizer, config, 3)
    )
    assert state.step == 1


def test_non_finite_loss_stops_before_touching_the_weights(
    tiny_model_dir, words_file, tokenizer, tmp_path
):
    config = sft_config(tiny_model_dir, words_file, tmp_path / "run", save_every=2, max_steps=6)
    model = load_model(tiny_model_dir)
    encoder = ChatEncoder(tokenizer)
    from alignkit.data import load_records

    examples = [encoder.encode_sft(r).features() for r in load_records(words_file).records]
    calls = {"n": 0}

    def step_that_explodes(module, batch):
        calls["n"] += 1
        loss, metrics = sft_step(module, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    with pytest.raises(
        TrainingDiverged,
        match=r"loss nan .* at step 3: stopped before updating the weights\. "
        r"Last good checkpoint: .*step-2",
    ):
        train(
            model,
            examples,
            PaddingCollator(tokenizer.pad_token_id),
            step_that_explodes,
            config,
            forward_module=CausalLMLogps(model),
        )
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step-2" / "weights.safetensors"))
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all()
        assert torch.equal(param.detach(), saved[name]), f"{name} changed after the last good step"


def test_gradient_checkpointing_gives_the_same_training(
    tiny_model_dir, mixed_length_sft_file, tmp_path
):
    run_sft(sft_config(tiny_model_dir, mixed_length_sft_file, tmp_path / "plain", max_steps=2))
    run_sft(
        sft_config(
            tiny_model_dir,
            mixed_length_sft_file,
            tmp_path / "ckpt",
            max_steps=2,
            gradient_checkpointing=True,
        )
    )
    assert_same_weights(
        final_weights(tmp_path / "plain"), final_weights(tmp_path / "ckpt"), atol=1e-6
    )


def test_bf16_autocast_on_cpu_trains(tiny_model_dir, words_file, tmp_path):
    run_sft(
        sft_config(
            tiny_model_dir,
            words_file,
            tmp_path / "run",
            precision="bf16",
            max_steps=4,
            learning_rate=1e-2,
            lr_schedule="constant",
        )
    )
    losses = [m["loss"] for m in read_metrics(tmp_path / "run")]
    assert losses[-1] < losses[0]
    weights = final_weights(tmp_path / "run")
    assert all(t.dtype == torch.float32 for t in weights.values())  # master weights stay fp32


def test_a_logger_that_is_not_installed_is_a_clear_error(
    tiny_model_dir, words_file, tmp_path, monkeypatch
):
    import sys

    from alignkit.errors import AlignkitError

    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail
    with pytest.raises(
        AlignkitError,
        match="logger 'mlflow' was asked for but is not installed: pip install mlflow",
    ):
        run_sft(sft_config(tiny_model_dir, words_file, tmp_path / "run", loggers="[mlflow]"))


def test_tensorboard_logger_writes_the_logged_scalars(tiny_model_dir, words_file, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_sft(sft_config(tiny_model_dir, words_file, tmp_path / "run", loggers="[tensorboard]"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(events.Tags()["scalars"])
    logged = [m["loss"] for m in read_metrics(tmp_path / "run")]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(logged, rel=1e-5)


def test_trainable_layers_freezes_the_bottom_and_trains_the_top_as_full_fine_tuning_does(
    tiny_model_dir, words_file, tmp_path
):
    """trainable_layers=1 on the 2-block tiny model: the embeddings (tied to the output
    projection) and block 0 keep their starting weights exactly; block 1 and the final norm
    take the step full fine-tuning takes (their gradients do not depend on whether the
    layers below are trained; AdamW's first step is elementwise in the gradient)."""
    start = {k: v.clone() for k, v in load_model(str(tiny_model_dir)).state_dict().items()}
    common = dict(max_steps=1, batch_size=8, lr_schedule="constant", max_grad_norm="null")
    run_sft(sft_config(tiny_model_dir, words_file, tmp_path / "full", **common))
    run_sft(sft_config(tiny_model_dir, words_file, tmp_path / "top", trainable_layers=1, **common))
    full, top = final_weights(tmp_path / "full"), final_weights(tmp_path / "top")
    frozen = [k for k in top if k.startswith(("model.embed_tokens", "model.layers.0."))]
    trained = [k for k in top if k.startswith(("model.layers.1.", "model.norm"))]
    assert frozen and trained and set(frozen) | set(trained) == set(top)
    for key in frozen:
        assert torch.equal(top[key], start[key]), key
        assert not torch.equal(full[key], start[key]), key  # full fine-tuning moves them
    for key in trained:
        assert_close(top[key], full[key], atol=1e-6, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


def test_trainable_layers_is_checked(tiny_model_dir, words_file, tmp_path):
    with pytest.raises(Exception, match="set lora or trainable_layers, not both"):
        sft_config(tiny_model_dir, words_file, tmp_path, trainable_layers=1, **{"lora.r": 4})
    with pytest.raises(Exception, match="between 1 and 2"):
        run_sft(sft_config(tiny_model_dir, words_file, tmp_path / "run", trainable_layers=3))


def test_records_dropped_by_truncation_are_a_warning_with_count_and_longest(
    tiny_model_dir, words_file, tmp_path, caplog
):
    """A record whose prompt alone fills max_length leaves no target: it is dropped with
    a WARNING that says how many and how long the longest was (tokens, as encoded)."""
    import json
    import logging

    from alignkit.data.templating import ChatEncoder
    from alignkit.models import load_tokenizer

    long_question = {
        "messages": [
            {"role": "user", "content": "why " * 60},
            {"role": "assistant", "content": "because"},
        ]
    }
    data = tmp_path / "data.jsonl"
    data.write_text(words_file.read_text() + json.dumps(long_question) + "\n")
    unlimited = ChatEncoder(load_tokenizer(str(tiny_model_dir)))  # as SFT encodes, no cap
    longest = len(unlimited.encode_sft(long_question).input_ids)
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        run_sft(sft_config(tiny_model_dir, data, tmp_path / "run", max_steps=1, max_length=40))
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{data}: 1 of 17 records dropped" in warning.getMessage()
    assert f"max_length=40; the longest is {longest} tokens" in warning.getMessage()

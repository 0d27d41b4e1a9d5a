"""`alignkit_packed` attention: each packed sequence attends to itself only."""

import torch
from torch.testing import assert_close

from alignkit.models.tiny import tiny_model
from alignkit.ops.attention import PACKED_ATTENTION, packed_forward_kwargs, use_packed_attention

LENGTHS = (7, 12, 11)


def packed_row(seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 5000, (1, sum(LENGTHS)), generator=generator)
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    return ids, positions, cu


def test_packed_row_equals_each_sequence_alone_with_gradients():
    """Hidden states and gradients of a packed row match running each sequence by itself
    (grouped-query attention: 4 query heads share 2 key/value heads)."""
    ids, positions, cu = packed_row()
    model = tiny_model(0)
    assert use_packed_attention(model) and model.config._attn_implementation == PACKED_ATTENTION
    packed = model.model(
        input_ids=ids,
        position_ids=positions,
        use_cache=False,
        **packed_forward_kwargs(model, ids, cu),
    ).last_hidden_state
    packed.square().sum().backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    alone = torch.cat(
        [
            model.model(input_ids=ids[:, s:e], use_cache=False).last_hidden_state
            for s, e in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)
        ],
        dim=1,
    )
    alone.square().sum().backward()
    assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    for name, grad in packed_grads.items():
        assert_close(grad, dict(model.named_parameters())[name].grad, atol=1e-4, rtol=1e-4)


def test_gradient_checkpointing_recomputes_with_the_same_attention():
    ids, positions, cu = packed_row(1)
    results = []
    for checkpointing in (False, True):
        model = tiny_model(0)
        use_packed_attention(model)
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.train()
        out = model.model(
            input_ids=ids,
            position_ids=positions,
            use_cache=False,
            **packed_forward_kwargs(model, ids, cu),
        ).last_hidden_state
        out.sum().backward()
        results.append(model.model.layers[0].self_attn.q_proj.weight.grad)
    assert_close(results[0], results[1], atol=1e-5, rtol=1e-5)


def test_masked_calls_are_plain_sdpa():
    """A model switched to alignkit_packed still handles left-padded batches (generation)
    exactly as SDPA does."""
    ids = torch.randint(3, 5000, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    reference = tiny_model(0).eval()
    switched = tiny_model(0).eval()
    use_packed_attention(switched)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        actual = switched(input_ids=ids, attention_mask=mask).logits
    assert_close(actual[mask.bool()], expected[mask.bool()])


def test_shared_prompt_rows_give_each_sequences_own_log_probs_and_gradients():
    """Groups sharing a prompt (a pair and a triple, grouped-query attention, one group's
    responses of different lengths) give the per-sequence log-prob sums, target counts
    and parameter gradients of a plain packed row of the same sequences, in fewer tokens."""
    from alignkit.data.collators import PackingCollator, SharedPrefixCollator
    from alignkit.ops.logprobs import CausalLMLogps, sequence_stats

    generator = torch.Generator().manual_seed(0)

    def sequence(prompt, response_length):
        response = torch.randint(3, 5000, (response_length,), generator=generator).tolist()
        return {"input_ids": prompt + response, "labels": [-100] * len(prompt) + response}

    prompts = [torch.randint(3, 5000, (n,), generator=generator).tolist() for n in (9, 6)]
    groups = [
        [sequence(prompts[0], 5), sequence(prompts[0], 8)],
        [sequence(prompts[1], 4), sequence(prompts[1], 1), sequence(prompts[1], 7)],
    ]
    results = []
    for collate, items in (
        (PackingCollator(), [s for group in groups for s in group]),
        (SharedPrefixCollator(), groups),
    ):
        model = tiny_model(2)
        batch = collate(items)
        sums, counts = sequence_stats(CausalLMLogps(model), batch)
        (sums * torch.arange(1.0, 6.0)).sum().backward()  # a different weight per sequence
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((sums.detach(), counts, grads, batch["input_ids"].shape[1]))
    (packed_sums, packed_counts, packed_grads, packed_tokens), shared = results
    assert shared[3] == packed_tokens - 9 - 2 * 6  # each prompt once
    assert shared[1].tolist() == packed_counts.tolist() == [5, 8, 4, 1, 7]
    assert_close(shared[0], packed_sums, atol=1e-4, rtol=1e-5)
    for name, grad in packed_grads.items():
        assert_close(shared[2][name], grad, atol=1e-5, rtol=1e-4, msg=name)

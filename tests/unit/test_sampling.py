"""Batched sampling with a KV cache (alignkit.rollout)."""

import pytest
import torch
from torch.testing import assert_close

from alignkit.models.tiny import tiny_model
from alignkit.rollout import SamplingSettings, filter_logits, sample


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(0, tokenizer)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [
        tokenizer(text)["input_ids"]
        for text in ("Hello there", "A longer prompt about the weather today")
    ]


def run(model, prompts, tokenizer, **settings):
    return sample(
        model,
        prompts,
        SamplingSettings(**settings),
        eos_ids=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        tokenizer=tokenizer,
    )


def test_logprobs_match_a_teacher_forced_forward_despite_left_padding(model, prompts, tokenizer):
    rollout = run(model, prompts, tokenizer, max_new_tokens=8, seed=1)
    assert rollout.prompt_ids.shape[0] == 2 and (rollout.prompt_mask[0] == 0).any()
    for row, prompt in enumerate(prompts):
        completion = rollout.completion_lists()[row]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
        assert_close(rollout.logprobs[row, : len(completion)], expected, atol=1e-5, rtol=1e-5)


def test_temperature_scales_the_reported_logprobs(model, prompts, tokenizer):
    rollout = run(model, prompts[:1], tokenizer, max_new_tokens=3, temperature=0.5, seed=0)
    completion = rollout.completion_lists()[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompts[0] + completion])).logits[0, len(prompts[0]) - 1 : -1]
    expected = torch.log_softmax(logits / 0.5, -1).gather(-1, torch.tensor(completion)[:, None])[
        :, 0
    ]
    assert_close(rollout.logprobs[0], expected, atol=1e-5, rtol=1e-5)


def test_seeded_sampling_repeats_and_seeds_differ(model, prompts, tokenizer):
    a = run(model, prompts, tokenizer, max_new_tokens=6, seed=3)
    b = run(model, prompts, tokenizer, max_new_tokens=6, seed=3)
    c = run(model, prompts, tokenizer, max_new_tokens=6, seed=4)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_greedy_is_argmax(model, prompts, tokenizer):
    rollout = run(model, prompts[:1], tokenizer, max_new_tokens=1, temperature=0)
    with torch.no_grad():
        expected = model(torch.tensor([prompts[0]])).logits[0, -1].argmax()
    assert rollout.completion_ids[0, 0] == expected


def test_stops_at_eos_and_pads_after(model, prompts, tokenizer):
    """Greedy decoding is deterministic: declaring its third token an EOS ends the
    completion there (kept, and masked in), pads after, finished=True."""
    free = run(model, prompts[:1], tokenizer, max_new_tokens=6, temperature=0)
    assert not free.finished[0] and free.completion_mask[0].sum() == 6
    third = int(free.completion_ids[0, 2])
    stopped = sample(
        model,
        prompts[:1],
        SamplingSettings(max_new_tokens=6, temperature=0),
        eos_ids={third},
        pad_id=tokenizer.pad_token_id,
    )
    first_hit = free.completion_ids[0].tolist().index(third)
    assert stopped.finished[0]
    assert stopped.completion_mask[0].tolist() == [1] * (first_hit + 1) + [0] * (
        stopped.completion_ids.shape[1] - first_hit - 1
    )
    assert stopped.completion_lists()[0] == free.completion_lists()[0][: first_hit + 1]


def test_stop_strings_end_a_completion(model, prompts, tokenizer):
    free = run(model, prompts[:1], tokenizer, max_new_tokens=6, temperature=0)
    second = tokenizer.decode([int(free.completion_ids[0, 1])]).strip()
    assert second, "pick a prompt whose second greedy token has visible text"
    stopped = run(
        model, prompts[:1], tokenizer, max_new_tokens=6, temperature=0, stop_strings=(second,)
    )
    assert stopped.finished[0]
    assert len(stopped.completion_lists()[0]) <= 2
    assert second in "".join(stopped.texts(tokenizer))


def test_filter_logits_top_k_and_top_p():
    """probs [0.5, 0.3, 0.15, 0.05]: top_p 0.8 keeps the first two (mass before the third
    is 0.8), top_p 0.81 keeps three; top_k 1 keeps one."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda filtered: torch.isfinite(filtered[0]).tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_p=0.8)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.81)) == [True, True, True, False]
    assert kept(filter_logits(logits, top_k=1)) == [True, False, False, False]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert kept(filter_logits(shuffled, top_p=0.8)) == [False, True, False, True]


def test_settings_are_validated():
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingSettings(max_new_tokens=0)


def test_filter_logits_per_row_rules():
    """Row 0 keeps its top 2 by top_k, row 1 its nucleus at 0.8, row 2 everything."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    filtered = filter_logits(
        logits, top_k=torch.tensor([2, 0, 0]), top_p=torch.tensor([1.0, 0.8, 1.0])
    )
    assert torch.isfinite(filtered).tolist() == [
        [True, True, False, False],
        [True, True, False, False],
        [True, True, True, True],
    ]


def test_per_row_settings_give_each_row_what_it_gets_alone(model, prompts, tokenizer):
    """A server batches requests with different settings: every row's completion equals
    that row sampled alone with its own settings and seed."""
    per_row = [
        SamplingSettings(max_new_tokens=3, temperature=0),
        SamplingSettings(max_new_tokens=7, temperature=0.8, top_k=20, seed=11),
    ]
    together = sample(
        model, prompts, per_row, eos_ids=-1, pad_id=tokenizer.pad_token_id, tokenizer=tokenizer
    )
    for row, settings in enumerate(per_row):
        alone = sample(
            model,
            [prompts[row]],
            [settings],
            eos_ids=-1,
            pad_id=tokenizer.pad_token_id,
            tokenizer=tokenizer,
        )
        assert together.completion_lists()[row] == alone.completion_lists()[0]
        assert_close(
            together.logprobs[row, : settings.max_new_tokens], alone.logprobs[0], atol=1e-5, rtol=0
        )
    assert [len(c) for c in together.completion_lists()] == [3, 7]
    assert not together.finished.any()


def test_top_logprobs_are_the_most_likely_tokens(model, prompts, tokenizer):
    rollout = run(model, prompts[:1], tokenizer, max_new_tokens=2, temperature=0, top_logprobs=3)
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([prompts[0]])).logits[0, -1], -1)
    values, ids = expected.topk(3)
    assert rollout.top_ids[0, 0].tolist() == ids.tolist()
    assert_close(rollout.top_logprobs[0, 0], values, atol=1e-4, rtol=0)
    assert rollout.top_ids[0, 0, 0] == rollout.completion_ids[0, 0]  # greedy: the best one
    assert rollout.top_ids.shape == (1, 2, 3)


def test_on_step_sees_every_token_and_can_cancel_a_row(model, prompts, tokenizer):
    seen = {0: [], 1: []}

    def on_step(rows, tokens):
        for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
            seen[row].append(token)
        return [0] if len(seen[0]) == 2 else None  # client 0 leaves after two tokens

    rollout = sample(
        model,
        prompts,
        SamplingSettings(max_new_tokens=6, temperature=0),
        eos_ids=-1,
        pad_id=tokenizer.pad_token_id,
        on_step=on_step,
    )
    assert [len(c) for c in rollout.completion_lists()] == [2, 6]
    assert rollout.completion_lists() == [seen[0], seen[1]]
    assert not rollout.finished.any()


@pytest.mark.parametrize("seeded", [True, False])
def test_draws_follow_the_distribution(seeded):
    """4000 rows (each with its own seeded stream, or the global RNG) draw from
    p = [0.5, 0.3, 0.15, 0.05] with top_p=0.9, which removes the last token:
    p' = [0.5, 0.3, 0.15] / 0.95. The frequencies are within 0.025 of p' (about 3
    standard errors), the filtered token never appears."""
    from alignkit.rollout.sampling import _draw, _StepRules

    rows = 4000
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(rows, 4)
    rules = _StepRules(
        torch.ones(rows), torch.full((rows,), 0.9), torch.zeros(rows, dtype=torch.long)
    )
    torch.manual_seed(0)
    generators = [torch.Generator().manual_seed(1000 + i) for i in range(rows)] if seeded else None
    token, logp, _ = _draw(logits, rules, generators)
    frequencies = torch.bincount(token, minlength=4).float() / rows
    expected = torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95
    assert_close(frequencies, expected, atol=0.025, rtol=0)
    assert_close(logp, torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))[token])

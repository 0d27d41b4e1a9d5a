"""Schedule, data order and the chunked log-prob op against worked examples."""

import copy
import math
import sys

import pytest
import torch
from torch.testing import assert_close

from alignkit.ops.logprobs import naive_token_logps, token_logps
from alignkit.train.loop import (
    example_tokens,
    split_micro_batches,
    step_indices,
    total_steps,
)
from alignkit.train.memory import MemoryPlan, allocate_state
from alignkit.train.optim import build_optimizer, lr_multiplier, parameter_groups


def test_warmup_then_cosine_linear_constant():
    """warmup 4 of 14 steps: warm-up factors (s+1)/5; then progress p = (s-4)/10.
    cosine: 0.5(1+cos(pi p)) -> s=4: 1, s=9: 0.5, s=14: 0. linear: 1-p -> s=9: 0.5."""

    def factors(schedule):
        return [
            lr_multiplier(s, warmup_steps=4, total_steps=14, schedule=schedule) for s in range(15)
        ]

    cosine = factors("cosine")
    assert cosine[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert cosine[9] == pytest.approx(0.5) and cosine[14] == pytest.approx(0.0)
    assert cosine[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert factors("linear")[9] == pytest.approx(0.5) and factors("linear")[14] == 0.0
    assert factors("constant")[4:] == [1.0] * 11


def test_data_order_covers_each_epoch_once_and_is_reproducible():
    n, batch = 10, 4
    order = [
        i for step in range(5) for i in step_indices(step, batch, n, seed=3)
    ]  # 20 positions = 2 epochs
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:]) == list(range(10))
    assert order[:10] != order[10:]  # a new permutation each epoch
    assert step_indices(2, batch, n, seed=3) == order[8:12]  # crosses the epoch boundary
    assert step_indices(0, batch, n, seed=4) != step_indices(0, batch, n, seed=3)


def test_total_steps_from_epochs():
    class Config:
        max_steps, epochs, batch_size = None, 2.0, 8

    assert total_steps(Config, 20) == 5  # ceil(2 * 20 / 8)
    Config.max_steps = 7
    assert total_steps(Config, 20) == 7


def test_chunked_logps_equal_naive_and_gradients_match():
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (2, 9))
    chunked = token_logps(
        hidden, weight, targets, bias, chunk=4
    )  # 18 tokens: chunks of 4, 4, 4, 4, 2
    naive = naive_token_logps(hidden @ weight.T + bias, targets)
    assert_close(chunked, naive, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(
        lambda h, w, b: token_logps(h, w, targets[:, :4], b, chunk=5), (hidden[:, :4], weight, bias)
    )


def test_chunked_logps_float32_within_1e5_of_naive():
    torch.manual_seed(1)
    hidden, weight = torch.randn(3, 40, 64), torch.randn(1000, 64) * 0.1
    targets = torch.randint(0, 1000, (3, 40))
    assert_close(
        token_logps(hidden, weight, targets, chunk=7),
        naive_token_logps(hidden @ weight.T, targets),
        atol=1e-5,
        rtol=0,
    )


def test_reduce_sequences_padded_and_packed_agree():
    """Two sequences of 4 and 3 tokens. Token log-probs (position t predicts token t+1):
    sequence A targets at t = 1, 2 (values -1, -2); sequence B targets at t = 1 (-3), t = 0 (-4).
    Sums: A = -3, B = -7; means: A = -1.5, B = -3.5."""
    from alignkit.ops.logprobs import reduce_sequences

    padded = torch.tensor([[-9.0, -1.0, -2.0], [-4.0, -3.0, -9.0]])
    padded_mask = torch.tensor([[False, True, True], [True, True, False]])
    assert reduce_sequences(padded, padded_mask).tolist() == [-3.0, -7.0]
    assert reduce_sequences(padded, padded_mask, reduction="mean").tolist() == [-1.5, -3.5]
    # packed row of 7 tokens: A at 0..3, B at 4..6; 6 shifted positions; position 3 predicts B's
    # first token and is never a target.
    packed = torch.tensor([[-9.0, -1.0, -2.0, -9.0, -4.0, -3.0]])
    packed_mask = torch.tensor([[False, True, True, False, True, True]])
    cu = torch.tensor([0, 4, 7], dtype=torch.int32)
    assert reduce_sequences(packed, packed_mask, cu).tolist() == [-3.0, -7.0]
    assert reduce_sequences(packed, packed_mask, cu, reduction="mean").tolist() == [-1.5, -3.5]


PEAK_SCRIPT = """
import sys, torch
from alignkit.ops.logprobs import naive_token_logps, token_logps


def status_kib(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))


torch.manual_seed(0)
B, T, H, V = (int(n) for n in sys.argv[2:6])
hidden = torch.randn(B, T, H, requires_grad=True)
weight = (torch.randn(V, H) * 0.02).requires_grad_()
targets = torch.randint(0, V, (B, T))
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
before = status_kib("VmRSS:")
if sys.argv[1] == "naive":
    logps = naive_token_logps(hidden @ weight.T, targets)
else:
    logps = token_logps(hidden, weight, targets)
logps.sum().backward()
print((status_kib("VmHWM:") - before) // 1024)
"""


def test_chunked_logps_peak_memory_is_a_small_fraction_of_naive():
    """At V = 131,072 the naive path holds (B*T, V) float32 logits (B*T*V*4 bytes =
    512 MiB) and their log-softmax and gradient; the chunked path holds 16 MiB chunks plus
    the (V, H) weight gradient. Peak RSS (VmHWM, reset just before) above the start, in a
    fresh process, forward + backward, the same way for both paths; measured on the 2-core
    CPU over repeated runs: naive 1545 MiB every time (3 x the logits), chunked 139-218 MiB
    depending on allocator arenas, i.e. 9-14% of naive. The bounds are relative: the naive
    peak must cover at least the logits it materialises (else the measurement missed
    them), and the chunked peak must be a small fraction of the naive one."""
    import subprocess

    shape = B, T, H, V = 4, 256, 64, 131_072
    logits_mib = B * T * V * 4 / 2**20  # one (B, T, V) float32 tensor: 512 MiB

    def peak_mib(mode):
        out = subprocess.run(
            [sys.executable, "-c", PEAK_SCRIPT, mode, *map(str, shape)],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.strip())

    naive, chunked = peak_mib("naive"), peak_mib("chunked")
    assert naive >= logits_mib, (naive, logits_mib)
    assert chunked < 0.25 * naive, f"chunked {chunked} MiB vs naive {naive} MiB"


def test_example_tokens_counts_every_sequence_an_example_holds():
    sft = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}
    pair = {"chosen": {"input_ids": [1] * 5}, "rejected": {"input_ids": [1] * 2}, "index": 7}
    ranking = {"sequences": [{"input_ids": [1] * 4}, {"input_ids": [1] * 6}], "pairs": [(0, 1)]}
    assert [example_tokens(e) for e in (sft, pair, ranking)] == [3, 7, 10]


def test_split_micro_batches_by_count_and_by_tokens():
    sizes = [3, 4, 2, 9, 1, 1, 5]
    items = list(range(len(sizes)))
    by_size = sizes.__getitem__
    # count only: groups of 3
    assert split_micro_batches(items, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    # at most 3 items and at most 8 tokens; item 3 (9 tokens) is over the cap and goes alone
    assert split_micro_batches(items, 3, max_tokens=8, size_fn=by_size) == [
        [0, 1],  # 3 + 4 = 7; adding 2 would make 9
        [2],  # 2 + 9 > 8
        [3],  # 9 tokens alone
        [4, 5, 6],  # 1 + 1 + 5 = 7
    ]
    assert split_micro_batches([], 4, max_tokens=8, size_fn=by_size) == []
    # passes run largest first; equal sizes keep their order
    groups = [[0, 1], [2], [3], [4, 5, 6]]  # 7, 2, 9, 7 tokens
    assert MemoryPlan(True, torch.device("cpu")).order(groups, size_fn=by_size) == [
        [3],
        [0, 1],
        [4, 5, 6],
        [2],
    ]


class _Config:
    learning_rate = 1e-2
    weight_decay = 0.1
    adam_betas = (0.9, 0.999)


def test_allocated_adamw_state_steps_exactly_like_lazily_created_state():
    """allocate_state creates what AdamW's first step would (zero moments, step 0) and
    keeps gradients allocated; three steps then give bit-identical weights."""
    torch.manual_seed(0)
    start = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)
    )
    inputs = [torch.randn(5, 8) for _ in range(3)]
    results = []
    for eager in (False, True):
        model = copy.deepcopy(start)
        optimizer = build_optimizer(parameter_groups(model, _Config.weight_decay), _Config)
        if eager:
            allocate_state(optimizer)
            assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
            grads = [p.grad for p in model.parameters()]
            # gradients, first and second moments: each kind one buffer, views per parameter
            for kind in (
                grads,
                *(
                    [optimizer.state[p][k] for p in model.parameters()]
                    for k in ("exp_avg", "exp_avg_sq")
                ),
            ):
                assert len({t.untyped_storage().data_ptr() for t in kind}) == 1
        for x in inputs:
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=not eager)
        if eager:  # the same gradient buffers, zeroed, not replaced
            assert all(a is p.grad for a, p in zip(grads, model.parameters(), strict=True))
        results.append([p.detach().clone() for p in model.parameters()])
        steps = {float(optimizer.state[p]["step"]) for p in model.parameters()}
        assert steps == {3.0}
    for lazy, eager in zip(*results, strict=True):
        assert torch.equal(lazy, eager)


TRIM_SCRIPT = """
import sys
import torch
from alignkit.train.heap import release_free_heap


def resident():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


count, numel = int(sys.argv[1]), int(sys.argv[2])
kept, freed = [], []
for _ in range(count):
    freed.append(torch.ones(numel))
    kept.append(torch.ones(16))
del freed
before = resident()
release_free_heap()
print(before - resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_heap_hands_freed_blocks_back_to_the_os():
    """In a fresh process (a known heap), 2,000 tensors of 100 KB (heap blocks, not
    mappings) freed between small live ones stay resident until `release_free_heap`
    (measured: 194 of the 200 MB returned, 0 by the frees themselves). The bound is
    relative to the bytes freed, computed here: at least half of them go back."""
    import subprocess

    count, numel = 2_000, 25_000
    freed_bytes = count * numel * 4  # float32: 200 MB
    out = subprocess.run(
        [sys.executable, "-c", TRIM_SCRIPT, str(count), str(numel)],
        capture_output=True,
        text=True,
        check=True,
    )
    returned = int(out.stdout.strip())
    assert returned > 0.5 * freed_bytes, (returned, freed_bytes)


class _Sized(torch.nn.Module):
    """A stand-in model: a config with the sizes token_cap reads, and `weights` weights."""

    def __init__(self, weights: int, trained: bool):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(
            num_hidden_layers=2, hidden_size=64, intermediate_size=128, vocab_size=1000
        )
        self.weight = torch.nn.Parameter(torch.empty(weights, device="meta"), requires_grad=trained)


def test_token_cap_auto_keeps_activations_near_half_the_training_state():
    from alignkit.train.memory import token_cap

    # per token: 4 bytes x (2 layers x (6 x 64 + 2 x 128) + 1000) = 9120 bytes
    # 1M trained weights: (4 + 12) x 1M / 2 = 8e6 bytes -> 877 tokens -> 768 (x 256)
    assert token_cap("auto", _Sized(1_000_000, trained=True)) == 768
    # frozen weights (LoRA's base): 4 x 1M / 2 = 2e6 -> 219 tokens -> the 256 floor
    assert token_cap("auto", _Sized(1_000_000, trained=False)) == 256
    # 1e9 trained: 8e9 / 9120 = 877k tokens -> the 16384 ceiling
    assert token_cap("auto", _Sized(1_000_000_000, trained=True)) == 16384
    assert token_cap(300, _Sized(10, trained=True)) == 300
    assert token_cap(None, _Sized(10, trained=True)) is None
    assert token_cap("auto", torch.nn.Linear(2, 2)) is None  # no decoder config: no cap


def test_token_cap_counts_only_blocks_that_are_trained():
    """With the lower block frozen (trainable_layers=1) its activations are not kept for
    backward: per token 4 x (1 x (6 x 64 + 2 x 128) + 1000) = 6560 bytes, so 8e6 bytes of
    budget hold 1219 tokens -> 1024, where both blocks trained give 768 (above)."""
    from alignkit.train.memory import token_cap

    model = _Sized(1_000_000, trained=True)
    model.layers = torch.nn.ModuleList([torch.nn.Linear(1, 1, bias=False) for _ in range(2)])
    assert token_cap("auto", model) == 768
    model.layers[0].weight.requires_grad_(False)
    assert token_cap("auto", model) == 1024

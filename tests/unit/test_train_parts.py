"""Schedule, data order and the chunked log-prob op against worked examples."""

import math

import pytest
import torch
from torch.testing import assert_close

from alignkit.ops.logprobs import naive_token_logps, token_logps
from alignkit.train.loop import step_indices, total_steps
from alignkit.train.optim import lr_multiplier


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

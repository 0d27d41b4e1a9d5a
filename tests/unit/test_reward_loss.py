"""Bradley-Terry loss, rankings, and the reward-model step against hand-computed values."""

import math

import pytest
import torch

from alignkit.losses.reward import bradley_terry_loss, ranking_pairs


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_hard_label_loss_is_minus_log_sigmoid_of_the_gap():
    """r_c = 2, r_r = 0.5: d = 1.5, loss = -log sigma(1.5) = log(1 + e^-1.5) = 0.201413.
    r_c = -1, r_r = 1: d = -2, loss = log(1 + e^2) = 2.126928."""
    losses, metrics = bradley_terry_loss(torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(losses, torch.tensor([0.201413, 2.126928]), atol=1e-6, rtol=0)
    assert metrics["accuracy"].item() == 0.5
    assert metrics["margin"].item() == pytest.approx((1.5 - 2.0) / 2)


def test_margin_is_subtracted_from_the_gap():
    """r_c - r_r = 1.5 with margin 1: d = 0.5, loss = log(1 + e^-0.5) = 0.474077.
    The accuracy metric ignores the margin (1.5 > 0 is still correct)."""
    losses, metrics = bradley_terry_loss(
        torch.tensor([2.0]), torch.tensor([0.5]), margin=torch.tensor([1.0])
    )
    assert losses.item() == pytest.approx(0.474077, abs=1e-6)
    assert metrics["accuracy"].item() == 1.0


def test_soft_labels():
    """p = 0.8, d = 1: -(0.8 log sigma(1) + 0.2 log sigma(-1)) = 0.8*0.313262 + 0.2*1.313262
    = 0.513262. p = 0.5 makes the loss symmetric in d: at d = +-2 both give
    0.5*(0.126928 + 2.126928) = 1.126928. p = 1 is the hard-label loss."""
    losses, _ = bradley_terry_loss(
        torch.tensor([1.0, 2.0, -2.0, 1.0]),
        torch.zeros(4),
        p_chosen=torch.tensor([0.8, 0.5, 0.5, 1.0]),
    )
    expected = [0.513262, 1.126928, 1.126928, -log_sigmoid(1.0)]
    torch.testing.assert_close(losses, torch.tensor(expected), atol=1e-6, rtol=0)


def test_centering_adds_the_squared_reward_sum():
    """r_c = 2, r_r = 0.5, coef 0.01: 0.201413 + 0.01 * 2.5^2 = 0.263913."""
    losses, _ = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.5]), center_coef=0.01)
    assert losses.item() == pytest.approx(0.263913, abs=1e-6)


def test_gradient_matches_the_closed_form():
    """d loss / d r_c = sigma(d) - p (= -sigma(-d) for p = 1); d loss / d r_r = p - sigma(d);
    centering adds 2 * coef * (r_c + r_r) to both."""
    chosen = torch.tensor([2.0, -1.0, 0.3], requires_grad=True)
    rejected = torch.tensor([0.5, 1.0, 0.3], requires_grad=True)
    p = torch.tensor([1.0, 0.7, 0.9])
    losses, _ = bradley_terry_loss(chosen, rejected, p_chosen=p, center_coef=0.1)
    losses.sum().backward()
    d = (chosen - rejected).detach()
    center = 2 * 0.1 * (chosen + rejected).detach()
    torch.testing.assert_close(chosen.grad, torch.sigmoid(d) - p + center)
    torch.testing.assert_close(rejected.grad, p - torch.sigmoid(d) + center)


def test_ensemble_rewards_broadcast_per_record_terms_over_heads():
    chosen = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    rejected = torch.zeros(2, 2)
    losses, _ = bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0]))
    expected = [
        [-log_sigmoid(1.0), -log_sigmoid(0.0)],
        [-log_sigmoid(0.0), -log_sigmoid(3.0)],
    ]
    torch.testing.assert_close(losses, torch.tensor(expected))


def test_ranking_expands_to_all_pairs_weighted_one_over_k_choose_2():
    assert ranking_pairs([2, 0, 1]) == [(2, 0, 1 / 3), (2, 1, 1 / 3), (0, 1, 1 / 3)]
    pairs = ranking_pairs([3, 1, 0, 2])
    assert len(pairs) == 6 and all(w == pytest.approx(1 / 6) for *_, w in pairs)
    assert (3, 2) in [(b, w) for b, w, _ in pairs] and (2, 3) not in [(b, w) for b, w, _ in pairs]
    with pytest.raises(ValueError):
        ranking_pairs([0])


class FixedRewards(torch.nn.Module):
    """Stands in for `RewardScores`: returns given rewards (S, K) whatever the input."""

    def __init__(self, rewards):
        super().__init__()
        self.rewards = torch.nn.Parameter(torch.tensor(rewards))

    def forward(self, input_ids, score_index, position_ids=None, cu_seqlens=None, **_):
        return self.rewards


def test_rm_step_weights_a_ranking_as_one_record_and_applies_margins():
    """Batch: a pair (margin 1) with rewards [2, 0.5], then a ranking of 3 responses
    [best=2, then 0, then 1] with rewards [1, 0, 3].
    Pair: d = 1.5 - 1 = 0.5 -> 0.474077 (weight 1).
    Ranking: (2 over 0): d = 2 -> 0.126928; (2 over 1): d = 3 -> 0.048587;
    (0 over 1): d = 1 -> 0.313262; mean = 0.162926 (weight 1/3 each).
    Summed loss 0.637003 over 2 records. Accuracy 1 (every gap positive); margin =
    (1.5 + (2 + 3 + 1) / 3) / 2 = 1.75."""
    from alignkit.config import RewardConfig
    from alignkit.data.collators import PackingCollator
    from alignkit.methods.reward import ComparisonCollator, rm_step

    seq = {"input_ids": [1, 2], "labels": [1, 2]}
    groups = [
        {
            "sequences": [seq, seq],
            "pairs": [(0, 1, 1.0)],
            "margin": 1.0,
            "p_chosen": 1.0,
            "index": 0,
        },
        {
            "sequences": [seq, seq, seq],
            "pairs": ranking_pairs([2, 0, 1]),
            "margin": 0.0,
            "p_chosen": 1.0,
            "index": 1,
        },
    ]
    batch = ComparisonCollator(PackingCollator())(groups)
    module = FixedRewards([[2.0], [0.5], [1.0], [0.0], [3.0]])
    config = RewardConfig(data="x")
    loss, metrics = rm_step(module, batch, config=config, bootstrap=None)
    assert loss.item() == pytest.approx(0.474077 + 0.162926, abs=1e-5)
    assert metrics["accuracy"].item() == pytest.approx(1.0)
    assert metrics["margin"].item() == pytest.approx(1.75, abs=1e-6)
    loss.backward()
    # d/dr for the pair's chosen: -sigma(-0.5) = -0.377541
    assert module.rewards.grad[0, 0].item() == pytest.approx(-0.377541, abs=1e-5)


def test_rm_step_bootstrap_weights_each_head_separately():
    """Two heads; head 0 weights record 0 by 2, head 1 by 0: the loss is
    (2 * l0 + 0 * l1) / 2 = l0, with l0 = -log sigma(1) for head 0's gap of 1."""
    from alignkit.config import RewardConfig
    from alignkit.data.collators import PackingCollator
    from alignkit.methods.reward import ComparisonCollator, rm_step

    seq = {"input_ids": [1, 2], "labels": [1, 2]}
    groups = [
        {
            "sequences": [seq, seq],
            "pairs": [(0, 1, 1.0)],
            "margin": 0.0,
            "p_chosen": 1.0,
            "index": 0,
        }
    ]
    batch = ComparisonCollator(PackingCollator())(groups)
    module = FixedRewards([[1.0, 5.0], [0.0, 0.0]])
    loss, _ = rm_step(
        module,
        batch,
        config=RewardConfig(data="x", num_heads=2),
        bootstrap=torch.tensor([[2.0], [0.0]]),
    )
    assert loss.item() == pytest.approx(-log_sigmoid(1.0), abs=1e-6)

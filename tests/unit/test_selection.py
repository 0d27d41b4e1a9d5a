"""Pair selection rules and mixed-preference labels on hand-made ensemble scores.

Rules that draw at random are checked two ways: where the scores leave no choice, the
exact pair; where they do, every pair is one the rule allows and, over many identical
prompts in one call (each prompt draws for itself), each occurs about as often as worked
out by hand in the test's docstring.
"""

import math

import pytest
import torch

from alignkit.feedback.selection import (
    REQUIRES,
    SELECTIONS,
    SelectionInput,
    choose_for_ensemble,
    ensemble_labels,
    select_sea_ee,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def members(*rows, prompts=1):
    """K member score rows (S,) -> (K, P, S), the same scores for each of P prompts."""
    return torch.tensor(rows).unsqueeze(1).expand(-1, prompts, -1).contiguous()


def share(pairs, pair):
    return sum(p == pair for p in pairs) / len(pairs)


def test_registry_names_and_requirements():
    assert set(SELECTIONS) == {
        "passive",
        "random",
        "best_worst",
        "sea_ee",
        "sea_bai",
        "uncertainty",
    }
    assert set(REQUIRES) == set(SELECTIONS)
    bare = SelectionInput(num_prompts=2, num_samples=4)
    for name, needs in REQUIRES.items():
        if needs:
            with pytest.raises(ValueError, match=needs[0]):
                SELECTIONS[name](bare, gen())
        else:
            assert len(SELECTIONS[name](bare, gen())) == 2


def test_selection_input_checks_shapes():
    with pytest.raises(ValueError, match="at least 2 samples"):
        SelectionInput(num_prompts=1, num_samples=1)
    with pytest.raises(ValueError, match=r"\(K, P, S\)"):
        SelectionInput(2, 3, member_scores=torch.zeros(4, 3, 2))
    with pytest.raises(ValueError, match=r"\(P, S\)"):
        SelectionInput(2, 3, labeller_scores=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="at least 2 members"):
        SELECTIONS["sea_ee"](SelectionInput(1, 3, member_scores=torch.zeros(1, 1, 3)), gen())


def test_passive_takes_the_first_two():
    assert SELECTIONS["passive"](SelectionInput(3, 5), gen()) == [(0, 1)] * 3


def test_random_draws_two_distinct_uniformly_and_repeats_under_a_seed():
    """S = 3: six ordered pairs, each 1/6 of 6000 prompts (sd of a share ~0.005)."""
    pairs = SELECTIONS["random"](SelectionInput(6000, 3), gen(1))
    assert all(i != j and 0 <= i < 3 and 0 <= j < 3 for i, j in pairs)
    for pair in [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]:
        assert share(pairs, pair) == pytest.approx(1 / 6, abs=0.025)
    assert SELECTIONS["random"](SelectionInput(50, 4), gen(7)) == SELECTIONS["random"](
        SelectionInput(50, 4), gen(7)
    )


def test_best_worst_reads_the_labeller_scores():
    """Prompt 0: best 1 (0.9), worst 2 (-0.3). Prompt 1: all tied: argmax 0, then the
    argmin among the rest, 1."""
    scores = torch.tensor([[0.1, 0.9, -0.3, 0.5], [1.0, 1.0, 1.0, 1.0]])
    pairs = SELECTIONS["best_worst"](SelectionInput(2, 4, labeller_scores=scores), gen())
    assert pairs == [(1, 2), (0, 1)]


# ---- sea_ee ------------------------------------------------------------------------------

# Three members over four responses. Argmaxes: m0 -> 2, m1 -> 2, m2 -> 0.
# Second-best: m0 -> 1, m1 -> 3, m2 -> 2.
DISAGREE = ([0.0, 1.0, 5.0, 0.5], [0.0, 0.5, 5.0, 1.0], [5.0, 0.0, 1.0, 0.5])


def test_sea_ee_resamples_until_two_members_differ():
    """Members visited in a random order. m2 first (1/3): i = 0, the next member says 2.
    m0 or m1 first (2/3): i = 2; if the next is the other of m0/m1 they coincide, and the
    one after (m2) says 0. So every prompt gets {0, 2}: (2, 0) w.p. 2/3, (0, 2) w.p. 1/3
    (over 3000 prompts the share's sd is ~0.009)."""
    scores = members(*DISAGREE, prompts=3000)
    pairs = SELECTIONS["sea_ee"](SelectionInput(3000, 4, member_scores=scores), gen(3))
    assert set(pairs) == {(2, 0), (0, 2)}
    assert share(pairs, (2, 0)) == pytest.approx(2 / 3, abs=0.04)


def test_sea_ee_falls_back_to_the_second_members_second_best():
    """With max_tries = 2 only one member is tried after the first. Orders and pairs:
    (m0, m1): coincide on 2 -> m1's second best 3: (2, 3), w.p. 1/6;
    (m1, m0): -> m0's second best 1: (2, 1), 1/6;
    (m0, m2) or (m1, m2): (2, 0), 2/6;  (m2, *): (0, 2), 2/6."""
    scores = members(*DISAGREE, prompts=3000)
    pairs = select_sea_ee(SelectionInput(3000, 4, member_scores=scores), gen(4), max_tries=2)
    assert set(pairs) == {(2, 3), (2, 1), (2, 0), (0, 2)}
    for pair, p in [((2, 3), 1 / 6), ((2, 1), 1 / 6), ((2, 0), 1 / 3), ((0, 2), 1 / 3)]:
        assert share(pairs, pair) == pytest.approx(p, abs=0.04)
    with pytest.raises(ValueError, match="max_tries"):
        select_sea_ee(SelectionInput(1, 4, member_scores=scores[:, :1]), gen(), max_tries=1)


def test_sea_ee_when_every_member_agrees():
    """All argmaxes are 1; resampling never finds a second response, so j is the second
    best of whichever member came second: m0 -> 0, m1 -> 2, m2 -> 3, each w.p. 1/3."""
    agree = ([4.0, 9.0, 1.0, 0.0], [1.0, 9.0, 4.0, 0.0], [0.0, 9.0, 1.0, 4.0])
    scores = members(*agree, prompts=3000)
    pairs = SELECTIONS["sea_ee"](SelectionInput(3000, 4, member_scores=scores), gen(5))
    assert set(pairs) == {(1, 0), (1, 2), (1, 3)}
    for pair in [(1, 0), (1, 2), (1, 3)]:
        assert share(pairs, pair) == pytest.approx(1 / 3, abs=0.04)


def test_sea_ee_is_reproducible_and_per_prompt():
    """Two prompts with different scores; the same seed repeats the same pairs."""
    scores = torch.stack([members(*DISAGREE)[:, 0], members(*reversed(DISAGREE))[:, 0]], 1)
    candidates = SelectionInput(2, 4, member_scores=scores)
    assert SELECTIONS["sea_ee"](candidates, gen(11)) == SELECTIONS["sea_ee"](candidates, gen(11))
    first = {SELECTIONS["sea_ee"](candidates, gen(seed))[0] for seed in range(40)}
    assert first == {(2, 0), (0, 2)}


# ---- sea_bai and uncertainty ---------------------------------------------------------------


def test_sea_bai_pairs_the_sampled_best_with_the_most_uncertain_difference():
    """m0 = [3, 2, 0], m1 = [3, 2, 2.5]: both members' argmax is 0, so i = 0.
    Differences to 0: response 1: (-1, -1), variance 0; response 2: (-3, -0.5), variance
    ((-3 + 0.5) / 2)^2 = 1.5625. j = 2, although response 1 has the higher mean (2 > 1.25)."""
    scores = members([3.0, 2.0, 0.0], [3.0, 2.0, 2.5])
    for seed in range(5):
        assert SELECTIONS["sea_bai"](SelectionInput(1, 3, member_scores=scores), gen(seed)) == [
            (0, 2)
        ]


def test_sea_bai_first_response_follows_the_sampled_member():
    """m0 = [3, 1, 0], m1 = [0, 1, 3]. Sampling m0: i = 0; differences to 0: response 1
    (-2, 1), variance 2.25; response 2 (-3, 3), variance 9 -> (0, 2). Sampling m1: i = 2;
    to 2: response 0 (3, -3), 9; response 1 (1, -2), 2.25 -> (2, 0). Each w.p. 1/2."""
    scores = members([3.0, 1.0, 0.0], [0.0, 1.0, 3.0], prompts=2000)
    pairs = SELECTIONS["sea_bai"](SelectionInput(2000, 3, member_scores=scores), gen(2))
    assert set(pairs) == {(0, 2), (2, 0)}
    assert share(pairs, (0, 2)) == pytest.approx(0.5, abs=0.05)


def test_uncertainty_takes_the_two_largest_member_stds():
    """Members [0, 1, 5, 2], [0, -1, 1, 2], [0, 0, 3, 2]: stds 0, sqrt(2/3) = 0.816,
    sqrt(8/3) = 1.633, 0 -> (2, 1)."""
    scores = members([0.0, 1.0, 5.0, 2.0], [0.0, -1.0, 1.0, 2.0], [0.0, 0.0, 3.0, 2.0])
    assert SELECTIONS["uncertainty"](SelectionInput(1, 4, member_scores=scores), gen()) == [(2, 1)]


# ---- mixed preference learning ---------------------------------------------------------------


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_ensemble_labels_are_a_sampled_members_bradley_terry_probability():
    """Prompt 0, pair (1, 0): m0 gap 1 - 0 = 1, m1 gap 3 - 0 = 3. Prompt 1, pair (0, 2):
    m0 gap 1 - 3 = -2 (b preferred: p_a = sigma(-2) = 0.119, margin 2), m1 gap 2 - 0 = 2.
    With identical members the label is exact; with two, each prompt gets one member's,
    each about half the time."""
    m0 = [[0.0, 1.0, 2.0], [1.0, 0.0, 3.0]]
    m1 = [[0.0, 3.0, -1.0], [2.0, 0.0, 0.0]]
    same = torch.tensor([m0, m0])
    p_a, margins = ensemble_labels(same, [(1, 0), (0, 2)], gen())
    torch.testing.assert_close(p_a, torch.tensor([sigmoid(1), sigmoid(-2)]))
    torch.testing.assert_close(margins, torch.tensor([1.0, 2.0]))

    many = torch.tensor([m0, m1])[:, :1].expand(-1, 2000, -1)  # prompt 0's scores, 2000 times
    p_a, margins = ensemble_labels(many, [(1, 0)] * 2000, gen(3))
    assert set(margins.tolist()) == {1.0, 3.0}
    assert (margins == 3.0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    torch.testing.assert_close(p_a, torch.sigmoid(margins))  # a is preferred by both
    with pytest.raises(ValueError, match="pairs for"):
        ensemble_labels(same, [(1, 0)], gen())


def test_choose_for_ensemble_takes_the_most_confident_fraction():
    """Margins [0.5, 2, 0.1, 2, 1]: fraction 0.5 -> floor(2.5) = 2 pairs: the two 2s;
    0.6 -> 3: adds 1.0 (index 4); with min_margin 1.5 only the 2s remain."""
    margins = torch.tensor([0.5, 2.0, 0.1, 2.0, 1.0])
    assert choose_for_ensemble(margins, 0.5) == [1, 3]
    assert choose_for_ensemble(margins, 0.6) == [1, 3, 4]
    assert choose_for_ensemble(margins, 0.6, min_margin=1.5) == [1, 3]
    assert choose_for_ensemble(margins, 0.0) == []
    assert choose_for_ensemble(margins, 1.0) == [0, 1, 2, 3, 4]
    assert choose_for_ensemble(torch.tensor([1.0, 1.0, 1.0]), 0.34) == [0]  # ties: lower index
    with pytest.raises(ValueError):
        choose_for_ensemble(margins, 1.5)

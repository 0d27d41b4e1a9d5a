"""Evaluation metrics on inputs small enough to check by hand."""

import math

import numpy as np
import pytest

from alignkit.evaluate.metrics import (
    distinct_n,
    eos_rate,
    fit_length_model,
    lc_win_rate_estimate,
    length_controlled_win_rate,
    outcome_counts,
    rate_estimate,
    ratio_estimate,
    self_bleu,
    win_rate,
    win_rate_estimate,
)
from alignkit.feedback.judge import Judgement, PairwiseJudge


def test_win_rate_counts_ties_half():
    """Verdicts win, win, tie, loss, tie: (1 + 1 + 0.5 + 0 + 0.5) / 5 = 0.6."""
    verdicts = [1.0, 1.0, 0.5, 0.0, 0.5]
    assert win_rate(verdicts) == pytest.approx(0.6)
    assert outcome_counts(verdicts) == {"wins": 2, "ties": 2, "losses": 1}
    assert math.isnan(win_rate([]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        win_rate([0.5, 1.2])


class SlotJudge(PairwiseJudge):
    """A hand-made side-by-side judge: a verdict per ordered pair of responses, looked
    up in a table, so each pair's two orders can disagree (position bias)."""

    question = "Which is better?"

    def __init__(self, table):
        self.table = table  # (first, second) -> P(first, in slot A, wins)

    def judge_ordered(self, prompts, firsts, seconds, questions):
        return [Judgement(self.table[(a, b)]) for a, b in zip(firsts, seconds, strict=True)]

    def score_batch(self, prompts, responses):
        raise NotImplementedError


def test_win_rate_from_a_judge_asked_in_both_orders():
    """Three pairs (policy response first):
    - P1 beats R1 in both orders: forward 1, backward (R1 first) 0 -> (1 + 1 - 0) / 2 = 1;
    - the judge always picks slot A for (P2, R2): forward 1, backward 1 -> 0.5, a tie;
    - R3 beats P3 in both orders: forward 0, backward 1 -> 0.
    Win rate (1 + 0.5 + 0) / 3 = 0.5; asked in one order only it would be 2/3."""
    table = {
        ("P1", "R1"): 1.0, ("R1", "P1"): 0.0,
        ("P2", "R2"): 1.0, ("R2", "P2"): 1.0,
        ("P3", "R3"): 0.0, ("R3", "P3"): 1.0,
    }  # fmt: skip
    judge = SlotJudge(table)
    verdicts = judge.judge_pairs(["q"] * 3, ["P1", "P2", "P3"], ["R1", "R2", "R3"])
    preferences = [v.p_a for v in verdicts]
    assert preferences == [1.0, 0.5, 0.0]
    assert win_rate(preferences) == pytest.approx(0.5)
    assert outcome_counts(preferences) == {"wins": 1, "ties": 1, "losses": 1}
    judge.both_orders = False
    one_order = [
        v.p_a for v in judge.judge_pairs(["q"] * 3, ["P1", "P2", "P3"], ["R1", "R2", "R3"])
    ]
    assert win_rate(one_order) == pytest.approx(2 / 3)


def test_win_rate_interval_is_a_bootstrap_of_the_pairs():
    estimate = win_rate_estimate([1.0] * 30 + [0.0] * 10)
    assert estimate.value == pytest.approx(0.75) and estimate.n == 40
    low, high = estimate.ci
    assert 0.55 < low < 0.75 < high < 0.9
    assert win_rate_estimate([0.5] * 8).ci == (0.5, 0.5)  # all ties: no spread


def test_length_controlled_fit_recovers_the_unbiased_rate():
    """Synthetic judge with a known length bias: at equal length the policy wins with
    probability sigma(0.4) = 0.599; each standardised unit of length difference adds
    slope 1.5 to the logit. The policy's answers run longer (d ~ N(60, 100) characters),
    so the raw win rate is inflated to about 0.68; the fit reads the rate at d = 0 and
    recovers 0.599 (and the slope) within sampling error."""
    rng = np.random.default_rng(0)
    n = 4000
    d = rng.normal(60.0, 100.0, size=n)
    x = np.tanh(d / d.std())
    truth = 1 / (1 + np.exp(-(0.4 + 1.5 * x)))
    outcomes = (rng.random(n) < truth).astype(float)
    raw = win_rate(outcomes)
    model = fit_length_model(outcomes, d)
    assert raw > 0.66  # the length bias is large: 8+ points above the truth
    assert model.lc_win_rate == pytest.approx(1 / (1 + math.exp(-0.4)), abs=0.03)
    assert model.slope == pytest.approx(1.5, abs=0.2)
    # soft preferences (the probabilities themselves) recover it too
    assert length_controlled_win_rate(truth, d) == pytest.approx(0.599, abs=0.01)


def test_length_controlled_fit_without_length_bias_is_the_raw_rate():
    """All length differences 0: the regressor is 0 for every pair, so the fit is a
    logistic mean, sigma(a) = mean preference = 0.7 (up to the tiny ridge)."""
    prefs = [1.0, 1.0, 1.0, 0.0, 0.5]
    assert length_controlled_win_rate(prefs, [0.0] * 5) == pytest.approx(0.7, abs=1e-3)


def test_length_controlled_fit_stays_finite_when_the_policy_always_wins():
    model = fit_length_model([1.0] * 20, np.linspace(-10, 10, 20))
    assert 0.99 < model.lc_win_rate < 1.0 and math.isfinite(model.intercept)


def test_lc_win_rate_interval_contains_the_estimate():
    rng = np.random.default_rng(1)
    d = rng.normal(0, 50, size=60)
    prefs = (rng.random(60) < 0.7).astype(float)
    estimate = lc_win_rate_estimate(prefs, d, resamples=200)
    low, high = estimate.ci
    assert low < estimate.value < high and estimate.n == 60


def test_distinct_n_by_hand():
    """'a b a b' and 'a b c': unigrams a b a b a b c -> 3 distinct of 7;
    bigrams (a b)(b a)(a b) and (a b)(b c) -> 3 distinct of 5 (n-grams never span texts)."""
    texts = ["a b a b", "a b c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(["one"], 2) == 0.0  # no bigram at all
    with pytest.raises(ValueError):
        distinct_n(texts, 0)


def test_self_bleu_by_hand():
    """Two copies and one unrelated text: each copy has BLEU 100 against the others (its
    twin is a reference), the unrelated one shares no word with them (BLEU 0):
    (100 + 100 + 0) / 3. Distinct texts only: 0."""
    same = "the cat sat on the mat"
    assert self_bleu([same, same, "a dog ran in a park"]) == pytest.approx(200 / 3)
    assert self_bleu(["red green blue", "one two three", "up down left"]) == pytest.approx(0.0)
    assert math.isnan(self_bleu(["alone"]))


def test_eos_rate_and_its_wilson_interval():
    assert eos_rate([True, True, False, True]) == 0.75
    estimate = rate_estimate([True] * 8 + [False] * 2)
    assert estimate.value == 0.8
    assert estimate.ci == pytest.approx((0.4902, 0.9433), abs=1e-4)  # Wilson, 8 of 10


def test_ratio_estimate_is_total_over_total():
    """KL per token: sequences with KL 2, 4 over 1, 3 tokens -> 6 / 4 = 1.5 (not the mean
    of 2/1 and 4/3)."""
    estimate = ratio_estimate([2.0, 4.0], [1.0, 3.0])
    assert estimate.value == pytest.approx(1.5)
    assert estimate.to_json()["n"] == 2

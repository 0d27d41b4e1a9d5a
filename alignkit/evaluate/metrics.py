"""Evaluation metrics as pure functions of plain numbers and strings.

- Win rate (`win_rate`): the mean probability that the policy's response beats the
  reference's, one preference per prompt. Judges already ask in both orders and average
  (`alignkit.feedback.judge.combine_orders`), so a tie (or an undecided, slot-biased
  judge) arrives as 0.5 and counts half a win.
- Length-controlled win rate (`length_controlled_win_rate`): AlpacaEval 2's correction
  for judges that prefer longer answers (Dubois et al. 2024, "Length-Controlled
  AlpacaEval", sec. 3). A logistic model of the preference,
      P(policy wins | d) = sigma(a + b * tanh(d / s)),
  with d the length difference (policy - reference) and s its standard deviation, is
  fitted by maximum likelihood; the LC win rate is its prediction at d = 0, sigma(a):
  the win rate had both answers been equally long. (AlpacaEval also has per-model and
  per-instruction terms; with one policy, one reference and one preference per prompt
  they fold into the intercept.)
- Diversity: distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for
  Neural Conversation Models", sec. 4.3: distinct n-grams / all n-grams) and self-BLEU
  (Zhu et al. 2018, "Texygen", sec. 3.2: each text's BLEU against all the others).
- EOS rate: the share of completions that ended on their own (EOS / end of turn) rather
  than being cut at the token limit.

`Estimate` bundles a value with its 95% interval and sample size; the `*_estimate`
functions attach the interval each metric's documentation names (`alignkit.evaluate.
intervals`: percentile bootstrap for means and ratios, Wilson for binomial rates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alignkit.evaluate.intervals import bootstrap_interval, wilson_interval

# ---- win rates --------------------------------------------------------------------


def _preferences(preferences: Sequence[float] | np.ndarray) -> np.ndarray:
    p = np.asarray(preferences, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"preferences must be one number per pair, got shape {p.shape}")
    if len(p) and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError("preferences are probabilities: every value must be in [0, 1]")
    return p


def win_rate(preferences: Sequence[float] | np.ndarray) -> float:
    """Mean of P(policy beats reference) over pairs, (N,) -> float. Hard verdicts are 1
    (win), 0 (loss) and 0.5 (tie: half a win); soft ones (a reward model's
    sigma(s_a - s_b), an LLM judge's option probabilities) are averaged as they are,
    as AlpacaEval does. nan for no pairs."""
    p = _preferences(preferences)
    return float(p.mean()) if len(p) else math.nan


def outcome_counts(preferences: Sequence[float] | np.ndarray, tie: float = 1e-9) -> dict:
    """Wins (p > 0.5), ties (|p - 0.5| <= tie) and losses (p < 0.5) among the pairs."""
    p = _preferences(preferences)
    ties = np.abs(p - 0.5) <= tie
    return {
        "wins": int(np.sum((p > 0.5) & ~ties)),
        "ties": int(np.sum(ties)),
        "losses": int(np.sum((p < 0.5) & ~ties)),
    }


@dataclass(frozen=True)
class LengthModel:
    """The fitted P(policy wins | d) = sigma(intercept + slope * tanh(d / scale))."""

    intercept: float
    slope: float
    scale: float  # the standard deviation of d the fit standardised by (1 if it was 0)

    def predict(self, length_difference: float | np.ndarray) -> float | np.ndarray:
        return _sigmoid(
            self.intercept + self.slope * np.tanh(np.asarray(length_difference) / self.scale)
        )

    @property
    def lc_win_rate(self) -> float:
        """The prediction at zero length difference: sigma(intercept)."""
        return float(_sigmoid(self.intercept))


def fit_length_model(
    preferences: Sequence[float] | np.ndarray,
    length_differences: Sequence[float] | np.ndarray,
    *,
    ridge: float = 1e-3,
    max_iterations: int = 100,
    tolerance: float = 1e-10,
) -> LengthModel:
    """Maximum-likelihood logistic fit of preferences (N,) in [0, 1] on
    x = tanh(d / sd(d)) for length differences d (N,), by Newton's method.

    Soft preferences are fitted as fractional outcomes (the Bernoulli log-likelihood
    y log p + (1 - y) log(1 - p) is still the one maximised). A tiny ridge penalty
    (ridge / 2) * (a^2 + b^2) keeps the estimate finite when the data separate (the
    policy wins every pair: the unpenalised MLE of a is +inf); at N of ten or more it
    moves the fit by far less than the interval. Each Newton step halves until the
    penalised loss stops growing, so the iteration cannot overshoot."""
    y = _preferences(preferences)
    d = np.asarray(length_differences, dtype=float)
    if d.shape != y.shape:
        raise ValueError(f"{len(y)} preferences but {len(d)} length differences")
    if len(y) == 0:
        raise ValueError("the length-controlled win rate needs at least one pair")
    scale = float(d.std())
    scale = scale if scale > 0 else 1.0
    features = np.stack([np.ones_like(d), np.tanh(d / scale)], axis=1)  # (N, 2)

    def loss(w):
        z = features @ w
        # -[y log sigma(z) + (1 - y) log sigma(-z)] = softplus(z) - y z, stably
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * ridge * w @ w)

    w = np.zeros(2)
    current = loss(w)
    for _ in range(max_iterations):
        p = _sigmoid(features @ w)
        gradient = features.T @ (p - y) + ridge * w
        hessian = (features * (p * (1 - p))[:, None]).T @ features + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while size > 1e-8 and loss(w - size * step) > current:
            size /= 2
        w = w - size * step
        current = loss(w)
        if np.max(np.abs(size * step)) < tolerance:
            break
    return LengthModel(intercept=float(w[0]), slope=float(w[1]), scale=scale)


def length_controlled_win_rate(
    preferences: Sequence[float] | np.ndarray, length_differences: Sequence[float] | np.ndarray
) -> float:
    """sigma(a) of `fit_length_model`: the win rate predicted at zero length difference."""
    return fit_length_model(preferences, length_differences).lc_win_rate


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=float)))  # no overflow warnings


# ---- diversity and stopping --------------------------------------------------------


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (words split on whitespace, case
    kept); 0 when the texts hold no n-gram. A corpus statistic: repeating a text lowers
    it, which is why no bootstrap interval is attached (resampling repeats texts)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grams = [g for text in texts for g in _ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str]) -> float:
    """Mean over texts of sacrebleu's sentence BLEU (0-100, its default smoothing) of
    each text against all the others as references. 100: every text is a copy of
    another; low values: diverse texts. nan for fewer than two texts."""
    import sacrebleu

    texts = list(texts)
    if len(texts) < 2:
        return math.nan
    scores = [
        sacrebleu.sentence_bleu(text, texts[:i] + texts[i + 1 :]).score
        for i, text in enumerate(texts)
    ]
    return float(np.mean(scores))


def eos_rate(finished: Sequence[bool]) -> float:
    """Share of completions that ended by EOS / end of turn / a stop string (not cut at
    max_new_tokens); nan for none."""
    return float(np.mean(np.asarray(finished, dtype=float))) if len(finished) else math.nan


# ---- values with intervals ---------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A metric's value, its 95% interval (None where none is defined) and the number
    of items (prompts, pairs) it was computed from."""

    value: float
    ci: tuple[float, float] | None
    n: int

    def to_json(self) -> dict:
        def clean(x):
            return None if x is None or not math.isfinite(x) else float(x)

        ci = None if self.ci is None else [clean(self.ci[0]), clean(self.ci[1])]
        return {"value": clean(self.value), "ci": ci, "n": self.n}


def mean_estimate(values: Sequence[float], seed: int = 0) -> Estimate:
    """Mean with a percentile-bootstrap interval."""
    data = np.asarray(values, dtype=float)
    value = float(data.mean()) if len(data) else math.nan
    return Estimate(value, bootstrap_interval(data, seed=seed), len(data))


def ratio_estimate(
    numerators: Sequence[float], denominators: Sequence[float], seed: int = 0
) -> Estimate:
    """sum(numerators) / sum(denominators) (e.g. KL per token: total KL over total
    tokens), with a bootstrap interval that resamples (numerator, denominator) pairs."""
    rows = np.stack([np.asarray(numerators, float), np.asarray(denominators, float)], axis=1)

    def ratio(r):
        total = r[:, 1].sum()
        return r[:, 0].sum() / total if total else math.nan

    value = ratio(rows) if len(rows) else math.nan
    return Estimate(float(value), bootstrap_interval(rows, ratio, seed=seed), len(rows))


def rate_estimate(flags: Sequence[bool]) -> Estimate:
    """A binomial rate (share of True) with Wilson's interval."""
    k, n = int(np.sum(np.asarray(flags, dtype=bool))), len(flags)
    return Estimate(k / n if n else math.nan, wilson_interval(k, n), n)


def win_rate_estimate(preferences: Sequence[float], seed: int = 0) -> Estimate:
    """`win_rate` with a percentile-bootstrap interval over pairs."""
    p = _preferences(preferences)
    return Estimate(win_rate(p), bootstrap_interval(p, seed=seed), len(p))


def lc_win_rate_estimate(
    preferences: Sequence[float],
    length_differences: Sequence[float],
    seed: int = 0,
    resamples: int = 2000,
) -> Estimate:
    """`length_controlled_win_rate` with a percentile-bootstrap interval: (preference,
    length difference) pairs are resampled together and the whole fit, standardisation
    included, is redone on each resample."""
    p = _preferences(preferences)
    rows = np.stack([p, np.asarray(length_differences, dtype=float)], axis=1)
    if len(rows) == 0:
        return Estimate(math.nan, (math.nan, math.nan), 0)

    def statistic(r):
        return length_controlled_win_rate(r[:, 0], r[:, 1])

    interval = bootstrap_interval(rows, statistic, resamples=resamples, seed=seed)
    return Estimate(statistic(rows), interval, len(rows))

"""Which two of a prompt's S sampled responses to ask the labeller about.

Every rule has the signature `select(candidates: SelectionInput, generator) -> pairs`:
one `(i, j)` pair of response indices per prompt, `i != j`, and draws its randomness
only from `generator` (a CPU `torch.Generator`), so a seeded run picks the same pairs
again. Rules are looked up by name in `SELECTIONS` (the `selection=` key);
`REQUIRES[name]` names the inputs a rule reads.

- `passive`: (0, 1), the first two samples: plain online DPO (Guo et al. 2024).
- `random`: two distinct responses uniformly at random.
- `best_worst`: the labeller's best and worst of the S (needs all S scored: an upper
  bound that spends S queries per prompt; Xiong et al. 2024's iterative DPO).
- `sea_ee`, `sea_bai`: Thompson sampling from the epistemic reward model (SEA: Liu et
  al. 2024, "Sample-Efficient Alignment for LLMs", Sec. 4.2, Algorithm 1 and its E&E /
  BAI variants); `uncertainty`: the ensemble's most uncertain responses, an ablation.

Mixed preference learning (SEA Sec. 4.3) labels some chosen pairs with the ensemble
instead of the labeller: `ensemble_labels` and `choose_for_ensemble`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
Pairs = list[tuple[int, int]]


@dataclass(frozen=True)
class SelectionInput:
    """The candidates of one batch: `num_prompts` P prompts with `num_samples` S
    responses each. member_scores: (K, P, S) every ensemble member's reward of every
    response (the epistemic model's `scores` of the (P, S, D) features); labeller_scores:
    (P, S) the labeller's scores. Each is optional; a rule that needs one says so."""

    num_prompts: int
    num_samples: int
    member_scores: Tensor | None = None
    labeller_scores: Tensor | None = None

    def __post_init__(self):
        if self.num_samples < 2:
            raise ValueError(f"choosing a pair needs at least 2 samples, got {self.num_samples}")
        ps = (self.num_prompts, self.num_samples)
        if self.member_scores is not None and (
            self.member_scores.dim() != 3 or tuple(self.member_scores.shape[1:]) != ps
        ):
            raise ValueError(
                f"member_scores must be (K, P, S) = (K, {ps[0]}, {ps[1]}), got "
                f"{tuple(self.member_scores.shape)}"
            )
        if self.labeller_scores is not None and tuple(self.labeller_scores.shape) != ps:
            raise ValueError(
                f"labeller_scores must be (P, S) = {ps}, got {tuple(self.labeller_scores.shape)}"
            )

    def members(self, rule: str) -> Tensor:
        if self.member_scores is None:
            raise ValueError(f"selection={rule} needs member_scores from the epistemic model")
        if self.member_scores.shape[0] < 2:
            raise ValueError(f"selection={rule} needs an ensemble of at least 2 members")
        return self.member_scores.detach().float().cpu()


def _pairs(first: Tensor, second: Tensor) -> Pairs:
    return list(zip(first.tolist(), second.tolist(), strict=True))


def _argmax_excluding(scores: Tensor, excluded: Tensor) -> Tensor:
    """Row-wise argmax of scores (P, S) with column excluded[p] (P,) left out."""
    masked = scores.clone()
    masked[torch.arange(len(excluded)), excluded] = -torch.inf
    return masked.argmax(-1)


def select_passive(candidates: SelectionInput, generator: torch.Generator) -> Pairs:
    """(0, 1) for every prompt: the first two samples, no choice at all."""
    return [(0, 1)] * candidates.num_prompts


def select_random(candidates: SelectionInput, generator: torch.Generator) -> Pairs:
    """Two distinct responses, uniformly: i ~ U{0..S-1}, j ~ U{0..S-1} \\ {i}."""
    p, s = candidates.num_prompts, candidates.num_samples
    first = torch.randint(s, (p,), generator=generator)
    second = torch.randint(s - 1, (p,), generator=generator)
    second = second + (second >= first).long()  # skip over i: uniform on the others
    return _pairs(first, second)


def select_best_worst(candidates: SelectionInput, generator: torch.Generator) -> Pairs:
    """(argmax, argmin) of the labeller's scores; when all S tie, (0, 1) (the argmin is
    taken over the responses other than the argmax)."""
    if candidates.labeller_scores is None:
        raise ValueError("selection=best_worst needs labeller_scores (every response scored)")
    scores = candidates.labeller_scores.detach().float().cpu()
    best = scores.argmax(-1)
    worst = _argmax_excluding(-scores, best)
    return _pairs(best, worst)


def select_sea_ee(
    candidates: SelectionInput, generator: torch.Generator, *, max_tries: int | None = None
) -> Pairs:
    """SEA's explore-and-exploit Thompson sampling (Liu et al. 2024, Sec. 4.2, E&E-TS).

    Per prompt, the members are visited in a random order (one uniformly random
    permutation of the K members per prompt). The first member's argmax is response i.
    The next members' argmaxes are tried in turn, up to `max_tries` members in all
    (default K: every member), and the first that differs from i is j: two independent
    posterior samples each vote for what they believe is best. When every tried member
    agrees on i (the posterior is sure of the best response), j is the second-best
    response of the second member in the order.
    """
    scores = candidates.members("sea_ee")  # (K, P, S)
    k, p, _ = scores.shape
    tries = k if max_tries is None else max_tries
    if not 2 <= tries <= k:
        raise ValueError(f"max_tries must be between 2 and K = {k}, got {max_tries}")
    order = torch.rand(p, k, generator=generator).argsort(-1)  # (P, K) a permutation each
    best = scores.argmax(-1).T.gather(1, order)  # (P, K): argmaxes in visiting order
    first, later = best[:, 0], best[:, 1:tries]
    differs = later != first[:, None]
    found = differs.any(1)
    resampled = later.gather(1, differs.float().argmax(1, keepdim=True))[:, 0]
    second_member = scores[order[:, 1], torch.arange(p)]  # (P, S)
    second_best = _argmax_excluding(second_member, first)
    return _pairs(first, torch.where(found, resampled, second_best))


def select_sea_bai(candidates: SelectionInput, generator: torch.Generator) -> Pairs:
    """SEA's best-arm-identification Thompson sampling (Liu et al. 2024, Sec. 4.2, BAI-TS).

    i is the argmax of one uniformly sampled member; j is the response whose reward
    difference to i the members disagree on most: argmax_{s != i} Var_k[r_k(s) - r_k(i)]
    (population variance over the K members), the comparison with i that the next label
    is most informative about.
    """
    scores = candidates.members("sea_bai")  # (K, P, S)
    k, p, _ = scores.shape
    rows = torch.arange(p)
    member = torch.randint(k, (p,), generator=generator)
    first = scores[member, rows].argmax(-1)  # (P,)
    gaps = scores - scores[:, rows, first][..., None]  # (K, P, S): r_k(s) - r_k(i)
    return _pairs(first, _argmax_excluding(gaps.var(0, unbiased=False), first))


def select_uncertainty(candidates: SelectionInput, generator: torch.Generator) -> Pairs:
    """The two responses with the largest standard deviation over members (higher std
    first): pure uncertainty sampling, no exploitation; an ablation of SEA."""
    scores = candidates.members("uncertainty")
    top = scores.std(0, unbiased=False).topk(2, dim=-1).indices  # (P, 2)
    return _pairs(top[:, 0], top[:, 1])


SELECTIONS: dict[str, Callable[[SelectionInput, torch.Generator], Pairs]] = {
    "passive": select_passive,
    "random": select_random,
    "best_worst": select_best_worst,
    "sea_ee": select_sea_ee,
    "sea_bai": select_sea_bai,
    "uncertainty": select_uncertainty,
}

# What each rule reads from SelectionInput besides the sizes.
REQUIRES: dict[str, tuple[str, ...]] = {
    "passive": (),
    "random": (),
    "best_worst": ("labeller_scores",),
    "sea_ee": ("member_scores",),
    "sea_bai": ("member_scores",),
    "uncertainty": ("member_scores",),
}


# ---- mixed preference learning ----------------------------------------------------------


def ensemble_labels(
    member_scores: Tensor, pairs: Pairs, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The ensemble's own label for each prompt's chosen pair (SEA Sec. 4.3, mixed
    preference learning): one member k_p sampled uniformly per prompt (a posterior
    sample, as in Thompson sampling) gives the Bradley-Terry probability

        p_a = sigma(r_k(i) - r_k(j)),   margin = |r_k(i) - r_k(j)|

    member_scores: (K, P, S); pairs: P pairs (i, j). Returns p_a (P,), that a = i is
    preferred, and margins (P,), how sure that member is either way."""
    scores = member_scores.detach().float().cpu()
    k, p, _ = scores.shape
    if len(pairs) != p:
        raise ValueError(f"{len(pairs)} pairs for {p} prompts")
    index = torch.tensor(pairs, dtype=torch.long).reshape(p, 2)
    member = torch.randint(k, (p,), generator=generator)
    rows = torch.arange(p)
    gap = scores[member, rows, index[:, 0]] - scores[member, rows, index[:, 1]]
    return torch.sigmoid(gap), gap.abs()


def choose_for_ensemble(
    margins: Tensor, fraction: float, min_margin: float | None = None
) -> list[int]:
    """Indices (ascending) of the pairs the ensemble labels instead of the labeller: the
    floor(fraction * P) pairs with the largest margins (ties: the lower index), and with
    `min_margin`, only those whose margin exceeds it (so up to that many)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    margins = torch.as_tensor(margins).detach().float().cpu().reshape(-1)
    count = int(fraction * len(margins) + 1e-9)
    if count == 0:
        return []
    # a stable sort keeps equal margins in index order
    ranked = torch.sort(-margins, stable=True).indices[:count]
    if min_margin is not None:
        ranked = ranked[margins[ranked] > min_margin]
    return sorted(ranked.tolist())

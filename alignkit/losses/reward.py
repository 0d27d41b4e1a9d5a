"""Reward-model loss: Bradley-Terry on pairs, K-way rankings expanded to pairs.

Bradley-Terry (Ouyang et al. 2022, Eq. 1): a reward model r scores each response, and
P(chosen beats rejected) = sigma(r_c - r_r). The loss of one comparison is

    -[p * log sigma(d) + (1 - p) * log sigma(-d)],   d = r_c - r_r - margin

with `p = 1` for a hard label and `p = p_chosen` for a soft one (AI feedback), and an
optional per-record `margin` (Touvron et al. 2023, Llama 2, Eq. 2) that asks for a gap
at least that large. Reward centering (Eisenstein et al. 2023, "Helping or Herding?")
adds `center_coef * (r_c + r_r)^2`, which pins the reward's free additive constant
near zero so rewards from different models or seeds are comparable.

A record ranking K responses contributes all C(K, 2) ordered pairs, each weighted
1 / C(K, 2), so every prompt counts once however many responses it ranks (InstructGPT,
Ouyang et al. 2022, Sec. 3.5 and Eq. 1).
"""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: Tensor | float | None = None,
    p_chosen: Tensor | float | None = None,
    center_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-comparison Bradley-Terry loss.

    chosen_rewards, rejected_rewards: (B,) or (B, K) for K ensemble heads; margin and
    p_chosen: scalars or (B,) (broadcast over heads). Returns `(losses, metrics)` with
    `losses` shaped like the rewards and metrics `accuracy` (share of comparisons with
    r_c > r_r) and `margin` (mean r_c - r_r), both without the requested margin.
    """
    gap = chosen_rewards - rejected_rewards
    d = gap - _per_row(margin, gap) if margin is not None else gap
    if p_chosen is None:
        losses = -F.logsigmoid(d)
    else:
        p = _per_row(p_chosen, d)
        losses = -(p * F.logsigmoid(d) + (1 - p) * F.logsigmoid(-d))
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    metrics = {
        "accuracy": (gap > 0).float().mean().detach(),
        "margin": gap.detach().mean(),
    }
    return losses, metrics


def _per_row(value: Tensor | float, like: Tensor) -> Tensor:
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    while value.dim() < like.dim():
        value = value[..., None]
    return value


def ranking_pairs(ranking: list[int]) -> list[tuple[int, int, float]]:
    """All comparisons implied by a ranking (response indices, best first).

    Returns `(better, worse, weight)` for each of the C(K, 2) pairs, weight 1 / C(K, 2):
    [2, 0, 1] -> [(2, 0, 1/3), (2, 1, 1/3), (0, 1, 1/3)].
    """
    if len(ranking) < 2:
        raise ValueError(f"a ranking needs at least 2 responses, got {ranking!r}")
    pairs = list(combinations(ranking, 2))
    weight = 1.0 / len(pairs)
    return [(better, worse, weight) for better, worse in pairs]

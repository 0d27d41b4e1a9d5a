"""The preference losses `alignkit dpo` can run: one entry per loss, the only place they are listed.

Each entry says what the training step needs to call its loss function: how sequence
log-probs are reduced over tokens, whether the cached reference log-probs take part, which
config values and which per-pair batch tensors become keyword arguments, and which config
values the loss refuses. The config's `loss` choices and checks, `dpo_step` and `run_dpo`
all read this table, so adding a loss is its function in `alignkit.losses.preference` plus
one entry here.

This module imports no torch: `alignkit.config` reads it when the CLI starts, and
`alignkit --help` must stay fast. The loss function is looked up by name on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

LOSS_MODULE = "alignkit.losses.preference"
REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class PreferenceLoss:
    """One preference loss as `dpo_step` calls it.

    The function is called as `function(policy_chosen, policy_rejected, [ref_chosen,
    ref_rejected,] **kwargs)` with (B,) per-sequence log-probs, the reference pair only
    when `needs_reference`, and returns `(losses (B,), metrics)`.
    """

    name: str
    function: str  # attribute of `LOSS_MODULE`
    reduction: str  # "sum" | "mean": summed or per-token mean log-prob of each sequence
    needs_reference: bool
    hyperparameters: Mapping[str, str] = field(default_factory=dict)  # kwarg -> config field
    batch_inputs: Mapping[str, str] = field(default_factory=dict)  # kwarg -> batch key, (B,)
    # config -> error message (without the "loss=<name> " prefix), or None when valid
    check: Callable[[Any], str | None] | None = None

    def __post_init__(self):
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"{self.name}: reduction must be one of {REDUCTIONS}")

    def resolve(self) -> Callable:
        """The loss function (imports torch)."""
        return getattr(importlib.import_module(LOSS_MODULE), self.function)

    def kwargs(self, config: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the function: config values and the batch's per-pair tensors."""
        values = {kwarg: getattr(config, key) for kwarg, key in self.hyperparameters.items()}
        values.update({kwarg: batch[key] for kwarg, key in self.batch_inputs.items()})
        return values

    def error(self, config: Any) -> str | None:
        """Why `config` cannot run this loss, or None."""
        return self.check(config) if self.check is not None else None


def _robust_smoothing(config) -> str | None:
    # Chowdhury et al. 2024 divide by 1 - 2e: the unbiased loss exists only for e < 1/2
    if not 0 <= config.label_smoothing < 0.5:
        return f"needs 0 <= label_smoothing < 0.5, got {config.label_smoothing}"
    return None


def _cdpo_smoothing(config) -> str | None:
    # e = 0 is plain DPO, and e > 1/2 would mean the labels are more often wrong than right
    if not 0 < config.label_smoothing <= 0.5:
        return f"needs 0 < label_smoothing <= 0.5 (e.g. 0.1), got {config.label_smoothing}"
    return None


BETA = {"beta": "beta"}
# dpo and cdpo read each pair's soft label (1 - p_chosen, else config.label_smoothing),
# which `PairCollator` puts in the batch as a (B,) tensor
PER_PAIR_SMOOTHING = {"label_smoothing": "label_smoothing"}

# The order is the order the CLI lists the choices in. The DPO family's equations are over
# whole-sequence log-probs, so sums. SimPO and ORPO define their rewards and likelihoods
# length-normalised (Meng et al. 2024, Eq. 4; Hong et al. 2024), so per-token means; IPO
# also uses means: with sums its fixed target margin 1/(2 beta) is compared with a log-ratio
# that grows with the response length.
PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    entry.name: entry
    for entry in (
        PreferenceLoss(
            name="dpo",
            function="dpo_loss",
            reduction="sum",
            needs_reference=True,
            hyperparameters=BETA,
            batch_inputs=PER_PAIR_SMOOTHING,
        ),
        PreferenceLoss(
            name="cdpo",
            function="dpo_loss",
            reduction="sum",
            needs_reference=True,
            hyperparameters=BETA,
            batch_inputs=PER_PAIR_SMOOTHING,
            check=_cdpo_smoothing,
        ),
        PreferenceLoss(
            name="ipo",
            function="ipo_loss",
            reduction="mean",
            needs_reference=True,
            hyperparameters=BETA,
        ),
        PreferenceLoss(
            name="hinge",
            function="hinge_loss",
            reduction="sum",
            needs_reference=True,
            hyperparameters=BETA,
        ),
        PreferenceLoss(
            name="robust",
            function="robust_dpo_loss",
            reduction="sum",
            needs_reference=True,
            # one noise rate for the whole data set: the loss is unbiased for that rate
            hyperparameters={"beta": "beta", "label_smoothing": "label_smoothing"},
            check=_robust_smoothing,
        ),
        PreferenceLoss(
            name="simpo",
            function="simpo_loss",
            reduction="mean",
            needs_reference=False,
            hyperparameters={"beta": "beta", "gamma": "simpo_gamma"},
        ),
        PreferenceLoss(
            name="orpo",
            function="orpo_loss",
            reduction="mean",
            needs_reference=False,
            hyperparameters=BETA,
        ),
    )
}

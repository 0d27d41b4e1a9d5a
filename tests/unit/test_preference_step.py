"""`dpo_step` and `kto_step` on hand-made batches: which reduction each loss gets, how the
reference table is read, and KTO's KL estimate, against values worked out by hand.

A stand-in for `CausalLMLogps` returns fixed per-token log-probs, so each sequence's sum and
mean are known. The DPO batch is two pairs (chosen_0, rejected_0, chosen_1, rejected_1):

    sequence     target log-probs        sum  count  mean | reference sum  count  mean
    chosen_0     -0.5, -1.5               -2      2    -1 |           -3      2  -1.5
    rejected_0   -1, -1, -2, -2           -6      4  -1.5 |           -4      4    -1
    chosen_1     -3                       -3      1    -3 |           -2      1    -2
    rejected_1   -1, -2, -3               -6      3    -2 |           -6      3    -2

so h = (chosen - ref_chosen) - (rejected - ref_rejected) is, per pair,
    sums:  h_0 = 1 - (-2) = 3,      h_1 = -1 - 0 = -1
    means: h_0 = 0.5 - (-0.5) = 1,  h_1 = -1 - 0 = -1.
The pairs are rows 2 and 0 of a 3-row reference table (row 1 is junk nobody may read).
`logps/chosen` (the batch mean of the policy's chosen values) shows the reduction directly:
sums (-2 + -3) / 2 = -2.5, means (-1 + -3) / 2 = -2.

Values used, NLS(x) = -log sigma(x) = log(1 + exp(-x)), and NLS(-x) = x + NLS(x):
NLS(1.5) = 0.2014133, NLS(-1.5) = 1.7014133, NLS(0.5) = 0.4740770, NLS(-0.5) = 0.9740770,
NLS(2.5) = 0.0788897, NLS(-2.5) = 2.5788897; sigma(1) = 0.7310586, sigma(3) = 0.9525741.
"""

import dataclasses
import math

import pytest
import torch
from torch.testing import assert_close

from alignkit.config import ConfigError, DPOConfig, KTOConfig, load_config
from alignkit.losses.registry import PREFERENCE_LOSSES
from alignkit.methods.dpo import PairCollator, dpo_step
from alignkit.methods.kto import kto_step
from alignkit.ops.logprobs import IGNORE_INDEX, sequence_logps

PAD = -50.0  # a token log-prob at a non-target position: it must never count


class FixedLogps(torch.nn.Module):
    """Stands in for `CausalLMLogps`: forward(input_ids (S, T), labels (S, T)) returns the
    given per-position log-probs (S, T-1), zeroed where labels[:, 1:] is IGNORE_INDEX, and
    that mask."""

    def __init__(self, token_logps: torch.Tensor):
        super().__init__()
        self.token_logps = token_logps

    def forward(self, input_ids, labels, **_ignored):
        mask = labels[:, 1:] != IGNORE_INDEX
        return self.token_logps * mask, mask


def fixed_batch(sequences: list[list[float]], requires_grad: bool = False):
    """A padded batch whose sequence i has the target log-probs `sequences[i]`.

    Returns (module, batch): batch holds input_ids and labels (S, T), T = longest + 1
    (position t predicts label t+1, so label 0 is never a target)."""
    width = max(len(s) for s in sequences)
    token_logps = torch.full((len(sequences), width), PAD)
    labels = torch.full((len(sequences), width + 1), IGNORE_INDEX)
    for i, values in enumerate(sequences):
        token_logps[i, : len(values)] = torch.tensor(values)
        labels[i, 1 : len(values) + 1] = 1
    token_logps.requires_grad_(requires_grad)
    batch = {"input_ids": torch.zeros_like(labels), "labels": labels}
    return FixedLogps(token_logps), batch


def pair_batch(label_smoothing=(0.0, 0.0)):
    """The module docstring's two pairs, with per-pair soft labels `label_smoothing`."""
    module, batch = fixed_batch(
        [[-0.5, -1.5], [-1.0, -1.0, -2.0, -2.0], [-3.0], [-1.0, -2.0, -3.0]]
    )
    batch["pair_index"] = torch.tensor([2, 0])
    batch["label_smoothing"] = torch.tensor(label_smoothing)
    return module, batch


# (pairs, 2, 2): [chosen, rejected] x [summed log-prob, target count]
REFERENCE = torch.tensor(
    [
        [[-2.0, 1.0], [-6.0, 3.0]],  # pair 1
        [[99.0, 1.0], [-99.0, 5.0]],  # not in the batch
        [[-3.0, 2.0], [-4.0, 4.0]],  # pair 0
    ]
)


def run(loss, pair_smoothing=(0.0, 0.0), **config):
    """dpo_step on the two pairs, with per-pair soft labels `pair_smoothing` and a DPOConfig."""
    module, batch = pair_batch(pair_smoothing)
    step_config = DPOConfig(loss=loss, **config)
    reference = REFERENCE if PREFERENCE_LOSSES[loss].needs_reference else None
    return dpo_step(module, batch, config=step_config, reference=reference)


def close(actual, expected):
    assert_close(actual, torch.tensor(expected), atol=1e-6, rtol=1e-6)


def test_dpo_sums_with_per_pair_soft_labels():
    """beta 0.5, sums: beta h = 1.5 and -0.5. Pair 0, e = 0: NLS(1.5) = 0.2014133. Pair 1,
    e = 0.2 (p_chosen 0.8): 0.8 NLS(-0.5) + 0.2 NLS(0.5) = 0.7792616 + 0.0948154 = 0.8740770.
    Summed over the batch: 1.0754903. (Means would give beta h = 0.5: 1.3481540.)"""
    loss, metrics = run("dpo", pair_smoothing=(0.0, 0.2), beta=0.5)
    close(loss, 1.0754903)
    close(metrics["logps/chosen"], -2.5)
    # implicit rewards beta (policy - ref) of the chosen: 0.5 * (1 + -1) / 2 = 0
    close(metrics["rewards/chosen"], 0.0)
    close(metrics["rewards/margins"], (1.5 - 0.5) / 2)  # beta h averaged


def test_cdpo_reads_each_pairs_label_not_the_config():
    """beta 0.5, sums, per-pair e = 0.2 and 0.5 (config label_smoothing 0.1 is not used):
    pair 0: 0.8 NLS(1.5) + 0.2 NLS(-1.5) = 0.1611306 + 0.3402827 = 0.5014133;
    pair 1: 0.5 NLS(-0.5) + 0.5 NLS(0.5) = 0.4870385 + 0.2370385 = 0.7240770. Sum 1.2254903."""
    loss, metrics = run("cdpo", pair_smoothing=(0.2, 0.5), beta=0.5, label_smoothing=0.1)
    close(loss, 1.2254903)
    close(metrics["logps/chosen"], -2.5)


def test_ipo_means_policy_and_reference():
    """beta 0.5, target 1/(2 beta) = 1. Means (the reference's too: sum / count): h = 1 and
    -1: (1 - 1)^2 + (-1 - 1)^2 = 4. (Sums would give (3 - 1)^2 + 4 = 8; policy means against
    reference sums h = 2 - 2.5 = -0.5 and -1 - 4 = -5, so 2.25 + 36 = 38.25.)"""
    loss, metrics = run("ipo", beta=0.5)
    close(loss, 4.0)
    close(metrics["logps/chosen"], -2.0)
    # chosen rewards beta (mean - ref mean): 0.5 * (0.5 + -1) / 2 = -0.125
    close(metrics["rewards/chosen"], -0.125)


def test_hinge_sums():
    """beta 0.5, sums: max(0, 1 - 1.5) + max(0, 1 + 0.5) = 0 + 1.5 = 1.5.
    (Means: max(0, 1 - 0.5) + 1.5 = 2.)"""
    loss, metrics = run("hinge", beta=0.5)
    close(loss, 1.5)
    close(metrics["logps/chosen"], -2.5)


def test_robust_uses_the_configs_noise_rate_not_the_pairs():
    """beta 0.5, sums, e = 0.2 from the config (the batch's 0.3 and 0.4 are not used):
    [(1-e) NLS(beta h) - e NLS(-beta h)] / (1 - 2e);
    pair 0: (0.8 * 0.2014133 - 0.2 * 1.7014133) / 0.6 = -0.1791521 / 0.6 = -0.2985867;
    pair 1: (0.8 * 0.9740770 - 0.2 * 0.4740770) / 0.6 = 0.6844462 / 0.6 = 1.1407437.
    Sum 0.8421570."""
    loss, metrics = run("robust", pair_smoothing=(0.3, 0.4), beta=0.5, label_smoothing=0.2)
    close(loss, 0.8421570)
    close(metrics["logps/chosen"], -2.5)


def test_simpo_means_without_reference():
    """beta 2, gamma 0.5, policy means only: pair 0: 2(-1) - 2(-1.5) - 0.5 = 0.5 -> NLS(0.5)
    = 0.4740770; pair 1: 2(-3) - 2(-2) - 0.5 = -2.5 -> NLS(-2.5) = 2.5788897. Sum 3.0529667.
    (Sums: margins 7.5 and 5.5, loss 0.0046314.) reference=None: it is never read."""
    loss, metrics = run("simpo", beta=2.0, simpo_gamma=0.5)
    close(loss, 3.0529667)
    close(metrics["logps/chosen"], -2.0)
    close(metrics["rewards/chosen"], 2.0 * -2.0)  # beta * mean chosen log-prob


def test_orpo_means_without_reference():
    """One pair: chosen has two targets of log 0.5, rejected one of log 0.25. Means: P = 0.5
    and 0.25, odds 1 and 1/3, log odds ratio log 3, NLS(log 3) = -log(3/4) = 0.2876821; NLL
    -log 0.5 = 0.6931472; beta 0.1: 0.6931472 + 0.0287682 = 0.7219154. (Sums: both log 0.25,
    log odds ratio 0, loss log 4 + 0.1 log 2 = 1.4556091.)"""
    half, quarter = math.log(0.5), math.log(0.25)
    module, batch = fixed_batch([[half, half], [quarter]])
    batch["pair_index"] = torch.tensor([0])
    batch["label_smoothing"] = torch.tensor([0.0])
    loss, metrics = dpo_step(module, batch, config=DPOConfig(loss="orpo", beta=0.1), reference=None)
    close(loss, 0.7219154)
    close(metrics["log_odds_ratio"], math.log(3))


def test_every_loss_gets_its_registry_reduction():
    """`logps/chosen` is -2.5 under sums and -2 under means, whatever the loss."""
    expected = {"sum": -2.5, "mean": -2.0}
    for name, entry in PREFERENCE_LOSSES.items():
        smoothing = 0.1 if entry.check is not None else 0.0  # valid for cdpo and robust
        _, metrics = run(name, pair_smoothing=(0.1, 0.1), label_smoothing=smoothing)
        close(metrics["logps/chosen"], expected[entry.reduction])


def test_reference_table_is_reduced_like_the_policy():
    """The same function reduces the cached [sum, count] table: means -3/2 = -1.5, -4/4 = -1,
    and 0 (not NaN) for a sequence with no targets; sums are the sums."""
    sums, counts = torch.tensor([-3.0, -4.0, 0.0]), torch.tensor([2.0, 4.0, 0.0])
    close(sequence_logps(sums, counts, "mean"), [-1.5, -1.0, 0.0])
    close(sequence_logps(sums, counts, "sum"), [-3.0, -4.0, 0.0])
    table = REFERENCE[[2, 0]]  # (B, 2, 2) as dpo_step indexes it
    close(sequence_logps(table[..., 0], table[..., 1], "mean"), [[-1.5, -1.0], [-2.0, -2.0]])
    with pytest.raises(ValueError, match="'sum' or 'mean'"):
        sequence_logps(sums, counts, "max")


def kto_batch(requires_grad=False):
    """Two examples: matched sequences first, then the mismatched ones (for the KL term).

        sequence       targets          sum count | ref sum count | sum diff  mean diff
        matched_0      -1, -2            -3     2 |      -4     2 |        1        0.5
        matched_1      -2                -2     1 |      -1     1 |       -1         -1
        mismatched_0   -3, -3            -6     2 |      -7     2 |        1        0.5
        mismatched_1   -1, -1, -1        -3     3 |      -3     3 |        0          0

    Example 0 is desirable, example 1 not. They are reference rows 1 and 0."""
    module, batch = fixed_batch(
        [[-1.0, -2.0], [-2.0], [-3.0, -3.0], [-1.0, -1.0, -1.0]], requires_grad
    )
    batch["example_index"] = torch.tensor([1, 0])
    batch["desirable"] = torch.tensor([True, False])
    # (examples, 2, 2): [matched, mismatched] x [summed log-prob, target count]
    reference = torch.tensor([[[-1.0, 1.0], [-3.0, 3.0]], [[-4.0, 2.0], [-7.0, 2.0]]])
    return module, batch, reference


def test_kto_step_kl_estimate_and_loss():
    """Sums. z0 = mean of the mismatched diffs (1 + 0) / 2 = 0.5. beta 2, lambda_U 1.5:
    desirable r = 1: 1 - sigma(2 (1 - 0.5)) = 1 - sigma(1) = 0.2689414;
    undesirable r = -1: 1.5 (1 - sigma(2 (0.5 + 1))) = 1.5 (1 - sigma(3)) = 0.0711388.
    Sum 0.3400802. (Means: z0 0.25, 0.3775407 + 0.1137873 = 0.4913280.)"""
    module, batch, reference = kto_batch()
    config = KTOConfig(beta=2.0, undesirable_weight=1.5)
    loss, metrics = kto_step(module, batch, config=config, reference=reference)
    close(loss, 0.3400802)
    close(metrics["kl"], 0.5)
    close(metrics["rewards/chosen"], 2.0)  # beta r of the desirable example
    close(metrics["rewards/rejected"], -2.0)


def test_kto_step_kl_is_a_reference_point_not_a_gradient_path():
    """The mismatched sequences only set z0, which the loss detaches: their token log-probs
    get no gradient; the matched ones do (d/d logp of 1 - sigma(2 (r - z0)) at r - z0 = 0.5
    is -2 sigma(1) sigma(-1) = -0.3932239 for each target of the desirable example)."""
    module, batch, reference = kto_batch(requires_grad=True)
    loss, _ = kto_step(module, batch, config=KTOConfig(beta=2.0), reference=reference)
    loss.backward()
    grad = module.token_logps.grad
    assert grad[2:].abs().sum() == 0
    close(grad[0, :2], [-0.3932239, -0.3932239])
    assert grad[0, 2] == 0  # padding


def test_kto_step_clamps_a_negative_kl_estimate():
    """Mismatched policy below its reference: diffs -1 and -2, z0 = -1.5 -> 0. Desirable r = 1,
    beta 1: 1 - sigma(1) = 0.2689414; undesirable r = -1: 1 - sigma(1) = 0.2689414."""
    module, batch = fixed_batch([[-1.0, -2.0], [-2.0], [-7.5, -0.5], [-2.0, -1.0, -2.0]])
    batch["example_index"] = torch.tensor([1, 0])
    batch["desirable"] = torch.tensor([True, False])
    _, _, reference = kto_batch()
    loss, metrics = kto_step(module, batch, config=KTOConfig(beta=1.0), reference=reference)
    close(metrics["kl"], 0.0)
    close(loss, 2 * 0.2689414)


def test_config_choices_are_the_registry():
    field = {f.name: f for f in dataclasses.fields(DPOConfig)}["loss"]
    assert field.metadata["choices"] == tuple(PREFERENCE_LOSSES)
    assert DPOConfig().loss in PREFERENCE_LOSSES


def test_unknown_loss_is_rejected_with_the_choices():
    listed = "loss must be one of dpo, cdpo, ipo, hinge, robust, simpo, orpo, got 'dpoo'"
    with pytest.raises(ConfigError, match=listed):
        load_config(DPOConfig, None, ["loss=dpoo"])
    with pytest.raises(ConfigError, match=listed):  # the Python API too
        DPOConfig(loss="dpoo")


@pytest.mark.parametrize(
    ("loss", "smoothing", "message"),
    [
        ("robust", 0.5, r"loss=robust needs 0 <= label_smoothing < 0.5, got 0.5"),
        ("robust", -0.1, r"loss=robust needs 0 <= label_smoothing < 0.5"),
        ("cdpo", 0.0, r"loss=cdpo needs 0 < label_smoothing <= 0.5"),
        ("cdpo", 0.6, r"loss=cdpo needs 0 < label_smoothing <= 0.5"),
    ],
)
def test_registry_checks_reject_bad_config_values(loss, smoothing, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DPOConfig, None, [f"loss={loss}", f"label_smoothing={smoothing}"])


@pytest.mark.parametrize(("loss", "smoothing"), [("robust", 0.0), ("cdpo", 0.5), ("dpo", 0.7)])
def test_registry_checks_accept_their_ranges(loss, smoothing):
    assert DPOConfig(loss=loss, label_smoothing=smoothing).label_smoothing == smoothing


def test_every_entry_names_a_loss_function_config_fields_and_batch_keys():
    import alignkit.losses.preference as preference

    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    collated = PairCollator(lambda sequences: {})(
        [{"chosen": {}, "rejected": {}, "index": 0, "label_smoothing": 0.0}]
    )
    for name, entry in PREFERENCE_LOSSES.items():
        assert entry.name == name
        assert entry.resolve() is getattr(preference, entry.function)
        assert set(entry.hyperparameters.values()) <= fields, name
        assert set(entry.batch_inputs.values()) <= set(collated), name


def test_sequence_stats_then_sequence_logps_equal_naive_log_softmax():
    """On a tiny real model: the summed and per-token mean log-probs of each sequence's
    targets equal log_softmax of its full logits, gathered, masked and summed (or averaged)."""
    from alignkit.models.tiny import tiny_model
    from alignkit.ops.logprobs import CausalLMLogps, sequence_stats

    model = tiny_model(0)
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(3, 500, (2, 7), generator=generator)
    labels = input_ids.clone()
    labels[0, :4] = IGNORE_INDEX  # a prompt of 4 tokens
    labels[1, 5:] = IGNORE_INDEX  # right padding
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[
            :, :-1
        ]  # before CausalLMLogps switches attention
        sums, counts = sequence_stats(
            CausalLMLogps(model), {"input_ids": input_ids, "labels": labels}
        )
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    token = torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp(min=0)[..., None])[
        ..., 0
    ]
    expected = (token * mask).sum(-1)
    assert counts.tolist() == [3.0, 4.0]
    assert_close(sequence_logps(sums, counts, "sum"), expected, atol=1e-5, rtol=1e-5)
    assert_close(
        sequence_logps(sums, counts, "mean"), expected / mask.sum(-1), atol=1e-5, rtol=1e-5
    )


def test_online_step_adds_the_squared_log_ratio_penalty_on_both_responses():
    """Online DPO's step = dpo_step + kl_coef * sum over the pair's two responses of
    (1/2) (log pi - log pi_ref)^2, summed log-probs. Log-ratios (sums minus reference
    sums): chosen_0 -2 - -3 = 1, rejected_0 -6 - -4 = -2, chosen_1 -3 - -2 = -1,
    rejected_1 -6 - -6 = 0; penalties (1 + 4) / 2 = 2.5 and (1 + 0) / 2 = 0.5. beta 0.5,
    hard labels: NLS(1.5) + NLS(-0.5) = 0.2014133 + 0.9740770 = 1.1754903; with
    kl_coef 0.2: + 0.2 * 3 = 1.7754903. The penalty's gradient on each token's log-prob
    is kl_coef times its sequence's log-ratio: 0.2, -0.4, -0.2, 0."""
    from alignkit.config import OnlineDPOConfig
    from alignkit.methods.online_dpo import online_pair_step

    grads = {}
    for coef in (0.0, 0.2):
        module, batch = pair_batch()
        module.token_logps.requires_grad_(True)
        config = OnlineDPOConfig(task="sentiment-chat", beta=0.5, kl_coef=coef)
        loss, metrics = online_pair_step(module, batch, config=config, reference=REFERENCE)
        loss.backward()
        grads[coef] = module.token_logps.grad
        close(loss, 1.1754903 if coef == 0 else 1.7754903)
    close(metrics["kl_penalty"], (2.5 + 0.5) / 2)
    extra = grads[0.2] - grads[0.0]
    for row, (length, value) in enumerate([(2, 0.2), (4, -0.4), (1, -0.2), (3, 0.0)]):
        close(extra[row, :length], [value] * length)
        close(extra[row, length:], [0.0] * (extra.shape[1] - length))
    with pytest.raises(ConfigError, match="kl_coef"):
        OnlineDPOConfig(task="sentiment-chat", kl_coef=-0.1)

"""The `mean` read-out of reward models on hand-made hidden states."""

import torch

from alignkit.models.reward import mean_over_responses


def test_mean_over_right_padded_rows():
    """Two rows of width 4, H = 2. Row 0 has 3 real tokens (the last two are the
    response), row 1 has 4 (the last three are the response); the pad of row 0 is
    unmasked and must not leak into either mean."""
    hidden = torch.tensor(
        [
            [[1.0, 0.0], [2.0, 4.0], [4.0, 8.0], [100.0, 100.0]],  # row 0, pad last
            [[7.0, 7.0], [1.0, 1.0], [2.0, 3.0], [6.0, 5.0]],
        ]
    ).reshape(8, 2)
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool).reshape(-1)
    score_index = torch.tensor([2, 7])  # last real token of each row
    means = mean_over_responses(hidden, score_index, mask)
    # row 0: ([2, 4] + [4, 8]) / 2 = [3, 6]; row 1: ([1, 1] + [2, 3] + [6, 5]) / 3 = [3, 3]
    torch.testing.assert_close(means, torch.tensor([[3.0, 6.0], [3.0, 3.0]]))


def test_mean_over_packed_sequences_and_fallback_to_the_last_token():
    """One packed row: sequences of 3, 4 and 2 tokens (cu_seqlens 0, 3, 7, 9). The third
    has no response token: its read-out is its last token's state."""
    hidden = torch.tensor([[float(t), float(-t)] for t in range(9)])
    mask = torch.tensor([0, 1, 1, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    score_index = torch.tensor([2, 6, 8])
    means = mean_over_responses(hidden, score_index, mask)
    # seq 0: positions 1, 2 -> 1.5; seq 1: position 6 -> 6; seq 2: last token (8)
    torch.testing.assert_close(means, torch.tensor([[1.5, -1.5], [6.0, -6.0], [8.0, -8.0]]))


def test_mean_keeps_the_states_dtype():
    """bf16 states (GPU autocast) come back as bf16 means for the bf16 head."""
    value = 1.0 + 2.0**-7  # representable in bf16
    hidden = torch.full((512, 1), value, dtype=torch.bfloat16)
    means = mean_over_responses(hidden, torch.tensor([511]), torch.ones(512, dtype=torch.bool))
    assert means.dtype == torch.bfloat16
    assert means.item() == value

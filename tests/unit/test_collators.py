"""Collators against literal expected tensors."""

import torch
from torch.testing import assert_close

from alignkit.data.collators import PackingCollator, PaddingCollator, split_packed

X = -100
EOS = PAD = 2  # SmolLM2: <|im_end|> is both EOS and pad
EXAMPLES = [
    {"input_ids": [5, 6, 7, EOS], "labels": [X, X, 7, EOS]},
    {"input_ids": [8, EOS], "labels": [X, EOS]},
    {"input_ids": [9, 10, EOS], "labels": [X, 10, EOS]},
]


def test_right_padding_keeps_eos_labels_even_though_pad_equals_eos():
    batch = PaddingCollator(PAD)(EXAMPLES)
    assert batch["input_ids"].tolist() == [[5, 6, 7, EOS], [8, EOS, PAD, PAD], [9, 10, EOS, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[X, X, 7, EOS], [X, EOS, X, X], [X, 10, EOS, X]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 0], [0, 1, 2, 0]]


def test_left_padding_for_generation():
    batch = PaddingCollator(PAD, padding_side="left")(
        [{"input_ids": [5, 6, 7]}, {"input_ids": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [PAD, PAD, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert "labels" not in batch


def test_pad_to_multiple_of():
    batch = PaddingCollator(PAD, pad_to_multiple_of=8)(EXAMPLES)
    assert batch["input_ids"].shape == (3, 8)
    assert batch["labels"][0].tolist() == [X, X, 7, EOS, X, X, X, X]


def test_packing_concatenates_restarts_positions_and_marks_boundaries():
    batch = PackingCollator()(EXAMPLES)
    assert batch["input_ids"].tolist() == [[5, 6, 7, EOS, 8, EOS, 9, 10, EOS]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[X, X, 7, EOS, X, EOS, X, 10, EOS]]
    assert batch["cu_seqlens"].tolist() == [0, 4, 6, 9]
    assert batch["cu_seqlens"].dtype == torch.int32
    assert "attention_mask" not in batch


def test_packing_ignores_a_first_token_that_was_a_target():
    batch = PackingCollator()(
        [{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7, 8], "labels": [7, 8]}]
    )
    assert batch["labels"].tolist() == [[X, 6, X, 8]]


def test_split_packed_recovers_sequences():
    batch = PackingCollator()(EXAMPLES)
    pieces = split_packed(batch["input_ids"], batch["cu_seqlens"])
    assert [p.tolist() for p in pieces] == [e["input_ids"] for e in EXAMPLES]


def test_packed_forward_equals_padded_forward():
    """Position ids that restart per sequence isolate sequences inside the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    packed = PackingCollator()(EXAMPLES)
    padded = PaddingCollator(PAD)(EXAMPLES)
    with torch.no_grad():
        packed_logits = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits
        padded_logits = model(
            input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]
        ).logits
    for row, piece in enumerate(split_packed(packed_logits, packed["cu_seqlens"])):
        assert_close(piece, padded_logits[row, : len(piece)], atol=1e-5, rtol=1e-5)


def test_shared_prefix_layout_worked_by_hand():
    """Group 1: prompt [5, 6] (unlabelled) then responses [7, 8] and [9]; group 2: a
    single sequence. Columns: 0-1 prompt, 2-3 rest_0, 4 rest_1, 5-7 group 2."""
    from alignkit.data.collators import SharedPrefixCollator

    ignore = -100
    chosen = {"input_ids": [5, 6, 7, 8], "labels": [ignore, ignore, 7, 8]}
    rejected = {"input_ids": [5, 6, 9], "labels": [ignore, ignore, 9]}
    alone = {"input_ids": [1, 2, 3], "labels": [ignore, 2, 3]}
    batch = SharedPrefixCollator()([[chosen, rejected], [alone]])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 1, 2, 3]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1, 2]]
    assert batch["segments"] == [0, 5, 8]
    assert batch["layout"] == [(0, 2, 4, 5)]  # rest_1 (column 4) attends to columns 0-1
    # chosen: 7 predicted at column 1 (the prompt's end), 8 at column 2; rejected: 9 at
    # column 1 as well; alone: 2 at column 5, 3 at column 6 (its first token: no target)
    assert batch["target_index"].tolist() == [1, 2, 1, 5, 6]
    assert batch["target_ids"].tolist() == [7, 8, 9, 2, 3]
    assert batch["target_sequence"].tolist() == [0, 0, 1, 2, 2]
    assert batch["num_sequences"] == 3


def test_shared_prefix_stops_at_a_difference_or_a_label_and_leaves_each_its_own_token():
    from alignkit.data.collators import shared_prefix_length

    ignore = -100
    a = {"input_ids": [1, 2, 3, 4], "labels": [ignore, ignore, ignore, 4]}
    assert shared_prefix_length([a, {"input_ids": [1, 2, 9], "labels": [ignore] * 3}]) == 2
    labelled = {"input_ids": [1, 2, 3, 4], "labels": [ignore, 2, 3, 4]}
    assert shared_prefix_length([a, labelled]) == 1  # token 2 is trained on in `labelled`
    same = {"input_ids": [1, 2], "labels": [ignore, ignore]}
    assert shared_prefix_length([same, dict(same)]) == 1

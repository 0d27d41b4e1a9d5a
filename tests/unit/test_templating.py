"""Chat templating and loss masks against literal token ids (real SmolLM2 tokenizer).

Token ids used below (SmolLM2 vocabulary):
  1 <|im_start|>   2 <|im_end|> (EOS and pad)   198 "\\n"
  9690 system   4093 user   520 9531 "ass" "istant"
  6077 5453 30 "Be brief."   26843 "Hi"   19556 17 "Hello!"   3087 85 "Bye"   3087 85 17 "Bye!"
  6044 2025 30 "Go away."
"""

import copy

import pytest

from alignkit.data import IGNORE_INDEX, ChatEncoder
from alignkit.errors import TemplateError

X = IGNORE_INDEX
SYSTEM = [1, 9690, 198, 6077, 5453, 30, 2, 198]  # <|im_start|>system\nBe brief.<|im_end|>\n
USER_HI = [1, 4093, 198, 26843, 2, 198]  # <|im_start|>user\nHi<|im_end|>\n
USER_BYE = [1, 4093, 198, 3087, 85, 2, 198]
ASSISTANT = [1, 520, 9531, 198]  # <|im_start|>assistant\n
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye!"},
]


def test_multi_turn_only_assistant_turns_are_trained_eos_included(tokenizer):
    encoded = ChatEncoder(tokenizer).encode_sft({"messages": CONVERSATION})
    expected_ids = (
        SYSTEM
        + USER_HI
        + ASSISTANT
        + [19556, 17, 2, 198]
        + USER_BYE
        + ASSISTANT
        + [3087, 85, 17, 2]
    )
    expected_labels = (
        [X] * len(SYSTEM + USER_HI + ASSISTANT)
        + [19556, 17, 2, X]
        + [X] * len(USER_BYE + ASSISTANT)
        + [3087, 85, 17, 2]
    )
    assert encoded.input_ids == expected_ids  # trailing "\n" after the last <|im_end|> trimmed
    assert encoded.labels == expected_labels


def test_default_system_prompt_is_context_not_target(tokenizer):
    encoded = ChatEncoder(tokenizer).encode_sft(
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "completion": [{"role": "assistant", "content": "Hello!"}],
        }
    )
    # SmolLM2's template inserts its own system message when there is none.
    assert tokenizer.decode(encoded.input_ids[:20]).startswith(
        "<|im_start|>system\nYou are a helpful AI assistant"
    )
    assert encoded.input_ids[-13:] == USER_HI + ASSISTANT + [19556, 17, 2]
    targets = [label for label in encoded.labels if label != X]
    assert targets == [19556, 17, 2]
    assert encoded.labels[: len(encoded.labels) - 3] == [X] * (len(encoded.labels) - 3)


def test_pair_shares_prompt_tokens_exactly(tokenizer):
    pair = ChatEncoder(tokenizer).encode_pair(
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        }
    )
    assert pair.chosen.prompt_ids == pair.rejected.prompt_ids == SYSTEM + USER_HI + ASSISTANT
    assert (pair.chosen.completion_ids, pair.chosen.completion_labels) == (
        [19556, 17, 2],
        [19556, 17, 2],
    )
    assert (pair.rejected.completion_ids, pair.rejected.completion_labels) == (
        [6044, 2025, 30, 2],
        [6044, 2025, 30, 2],
    )
    sequence = pair.chosen.sequence()
    assert sequence.input_ids == SYSTEM + USER_HI + ASSISTANT + [19556, 17, 2]
    assert sequence.labels == [X] * 18 + [19556, 17, 2]


def test_standard_text_records_get_no_template_and_end_with_eos(tokenizer):
    # "The movie was" -> 504 7704 436; " great" -> 1109
    encoded = ChatEncoder(tokenizer).encode_sft({"prompt": "The movie was", "completion": " great"})
    assert encoded.input_ids == [504, 7704, 436, 1109, 2]
    assert encoded.labels == [X, X, X, 1109, 2]


def test_prompt_is_cut_from_the_left_and_completion_from_the_right(tokenizer):
    encoder = ChatEncoder(tokenizer, max_length=8, max_prompt_length=5)
    record = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Go away."}],
        "rejected": [{"role": "assistant", "content": "Hello!"}],
    }
    pair = encoder.encode_pair(record)
    prompt = SYSTEM + USER_HI + ASSISTANT
    assert pair.prompt_ids == prompt[-5:] == [198, 1, 520, 9531, 198]
    assert pair.chosen.completion_ids == [6044, 2025, 30]  # 3 of 4 tokens fit; EOS cut
    assert pair.rejected.completion_ids == [19556, 17, 2]
    assert (
        encoder.report.encoded,
        encoder.report.prompt_truncated,
        encoder.report.completion_truncated,
    ) == (1, 1, 1)


def test_sft_conversation_truncated_from_the_right(tokenizer):
    encoder = ChatEncoder(tokenizer, max_length=20)
    encoded = encoder.encode_sft({"messages": CONVERSATION})
    assert encoded.input_ids == (SYSTEM + USER_HI + ASSISTANT + [19556, 17, 2, 198])[:20]
    assert encoded.labels == [X] * 18 + [19556, 17]
    assert encoder.report.completion_truncated == 1


def test_records_that_cannot_fit_are_dropped_and_counted(tokenizer):
    encoder = ChatEncoder(tokenizer, max_length=18)
    record = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "No"}],
    }
    assert encoder.encode_pair(record) is None  # the 18-token prompt leaves no room
    assert encoder.encode_sft({"messages": CONVERSATION}) is None  # first target is token 19
    assert encoder.report.dropped == 2 and encoder.report.encoded == 0
    assert "2 dropped" in encoder.report.summary()


def test_max_prompt_length_must_leave_room(tokenizer):
    with pytest.raises(ValueError, match="must be smaller than max_length"):
        ChatEncoder(tokenizer, max_length=8, max_prompt_length=8)


def test_template_that_is_not_prefix_consistent_raises(tokenizer):
    broken = copy.deepcopy(tokenizer)
    # Renders the generation prompt differently from a finished assistant turn.
    broken.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    encoder = ChatEncoder(broken)
    with pytest.raises(TemplateError, match="loss masks would be misaligned"):
        encoder.encode_sft({"messages": CONVERSATION[1:3]})
    with pytest.raises(TemplateError, match="as a prefix of the whole conversation"):
        encoder.encode_completion(
            [{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "Hello!"}]
        )

"""Per-token implicit reward against a hand computation from the two models' logits."""

import json
import re

import pytest
import torch

from alignkit.evaluate.token_reward import colour, token_pieces, token_rewards
from alignkit.models.tiny import tiny_model
from alignkit.report import token_maps_page


@pytest.fixture(scope="module")
def models(tokenizer):
    return (
        tiny_model(seed=0, tokenizer=tokenizer).eval(),
        tiny_model(seed=1, tokenizer=tokenizer).eval(),
    )


def test_token_rewards_equal_beta_times_the_log_ratio_of_full_logits(tokenizer, models):
    """For prompt x and response y (tokenized as the chat template renders them, the
    end-of-turn token included), r_t = beta * (log softmax(pi logits)[y_t] - log
    softmax(ref logits)[y_t]) at the position before y_t, from one plain forward of
    each model over x + y. Two pairs batched together (different lengths, so padding
    is exercised) must equal the unbatched hand computation."""
    policy, reference = models
    prompts = [[{"role": "user", "content": "Say something nice"}], "The film was"]
    responses = ["You are great.", " a delight from start to end"]
    maps = token_rewards(policy, reference, tokenizer, prompts, responses, beta=0.5)
    for prompt, response, got in zip(prompts, responses, maps, strict=True):
        if isinstance(prompt, list):
            prompt_text = tokenizer.apply_chat_template(
                prompt, tokenize=False, add_generation_prompt=True
            )
            prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            end = tokenizer.convert_tokens_to_ids("<|im_end|>")
            response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [end]
        else:
            prompt_ids = tokenizer(prompt)["input_ids"]
            response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
            response_ids += [tokenizer.eos_token_id]
        full = torch.tensor([prompt_ids + response_ids])
        positions = torch.arange(len(prompt_ids) - 1, full.shape[1] - 1)
        target = torch.tensor(response_ids)
        with torch.no_grad():
            by_hand = [
                torch.log_softmax(m(input_ids=full).logits[0, positions].double(), -1).gather(
                    -1, target[:, None]
                )[:, 0]
                for m in (policy, reference)
            ]
        expected = 0.5 * (by_hand[0] - by_hand[1])
        assert got.token_ids == response_ids
        torch.testing.assert_close(
            torch.tensor(got.values, dtype=torch.float64), expected, atol=1e-4, rtol=1e-4
        )
        assert abs(expected).max() > 0.05  # the models differ: not 0 == 0
        assert got.total == pytest.approx(float(expected.sum()), abs=1e-3)
        assert "".join(got.tokens) == tokenizer.decode(response_ids, skip_special_tokens=False)
    assert maps[0].tokens[-1] == "<|im_end|>"
    exported = json.loads(json.dumps(maps[0].to_json()))
    assert exported["tokens"] == maps[0].tokens and exported["beta"] == 0.5


def test_the_policy_against_itself_has_zero_reward_everywhere(tokenizer, models):
    policy, _ = models
    (m,) = token_rewards(policy, policy, tokenizer, ["Hi"], [" there"], beta=1.0)
    assert m.values == pytest.approx([0.0] * len(m.values), abs=1e-6)


def test_html_escapes_text_and_colours_on_a_diverging_scale(tokenizer, models):
    """A response that is itself HTML is shown, never interpreted; 0 is white, the
    largest positive value full blue and the most negative full red."""
    policy, reference = models
    maps = token_rewards(
        policy, reference, tokenizer, ['<b>"quote"</b>'], ["<script>alert(1)</script>"]
    )
    page = token_maps_page([m.to_json() for m in maps])
    assert "<script" not in page and "<b>" not in page
    body = page[page.index("<body>") :]
    text = re.sub(r"<[^>]+>", "", body)  # what a browser shows, still escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&#34;quote&#34;" in text and "&lt;b&gt;" in text
    assert colour(0.0, 2.0) == "rgb(255, 255, 255)"
    assert colour(2.0, 2.0) == "rgb(33, 102, 172)"
    assert colour(-5.0, 2.0) == "rgb(178, 24, 43)"  # saturates beyond the scale
    # halfway to blue: (255 + 33) / 2 = 144, (255 + 102) / 2 = 178.5 and (255 + 172) / 2 =
    # 213.5, rounded half to even
    assert colour(1.0, 2.0) == "rgb(144, 178, 214)"
    assert colour(1.0, 0.0) == "rgb(255, 255, 255)"  # an all-zero map stays white


def test_token_pieces_join_to_the_text_and_never_split_a_character(tokenizer):
    """Byte-level BPE splits '漢' over three tokens (decoded alone, each is U+FFFD); the
    character appears on the token that completes it (the earlier two show ''), so no
    piece holds a replacement character and the pieces join to the decoded text."""
    ids = tokenizer("漢字 ok", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids[:1]) == "\ufffd"  # the tokenizer does split it
    assert token_pieces(tokenizer, ids) == ["", "", "漢", "字", " ok"]

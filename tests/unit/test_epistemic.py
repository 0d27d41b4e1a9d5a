"""The epistemic reward model: vectorised members, learning a known preference, an
uncertainty that is lower where the labels were, exact resume, and feature extraction."""

import io

import pytest
import torch
from torch.testing import assert_close

from alignkit.feedback.epistemic import (
    EpistemicRewardModel,
    features,
    risk_averse,
    sequence_features,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors here are tiny: with several threads on a busy 2-core machine the thread
    hand-offs cost 10x the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_members_are_independent_mlps_evaluated_together():
    """The stacked forward equals each member's own MLP, written out member by member."""
    model = EpistemicRewardModel(5, members=3, hidden=4, seed=1)
    x = torch.randn(7, 5)
    net = model.network
    for k in range(3):
        h = torch.relu(x @ net.w1[k] + net.b1[k])
        h = torch.relu(h @ net.w2[k] + net.b2[k])
        assert_close(model.scores(x)[k], h @ net.w3[k] + net.b3[k])
    # leading dimensions are kept: (P, S, D) -> (K, P, S)
    assert_close(model.scores(x.reshape(1, 7, 5))[:, 0], model.scores(x))
    mean, std = model.mean_std(x)
    assert_close(mean, model.scores(x).mean(0))
    assert_close(std, model.scores(x).std(0, unbiased=False))
    # the anchors are the initial parameters, one row per member
    assert model.anchors.shape == (3, 5 * 4 + 4 + 4 * 4 + 4 + 4 + 1)
    assert_close(model.anchors, net.flat().detach())
    # different seeds draw different priors; the same seed the same
    assert not torch.equal(EpistemicRewardModel(5, 3, 4, seed=2).anchors, model.anchors)
    assert torch.equal(EpistemicRewardModel(5, 3, 4, seed=1).anchors, model.anchors)


def _linear_task(seed=1):
    """Features in R^8; the true reward is linear in the first 4 coordinates. "Seen"
    features live in those 4 coordinates, "unseen" ones only in the other 4."""
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([1.0, -1.0, 0.5, 2.0, 0.0, 0.0, 0.0, 0.0])

    def seen(n):
        return torch.cat([torch.randn(n, 4, generator=g), torch.zeros(n, 4)], dim=1)

    def unseen(n):
        return torch.cat([torch.zeros(n, 4), torch.randn(n, 4, generator=g)], dim=1)

    def labels(a, b):  # sampled from the Bradley-Terry model of the true reward
        return (torch.rand(len(a), generator=g) < torch.sigmoid((a - b) @ w)).float()

    return w, seen, unseen, labels


def test_learns_a_bradley_terry_preference_and_is_less_sure_off_the_data():
    """256 pairs labelled by sampling sigma(r(a) - r(b)) with r linear, fed in 4 rounds.
    The ensemble mean ranks held-out seen pairs like the true reward (>= 85%); its spread
    on seen features falls well below that on unseen ones, where at initialisation the
    two were alike."""
    w, seen, unseen, labels = _linear_task()
    model = EpistemicRewardModel(8, members=8, hidden=32, learning_rate=1e-2, seed=0)
    probe_seen, probe_unseen = seen(200), unseen(200)
    std_seen_0 = model.mean_std(probe_seen)[1].mean()
    std_unseen_0 = model.mean_std(probe_unseen)[1].mean()
    for _ in range(4):
        a, b = seen(64), seen(64)
        metrics = model.update(a, b, labels(a, b), steps=50)
    assert metrics["pairs"] == 256 and metrics["accuracy"] > 0.85
    a, b = seen(500), seen(500)
    agree = (model.mean_std(a)[0] > model.mean_std(b)[0]) == ((a - b) @ w > 0)
    assert agree.float().mean() >= 0.85
    std_seen = model.mean_std(probe_seen)[1].mean()
    std_unseen = model.mean_std(probe_unseen)[1].mean()
    assert std_seen_0 / std_unseen_0 > 0.9  # alike before any label
    assert std_seen / std_unseen < 0.7  # after: clearly lower where the labels were
    # the spread that matters for choosing pairs, that of reward differences, even more so
    s, u = model.scores(probe_seen), model.scores(probe_unseen)
    spread_seen = (s[:, :100] - s[:, 100:]).std(0).mean()
    spread_unseen = (u[:, :100] - u[:, 100:]).std(0).mean()
    assert spread_seen < 0.4 * spread_unseen


def test_state_dict_resumes_exactly(tmp_path):
    """Train, save (torch.save; loads with weights_only=True), restore into a model built
    with another seed, train both on: identical weights, buffer and generator state."""
    _, seen, _, labels = _linear_task(seed=3)
    batches = []
    for _ in range(2):
        a, b = seen(40), seen(40)
        batches.append((a, b, labels(a, b)))
    kwargs = dict(members=4, hidden=8, learning_rate=1e-2, batch_size=16)
    original = EpistemicRewardModel(8, seed=0, **kwargs)
    original.update(*batches[0], steps=5)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = EpistemicRewardModel(8, seed=9, **kwargs)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    first = original.update(*batches[1], steps=5)
    second = restored.update(*batches[1], steps=5)
    assert first == second
    for key, value in original.network.state_dict().items():
        assert torch.equal(value, restored.network.state_dict()[key]), key
    assert torch.equal(original.anchors, restored.anchors)
    assert torch.equal(original.buffer_p, restored.buffer_p) and restored.seen == 80
    assert torch.equal(original.generator.get_state(), restored.generator.get_state())
    with pytest.raises(ValueError, match="ensemble"):
        EpistemicRewardModel(8, members=5, hidden=8).load_state_dict(original.state_dict())


def test_replay_buffer_keeps_the_newest_pairs_and_counts_all():
    model = EpistemicRewardModel(2, members=2, hidden=2, buffer_size=3)
    x = torch.arange(10.0).reshape(5, 2)
    model.update(x, x + 1, torch.ones(5), steps=1)
    assert_close(model.buffer_a, x[2:])
    assert model.seen == 5  # the anchor's n_data: every pair ever labelled
    metrics = model.update(x[:0], x[:0], torch.ones(0), steps=1)
    assert metrics["pairs"] == 5
    with pytest.raises(ValueError, match="as many pairs"):
        model.update(x, x, torch.ones(4))


def test_risk_averse_is_mean_minus_k_std():
    """Members [1, 3] and [2, 2]: means 2 and 2, stds 1 and 0; k = 0.5: [1.5, 2]."""
    scores = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    assert_close(risk_averse(scores, 0.5), torch.tensor([1.5, 2.0]))
    assert_close(risk_averse(scores, 0.0), torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError):
        risk_averse(scores, -1.0)
    model = EpistemicRewardModel(3, members=4, hidden=5)
    x = torch.randn(6, 3)
    mean, std = model.mean_std(x)
    assert_close(model.conservative_scores(x, 2.0), mean - 2 * std)


def test_features_are_the_last_hidden_state_at_the_last_token(tokenizer):
    """Batched, right-padded extraction equals one unpadded forward per sequence
    (`output_hidden_states`, last layer, last position), for a causal LM and for a
    sequence-classification reward model; `features` renders prompt + response as
    training does (chat template for chat prompts), read at the reply's end-of-turn token."""
    from transformers import LlamaForSequenceClassification

    from alignkit.data.templating import ChatEncoder
    from alignkit.models.tiny import tiny_config, tiny_model

    prompts = ["Say hi", [{"role": "user", "content": "Tell me a story"}], "Hm"]
    responses = ["hi there", "once upon a time there was a cat", "yes"]
    torch.manual_seed(0)
    for model in (
        tiny_model(seed=0, tokenizer=tokenizer),
        LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=2)),
    ):
        model.eval()
        got = features(model, tokenizer, prompts, responses, batch_size=2)
        assert got.shape == (3, 64) and got.dtype == torch.float32
        encoder = ChatEncoder(tokenizer)
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            if isinstance(prompt, list):
                response = [{"role": "assistant", "content": response}]
            ids = encoder.encode_sft({"prompt": prompt, "completion": response}).input_ids
            assert ids[-1] in encoder.stop_token_ids  # the reply's end-of-turn token
            with torch.no_grad():
                out = model(torch.tensor([ids]), output_hidden_states=True)
            assert_close(got[i], out.hidden_states[-1][0, -1], atol=1e-5, rtol=1e-5)
    assert sequence_features(model, [], pad_id=0).shape == (0, 64)


def test_mean_features_average_the_response_states_only(tokenizer):
    """pooling="mean": batched, right-padded extraction equals, per sequence, the mean of
    one unpadded forward's last-layer states from the first response token to the end
    (the prompt's states and the pads left out); `features` finds where the response
    starts from the training encoding's labels. Bad pooling or starts are refused."""
    from alignkit.data.templating import ChatEncoder
    from alignkit.models.tiny import tiny_model

    model = tiny_model(seed=0, tokenizer=tokenizer).eval()
    sequences = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]
    starts = [3, 1, 2]
    got = sequence_features(model, sequences, pad_id=0, batch_size=2, pooling="mean", starts=starts)
    for row, (ids, start) in enumerate(zip(sequences, starts, strict=True)):
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        assert_close(got[row], hidden[start:].mean(0), atol=1e-5, rtol=1e-5)

    prompts, responses = ["Say hi", "Hm"], ["hi there", "once upon a time"]
    got = features(model, tokenizer, prompts, responses, pooling="mean")
    encoder = ChatEncoder(tokenizer)
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        encoded = encoder.encode_sft({"prompt": prompt, "completion": response})
        start = next(t for t, label in enumerate(encoded.labels) if label != -100)
        with torch.no_grad():
            hidden = model(
                torch.tensor([encoded.input_ids]), output_hidden_states=True
            ).hidden_states[-1][0]
        assert start > 0 and encoded.labels[start - 1] == -100
        assert_close(got[row], hidden[start:].mean(0), atol=1e-5, rtol=1e-5)

    with pytest.raises(ValueError, match="pooling must be one of"):
        sequence_features(model, sequences, pad_id=0, pooling="max")
    with pytest.raises(ValueError, match="needs starts"):
        sequence_features(model, sequences, pad_id=0, pooling="mean")
    with pytest.raises(ValueError, match="inside its sequence"):
        sequence_features(model, sequences, pad_id=0, pooling="mean", starts=[5, 0, 0])


def test_config_offers_exactly_the_poolings_the_features_implement():
    """`ensemble.pooling`'s choices (config cannot import torch-side modules) and
    `sequence_features`' POOLINGS stay one list."""
    import dataclasses

    from alignkit.config import EnsembleSettings
    from alignkit.feedback.epistemic import POOLINGS

    field = next(f for f in dataclasses.fields(EnsembleSettings) if f.name == "pooling")
    assert set(field.metadata["choices"]) == set(POOLINGS)
    assert EnsembleSettings().pooling in POOLINGS

"""An epistemic reward model: an anchored ensemble of small MLP heads on frozen features.

SEA (Liu et al. 2024, "Sample-Efficient Alignment for LLMs", Sec. 4.1; the `oat`
framework) explores with a posterior over reward functions, not a point estimate. Here the
posterior is an ensemble of K MLPs `r_k: R^D -> R` on features that stay frozen (the
starting policy's or a reward model's last hidden states over a response, averaged or read
at its last token; see `sequence_features`), each trained with the Bradley-Terry loss on
the preferences queried so far plus an anchor to its own random initialisation
(`alignkit.losses.ensemble`; Pearce et al. 2020). Where labels pin the reward down the members agree; elsewhere they keep the
spread of their prior draws, so their disagreement measures what the labels have not yet
told us. Pair selection (`alignkit.feedback.selection`) reads the member scores.

    model = EpistemicRewardModel(feature_dim=576, members=10)
    model.update(features_a, features_b, p_a)        # after each batch of labels
    member_scores = model.scores(candidate_features)  # (K, ...) for Thompson sampling
    mean, std = model.mean_std(candidate_features)

The K members are one set of stacked weights evaluated with batched matrix products (one
kernel per layer for all members), never a Python loop over members.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from alignkit.losses.ensemble import anchored_bt_loss

Tensor = torch.Tensor


class EnsembleMLP(nn.Module):
    """K independent MLPs `D -> hidden -> hidden -> 1` (ReLU), weights stacked by member.

    forward(x (N, D)) -> (K, N). Member k's weights are `w1[k]` (D, H), `b1[k]` (H,),
    `w2[k]` (H, H), `b2[k]` (H,), `w3[k]` (H,), `b3[k]` (). Every parameter is drawn from
    the prior N(0, 1 / fan_in) (biases too, so members also differ in their offsets):
    that draw is the member's anchor.
    """

    def __init__(self, feature_dim: int, members: int, hidden: int, generator: torch.Generator):
        super().__init__()
        k, d, h = members, feature_dim, hidden

        def draw(*shape, fan_in):
            return nn.Parameter(torch.randn(*shape, generator=generator) / fan_in**0.5)

        self.w1, self.b1 = draw(k, d, h, fan_in=d), draw(k, h, fan_in=d)
        self.w2, self.b2 = draw(k, h, h, fan_in=h), draw(k, h, fan_in=h)
        self.w3, self.b3 = draw(k, h, fan_in=h), draw(k, fan_in=h)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(torch.einsum("nd,kdh->knh", x, self.w1) + self.b1[:, None])
        h = torch.relu(torch.baddbmm(self.b2[:, None], h, self.w2))
        return torch.einsum("knh,kh->kn", h, self.w3) + self.b3[:, None]

    def flat(self) -> Tensor:
        """(K, P): each member's parameters as one row (differentiable)."""
        k = self.w1.shape[0]
        return torch.cat([p.reshape(k, -1) for p in self.parameters()], dim=1)


class EpistemicRewardModel:
    """An anchored ensemble of `members` MLP reward heads on frozen features (D,).

    Training (`update`) keeps a replay buffer of every labelled pair so far (the last
    `buffer_size` if set) and, per call, takes `steps` Adam steps on `anchored_bt_loss`,
    each on a minibatch of `batch_size` pairs drawn without replacement from the buffer
    (the whole buffer while it is smaller). The anchor's `n_data` is the number of pairs
    ever labelled, so the prior's pull weakens as labels accumulate. All randomness (the
    prior draw, minibatches) comes from generators seeded by `seed`, and `state_dict`
    holds weights, anchors, optimizer, buffer and generator state: a model restored with
    `load_state_dict` continues exactly as the original would.

    Features should be roughly unit-scale per coordinate (a transformer's final-norm
    hidden state is): the prior's N(0, 1/fan_in) weights then give member outputs of
    order 1 and a spread that the first labels can move.
    """

    def __init__(
        self,
        feature_dim: int,
        members: int = 10,
        hidden: int = 128,
        anchor_weight: float = 1.0,
        learning_rate: float = 1e-3,
        seed: int = 0,
        *,
        batch_size: int = 128,
        buffer_size: int | None = None,
        device: str | torch.device = "cpu",
    ):
        if members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {members}")
        if feature_dim < 1 or hidden < 1 or batch_size < 1:
            raise ValueError("feature_dim, hidden and batch_size must be positive")
        if buffer_size is not None and buffer_size < 1:
            raise ValueError(f"buffer_size must be positive or None, got {buffer_size}")
        self.feature_dim, self.members, self.hidden = feature_dim, members, hidden
        self.anchor_weight, self.learning_rate, self.seed = anchor_weight, learning_rate, seed
        self.batch_size, self.buffer_size = batch_size, buffer_size
        self.device = torch.device(device)
        init = torch.Generator().manual_seed(seed)
        self.network = EnsembleMLP(feature_dim, members, hidden, init).to(self.device)
        self.anchors = self.network.flat().detach().clone()  # (K, P): each member's prior draw
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=learning_rate)
        # minibatch draws; seeded apart from the prior draw
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + 1)
        self.buffer_a = torch.empty(0, feature_dim, device=self.device)
        self.buffer_b = torch.empty(0, feature_dim, device=self.device)
        self.buffer_p = torch.empty(0, device=self.device)
        self.seen = 0  # pairs ever labelled (the anchor's n_data)

    # ---- scoring ------------------------------------------------------------------

    @torch.no_grad()
    def scores(self, features: Tensor) -> Tensor:
        """Every member's reward: features (N, D), or (..., D) -> (K, N), or (K, ...)."""
        return self._forward(features)

    def mean_std(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation (over members, population form) of the rewards of
        features (N, D) -> ((N,), (N,))."""
        member_scores = self.scores(features)
        return member_scores.mean(0), member_scores.std(0, unbiased=False)

    def conservative_scores(self, features: Tensor, risk_aversion: float) -> Tensor:
        """`mean - risk_aversion * std` over members (see `risk_averse`): (N, D) -> (N,)."""
        return risk_averse(self.scores(features), risk_aversion)

    def _forward(self, features: Tensor) -> Tensor:
        if features.shape[-1] != self.feature_dim:
            raise ValueError(
                f"features have dimension {features.shape[-1]}, the model {self.feature_dim}"
            )
        lead = features.shape[:-1]
        flat = features.reshape(-1, self.feature_dim).to(self.device, torch.float32)
        return self.network(flat).reshape(self.members, *lead)

    # ---- training -----------------------------------------------------------------

    def update(
        self, features_a: Tensor, features_b: Tensor, p_a: Tensor, steps: int = 20
    ) -> dict[str, float]:
        """Add M labelled pairs (features_a, features_b: (M, D); p_a: (M,) probability
        that a is preferred) to the buffer and take `steps` Adam steps over the buffer.

        Returns the last step's metrics: `loss` (sum over members), `loss/bt`,
        `loss/anchor`, `accuracy`, `margin` (see `anchored_bt_loss`), and `pairs` (labelled
        so far). M may be 0 (just train on the buffer)."""
        fa = features_a.reshape(-1, self.feature_dim).to(self.device, torch.float32)
        fb = features_b.reshape(-1, self.feature_dim).to(self.device, torch.float32)
        p = torch.as_tensor(p_a, dtype=torch.float32).reshape(-1).to(self.device)
        if not len(fa) == len(fb) == len(p):
            raise ValueError(
                f"update needs as many pairs in features_a ({len(fa)}), features_b "
                f"({len(fb)}) and p_a ({len(p)})"
            )
        self.buffer_a = torch.cat([self.buffer_a, fa])
        self.buffer_b = torch.cat([self.buffer_b, fb])
        self.buffer_p = torch.cat([self.buffer_p, p])
        if self.buffer_size is not None:
            self.buffer_a = self.buffer_a[-self.buffer_size :]
            self.buffer_b = self.buffer_b[-self.buffer_size :]
            self.buffer_p = self.buffer_p[-self.buffer_size :]
        self.seen += len(p)
        metrics: dict[str, float] = {"pairs": float(self.seen)}
        size = len(self.buffer_p)
        if size == 0:
            return metrics
        for _ in range(steps):
            if size > self.batch_size:
                index = torch.randperm(size, generator=self.generator)[: self.batch_size]
                index = index.to(self.device)
                a, b, labels = self.buffer_a[index], self.buffer_b[index], self.buffer_p[index]
            else:
                a, b, labels = self.buffer_a, self.buffer_b, self.buffer_p
            rewards = self._forward(torch.cat([a, b]))  # (K, 2m): one pass for both sides
            loss, step_metrics = anchored_bt_loss(
                rewards[:, : len(a)],
                rewards[:, len(a) :],
                labels,
                self.network.flat(),
                self.anchors,
                self.anchor_weight,
                self.seen,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        metrics.update({"loss": loss.item(), **{k: v.item() for k, v in step_metrics.items()}})
        return metrics

    # ---- exact resume -------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything `load_state_dict` needs to continue exactly: weights, anchors,
        optimizer, replay buffer, labelled-pair count and the minibatch generator. Holds
        only tensors, numbers and strings (loads with `torch.load(weights_only=True)`)."""
        return {
            "shape": {
                "feature_dim": self.feature_dim,
                "members": self.members,
                "hidden": self.hidden,
            },
            "network": {k: v.detach().clone() for k, v in self.network.state_dict().items()},
            "anchors": self.anchors.clone(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "buffer_a": self.buffer_a.clone(),
            "buffer_b": self.buffer_b.clone(),
            "buffer_p": self.buffer_p.clone(),
            "seen": self.seen,
        }

    def load_state_dict(self, state: dict) -> None:
        shape = {"feature_dim": self.feature_dim, "members": self.members, "hidden": self.hidden}
        if dict(state["shape"]) != shape:
            raise ValueError(f"state is for an ensemble {dict(state['shape'])}, this one {shape}")
        self.network.load_state_dict(state["network"])
        self.anchors = state["anchors"].to(self.device).clone()
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.buffer_a = state["buffer_a"].to(self.device).clone()
        self.buffer_b = state["buffer_b"].to(self.device).clone()
        self.buffer_p = state["buffer_p"].to(self.device).clone()
        self.seen = int(state["seen"])


def risk_averse(member_scores: Tensor, risk_aversion: float, dim: int = 0) -> Tensor:
    """`mean - risk_aversion * std` over ensemble members (population std along `dim`).

    Inverse Reward Design (Hadfield-Menell et al. 2017, Sec. 5, risk-averse planning)
    optimises a reward that is low wherever plausible reward functions disagree, so a
    policy is not drawn to states the training data said nothing about. k = 0 is the
    plain ensemble mean."""
    if risk_aversion < 0:
        raise ValueError(f"risk_aversion must be >= 0, got {risk_aversion}")
    mean = member_scores.mean(dim)
    if risk_aversion == 0:
        return mean
    return mean - risk_aversion * member_scores.std(dim, unbiased=False)


# ---- features -------------------------------------------------------------------------


POOLINGS = ("mean", "last")  # how a response's hidden states become one feature vector


@torch.no_grad()
def sequence_features(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 16,
    pooling: str = "last",
    starts: Sequence[int] | None = None,
) -> Tensor:
    """Frozen features of token sequences from the last hidden state (after the final
    norm): (N, D) float32 on the model's device, in the order given.

    `pooling="last"`: the state at each sequence's last token (SEA's read-out of a reward
    model). `pooling="mean"`: the mean of the states from position `starts[i]` (the first
    response token) to the end. Sentiment, style and the like are spread over a reply, and
    a truncated reply's last state mostly describes its last few words: on 1000 pairs of
    the sentiment task's start replies, an ensemble on mean features ranked held-out pairs
    0.71-0.74 right after 16-128 labels, on last-token features 0.49-0.60.

    `model`: a causal LM or a `*ForSequenceClassification` reward model (PEFT-wrapped or
    not); only its backbone runs (no LM head: no (B, T, V) logits). Sequences are sorted
    by length and right-padded; under causal attention no real token sees the pads, so
    no attention mask is needed and each row reads exactly its unpadded values.
    """
    from alignkit.data.collators import PaddingCollator
    from alignkit.ops.modules import unwrap

    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if pooling == "mean":
        if starts is None or len(starts) != len(sequences):
            raise ValueError(
                "pooling='mean' needs starts: the first response position per sequence"
            )
        if any(not 0 <= s < len(seq) for s, seq in zip(starts, sequences, strict=True)):
            raise ValueError("each start must be a position inside its sequence")
    backbone = unwrap(model).base_model
    device = next(model.parameters()).device
    collate = PaddingCollator(pad_id)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([{"input_ids": list(sequences[i])} for i in chunk])
            ids = batch["input_ids"].to(device)
            lengths = batch["attention_mask"].sum(-1).to(device)
            hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state.float()
            if pooling == "last":
                picked = hidden[torch.arange(len(chunk), device=device), lengths - 1]
            else:
                first = torch.tensor([starts[i] for i in chunk], device=device)
                position = torch.arange(ids.shape[1], device=device)
                inside = (position >= first[:, None]) & (position < lengths[:, None])  # (B, T)
                weights = inside.float() / (lengths - first)[:, None].float()
                picked = torch.einsum("bt,btd->bd", weights, hidden)
            if out is None:
                out = torch.empty(len(sequences), picked.shape[-1], device=device)
            out[torch.tensor(chunk, device=device)] = picked
    finally:
        model.train(was_training)
    if out is None:
        return torch.empty(0, unwrap(model).config.hidden_size, device=device)
    return out


def features(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    responses: Sequence[str | list[dict]],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    pooling: str = "last",
) -> Tensor:
    """Frozen features of responses: (N, D), from the last hidden states of
    `prompt + response` rendered as training renders it (chat template for chat prompts),
    ending at the response's end-of-turn/EOS token, where a sampled reply stops (template
    text after it is dropped), from a causal LM or reward model: the state at that token
    (`pooling="last"`) or the mean over the response's tokens (`"mean"`).
    See `sequence_features`; callers that already hold token ids (rollouts) call that."""
    from alignkit.data.templating import ChatEncoder, pad_token_id

    encoder = ChatEncoder(tokenizer, max_length=max_length)
    sequences, starts = [], []
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        if isinstance(prompt, list) and isinstance(response, str):
            response = [{"role": "assistant", "content": response}]
        encoded = encoder.encode_sft({"prompt": prompt, "completion": response})
        if encoded is None:
            raise ValueError(f"response {i} does not fit in max_length={max_length} tokens")
        sequences.append(encoded.input_ids)
        starts.append(next(t for t, label in enumerate(encoded.labels) if label != -100))
    return sequence_features(
        model,
        sequences,
        pad_id=pad_token_id(tokenizer),
        batch_size=batch_size,
        pooling=pooling,
        starts=starts,
    )

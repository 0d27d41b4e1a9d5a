"""Batched sampling with a KV cache, for RL rollouts and `alignkit generate`.

The model runs in a decoder (`alignkit.rollout.decoder`): prompts are prefilled once,
then each step feeds only the newly sampled tokens through the KV cache. Pads never
reach a real token (masked, and position ids count real tokens only), so a prompt gets
the same continuation distribution whatever it is batched with.

Seeded sampling gives every row its own random stream (a generator per row, seeded from
`row_seeds` or from `settings.seed` and the row number) and draws by the Gumbel-max trick
(argmax of log-probs plus Gumbel noise: an exact sample). A completion is then a function
of its prompt and its seed alone, not of the rows it is batched with, so a rollout split
over processes or micro-batches samples the same tokens (up to float rounding).

Returned log-probs are those of the distribution the token was drawn from before top-k /
top-p truncation: log softmax(logits / temperature) (plain log softmax when greedy), the
"old" log-probs PPO's ratio needs when the policy is evaluated at the same temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.collators import PaddingCollator
from alignkit.ops import threads
from alignkit.rollout.decoder import open_decoder


@dataclass
class SamplingSettings:
    """max_new_tokens: completion length cap. temperature: 0 = greedy, > 0 samples.
    top_p / top_k: nucleus / top-k filtering (1.0 / 0 = off). stop_strings: end a
    completion once its text contains one (the token completing it is kept). seed: makes
    sampling repeatable (private generators, one per row; the global RNG is untouched)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        self.stop_strings = tuple(self.stop_strings)


@dataclass
class Rollout:
    """B sampled completions.

    prompt_ids, prompt_mask: (B, P), left-padded. completion_ids: (B, C), right-padded
    with the pad id after each completion's end. completion_mask: (B, C), 1 on sampled
    tokens up to and including the EOS / stop token. logprobs: (B, C), 0 on pads.
    finished: (B,) True where the completion ended by EOS or a stop string rather than
    by reaching max_new_tokens.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    finished: torch.Tensor

    def completion_lists(self) -> list[list[int]]:
        return [
            ids[mask.bool()].tolist()
            for ids, mask in zip(self.completion_ids, self.completion_mask, strict=True)
        ]

    def texts(self, tokenizer) -> list[str]:
        """Completion texts without special tokens (EOS, end-of-turn)."""
        return [tokenizer.decode(ids, skip_special_tokens=True) for ids in self.completion_lists()]


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k and outside the nucleus (smallest set of tokens whose
    probability reaches top_p, the most likely token always kept) to -inf. (B, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token
        remove[:, 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


@torch.no_grad()
def sample(
    model,
    prompts: list[list[int]],
    settings: SamplingSettings,
    *,
    eos_ids: set[int] | int,
    pad_id: int,
    tokenizer=None,
    row_seeds: list[int] | None = None,
) -> Rollout:
    """Sample one completion per prompt (token-id lists). `tokenizer` is needed only
    for `stop_strings`. `row_seeds` (one per prompt) override `settings.seed`, whose row
    i otherwise gets seed `row_seed(settings.seed, i)`.

    A row whose completion ends leaves the decoder's batch, so the remaining steps cost
    only what the unfinished rows need."""
    if settings.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer")
    device = next(model.parameters()).device
    rows = len(prompts)
    if row_seeds is None and settings.seed is not None:
        row_seeds = [row_seed(settings.seed, i) for i in range(rows)]
    generators = None
    if row_seeds is not None:
        if len(row_seeds) != rows:
            raise ValueError(f"{len(row_seeds)} row_seeds for {rows} prompts")
        generators = [torch.Generator(device=device).manual_seed(s) for s in row_seeds]
    eos = torch.tensor(sorted({eos_ids} if isinstance(eos_ids, int) else set(eos_ids)))
    eos = eos.to(device)
    steps = settings.max_new_tokens
    tokens = torch.full((rows, steps), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros(rows, steps, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    live = torch.arange(rows, device=device)  # the prompt row of each decoder row
    texts = [""] * rows
    was_training = model.training
    model.eval()
    try:
        decoder = open_decoder(model, max_new_tokens=steps, pad_id=pad_id)
        logits = decoder.prefill(prompts)
        for step in range(steps):
            threads.tick()
            token, logp = _draw(logits, settings, generators)
            tokens[live, step] = token
            logps[live, step] = logp
            lengths[live] += 1
            ended = torch.isin(token, eos)
            if settings.stop_strings:
                ended |= _hit_stop_strings(token, live, texts, tokenizer, settings.stop_strings)
            finished[live[ended]] = True
            if step + 1 == steps:
                break
            if ended.any():
                kept = torch.nonzero(~ended).flatten()
                if len(kept) == 0:
                    break
                decoder.keep(kept)
                live, token = live[kept], token[kept]
                if generators is not None:
                    generators = [generators[i] for i in kept.tolist()]
            logits = decoder.step(token)
    finally:
        model.train(was_training)
    width = int(lengths.max())
    columns = torch.arange(width, device=device)
    batch = PaddingCollator(pad_id, padding_side="left")([{"input_ids": p} for p in prompts])
    return Rollout(
        prompt_ids=batch["input_ids"],
        prompt_mask=batch["attention_mask"],
        completion_ids=tokens[:, :width].cpu(),
        completion_mask=(columns[None, :] < lengths[:, None]).long().cpu(),
        logprobs=logps[:, :width].cpu(),
        finished=finished.cpu(),
    )


def row_seed(seed: int, row: int) -> int:
    """The seed of row `row` of a batch sampled with `seed` (a 63-bit mix of the two)."""
    return (seed * 1_000_003 + row * 7_919 + 1) % (1 << 63)


def _draw(logits: torch.Tensor, settings: SamplingSettings, generators):
    """Next token and its log-prob per row, logits (B, V) -> (B,), (B,)."""
    if settings.temperature == 0:
        token = logits.argmax(-1)
        return token, torch.log_softmax(logits, -1).gather(-1, token[:, None])[:, 0]
    scaled = logits / settings.temperature
    logp_all = torch.log_softmax(scaled, -1)
    filtered = filter_logits(scaled, settings.top_k, settings.top_p)
    if generators is None:
        token = torch.multinomial(filtered.softmax(-1), 1)[:, 0]
    else:
        # Gumbel-max: argmax(log p + G), G = -log(-log U), is a sample from p; filtered
        # tokens stay at -inf. One uniform draw per vocabulary entry from each row's stream.
        vocab = logits.shape[-1]
        uniform = torch.stack(
            [torch.rand(vocab, generator=g, device=logits.device) for g in generators]
        )
        gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(uniform.dtype).tiny)))
        token = (filtered + gumbel).argmax(-1)
    return token, logp_all.gather(-1, token[:, None])[:, 0]


def _hit_stop_strings(token, live, texts, tokenizer, stop_strings) -> torch.Tensor:
    """(N,) True where decoder row i's completion (prompt row live[i]) now contains a
    stop string; appends each row's new token text to texts[live[i]]."""
    hit = torch.zeros(len(token), dtype=torch.bool, device=token.device)
    for i, row in enumerate(live.tolist()):
        texts[row] += tokenizer.decode([int(token[i])], skip_special_tokens=True)
        hit[i] = any(stop in texts[row] for stop in stop_strings)
    return hit

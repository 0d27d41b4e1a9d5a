"""Batched sampling with a KV cache, for RL rollouts and `alignkit generate`.

The model runs in a decoder (`alignkit.rollout.decoder`): prompts are prefilled once,
then each step feeds only the newly sampled tokens through the KV cache. Pads never
reach a real token (masked, and position ids count real tokens only), so a prompt gets
the same continuation distribution whatever it is batched with.

Seeded sampling gives every row its own random stream (a generator per row, seeded from
`row_seeds` or from `settings.seed` and the row number) and draws by inverting the
cumulative distribution with one uniform number per row and step (an exact sample that
costs one random draw per row, not one per vocabulary entry). A completion is then a function
of its prompt and its seed alone, not of the rows it is batched with, so a rollout split
over processes or micro-batches samples the same tokens (up to float rounding).

Returned log-probs are those of the distribution the token was drawn from before top-k /
top-p truncation: log softmax(logits / temperature) (plain log softmax when greedy), the
"old" log-probs PPO's ratio needs when the policy is evaluated at the same temperature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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
    sampling repeatable (private generators, one per row; the global RNG is untouched).
    top_logprobs: also return the k most likely tokens at each step with log-probs."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    top_logprobs: int = 0

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")
        self.stop_strings = tuple(self.stop_strings)


@dataclass
class Rollout:
    """B sampled completions.

    prompt_ids, prompt_mask: (B, P), left-padded. completion_ids: (B, C), right-padded
    with the pad id after each completion's end. completion_mask: (B, C), 1 on sampled
    tokens up to and including the EOS / stop token. logprobs: (B, C), 0 on pads.
    finished: (B,) True where the completion ended by EOS or a stop string rather than
    by reaching max_new_tokens (or being cancelled). top_ids, top_logprobs: (B, C, k),
    the k most likely tokens at each step and their log-probs (same distribution as
    `logprobs`), when the settings ask for `top_logprobs=k`.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    finished: torch.Tensor
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None

    def completion_lists(self) -> list[list[int]]:
        return [
            ids[mask.bool()].tolist()
            for ids, mask in zip(self.completion_ids, self.completion_mask, strict=True)
        ]

    def texts(self, tokenizer) -> list[str]:
        """Completion texts without special tokens (EOS, end-of-turn)."""
        return [tokenizer.decode(ids, skip_special_tokens=True) for ids in self.completion_lists()]


def filter_logits(
    logits: torch.Tensor,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Set logits outside the top-k and outside the nucleus (smallest set of tokens whose
    probability reaches top_p, the most likely token always kept) to -inf. logits (B, V);
    top_k / top_p: one value, or (B,) per row (0 / 1.0 = off)."""
    rows, vocab = logits.shape
    top_k = torch.as_tensor(top_k, device=logits.device).expand(rows).clamp(max=vocab)
    top_p = torch.as_tensor(top_p, dtype=logits.dtype, device=logits.device).expand(rows)
    if bool((top_k > 0).any()):
        largest = int(top_k.max())
        values = torch.topk(logits, largest, dim=-1).values
        kth = values.gather(-1, (top_k.clamp(min=1) - 1)[:, None])
        kth = torch.where(top_k[:, None] > 0, kth, torch.full_like(kth, float("-inf")))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if bool((top_p < 1.0).any()):
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        remove = probs.cumsum(-1) - probs >= top_p[:, None]  # mass before this token
        remove &= (top_p < 1.0)[:, None]
        remove[:, 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


StepCallback = Callable[[torch.Tensor, torch.Tensor], Iterable[int] | None]


@torch.no_grad()
def sample(
    model,
    prompts: list[list[int]],
    settings: SamplingSettings | Sequence[SamplingSettings],
    *,
    eos_ids: set[int] | int,
    pad_id: int,
    tokenizer=None,
    row_seeds: list[int] | None = None,
    on_step: StepCallback | None = None,
) -> Rollout:
    """Sample one completion per prompt (token-id lists).

    `settings`: one for every row, or one per row (a server batches requests that ask
    for different temperatures, lengths, stops and seeds). `tokenizer` is needed only for
    stop strings. `row_seeds` (one per prompt) override the settings' seeds; a row whose
    settings carry `seed` otherwise gets `row_seed(seed, i)`.

    `on_step(rows, tokens)`, if given, is called after every step with the prompt rows
    still decoding (N,) and the token each just drew (N,); it may return prompt rows to
    cancel (a client that went away): they leave the batch unfinished.

    A row whose completion ends leaves the decoder's batch, so the remaining steps cost
    only what the unfinished rows need."""
    rows = len(prompts)
    rules = _RowRules.build(settings, rows)
    if rules.any_stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer")
    device = next(model.parameters()).device
    rules = rules.to(device)
    generators = _generators(rules, row_seeds, rows, device)
    eos = torch.tensor(sorted({eos_ids} if isinstance(eos_ids, int) else set(eos_ids)))
    eos = eos.to(device)
    steps = int(rules.max_new_tokens.max())
    top = rules.top_logprobs
    tokens = torch.full((rows, steps), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros(rows, steps, device=device)
    top_ids = torch.zeros(rows, steps, top, dtype=torch.long, device=device) if top else None
    top_logps = torch.zeros(rows, steps, top, device=device) if top else None
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
            token, logp, logp_all = _draw(logits, rules.select(live), generators)
            tokens[live, step] = token
            logps[live, step] = logp
            if top:
                best = logp_all.topk(top, dim=-1)
                top_ids[live, step], top_logps[live, step] = best.indices, best.values
            lengths[live] += 1
            ended = torch.isin(token, eos)
            if rules.any_stop_strings:
                ended |= _hit_stop_strings(token, live, texts, tokenizer, rules.stop_strings)
            finished[live[ended]] = True
            ended |= lengths[live] >= rules.max_new_tokens[live]
            if on_step is not None:
                cancelled = on_step(live, token)
                if cancelled:
                    ended |= torch.isin(live, torch.tensor(list(cancelled), device=device))
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
        top_ids=top_ids[:, :width].cpu() if top else None,
        top_logprobs=top_logps[:, :width].cpu() if top else None,
    )


def row_seed(seed: int, row: int) -> int:
    """The seed of row `row` of a batch sampled with `seed` (a 63-bit mix of the two)."""
    return (seed * 1_000_003 + row * 7_919 + 1) % (1 << 63)


@dataclass
class _RowRules:
    """Per-row sampling settings as tensors (B,), so one batch can mix requests."""

    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor
    max_new_tokens: torch.Tensor
    stop_strings: list[tuple[str, ...]]
    seeds: list[int | None]
    top_logprobs: int

    @classmethod
    def build(cls, settings, rows: int) -> _RowRules:
        per_row = [settings] * rows if isinstance(settings, SamplingSettings) else list(settings)
        if len(per_row) != rows:
            raise ValueError(f"{len(per_row)} settings for {rows} prompts")
        shared_seed = isinstance(settings, SamplingSettings)
        return cls(
            temperature=torch.tensor([s.temperature for s in per_row], dtype=torch.float32),
            top_p=torch.tensor([s.top_p for s in per_row], dtype=torch.float32),
            top_k=torch.tensor([s.top_k for s in per_row], dtype=torch.long),
            max_new_tokens=torch.tensor([s.max_new_tokens for s in per_row], dtype=torch.long),
            stop_strings=[s.stop_strings for s in per_row],
            # One settings object: row i of the batch gets row_seed(seed, i). Per-row
            # settings: each row's seed is its own (a request's seed, already per row).
            seeds=[
                None if s.seed is None else (row_seed(s.seed, i) if shared_seed else s.seed)
                for i, s in enumerate(per_row)
            ],
            top_logprobs=max(s.top_logprobs for s in per_row) if per_row else 0,
        )

    @property
    def any_stop_strings(self) -> bool:
        return any(self.stop_strings)

    def to(self, device) -> _RowRules:
        return _RowRules(
            self.temperature.to(device),
            self.top_p.to(device),
            self.top_k.to(device),
            self.max_new_tokens.to(device),
            self.stop_strings,
            self.seeds,
            self.top_logprobs,
        )

    def select(self, live: torch.Tensor) -> _StepRules:
        return _StepRules(self.temperature[live], self.top_p[live], self.top_k[live])


@dataclass
class _StepRules:
    """The sampling rules of the rows decoding at one step, (N,) each."""

    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor


def _generators(rules: _RowRules, row_seeds, rows: int, device):
    """One private generator per row when any row is seeded (`row_seeds` or settings);
    unseeded rows beside seeded ones get a seed drawn from the global RNG. None: all
    rows draw from the global RNG."""
    seeds = rules.seeds
    if row_seeds is not None:
        if len(row_seeds) != rows:
            raise ValueError(f"{len(row_seeds)} row_seeds for {rows} prompts")
        seeds = list(row_seeds)
    if all(s is None for s in seeds):
        return None
    seeds = [s if s is not None else int(torch.randint(0, 1 << 62, ()).item()) for s in seeds]
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def _draw(logits: torch.Tensor, rules: _StepRules, generators):
    """Next token, its log-prob, and the log-probs of the vocabulary it was drawn from,
    per row: logits (B, V) -> (B,), (B,), (B, V). Rows with temperature 0 are greedy."""
    greedy = rules.temperature == 0
    if bool(greedy.all()):
        token = logits.argmax(-1)
        logp_all = torch.log_softmax(logits, -1)
        return token, logp_all.gather(-1, token[:, None])[:, 0], logp_all
    temperature = torch.where(greedy, torch.ones_like(rules.temperature), rules.temperature)
    scaled = logits / temperature[:, None]
    logp_all = torch.log_softmax(scaled, -1)
    filtered = filter_logits(scaled, rules.top_k, rules.top_p)
    # Inverse CDF: the first token whose cumulative probability exceeds U * total is a
    # sample from p (filtered tokens add no mass, so they are never the first). One
    # uniform per row and step, from the row's own stream when seeded; scaling by the
    # total absorbs the cumsum's rounding. (torch.multinomial is several times slower.)
    cdf = filtered.softmax(-1).cumsum(-1)
    if generators is None:
        uniform = torch.rand(len(cdf), device=logits.device)
    else:
        uniform = torch.cat([torch.rand(1, generator=g, device=logits.device) for g in generators])
    target = (uniform * cdf[:, -1])[:, None]
    token = torch.searchsorted(cdf, target, right=True)[:, 0].clamp(max=logits.shape[-1] - 1)
    token = torch.where(greedy, logits.argmax(-1), token)
    return token, logp_all.gather(-1, token[:, None])[:, 0], logp_all


def _hit_stop_strings(token, live, texts, tokenizer, stop_strings) -> torch.Tensor:
    """(N,) True where decoder row i's completion (prompt row live[i]) now contains one
    of its stop strings (`stop_strings[row]`); appends each row's new token text to
    texts[live[i]]. Only a new token can complete a stop string, so only the text's tail
    (new text plus the longest stop string) is searched."""
    hit = torch.zeros(len(token), dtype=torch.bool, device=token.device)
    for i, row in enumerate(live.tolist()):
        stops = stop_strings[row]
        if not stops:
            continue
        piece = tokenizer.decode([int(token[i])], skip_special_tokens=True)
        texts[row] += piece
        tail = texts[row][-(len(piece) + max(map(len, stops))) :]
        hit[i] = any(stop in tail for stop in stops)
    return hit

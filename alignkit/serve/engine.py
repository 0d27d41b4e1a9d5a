"""The serving engine: requests from many clients sampled together on one model.

Requests arrive from the web server's event loop; one worker thread owns the model. The
worker takes the first waiting request, then keeps gathering for `gather_ms`
milliseconds or until `max_rows` completions are waiting, and samples the whole group in
one call to the project's sampler (`alignkit.rollout.sampling.sample`, the same one RL
and evaluation use), each row with its own temperature, length, stops and seed. Eight
concurrent clients thus cost about one batched decode instead of eight in a row.

Each step's tokens go back to streaming requests as they are drawn; a request whose
client went away is cancelled at the next step and its rows leave the batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace

import torch

from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.rollout.sampling import Rollout, SamplingSettings, row_seed, sample

log = logging.getLogger("alignkit")


@dataclass
class Choice:
    """One finished completion of a request: its token ids (EOS / stop token included),
    their log-probs, top alternatives per step ((ids, logps) lists, or None), and whether
    it ended by EOS or a stop string (False: length limit or cancelled)."""

    token_ids: list[int]
    logprobs: list[float]
    top: list[tuple[list[int], list[float]]] | None
    finished: bool


@dataclass
class Request:
    """A request for `len(settings)` completions of one prompt (n choices).

    `events` receives, on the caller's event loop, `("token", choice_index, token_id)`
    per drawn token when `stream` is set, then `("done", [Choice, ...])`, or
    `("error", exception)`."""

    prompt_ids: list[int]
    settings: list[SamplingSettings]
    stream: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


def choice_settings(settings: SamplingSettings, n: int) -> list[SamplingSettings]:
    """n choices of one request: choice i of a seeded request gets `row_seed(seed, i)`,
    so a seeded request returns the same choices whatever it is batched with."""
    if settings.seed is None:
        return [settings] * n
    return [replace(settings, seed=row_seed(settings.seed, i)) for i in range(n)]


class Engine:
    """Owns the model; `submit` queues a request, the worker thread samples batches.

    max_rows: completions sampled together at most (a request with more choices runs on
    its own). gather_ms: how long the worker waits for another request before sampling
    what it has (see `_gather`).
    """

    def __init__(self, model, tokenizer, *, max_rows: int = 16, gather_ms: float = 10.0):
        self.model, self.tokenizer = model, tokenizer
        self.encoder = ChatEncoder(tokenizer)
        self.eos_ids = self.encoder.stop_token_ids
        self.pad_id = pad_token_id(tokenizer)
        self.context = _context_length(model)
        self.max_rows, self.gather_s = max_rows, gather_ms / 1000
        self.waiting: queue.Queue[Request | None] = queue.Queue()
        self.active_rows = 0  # rows in the batch being decoded (tests watch it)
        self.batches = 0
        self.rows_sampled = 0  # completions sampled, over all batches
        self.tokens_generated = 0
        self._worker = threading.Thread(target=self._run, name="alignkit-engine", daemon=True)
        self._worker.start()

    # ---- the caller's side -----------------------------------------------------------

    def submit(self, request: Request) -> None:
        self.waiting.put(request)

    def stats(self) -> dict:
        """Counters since start: batches sampled, completions and tokens generated, and
        the completions decoding right now."""
        return {
            "batches": self.batches,
            "completions": self.rows_sampled,
            "tokens": self.tokens_generated,
            "active": self.active_rows,
        }

    def close(self) -> None:
        self.waiting.put(None)
        self._worker.join(timeout=30)

    # ---- the worker ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self.waiting.get()
            if first is None:
                return
            group, closing = self._gather(first)
            group = [r for r in group if not r.cancelled.is_set()]
            if group:
                try:
                    self._sample(group)
                except Exception as err:  # a failed batch fails its requests, not the server
                    log.exception("sampling failed")
                    for request in group:
                        request.emit("error", err)
                finally:
                    self.active_rows = 0
            if closing:
                return

    def _gather(self, first: Request) -> tuple[list[Request], bool]:
        """The first request plus those arriving while the batch is not full and a new
        one came within the last `gather_s` (at most `8 * gather_s` in all): clients
        answered together come back a few milliseconds apart, as the event loop works
        through their responses and new requests one by one."""
        group, rows = [first], len(first.settings)
        now = time.monotonic()
        last_call = now + 8 * self.gather_s
        deadline = now + self.gather_s
        while rows < self.max_rows:
            remaining = min(deadline, last_call) - time.monotonic()
            if remaining <= 0:
                break
            try:
                request = self.waiting.get(timeout=remaining)
            except queue.Empty:
                break
            if request is None:
                return group, True
            if rows + len(request.settings) > self.max_rows:
                self.waiting.put(request)  # next batch (order within the queue may shift)
                break
            group.append(request)
            rows += len(request.settings)
            deadline = time.monotonic() + self.gather_s
        return group, False

    def _sample(self, group: list[Request]) -> None:
        owners = [(request, i) for request in group for i in range(len(request.settings))]
        prompts = [request.prompt_ids for request, _ in owners]
        settings = [request.settings[i] for request, i in owners]
        self.active_rows = len(owners)
        self.batches += 1
        self.rows_sampled += len(owners)

        def on_step(rows: torch.Tensor, tokens: torch.Tensor):
            cancelled = []
            for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
                request, choice = owners[row]
                if request.cancelled.is_set():
                    cancelled.append(row)
                elif request.stream:
                    request.emit("token", choice, token)
            self.tokens_generated += len(rows)
            self.active_rows = len(rows) - len(cancelled)
            return cancelled

        rollout = sample(
            self.model,
            prompts,
            settings,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            tokenizer=self.tokenizer,
            on_step=on_step,
        )
        choices = _choices(rollout)
        start = 0
        for request in group:
            count = len(request.settings)
            if not request.cancelled.is_set():
                request.emit("done", choices[start : start + count])
            start += count


def _choices(rollout: Rollout) -> list[Choice]:
    out = []
    for row, ids in enumerate(rollout.completion_lists()):
        length = len(ids)
        top = None
        if rollout.top_ids is not None:
            top = list(
                zip(
                    rollout.top_ids[row, :length].tolist(),
                    rollout.top_logprobs[row, :length].tolist(),
                    strict=True,
                )
            )
        out.append(
            Choice(
                token_ids=ids,
                logprobs=rollout.logprobs[row, :length].tolist(),
                top=top,
                finished=bool(rollout.finished[row]),
            )
        )
    return out


def _context_length(model) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None

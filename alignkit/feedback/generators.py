"""Generators: replies to conversations from a local model or an OpenAI-compatible
server, for the labelling pipelines (responses to compare, Constitutional AI's
critiques and revisions).

Both answer `generate(conversations, n=..., ...) -> list[list[str]]`: n replies per
conversation, in order. With a `seed`, a local reply depends only on the seed, the
conversation's content and its sample number (not on its position in the list or the
rows batched with it), so a resumed pipeline regenerates exactly what it lost; a server
is sent the seed and decides how far to honour it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from alignkit.data.templating import ChatEncoder, pad_token_id
from alignkit.errors import AlignkitError
from alignkit.feedback.http import OpenAIEndpoint
from alignkit.feedback.judge import JudgeFailure
from alignkit.rollout.sampling import SamplingSettings, sample


@runtime_checkable
class Generator(Protocol):
    def generate(
        self,
        conversations: Sequence[list[dict]],
        *,
        n: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[str]]: ...


class LocalGenerator:
    """Replies sampled from a model in this process through `rollout.sampling.sample`
    (KV cache, finished rows leave the batch); `batch_size` rows per call."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.encoder = ChatEncoder(tokenizer)
        self.pad_id = pad_token_id(tokenizer)

    def generate(
        self,
        conversations: Sequence[list[dict]],
        *,
        n: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[str]]:
        settings = SamplingSettings(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p
        )
        rows = [(c, k) for c in conversations for k in range(n)]
        texts: list[str] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            rollout = sample(
                self.model,
                [self.encoder.encode_prompt(c) for c, _ in chunk],
                settings,
                eos_ids=self.encoder.stop_token_ids,
                pad_id=self.pad_id,
                row_seeds=[content_seed(seed, c, k) for c, k in chunk]
                if seed is not None
                else None,
            )
            texts += [t.strip() for t in rollout.texts(self.tokenizer)]
        return [texts[i * n : (i + 1) * n] for i in range(len(conversations))]


def content_seed(seed: int, conversation: list[dict], sample: int) -> int:
    """A 63-bit row seed from `seed`, the conversation's canonical JSON and the sample
    number: the same three always give the same reply."""
    canonical = json.dumps([seed, sample, conversation], sort_keys=True, ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(canonical.encode("utf-8")).digest()[:8], "big") >> 1


class HTTPGenerator:
    """Replies from an OpenAI-compatible server (`n` choices per request; a server that
    returns fewer is asked again for the rest, with a shifted seed). A request that
    still fails after the endpoint's retries raises its `JudgeFailure` once the other
    requests are done; their replies are in the endpoint's cache, so a re-run pays only
    for what failed."""

    def __init__(self, endpoint: OpenAIEndpoint):
        self.endpoint = endpoint

    def generate(
        self,
        conversations: Sequence[list[dict]],
        *,
        n: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[str]]:
        replies: list[list[str]] = [[] for _ in conversations]
        for round_ in range(n):  # each round returns at least one choice or fails
            pending = [i for i, got in enumerate(replies) if len(got) < n]
            if not pending:
                break
            bodies = []
            for i in pending:
                body = {
                    "messages": list(conversations[i]),
                    "n": n - len(replies[i]),
                    "max_tokens": max_new_tokens,
                    "temperature": temperature,
                    "top_p": top_p,
                }
                if seed is not None:
                    body["seed"] = seed + round_
                bodies.append(body)
            for i, reply in zip(pending, self.endpoint.chat_many(bodies), strict=True):
                if isinstance(reply, JudgeFailure):
                    raise reply
                texts = [(c.get("message") or {}).get("content") or "" for c in reply["choices"]]
                if not texts:
                    raise JudgeFailure("malformed", f"{self.endpoint.url}: a reply with no choices")
                replies[i] += [t.strip() for t in texts[: n - len(replies[i])]]
        return replies


def load_generator(spec, **options):
    """A generator from a spec: a generator object; `openai:BASE_URL` (options: `model`,
    the server's model name, and any `OpenAIEndpoint` option); or any model spec the
    loader accepts (options: `device`, `dtype`, `batch_size`)."""
    if hasattr(spec, "generate"):
        return spec
    spec = str(spec)
    for prefix, build in _GENERATORS.items():
        if spec.startswith(prefix):
            return build(spec.removeprefix(prefix), **options)
    return _local_generator(spec, **options)


def _openai_generator(base_url: str, *, model: str | None = None, **endpoint_options):
    if not model:
        raise AlignkitError(f"openai:{base_url} needs the server's model name: model=NAME")
    endpoint_options.pop("device", None)  # a remote model has no local device or dtype
    endpoint_options.pop("dtype", None)
    return HTTPGenerator(OpenAIEndpoint(base_url, model, **endpoint_options))


def _local_generator(spec: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 16):
    from alignkit.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(spec, device=device, dtype=dtype)
    return LocalGenerator(model, tokenizer, batch_size=batch_size)


_GENERATORS = {"openai:": _openai_generator}

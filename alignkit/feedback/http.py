"""A client for OpenAI-compatible chat endpoints (`POST {base_url}/chat/completions`),
made for judging and generating at volume: timeouts, retries with backoff, bounded
concurrency, and an on-disk cache of successful replies.

Retried: timeouts, connection errors, 429 (rate limited) and 5xx (server trouble),
after a sleep drawn with "full jitter", uniform in [0, min(max_backoff, backoff * 2^k)]
before retry k+1, so many clients that failed together do not retry together; a 429's
`Retry-After` is honoured up to `max_backoff`. Not retried: any other 4xx (the request
itself is wrong; the server's message is passed on). Failures are `JudgeFailure`s with
`reason` "timeout", "connection", "http" or "malformed" (a 2xx that is not a chat
completion).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from alignkit.feedback.cache import ResponseCache
from alignkit.feedback.judge import JudgeFailure


def backoff_delay(retry: int, backoff: float, max_backoff: float, rng=random) -> float:
    """Seconds to sleep before retry `retry + 1` (retry 0 is the first): full jitter,
    uniform in [0, min(max_backoff, backoff * 2**retry)]."""
    return rng.uniform(0.0, min(max_backoff, backoff * 2.0**retry))


class _Retryable(Exception):
    def __init__(self, failure: JudgeFailure, retry_after: float | None = None):
        self.failure = failure
        self.retry_after = retry_after


class OpenAIEndpoint:
    """One model behind an OpenAI-compatible server.

    base_url: up to the API root, e.g. `http://127.0.0.1:8000/v1`. model: the `model`
    field of every request (a body may override it). api_key: sent as a Bearer token.
    timeout: seconds per request. retries: further attempts after a retryable failure.
    backoff / max_backoff: the jitter bounds above. max_concurrency: requests in flight
    at once, over all threads using this endpoint. cache: a `ResponseCache` or a path
    for one; None for no cache.

    Thread-safe: `chat` may be called from many threads (httpx's client is; a semaphore
    bounds requests in flight)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_concurrency: int = 4,
        cache: ResponseCache | str | Path | None = None,
    ):
        if retries < 0 or max_concurrency < 1 or timeout <= 0:
            raise ValueError("need retries >= 0, max_concurrency >= 1 and timeout > 0")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_concurrency = max_concurrency
        self.cache = ResponseCache(cache) if isinstance(cache, (str, Path)) else cache
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            timeout=timeout,
            headers=headers,
            limits=httpx.Limits(max_connections=max_concurrency),
        )
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._rng = random.Random()

    def chat(self, body: dict) -> dict:
        """The chat completion for `body` (the JSON of a `/chat/completions` request,
        `model` filled in when absent): from the cache, or from the server (then cached).
        Raises `JudgeFailure` once retries are spent, or at once for a non-retryable
        error."""
        body = {"model": self.model, **body}
        key = ResponseCache.key(self.url, body) if self.cache is not None else None
        if key is not None and (hit := self.cache.get(key)) is not None:
            return hit
        reply = self._post_with_retries(body)
        if key is not None:
            self.cache.put(key, reply)
        return reply

    def forget(self, body: dict) -> None:
        """Drop the cached reply to `body`: a reply the caller could not use (an empty
        or unreadable verdict) is asked again by a later run instead of replayed."""
        if self.cache is not None:
            self.cache.drop(ResponseCache.key(self.url, {"model": self.model, **body}))

    def chat_many(self, bodies: Sequence[dict]) -> list[dict | JudgeFailure]:
        """`chat` for each body, up to `max_concurrency` at once, in the given order; a
        failed request is its `JudgeFailure` in the list, not an exception."""
        if not bodies:
            return []

        def one(body: dict) -> dict | JudgeFailure:
            try:
                return self.chat(body)
            except JudgeFailure as failure:
                return failure

        with ThreadPoolExecutor(min(self.max_concurrency, len(bodies))) as pool:
            return list(pool.map(one, bodies))

    def close(self) -> None:
        self._client.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> OpenAIEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- one request, retried ----------------------------------------------------

    def _post_with_retries(self, body: dict) -> dict:
        for retry in range(self.retries + 1):
            try:
                return self._post(body)
            except _Retryable as err:
                if retry == self.retries:
                    raise err.failure from None
                delay = backoff_delay(retry, self.backoff, self.max_backoff, self._rng)
                if err.retry_after is not None:
                    delay = max(delay, min(err.retry_after, self.max_backoff))
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _post(self, body: dict) -> dict:
        with self._slots:
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TimeoutException:
                raise _Retryable(
                    JudgeFailure(
                        "timeout",
                        f"{self.url}: no reply within {self.timeout:g}s "
                        f"(after {self.retries + 1} attempts)",
                    )
                ) from None
            except httpx.TransportError as err:
                raise _Retryable(
                    JudgeFailure("connection", f"{self.url}: cannot connect ({err})")
                ) from None
        status = response.status_code
        if status == 429 or status >= 500:
            failure = JudgeFailure(
                "http",
                f"{self.url}: HTTP {status} after {self.retries + 1} attempts: "
                f"{_server_message(response)}",
            )
            raise _Retryable(failure, _retry_after(response))
        if status >= 400:
            raise JudgeFailure("http", f"{self.url}: HTTP {status}: {_server_message(response)}")
        try:
            reply = response.json()
        except ValueError:
            raise JudgeFailure(
                "malformed", f"{self.url}: the reply is not JSON: {response.text[:200]!r}"
            ) from None
        if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
            raise JudgeFailure(
                "malformed", f"{self.url}: the reply is not a chat completion: {str(reply)[:200]}"
            )
        return reply


def _server_message(response: httpx.Response) -> str:
    """The error text a server sent: OpenAI's `{"error": {"message"}}`, FastAPI's
    `{"detail"}`, or the body's start."""
    try:
        payload = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if error:
            return str(error)
        if payload.get("detail"):
            return str(payload["detail"])
    return str(payload)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:  # absent, or an HTTP date: fall back to the jitter
        return None

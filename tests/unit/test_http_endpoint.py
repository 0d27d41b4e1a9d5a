"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1 that answers
as scripted (tests/openai_stub.py): retries, backoff, failures, the response cache."""

import random
import threading

import pytest

from alignkit.feedback.cache import ResponseCache
from alignkit.feedback.http import OpenAIEndpoint, backoff_delay
from alignkit.feedback.judge import JudgeFailure
from tests.openai_stub import Answer, StubServer, completion, not_json, ok, slow, status

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture()
def stub():
    server = StubServer(default=ok("hello"))
    yield server
    server.close()


def endpoint(stub, **options):
    settings = dict(timeout=2.0, retries=2, backoff=0.01, max_backoff=0.05) | options
    return OpenAIEndpoint(stub.url, "judge-model", **settings)


def test_backoff_is_full_jitter_bounded_by_the_cap():
    """Retry k sleeps uniform in [0, min(cap, base * 2^k)]: never above the bound, and
    spread over it (not a fixed delay)."""
    rng = random.Random(0)
    for retry in range(8):
        bound = min(8.0, 0.5 * 2**retry)
        delays = [backoff_delay(retry, 0.5, 8.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in delays)
        assert max(delays) > 0.8 * bound and min(delays) < 0.2 * bound


def test_a_reply_is_cached_and_a_rerun_does_not_ask_again(stub, tmp_path):
    cache_path = tmp_path / "judge-cache.sqlite"
    with endpoint(stub, cache=cache_path) as first:
        reply = first.chat(BODY)
        assert first.chat(BODY) == reply  # same process: from the cache
    assert reply["choices"][0]["message"]["content"] == "hello" and stub.hits == 1
    assert stub.bodies[0] == {"model": "judge-model", **BODY}
    with endpoint(stub, cache=cache_path) as rerun:  # a new process would open the same file
        assert rerun.chat(BODY) == reply
        assert stub.hits == 1
        rerun.chat({**BODY, "seed": 1})  # a different request is a different key
    assert stub.hits == 2 and len(ResponseCache(cache_path)) == 2


def test_failures_are_not_cached(stub, tmp_path):
    stub.script = [status(400, "bad field")]
    with endpoint(stub, cache=tmp_path / "c.sqlite") as client:
        with pytest.raises(JudgeFailure):
            client.chat(BODY)
        assert client.chat(BODY)["choices"][0]["message"]["content"] == "hello"
    assert stub.hits == 2


def test_server_errors_are_retried_then_succeed(stub):
    stub.script = [status(500), status(503), ok("third time")]
    with endpoint(stub) as client:
        reply = client.chat(BODY)
    assert reply["choices"][0]["message"]["content"] == "third time" and stub.hits == 3


def test_rate_limits_are_retried_honouring_retry_after_up_to_the_cap(stub):
    stub.script = [status(429, "slow down", {"Retry-After": "120"}), ok("ok")]
    with endpoint(stub, max_backoff=0.05) as client:
        assert client.chat(BODY)["choices"][0]["message"]["content"] == "ok"
    assert stub.hits == 2


def test_retries_run_out_with_the_server_message(stub):
    stub.default = status(502, "upstream down")
    with endpoint(stub, retries=2) as client, pytest.raises(JudgeFailure) as raised:
        client.chat(BODY)
    assert raised.value.reason == "http" and "502" in str(raised.value)
    assert "upstream down" in str(raised.value) and stub.hits == 3


def test_a_timeout_fails_as_timeout_after_the_retries(stub):
    stub.default = slow(1.0)
    with endpoint(stub, timeout=0.2, retries=1) as client, pytest.raises(JudgeFailure) as raised:
        client.chat(BODY)
    assert raised.value.reason == "timeout" and stub.hits == 2


def test_a_client_error_fails_at_once_with_the_server_message(stub):
    stub.default = status(400, "max_tokens must be positive")
    with endpoint(stub, retries=3) as client, pytest.raises(JudgeFailure) as raised:
        client.chat(BODY)
    assert raised.value.reason == "http" and stub.hits == 1
    assert "HTTP 400" in str(raised.value) and "max_tokens must be positive" in str(raised.value)


def test_a_reply_that_is_not_a_completion_is_malformed(stub):
    stub.script = [not_json()]
    with endpoint(stub) as client, pytest.raises(JudgeFailure) as raised:
        client.chat(BODY)
    assert raised.value.reason == "malformed" and "not JSON" in str(raised.value)


def test_no_server_is_a_connection_failure():
    with OpenAIEndpoint("http://127.0.0.1:9/v1", "m", retries=1, backoff=0.01) as client:
        with pytest.raises(JudgeFailure) as raised:
            client.chat(BODY)
    assert raised.value.reason == "connection"


def test_chat_many_keeps_order_and_returns_failures_in_place(stub):
    def echo(body):
        word = body["messages"][0]["content"]
        return (
            Answer(400, {"error": {"message": "no"}})
            if word == "bad"
            else Answer(200, completion(word))
        )

    stub.default = echo
    words = [f"w{i}" for i in range(10)] + ["bad"]
    with endpoint(stub, max_concurrency=3) as client:
        replies = client.chat_many([{"messages": [{"role": "user", "content": w}]} for w in words])
    assert [r["choices"][0]["message"]["content"] for r in replies[:-1]] == words[:-1]
    assert isinstance(replies[-1], JudgeFailure) and replies[-1].reason == "http"


def test_the_cache_is_shared_safely_between_threads(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    keys = [ResponseCache.key("u", {"i": i}) for i in range(200)]

    def work(part):
        for i in range(part, 200, 4):
            cache.put(keys[i], {"i": i})
            assert cache.get(keys[i]) == {"i": i}

    threads = [threading.Thread(target=work, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 200 and cache.get(keys[7]) == {"i": 7}
    assert ResponseCache.key("u", {"a": 1, "b": 2}) == ResponseCache.key("u", {"b": 2, "a": 1})
    assert ResponseCache.key("u", {"a": 1}) != ResponseCache.key("v", {"a": 1})
    assert cache.get("missing") is None

"""`alignkit serve`: the OpenAI-compatible server, driven by the official `openai` client
over real HTTP on 127.0.0.1 with a tiny model."""

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch

from alignkit.data.templating import ChatEncoder
from alignkit.models.loading import load_model_and_tokenizer
from alignkit.rollout.sampling import SamplingSettings, sample
from tests.servers import free_port, serving

NAME = "tiny"
KEY = "secret-key"
HELLO = [{"role": "user", "content": "Say something about rivers."}]


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    with serving(
        model, tokenizer, NAME, api_key=KEY, engine_options={"max_rows": 16, "gather_ms": 20}
    ) as (url, engine):
        yield SimpleNamespace(url=url.removesuffix("/v1")), engine


@pytest.fixture(scope="module")
def client(served):
    server, _ = served
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def chat(client, **options):
    return client.chat.completions.create(model=NAME, messages=HELLO, **options)


def test_models_and_health(served, client):
    server, _ = served
    assert [m.id for m in client.models.list().data] == [NAME]
    health = httpx.get(f"{server.url}/health")  # open without the key
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_plain_chat_is_the_samplers_greedy_completion(served, client):
    _, engine = served
    reply = chat(client, temperature=0, max_tokens=12)
    choice = reply.choices[0]
    prompt = ChatEncoder(engine.tokenizer).encode_prompt(HELLO)
    expected = sample(
        engine.model,
        [prompt],
        SamplingSettings(max_new_tokens=12, temperature=0),
        eos_ids=engine.eos_ids,
        pad_id=engine.pad_id,
    )
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.texts(engine.tokenizer)[0]
    assert choice.finish_reason == ("stop" if expected.finished[0] else "length")
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == len(expected.completion_lists()[0])


def test_streamed_deltas_add_up_to_the_plain_reply(client):
    plain = chat(client, temperature=0, max_tokens=16).choices[0]
    stream = chat(client, temperature=0, max_tokens=16, stream=True)
    pieces, reasons = [], []
    for chunk in stream:
        delta = chunk.choices[0].delta
        pieces.append(delta.content or "")
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == plain.message.content
    assert reasons[-1] == plain.finish_reason and all(r is None for r in reasons[:-1])
    assert len([p for p in pieces if p]) > 1  # it really streamed, token by token


def test_logprobs_and_top_logprobs_match_the_model(served, client):
    _, engine = served
    reply = chat(client, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) >= 1
    prompt = ChatEncoder(engine.tokenizer).encode_prompt(HELLO)
    with torch.no_grad():
        first = torch.log_softmax(engine.model(torch.tensor([prompt])).logits[0, -1], -1)
    values, ids = first.topk(3)
    top = content[0].top_logprobs
    assert [t.token for t in top] == [engine.tokenizer.decode([i]) for i in ids.tolist()]
    assert [t.logprob for t in top] == pytest.approx(values.tolist(), abs=1e-4)
    for token in content:  # greedy: the chosen token is the most likely one
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob)
        assert token.token == token.top_logprobs[0].token


def test_n_choices_and_seeded_reproducibility(client):
    options = dict(temperature=1.0, max_tokens=10, n=3, seed=1234)
    first, again = chat(client, **options), chat(client, **options)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) == 3
    other = chat(client, **{**options, "seed": 99})
    assert [c.message.content for c in other.choices] != texts


def test_stop_string_is_cut_off(client):
    free = chat(client, temperature=0, max_tokens=12).choices[0].message.content
    assert len(free) > 6, free
    stop = free[4:6]
    stopped = chat(client, temperature=0, max_tokens=12, stop=[stop]).choices[0]
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.message.content
    assert stopped.message.content == free[: free.index(stop)]


def test_completions_endpoint_with_logprobs_and_several_prompts(client):
    reply = client.completions.create(
        model=NAME,
        prompt=["Once upon a time", "The river"],
        max_tokens=5,
        temperature=0,
        logprobs=2,
    )
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs)
        assert "".join(choice.logprobs.tokens) == choice.text
        assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
    alone = client.completions.create(model=NAME, prompt="The river", max_tokens=5, temperature=0)
    assert alone.choices[0].text == reply.choices[1].text


def test_api_key_is_required(served):
    server, _ = served
    anonymous = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    response = httpx.get(f"{server.url}/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "options, param",
    [
        ({"model": "other", "messages": HELLO}, "model"),
        ({"model": NAME}, "messages"),
        ({"model": NAME, "messages": []}, "messages"),
        ({"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"model": NAME, "messages": HELLO, "max_tokens": -5}, "max_tokens"),
        ({"model": NAME, "messages": HELLO, "max_tokens": 5000}, "max_tokens"),
        (
            {"model": NAME, "messages": [{"role": "user", "content": "river " * 2100}]},
            "messages",
        ),
        ({"model": NAME, "messages": HELLO, "temperature": -1}, "temperature"),
    ],
)
def test_bad_requests_get_a_400_with_an_openai_error(served, client, options, param):
    """Sent raw (the openai client refuses some of these bodies before sending)."""
    server, _ = served
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json=options,
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"]


def test_the_openai_client_sees_a_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="other", messages=HELLO)
    assert "unknown model 'other'" in caught.value.body["message"]


def test_a_body_that_is_not_json_gets_a_400(served):
    server, _ = served
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body in (b"{not json", b"[1, 2]", b""):
        response = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers=headers)
        assert response.status_code == 400, body
        assert "error" in response.json()


def test_concurrent_requests_share_batches(served, client):
    _, engine = served
    before = engine.batches
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: chat(client, temperature=0, max_tokens=8), range(8)))
    assert len({r.choices[0].message.content for r in replies}) == 1  # same prompt, greedy
    assert engine.batches - before < 8  # gathered together, not one batch per request


def test_a_client_that_leaves_mid_stream_frees_its_rows(served):
    server, engine = served
    body = {"model": NAME, "messages": HELLO, "max_tokens": 1500, "stream": True}
    body["stop"] = None
    before = engine.tokens_generated
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        chunks = 0
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"]:
                chunks += 1
            if chunks >= 3:
                break  # leave, closing the connection
    deadline = time.monotonic() + 30
    while engine.active_rows:
        assert time.monotonic() < deadline, "the cancelled stream kept decoding"
        time.sleep(0.05)
    assert engine.tokens_generated - before < 1000  # stopped long before max_tokens


def test_serve_command_binds_localhost_and_reads_the_key_from_the_environment(tiny_model_dir):
    port = free_port()
    env = {**__import__("os").environ, "ALIGNKIT_API_KEY": "from-env"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "alignkit",
            "serve",
            "--model",
            str(tiny_model_dir),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "alignkit serve did not come up"
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/v1"
        assert httpx.get(f"{url}/models").status_code == 401
        client = openai.OpenAI(base_url=url, api_key="from-env", max_retries=0)
        reply = client.chat.completions.create(
            model=str(tiny_model_dir), messages=HELLO, max_tokens=3
        )
        assert reply.choices[0].message.content is not None
    finally:
        process.terminate()
        process.wait(timeout=30)

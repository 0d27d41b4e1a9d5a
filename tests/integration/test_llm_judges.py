"""LLM judges and generators end to end: a tiny random Llama (real SmolLM2 tokenizer
and chat template) as a local judge, checked against probabilities computed by hand
from the model's own logits; the HTTP judge and generator against a real HTTP server."""

import pytest
import torch

from alignkit.feedback.function import load_judge
from alignkit.feedback.generators import HTTPGenerator, LocalGenerator, load_generator
from alignkit.feedback.http import OpenAIEndpoint
from alignkit.feedback.http_judge import HTTPJudge
from alignkit.feedback.judge import Judge
from alignkit.feedback.llm_judge import LLMJudge, OptionReader
from alignkit.feedback.prompts import CHOICE_PREFIX, RATING_PREFIX, pairwise_prompt, rating_prompt
from alignkit.models.tiny import tiny_model
from tests.openai_stub import Answer, StubServer, completion, ok, status

PROMPT = [{"role": "user", "content": "Name a colour."}]
A, B = "Blue.", "I would rather not say anything about colours."


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(seed=3, tokenizer=tokenizer).eval()


def next_token_probs(model, tokenizer, user_text: str, assistant_start: str) -> torch.Tensor:
    """Softmax of the model's last logits for the chat prompt, computed directly."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids += tokenizer(assistant_start, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double()
    return logits.softmax(-1)


def token(tokenizer, text):
    [only] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return only


def test_local_judge_reads_normalised_option_probabilities(model, tokenizer):
    """P(A) sums the tokens "A" and " A" after "Answer: (", likewise B; the answer is
    P(A) / (P(A) + P(B)), from the model's logits for the exact prompt."""
    judge = LLMJudge(model, tokenizer, both_orders=False)
    assert isinstance(judge, Judge)
    probs = next_token_probs(
        model, tokenizer, pairwise_prompt(PROMPT, A, B, judge.question), CHOICE_PREFIX
    )
    p_a = probs[token(tokenizer, "A")] + probs[token(tokenizer, " A")]
    p_b = probs[token(tokenizer, "B")] + probs[token(tokenizer, " B")]
    expected = float(p_a / (p_a + p_b))
    [judgement] = judge.judge_pairs([PROMPT], [A], [B])
    assert judgement.ok and 0.0 < judgement.p_a < 1.0
    assert judgement.p_a == pytest.approx(expected, abs=1e-5)
    assert judge.compare(PROMPT, A, B) == pytest.approx(expected, abs=1e-5)


def test_local_judge_both_orders_is_antisymmetric_and_batch_independent(model, tokenizer):
    judge = LLMJudge(model, tokenizer, batch_size=3)
    single = LLMJudge(model, tokenizer, both_orders=False)
    forward, backward = single.judge_pairs([PROMPT, PROMPT], [A, B], [B, A])
    prompts = [PROMPT, PROMPT, "Say something.", PROMPT]
    firsts, seconds = [A, B, "x", "Red."], [B, A, "yy", "Green!"]
    results = judge.judge_pairs(prompts, firsts, seconds)
    assert all(r.ok and 0.0 < r.p_a < 1.0 for r in results)
    assert results[0].p_a + results[1].p_a == pytest.approx(1.0, abs=1e-9)
    assert results[0].p_a == pytest.approx((forward.p_a + 1 - backward.p_a) / 2, abs=1e-5)
    assert len(results[0].outputs) == 2 and "A)" in results[0].outputs[0]
    questions = ["Which is shorter?"] * 4
    asked = judge.judge_pairs(prompts, firsts, seconds, questions)
    assert asked[0].p_a != pytest.approx(results[0].p_a, abs=1e-9)  # the question is in the prompt


def test_local_judge_rating_is_the_expected_rating_with_ten_read_over_two_tokens(model, tokenizer):
    """SmolLM2 writes "10" as "1" then "0": P(10) = P("1") P("0" | "1") and
    P(1) = P("1") (1 - P("0" | "1")); the score is sum r P(r) / sum P(r)."""
    judge = LLMJudge(model, tokenizer)
    reader = OptionReader(tokenizer, RATING_PREFIX, [str(r) for r in range(1, 11)])
    one, zero = token(tokenizer, "1"), token(tokenizer, "0")
    assert reader.continue_from == one
    text = rating_prompt(PROMPT, A, judge.rating_question, answer="choice")
    first = next_token_probs(model, tokenizer, text, RATING_PREFIX)
    after_one = next_token_probs(model, tokenizer, text, RATING_PREFIX + "1")[zero]
    p = {r: first[token(tokenizer, str(r))] for r in range(2, 10)}
    p[1] = first[one] * (1 - after_one)
    p[10] = first[one] * after_one
    expected = sum(r * p[r] for r in p) / sum(p.values())
    [score] = judge.score_batch([PROMPT], [A])
    assert 1.0 < score < 10.0 and score == pytest.approx(float(expected), abs=1e-5)


def test_local_judge_with_chain_of_thought_and_clamp(model, tokenizer):
    judge = LLMJudge(model, tokenizer, chain_of_thought=True, reasoning_tokens=8, clamp=(0.4, 0.6))
    [judgement] = judge.judge_pairs([PROMPT], [A], [B])
    assert judgement.ok and 0.4 <= judgement.p_a <= 0.6
    assert all(out.count("Answer: (") >= 1 for out in judgement.outputs)


def test_load_judge_llm_spec(tiny_model_dir):
    judge = load_judge(f"llm:{tiny_model_dir}", device="cpu", both_orders=False)
    assert isinstance(judge, LLMJudge) and not judge.both_orders
    assert 0.0 < judge.compare("Hi", "a", "b") < 1.0


def test_local_generator_is_reproducible_per_conversation(model, tokenizer):
    """With a seed, a conversation's replies do not depend on what it is batched with."""
    generator = LocalGenerator(model, tokenizer, batch_size=4)
    other = [{"role": "user", "content": "Something else entirely."}]
    alone = generator.generate([PROMPT], n=2, max_new_tokens=6, seed=11)
    mixed = generator.generate([other, PROMPT, other], n=2, max_new_tokens=6, seed=11)
    assert len(mixed) == 3 and all(len(replies) == 2 for replies in mixed)
    assert mixed[1] == alone[0]
    assert alone[0][0] != alone[0][1]  # two samples, two seeds
    greedy = generator.generate([PROMPT], max_new_tokens=6, temperature=0.0)
    assert greedy == generator.generate([PROMPT], max_new_tokens=6, temperature=0.0)


def test_load_generator_specs(tiny_model_dir):
    generator = load_generator(str(tiny_model_dir), device="cpu", batch_size=2)
    assert isinstance(generator, LocalGenerator) and generator.batch_size == 2
    remote = load_generator("openai:http://127.0.0.1:9/v1", model="m", timeout=3.0)
    assert isinstance(remote, HTTPGenerator) and remote.endpoint.timeout == 3.0


# ---- over HTTP ---------------------------------------------------------------------


def fenced(text: str, name: str) -> str:
    return text.split(f"<<<{name}>>>\n")[1].split(f"\n<<<END {name}>>>")[0]


def prefers_blue(body: dict) -> Answer:
    """A judge server that prefers the response mentioning blue, with log-probs when
    asked for them and a verdict otherwise."""
    text = body["messages"][-1]["content"]
    winner = "A" if "Blue" in fenced(text, "RESPONSE A") else "B"
    if body.get("logprobs"):
        loser = "B" if winner == "A" else "A"
        return Answer(200, completion(winner, logprobs={winner: 0.7, loser: 0.2, "The": 0.1}))
    return Answer(200, completion(f"Response {winner} names a colour. [[{winner}]]"))


@pytest.fixture()
def stub():
    server = StubServer(default=prefers_blue)
    yield server
    server.close()


def http_judge(stub, **options):
    endpoint = OpenAIEndpoint(stub.url, "judge", retries=1, backoff=0.01, timeout=5.0)
    return HTTPJudge(endpoint, **options)


def test_http_judge_reads_option_logprobs_in_both_orders(stub):
    judge = http_judge(stub)
    [judgement] = judge.judge_pairs([PROMPT], [A], [B])
    p_first = 0.7 / (0.7 + 0.2)  # "The" is not an option
    assert judgement.ok and judgement.p_a == pytest.approx((p_first + 1 - (1 - p_first)) / 2)
    assert stub.hits == 2
    assert all(
        b["max_tokens"] == 1 and b["logprobs"] and b["temperature"] == 0 for b in stub.bodies
    )
    assert all(b["top_logprobs"] == 20 and b["model"] == "judge" for b in stub.bodies)


def test_http_judge_falls_back_to_verdicts_without_logprobs(stub):
    stub.default = lambda body: prefers_blue({**body, "logprobs": False})  # never gives log-probs
    judge = http_judge(stub)
    assert judge.compare(PROMPT, B, A) == 0.0
    assert not judge.server_logprobs and stub.hits == 4  # both orders tried, then verdicts
    assert judge.compare(PROMPT, A, B) == 1.0 and stub.hits == 6  # no log-prob tries now
    assert "[[A]]" in stub.bodies[-1]["messages"][-1]["content"]
    verdicts = http_judge(stub, use_logprobs=False).judge_pairs([PROMPT], [A], [B])
    assert verdicts[0].p_a == 1.0 and verdicts[0].outputs[0].endswith("[[A]]")


def test_http_judge_ties_and_failures_are_judgements_not_labels(stub):
    stub.default = ok("They are equally good. [[C]]")
    judge = http_judge(stub, use_logprobs=False)
    assert judge.compare(PROMPT, A, B) == 0.5
    stub.default = ok("I cannot decide.")
    [malformed] = judge.judge_pairs([PROMPT], [A], [B])
    assert malformed.failure == "malformed" and malformed.p_a is None
    retries = [b for b in stub.bodies[-4:] if "seed" in b]
    assert len(retries) == 2 and all(b["temperature"] > 0 for b in retries)  # one re-ask per order
    stub.default = ok("")
    assert judge.judge_pairs([PROMPT], [A], [B])[0].failure == "empty"
    stub.default = status(400, "context too long")
    [refused] = judge.judge_pairs([PROMPT], [A], [B])
    assert refused.failure == "http" and "context too long" in refused.detail


def test_http_judge_only_logprobs_fails_without_them(stub):
    stub.default = ok("A")
    [judgement] = http_judge(stub, use_logprobs=True, both_orders=False).judge_pairs(
        [PROMPT], [A], [B]
    )
    assert judgement.failure == "malformed" and "no log-probs" in judgement.detail


def test_http_judge_ratings(stub):
    stub.default = ok("Clear and correct. [[8]]")
    judge = http_judge(stub)
    assert judge.score_batch([PROMPT, PROMPT], [A, B]) == [8.0, 8.0]
    stub.default = ok("Fine.")
    with pytest.raises(Exception, match="rating of response 0") as raised:
        judge.score(PROMPT, A)
    assert raised.value.reason == "malformed"


def test_load_judge_openai_spec_with_cache(stub, tmp_path):
    options = dict(judge_model="judge", cache=str(tmp_path / "cache.sqlite"), retries=0)
    first = load_judge(f"openai:{stub.url}", **options).compare(PROMPT, A, B)
    again = load_judge(f"openai:{stub.url}", **options).compare(PROMPT, A, B)
    assert first == again and stub.hits == 2  # the second judge read both orders from disk


def test_http_generator_asks_again_when_a_server_gives_fewer_choices(stub):
    def one_choice(body):
        return Answer(200, completion(f"reply seed={body.get('seed')} n={body['n']}"))

    stub.default = one_choice
    generator = HTTPGenerator(OpenAIEndpoint(stub.url, "gen", retries=0))
    [replies] = generator.generate([PROMPT], n=3, max_new_tokens=5, temperature=0.8, seed=4)
    assert replies == ["reply seed=4 n=3", "reply seed=5 n=2", "reply seed=6 n=1"]
    assert stub.bodies[0]["max_tokens"] == 5 and stub.bodies[0]["messages"] == PROMPT
    stub.default = ok("one", "two")
    assert generator.generate([PROMPT, PROMPT], n=2) == [["one", "two"], ["one", "two"]]


# ---- against alignkit's own server -------------------------------------------------------


@pytest.fixture(scope="module")
def letter_model(tokenizer):
    """A tiny model whose output head is zero except for the option letters, set so that
    for the pair (A, B) below the first reply token has logits "A": 5, "B": 4, " A": 3
    and 0 for every other token: the letters are then among the top alternatives."""
    model = tiny_model(seed=3, tokenizer=tokenizer, tie_word_embeddings=False).eval()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": pairwise_prompt(PROMPT, A, B)}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hidden = model.model(torch.tensor([ids])).last_hidden_state[0, -1]
        head = model.lm_head.weight
        head.zero_()
        for letter, logit in {"A": 5.0, "B": 4.0, " A": 3.0}.items():
            head[token(tokenizer, letter)] = logit * hidden / hidden.dot(hidden)
    return model


@pytest.fixture(scope="module")
def served(letter_model, tokenizer):
    """`alignkit serve`'s app over the letter model, run by uvicorn on a free local port."""
    pytest.importorskip("alignkit.serve.app")
    import socket
    import threading
    import time

    import uvicorn

    from alignkit.serve.app import create_app
    from alignkit.serve.engine import Engine

    engine = Engine(letter_model, tokenizer)
    app = create_app(engine, "tiny", api_key="sesame", default_max_tokens=16)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


def test_http_judge_against_alignkit_serve(served, letter_model, tokenizer, tmp_path):
    """Through our own server, the judge's log-prob reading equals the one computed from
    the model's logits: the probabilities of the tokens spelling each letter among the
    first token's top 20 alternatives, normalised. Verdict requests, retries with a seed,
    generation with n and seed, and a wrong API key go over the same wire."""
    endpoint = OpenAIEndpoint(served, "tiny", api_key="sesame", timeout=60.0, retries=1)
    judge = HTTPJudge(endpoint, use_logprobs=True, both_orders=False)
    [judgement] = judge.judge_pairs([PROMPT], [A], [B])
    probs = next_token_probs(letter_model, tokenizer, pairwise_prompt(PROMPT, A, B), "")
    letters = {"A": 0.0, "B": 0.0}
    for i in probs.topk(20).indices.tolist():
        letter = tokenizer.decode([i]).strip()
        if letter in letters:
            letters[letter] += float(probs[i])
    expected = letters["A"] / (letters["A"] + letters["B"])
    e = torch.tensor([5.0, 4.0, 3.0], dtype=torch.float64).exp()
    assert expected == pytest.approx(float((e[0] + e[2]) / e.sum()), abs=1e-4)
    assert judgement.ok and judgement.p_a == pytest.approx(expected, abs=1e-4)

    verdicts = HTTPJudge(endpoint, use_logprobs=False, max_tokens=8).judge_pairs([PROMPT], [A], [B])
    assert verdicts[0].ok or verdicts[0].failure in ("malformed", "empty")  # asked and read

    generator = HTTPGenerator(
        OpenAIEndpoint(served, "tiny", api_key="sesame", cache=tmp_path / "gen.sqlite")
    )
    replies = generator.generate([PROMPT], n=2, max_new_tokens=5, temperature=1.0, seed=3)
    assert len(replies[0]) == 2 and replies[0][0] != replies[0][1]

    wrong_key = HTTPJudge(OpenAIEndpoint(served, "tiny", api_key="wrong", retries=3))
    [refused] = wrong_key.judge_pairs([PROMPT], [A], [B])
    assert refused.failure == "http" and "API key" in refused.detail

"""The OpenAI-compatible HTTP API over an `Engine`: `/v1/chat/completions`,
`/v1/completions` (plain or streamed as server-sent events), `/v1/models`, `/health`.

Every client error is a 400 (401 without the API key) with OpenAI's error body
`{"error": {"message", "type", "param", "code"}}`; an unexpected failure is a 500 with
the same body and no traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from alignkit.rollout.sampling import SamplingSettings
from alignkit.serve.engine import Choice, Engine, choice_settings
from alignkit.serve.engine import Request as EngineRequest
from alignkit.serve.schemas import ChatCompletionBody, CompletionBody
from alignkit.serve.text import TextStream, visible_text

log = logging.getLogger("alignkit")


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, kind: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def create_app(
    engine: Engine,
    model_name: str,
    *,
    api_key: str | None = None,
    default_max_tokens: int = 256,
) -> FastAPI:
    """The app serving `engine`'s model as `model_name`. `api_key`: required as
    `Authorization: Bearer <key>` on every route but /health."""
    app = FastAPI(title="alignkit serve", docs_url=None, redoc_url=None)
    app.state.engine = engine
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_request, err: ApiError):
        kind = "authentication_error" if err.status == 401 else "invalid_request_error"
        return JSONResponse(error_body(err.message, kind, err.param, err.code), err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, err: RequestValidationError):
        return JSONResponse(_validation_body(err), 400)

    @app.exception_handler(Exception)
    async def _unexpected(_request, err: Exception):
        log.exception("request failed")
        return JSONResponse(error_body(f"internal error: {err}", "server_error"), 500)

    if api_key:
        app.add_middleware(_RequireKey, api_key=api_key)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "engine": engine.stats()}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {"id": model_name, "object": "model", "created": created, "owned_by": "alignkit"}
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionBody):
        _check_model(body.model, model_name)
        prompt_ids = engine.encoder.encode_prompt(body.conversation())
        settings = _settings(body, [prompt_ids], engine, default_max_tokens)
        job = _Job(engine, [prompt_ids], settings, body.n, body.stop_strings(), body.stream)
        if body.stream:
            return _sse(_chat_chunks(job, model_name))
        choices = await job.results()
        return {
            "id": job.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": job.text(choice)},
                    "logprobs": _chat_logprobs(engine, choice, body.top_logprobs)
                    if body.logprobs
                    else None,
                    "finish_reason": job.finish_reason(choice),
                }
                for i, choice in enumerate(choices)
            ],
            "usage": job.usage(choices),
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        _check_model(body.model, model_name)
        tokenizer = engine.tokenizer
        prompts = [
            tokenizer(text, add_special_tokens=False)["input_ids"] for text in body.prompts()
        ]
        settings = _settings(body, prompts, engine, default_max_tokens)
        job = _Job(engine, prompts, settings, body.n, body.stop_strings(), body.stream)
        if body.stream:
            return _sse(_completion_chunks(job, model_name))
        choices = await job.results()
        return {
            "id": job.id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {
                    "index": i,
                    "text": job.text(choice),
                    "logprobs": _completion_logprobs(engine, choice, body.logprobs)
                    if body.logprobs is not None
                    else None,
                    "finish_reason": job.finish_reason(choice),
                }
                for i, choice in enumerate(choices)
            ],
            "usage": job.usage(choices),
        }

    return app


class _RequireKey:
    """ASGI middleware: every HTTP route but /health needs `Authorization: Bearer KEY`.
    (A plain ASGI class: Starlette's BaseHTTPMiddleware costs a task group per request.)"""

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        if dict(scope["headers"]).get(b"authorization") == self.expected:
            return await self.app(scope, receive, send)
        body = error_body(
            "missing or wrong API key (send 'Authorization: Bearer <key>')",
            "authentication_error",
            code="invalid_api_key",
        )
        await JSONResponse(body, 401)(scope, receive, send)


# ---- requests -> engine -------------------------------------------------------------


def _check_model(requested: str, served: str) -> None:
    if requested != served:
        raise ApiError(
            400,
            f"unknown model {requested!r}; this server serves {served!r}",
            "model",
            "model_not_found",
        )


def _settings(body, prompts: list[list[int]], engine: Engine, default_max_tokens: int):
    """Sampling settings for the body's prompts, after checking they fit the context."""
    longest = max(len(p) for p in prompts)
    limit = body.token_limit()
    if engine.context is not None:
        room = engine.context - longest
        if room <= 0:
            raise ApiError(
                400,
                f"the prompt is {longest} tokens; the model's context is {engine.context}",
                "messages" if isinstance(body, ChatCompletionBody) else "prompt",
                "context_length_exceeded",
            )
        if limit is not None and limit > room:
            raise ApiError(
                400,
                f"max_tokens={limit} does not fit: the prompt is {longest} tokens and the "
                f"model's context is {engine.context} (at most {room} new tokens)",
                "max_tokens",
                "context_length_exceeded",
            )
        limit = limit or min(default_max_tokens, room)
    return SamplingSettings(
        max_new_tokens=limit or default_max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop_strings=body.stop_strings(),
        seed=body.seed,
        top_logprobs=body.top_count(),
    )


class _Job:
    """One HTTP request on the engine: a request per prompt, n choices each, all of them
    reporting to one event queue with choice index prompt * n + choice."""

    def __init__(self, engine: Engine, prompts, settings: SamplingSettings, n: int, stops, stream):
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.engine, self.n, self.stops = engine, n, stops
        self.events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.requests = [
            EngineRequest(
                prompt, choice_settings(settings, n), stream, loop, _Offset(self.events, k * n)
            )
            for k, prompt in enumerate(prompts)
        ]
        self.prompt_tokens = sum(len(p) for p in prompts) * n
        for request in self.requests:
            engine.submit(request)

    def cancel(self) -> None:
        for request in self.requests:
            request.cancelled.set()

    async def events_until_done(self) -> AsyncIterator[tuple]:
        """("token", choice, token_id) events, then ("done", choices in order)."""
        done: dict[int, list[Choice]] = {}
        try:
            while len(done) < len(self.requests):
                event = await self.events.get()
                if event[0] == "error":
                    raise ApiError(500, f"sampling failed: {event[1]}")
                if event[0] == "done":
                    offset, choices = event[1], event[2]
                    done[offset] = choices
                else:
                    yield event
            yield ("done", [c for offset in sorted(done) for c in done[offset]])
        finally:
            if len(done) < len(self.requests):  # the client left: free its rows
                self.cancel()

    async def results(self) -> list[Choice]:
        async for event in self.events_until_done():
            if event[0] == "done":
                return event[1]
        raise RuntimeError("unreachable")

    def text(self, choice: Choice) -> str:
        return visible_text(self.engine.tokenizer, choice.token_ids, self.stops)[0]

    def finish_reason(self, choice: Choice) -> str:
        return "stop" if choice.finished else "length"

    def usage(self, choices: list[Choice]) -> dict:
        completion = sum(len(c.token_ids) for c in choices)
        return {
            "prompt_tokens": self.prompt_tokens // self.n,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens // self.n + completion,
        }


class _Offset:
    """An engine request's event sink: tags its events with the request's first choice
    index and forwards them to the job's queue."""

    def __init__(self, events: asyncio.Queue, offset: int):
        self.events, self.offset = events, offset

    def put_nowait(self, event: tuple) -> None:
        kind = event[0]
        if kind == "token":
            self.events.put_nowait(("token", self.offset + event[1], event[2]))
        elif kind == "done":
            self.events.put_nowait(("done", self.offset, event[1]))
        else:
            self.events.put_nowait(event)


# ---- streaming ----------------------------------------------------------------------


def _sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    async def lines():
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream")


async def _streamed(job: _Job) -> AsyncIterator[tuple[int, str, str | None]]:
    """(choice, text delta, finish_reason or None) as tokens arrive; a last delta and
    the finish reason per choice at the end."""
    total = len(job.requests) * job.n
    streams = [TextStream(job.engine.tokenizer, job.stops) for _ in range(total)]
    async for event in job.events_until_done():
        if event[0] == "token":
            _, index, token = event
            delta = streams[index].push(token)
            if delta:
                yield index, delta, None
        else:
            for index, choice in enumerate(event[1]):
                yield index, streams[index].finish(), job.finish_reason(choice)


async def _chat_chunks(job: _Job, model_name: str):
    created = int(time.time())

    def chunk(index: int, delta: dict, finish: str | None) -> dict:
        return {
            "id": job.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
        }

    for index in range(len(job.requests) * job.n):
        yield chunk(index, {"role": "assistant", "content": ""}, None)
    async for index, text, finish in _streamed(job):
        yield chunk(index, {"content": text} if text else {}, finish)


async def _completion_chunks(job: _Job, model_name: str):
    created = int(time.time())
    async for index, text, finish in _streamed(job):
        yield {
            "id": job.id,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}],
        }


# ---- log-probs in OpenAI's two formats --------------------------------------------------


def _shown_tokens(engine: Engine, choice: Choice) -> range:
    """Positions of the tokens whose text the client sees (the ending EOS is not)."""
    length = len(choice.token_ids)
    if length and choice.finished and choice.token_ids[-1] in engine.eos_ids:
        length -= 1
    return range(length)


def _token_entry(tokenizer, token_id: int, logprob: float) -> dict:
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _chat_logprobs(engine: Engine, choice: Choice, top: int) -> dict:
    tokenizer = engine.tokenizer
    content = []
    for t in _shown_tokens(engine, choice):
        entry = _token_entry(tokenizer, choice.token_ids[t], choice.logprobs[t])
        ids, logps = choice.top[t]
        entry["top_logprobs"] = [
            _token_entry(tokenizer, i, lp) for i, lp in zip(ids[:top], logps[:top], strict=True)
        ]
        content.append(entry)
    return {"content": content}


def _completion_logprobs(engine: Engine, choice: Choice, top: int) -> dict:
    tokenizer = engine.tokenizer
    tokens, logprobs, tops, offsets, offset = [], [], [], [], 0
    for t in _shown_tokens(engine, choice):
        text = tokenizer.decode([choice.token_ids[t]])
        tokens.append(text)
        logprobs.append(choice.logprobs[t])
        ids, logps = choice.top[t]
        tops.append(
            {tokenizer.decode([i]): lp for i, lp in zip(ids[:top], logps[:top], strict=True)}
        )
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _validation_body(err: RequestValidationError) -> dict:
    """A pydantic error list as one readable OpenAI-style message."""
    problems = []
    param = None
    for problem in err.errors():
        location = [str(part) for part in problem.get("loc", ()) if part != "body"]
        param = param or (location[0] if location else None)
        where = ".".join(location) or "body"
        message = problem.get("msg", "invalid")
        if problem.get("type") == "json_invalid":
            where, message = "body", "the request body is not valid JSON"
        problems.append(f"{where}: {message}")
    return error_body("; ".join(problems) or "invalid request", "invalid_request_error", param)

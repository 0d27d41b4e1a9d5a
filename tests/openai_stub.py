"""A real HTTP server (stdlib `http.server`, in a thread on 127.0.0.1) that answers
`POST /v1/chat/completions` the way a test scripts it: a reply, an error status, a slow
reply, a body that is not JSON. It counts requests and keeps their bodies, so tests can
check retries and caching against real sockets. A test fixture, not a mock of alignkit.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    status: int = 200
    payload: dict | str = ""
    delay: float = 0.0
    headers: dict = field(default_factory=dict)


Responder = Callable[[dict], Answer]


def completion(*contents: str, logprobs: dict[str, float] | None = None) -> dict:
    """A chat completion with one choice per content; `logprobs`: {token: probability}
    for the first token's top_logprobs (the first entry is the token generated)."""
    choices = []
    for index, content in enumerate(contents):
        choice = {
            "index": index,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }
        if logprobs is not None:
            top = [{"token": t, "logprob": math.log(p)} for t, p in logprobs.items()]
            choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
        choices.append(choice)
    return {"id": "stub", "object": "chat.completion", "model": "stub", "choices": choices}


def ok(*contents: str, logprobs: dict[str, float] | None = None) -> Responder:
    return lambda body: Answer(200, completion(*contents, logprobs=logprobs))


def status(code: int, message: str = "scripted error", headers: dict | None = None) -> Responder:
    return lambda body: Answer(code, {"error": {"message": message}}, headers=headers or {})


def slow(seconds: float) -> Responder:
    return lambda body: Answer(200, completion("late"), delay=seconds)


def not_json() -> Responder:
    return lambda body: Answer(200, "<html>proxy error</html>")


class StubServer:
    """`script`: responders used one per request, in order; then `default`."""

    def __init__(self, default: Responder | None = None):
        self.default = default or ok("[[C]]")
        self.script: list[Responder] = []
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with stub.lock:
                    stub.bodies.append(body)
                    responder = stub.script.pop(0) if stub.script else stub.default
                answer = responder(body)
                if answer.delay:
                    time.sleep(answer.delay)
                data = (
                    answer.payload.encode()
                    if isinstance(answer.payload, str)
                    else json.dumps(answer.payload).encode()
                )
                try:
                    self.send_response(answer.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in answer.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def hits(self) -> int:
        with self.lock:
            return len(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

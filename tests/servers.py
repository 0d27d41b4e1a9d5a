"""`alignkit serve`'s app run by uvicorn in a thread of the test process, on a free port
of 127.0.0.1, so tests can reach the engine behind it."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(model, tokenizer, name: str = "tiny", *, api_key=None, engine_options=None, **app):
    """Yields (base URL ending in /v1, engine) while the server runs."""
    import uvicorn

    from alignkit.serve.app import create_app
    from alignkit.serve.engine import Engine

    engine = Engine(model, tokenizer, **(engine_options or {}))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(engine, name, api_key=api_key, **app),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1", engine
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()

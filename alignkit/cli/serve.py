"""`alignkit serve --model M [--host H] [--port P] [--api-key K]`: an OpenAI-compatible
server for any model the loader accepts."""

from __future__ import annotations

import os

from alignkit.models.builtin import DEFAULT_MODEL


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description=(
            "Serve a model (an alignkit run's folder, a Hugging Face folder or a built-in name) "
            "at /v1/chat/completions, /v1/completions, /v1/models and /health. Concurrent "
            "requests are sampled together in one batch."
        ),
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"default {DEFAULT_MODEL}")
    parser.add_argument(
        "--served-name", default=None, help="the name clients pass as model (default: --model)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ALIGNKIT_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $ALIGNKIT_API_KEY; none: open)",
    )
    parser.add_argument("--max-batch", type=int, default=16, help="completions sampled together")
    parser.add_argument(
        "--gather-ms", type=float, default=10.0, help="wait this long for more requests to batch"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=256, help="new tokens when a request sets no max_tokens"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.set_defaults(run=run)


def run(args) -> int:
    import uvicorn

    from alignkit.models.loading import load_model_and_tokenizer
    from alignkit.serve.app import create_app
    from alignkit.serve.engine import Engine

    model, tokenizer = load_model_and_tokenizer(args.model, device=args.device, dtype=args.dtype)
    engine = Engine(model, tokenizer, max_rows=args.max_batch, gather_ms=args.gather_ms)
    name = args.served_name or str(args.model)
    app = create_app(engine, name, api_key=args.api_key, default_max_tokens=args.max_tokens)
    print(f"serving {name} at http://{args.host}:{args.port}/v1", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.close()
    return 0

"""`alignkit chat --model M [--prompt TEXT ...]`: one-shot replies or an interactive loop."""

from __future__ import annotations

import sys

from alignkit.models.builtin import DEFAULT_MODEL


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat", help="talk to a model (one-shot with --prompt, else interactive)"
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"built-in name, folder or .gguf (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--prompt", action="append", help="reply to this and exit; repeat for several prompts"
    )
    parser.add_argument("--system", help="system message")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples"
    )
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.set_defaults(run=run)


def run(args) -> int:
    from alignkit.models.loading import load_model_and_tokenizer
    from alignkit.serve.chat import ChatSession, GenerationSettings, generate_replies

    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    model, tokenizer = load_model_and_tokenizer(args.model, device=args.device, dtype=args.dtype)
    if args.prompt:
        system = [{"role": "system", "content": args.system}] if args.system else []
        conversations = [system + [{"role": "user", "content": prompt}] for prompt in args.prompt]
        replies = generate_replies(model, tokenizer, conversations, settings)
        if len(replies) == 1:
            print(replies[0])
        else:
            for prompt, reply in zip(args.prompt, replies, strict=True):
                print(f"> {prompt}\n{reply}\n")
        return 0
    session = ChatSession(model, tokenizer, settings, system=args.system)
    print(
        f"chatting with {args.model}; /reset clears the history, /exit or Ctrl-D quits",
        file=sys.stderr,
    )
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            session.reset()
            continue
        if text:
            print(f"assistant> {session.ask(text)}", flush=True)

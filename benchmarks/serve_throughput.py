"""`alignkit serve` throughput: requests/s and tokens/s at concurrency 1 and 8.

A real `alignkit serve` process on 127.0.0.1; clients are threads of this process using
the official `openai` client, each sending chat requests back to back (the same set of
prompts at every concurrency; every request asks for exactly `--max-tokens` tokens:
sampled at temperature 1 with `ignore_eos`-free prompts on a random tiny model, which
practically never emits EOS, or whatever the real model produces with `--model`).
Concurrent requests are gathered by the server's scheduler into one batched decode, so
concurrency 8 should serve several times the requests per second of concurrency 1.

Run with `make bench-serve` (tiny model) or
`python benchmarks/serve_throughput.py --model smollm2-135m-instruct`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model_folder(root: Path) -> Path:
    from alignkit.models.tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    folder = root / "tiny"
    tiny_model(seed=0, tokenizer=tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def start_server(model: str, port: int, max_batch: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "alignkit", "-q", "serve", "--model", model, "--port", str(port)]
        + ["--served-name", "bench", "--max-batch", str(max_batch)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("alignkit serve did not start")
        time.sleep(0.2)


def run_clients(client, prompts: list[str], concurrency: int, max_tokens: int) -> dict:
    def one(i: int) -> int:
        reply = client.chat.completions.create(
            model="bench",
            messages=[{"role": "user", "content": prompts[i]}],
            max_tokens=max_tokens,
            temperature=1.0,
            seed=i,
        )
        return reply.usage.completion_tokens

    before = engine_stats(client)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(len(prompts))))
    seconds = time.perf_counter() - start
    after = engine_stats(client)
    batches = after["batches"] - before["batches"]
    return {
        "concurrency": concurrency,
        "requests": len(prompts),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(prompts) / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "completion_tokens": tokens,
        "mean_batch": round((after["completions"] - before["completions"]) / batches, 2),
    }


def engine_stats(client) -> dict:
    base = str(client.base_url).removesuffix("/").removesuffix("/v1")
    return httpx.get(f"{base}/health").json()["engine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: a random tiny model")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", default="benchmarks/results/serve_throughput.json")
    args = parser.parse_args()
    prompts = [
        f"Tell me about river number {i} and the towns along it." for i in range(args.requests)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(tiny_model_folder(Path(tmp)))
        port = free_port()
        server = start_server(model, port, max_batch=max(args.concurrency))
        try:
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600
            )
            run_clients(client, prompts[:2], 1, args.max_tokens)  # warm-up
            results = [run_clients(client, prompts, c, args.max_tokens) for c in args.concurrency]
        finally:
            server.terminate()
            server.wait(timeout=60)
    base = results[0]["requests_per_s"]
    for row in results:
        row["speedup_vs_first"] = round(row["requests_per_s"] / base, 2)
        print(
            f"concurrency {row['concurrency']:>2}: {row['requests_per_s']:7.2f} req/s "
            f"{row['tokens_per_s']:8.1f} tok/s  ({row['speedup_vs_first']:.2f}x), "
            f"mean batch {row['mean_batch']}"
        )
    report = {
        "model": args.model or "tiny random Llama (2 layers, hidden 64, SmolLM2 tokenizer)",
        "max_tokens": args.max_tokens,
        "cpu_threads": os.cpu_count(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()

"""Concurrent streaming requests on one client key through the OpenAI-compatible gateway, measured in the
same run against the same requests served one at a time (the gateway's old behaviour: one job per key).

Starts a local marketplace (SmolLM2-135M-Instruct by default, three node processes), serves the gateway
(client_sdk.openai_api) in this process over one Client, and sends N streaming chat requests at once with
the official `openai` package, twice: with `jobs_per_key=1` (serialized: the baseline) and with
`jobs_per_key=N`. Per mode: wall seconds for all N, aggregate tokens/s, the mean number of streams active
(sum of each stream's first-to-last-token time / wall time) and the peak. Every answer is checked to equal
the serialized one (greedy, epsilon inf). Writes bench/results/gateway_concurrency.json.

Run: .venv/bin/python bench/bench_gateway_concurrency.py [--streams 4] [--tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from client_sdk import Client
from client_sdk.openai_api import MODEL_NAME, EndpointConfig, create_app
from splitmesh.chain import free_port
from splitmesh_cli.localnet import CLIENT_KEY, SPLIT, start_market, stop_market

QUESTIONS = [
    "Why is the sky blue?",
    "Write a haiku about rain.",
    "Name three prime numbers.",
    "What is a blockchain?",
    "How do plants make food?",
    "Say hello in Spanish.",
    "What is 12 times 12?",
    "Describe a cat.",
]
RESULT = Path(__file__).parent / "results" / "gateway_concurrency.json"


def serve(client: Client, jobs_per_key: int) -> tuple[str, str, Callable[[], None]]:
    """The gateway on a free port, on its own loop in a thread: (base URL, model name, stop)."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app([client], EndpointConfig(jobs_per_key=jobs_per_key)), access_log=None)
    port, ready = free_port(), threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(60)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)

    return f"http://127.0.0.1:{port}/v1", runner.app[MODEL_NAME], stop


def one_stream(api: Any, model: str, question: str, tokens: int) -> dict[str, Any]:
    sent = time.perf_counter()
    stream = api.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, times, used = [], [], 0
    for c in stream:
        if c.choices and c.choices[0].delta.content:
            parts.append(c.choices[0].delta.content)
            times.append(time.perf_counter())
        if c.usage is not None:
            used = c.usage.completion_tokens
    return {"text": "".join(parts), "sent": sent, "first": times[0], "last": times[-1], "tokens": used}


def run_mode(client: Client, jobs_per_key: int, streams: int, tokens: int) -> dict[str, Any]:
    from openai import OpenAI

    url, model, stop = serve(client, jobs_per_key)
    try:
        api = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        one_stream(api, model, "Hi", 2)  # warm-up
        started = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            rows = list(pool.map(lambda q: one_stream(api, model, q, tokens), QUESTIONS[:streams]))
        wall = time.perf_counter() - started
    finally:
        stop()
    edges = sorted([(r["first"], 1) for r in rows] + [(r["last"], -1) for r in rows])
    active = peak = 0
    for _, step in edges:
        active += step
        peak = max(peak, active)
    generated = sum(r["tokens"] for r in rows)
    return {
        "jobs_per_key": jobs_per_key,
        "wall_s": round(wall, 3),
        "aggregate_tokens_per_s": round(generated / wall, 2),
        "mean_active_streams": round(sum(r["last"] - r["first"] for r in rows) / wall, 3),
        "peak_active_streams": peak,
        "time_to_first_token_s": sorted(round(r["first"] - r["sent"], 3) for r in rows),
        "texts": [r["text"] for r in rows],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=4, help="requests sent at once (at most 8)")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per request")
    parser.add_argument("--model", help="local model directory (default SmolLM2-135M-Instruct)")
    parser.add_argument("--split", type=int, default=SPLIT)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="splitmesh-bench-gateway-"))
    print(f"starting chain and {args.nodes} node processes ...", file=sys.stderr, flush=True)
    running = start_market(tmp, model=args.model, split=args.split, nodes=args.nodes)
    try:
        client = Client(running.rpc_url, CLIENT_KEY, args.model, market=running.deployment.market)
        serial = run_mode(client, 1, args.streams, args.tokens)
        concurrent = run_mode(client, args.streams, args.streams, args.tokens)
    finally:
        stop_market(running)
    result = {
        "model": args.model or "SmolLM2-135M-Instruct",
        "nodes": args.nodes,
        "split": args.split,
        "streams": args.streams,
        "tokens": args.tokens,
        "client_keys": 1,
        "serialized_baseline": serial,
        "concurrent": concurrent,
        "speedup_aggregate_tokens_per_s": round(
            concurrent["aggregate_tokens_per_s"] / serial["aggregate_tokens_per_s"], 3
        ),
        "same_answers": serial.pop("texts") == concurrent.pop("texts"),
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

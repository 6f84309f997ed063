"""The OpenAI-compatible endpoint's overhead vs calling the SDK directly, measured in the same run.

Starts a local marketplace (SmolLM2-135M-Instruct by default, three node processes), serves the
endpoint (client_sdk.openai_api) on 127.0.0.1 in this process with the same Client the direct calls
use, and alternates, per repeat and prompt, the same greedy job four ways:

- direct:   `Client.generate` / `Client.stream` (the baseline);
- endpoint: the official `openai` client, non-streaming and streaming (SSE).

Prints one JSON object: per mode the p50 of the whole request (seconds), of the time to the first token
(streaming) and the decode rate (tokens/s between the first and the last token), and the endpoint's
overhead against the baseline (milliseconds and ratio). Every answer is checked to equal the direct one.

Writes the object to bench/results/openai.json too, with the load average before and after.

Run: .venv/bin/python bench/bench_openai.py [--tokens 32] [--repeats 3] [--model DIR --split 2 --nodes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chainload import machine
from client_sdk import Client, Generation, TokenEvent
from client_sdk.openai_api import MODEL_NAME, create_app
from splitmesh.chain import free_port
from splitmesh_cli.localnet import CLIENT_KEY, SPLIT, start_market, stop_market

PROMPTS = [
    "Explain in three sentences why the sky is blue.",
    "Write a short poem about the sea.",
    "Give me three tips for learning a new language.",
]


def serve_in_thread(client: Client) -> tuple[str, str, Callable[[], None]]:
    """The endpoint on a free port, on its own event loop in a thread: (base URL, model name, stop)."""
    loop = asyncio.new_event_loop()
    app = create_app([client])
    runner = web.AppRunner(app, access_log=None)
    port = free_port()
    ready = threading.Event()

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
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)

    return f"http://127.0.0.1:{port}/v1", app[MODEL_NAME], stop


def rate(times: list[float]) -> float | None:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None


def direct(client: Client, prompt: str, tokens: int, split: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = client.generate([{"role": "user", "content": prompt}], tokens, temperature=0, split=split)
    return {"total": time.perf_counter() - t0, "text": out.text}


def direct_stream(client: Client, prompt: str, tokens: int, split: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    times: list[float] = []
    text = ""
    for event in client.stream([{"role": "user", "content": prompt}], tokens, temperature=0, split=split):
        if isinstance(event, TokenEvent):
            times.append(time.perf_counter())
        elif isinstance(event, Generation):
            text = event.text
    return {"total": time.perf_counter() - t0, "ttft": times[0] - t0, "rate": rate(times), "text": text}


def endpoint(api: Any, model: str, prompt: str, tokens: int, split: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    reply = api.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=tokens,
        temperature=0,
        extra_body={"splitmesh": {"split": split}},
    )
    return {"total": time.perf_counter() - t0, "text": reply.choices[0].message.content}


def endpoint_stream(api: Any, model: str, prompt: str, tokens: int, split: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    times: list[float] = []
    parts = []
    stream = api.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=tokens,
        temperature=0,
        stream=True,
        extra_body={"splitmesh": {"split": split}},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.perf_counter())
            parts.append(chunk.choices[0].delta.content)
    total = time.perf_counter() - t0
    return {
        "total": total,
        "ttft": times[0] - t0 if times else None,
        "rate": rate(times),
        "text": "".join(parts),
    }


def p50(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 4) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per job")
    parser.add_argument("--repeats", type=int, default=3, help="jobs per prompt and mode")
    parser.add_argument("--model", help="local model directory (default SmolLM2-135M-Instruct)")
    parser.add_argument("--split", type=int, default=SPLIT)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "openai.json")
    args = parser.parse_args()
    load_before = machine()
    from openai import OpenAI

    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix="splitmesh-bench-openai-"))
    log(f"starting chain, deploying, starting {args.nodes} node processes ...")
    running = start_market(tmp, model=args.model, split=args.split, nodes=args.nodes)
    try:
        client = Client(running.rpc_url, CLIENT_KEY, args.model, market=running.deployment.market)
        url, model, stop = serve_in_thread(client)
        api = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        direct(client, PROMPTS[0], 4, args.split)  # warm-up: caches, kernels, connections
        endpoint(api, model, PROMPTS[0], 4, args.split)
        rows: dict[str, list[dict[str, Any]]] = {
            m: [] for m in ("direct", "direct_stream", "api", "api_stream")
        }
        same = []
        for _ in range(args.repeats):
            for prompt in PROMPTS:
                runs = {
                    "direct": direct(client, prompt, args.tokens, args.split),
                    "api": endpoint(api, model, prompt, args.tokens, args.split),
                    "direct_stream": direct_stream(client, prompt, args.tokens, args.split),
                    "api_stream": endpoint_stream(api, model, prompt, args.tokens, args.split),
                }
                same.append(len({r["text"] for r in runs.values()}) == 1)
                for mode, row in runs.items():
                    rows[mode].append(row)
                log(f"  {prompt[:30]!r}: " + ", ".join(f"{m} {r['total']:.2f} s" for m, r in runs.items()))
        stop()
    finally:
        stop_market(running)
    summary = {m: {k: p50(r, k) for k in ("total", "ttft", "rate")} for m, r in rows.items()}

    def overhead(mode: str, base: str, key: str) -> dict[str, float | None]:
        a, b = summary[mode][key], summary[base][key]
        if a is None or b is None:
            return {"ms": None, "ratio": None}
        return {"ms": round((a - b) * 1e3, 2), "ratio": round(a / b, 4) if b else None}

    result = {
        "model": args.model or "SmolLM2-135M-Instruct",
        "nodes": args.nodes,
        "split": args.split,
        "tokens": args.tokens,
        "jobs_per_mode": len(rows["direct"]),
        "p50_seconds_and_tokens_per_s": summary,
        "overhead": {
            "request_non_streaming": overhead("api", "direct", "total"),
            "request_streaming": overhead("api_stream", "direct_stream", "total"),
            "time_to_first_token": overhead("api_stream", "direct_stream", "ttft"),
        },
        "decode_rate_ratio_streaming": (
            round(summary["api_stream"]["rate"] / summary["direct_stream"]["rate"], 4)
            if summary["api_stream"]["rate"] and summary["direct_stream"]["rate"]
            else None
        ),
        "answers_identical": all(same),
        "machine_before": load_before,
        "machine_after": machine(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())

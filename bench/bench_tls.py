"""What TLS pinned to the node's on-chain key costs on loopback, against plaintext measured in the same run.

A server process (aiohttp, the node's stack) echoes WebSocket messages on two ports: one plaintext, one
TLS with a node identity made by splitmesh.wire.tls. This process connects with the client's real
`BlockingWebSocket` and measures (1) opening a connection (TCP + TLS 1.3 handshake + WebSocket upgrade,
then close) and (2) one step round trip on an open connection for a decode step's frame (1 token) and a
64-token prefill's frame (SmolLM2 hidden 576, float32). Prints JSON with medians and TLS/plain ratios;
no assertions. Usage: OMP_NUM_THREADS=1 python bench/bench_tls.py [--connections N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from splitmesh.wire import encode_frame
from splitmesh.wire.tls import ZERO_KEY, link_ssl, load_or_create_identity
from splitmesh.wire.websocket import BlockingWebSocket

SHAPES = {"decode_step": (1, 1, 576), "prefill_64": (1, 64, 576)}  # [batch, seq, hidden]
SERVER = """
import asyncio, sys
from pathlib import Path
from aiohttp import web
from splitmesh.wire.tls import load_or_create_identity

async def echo(request):
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for message in ws:
        await ws.send_bytes(message.data)
    return ws

async def main():
    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    plain = web.TCPSite(runner, "127.0.0.1", 0)
    context = load_or_create_identity(Path(sys.argv[1])).server_context()
    tls = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await plain.start(); await tls.start()
    ports = [s._server.sockets[0].getsockname()[1] for s in (plain, tls)]
    print(*ports, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def connect_ms(url: str, pin: Any, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        BlockingWebSocket(url, ssl=pin).close()
        times.append((time.perf_counter() - started) * 1000)
    return times


def step_ms(url: str, pin: Any, frame: bytes, count: int) -> list[float]:
    with BlockingWebSocket(url, ssl=pin, max_msg_size=0) as ws:
        for _ in range(5):  # warm up
            ws.send(frame)
            ws.receive(10)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            ws.send(frame)
            ws.receive(10)
            times.append((time.perf_counter() - started) * 1000)
    return times


def summary(plain: list[float], tls: list[float]) -> dict[str, float]:
    p, t = statistics.median(plain), statistics.median(tls)
    return {
        "plain_ms": round(p, 4),
        "tls_ms": round(t, 4),
        "extra_ms": round(t - p, 4),
        "ratio": round(t / p, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    os.environ.setdefault("SPLITMESH_ALLOW_PLAINTEXT", "1")  # the baseline link is plaintext on purpose
    with tempfile.TemporaryDirectory() as tmp:
        identity = load_or_create_identity(Path(tmp) / "tls")
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(Path(tmp) / "tls")], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            plain_port, tls_port = (int(p) for p in server.stdout.readline().split())
            plain_url, tls_url = f"ws://127.0.0.1:{plain_port}/ws", f"wss://127.0.0.1:{tls_port}/ws"
            plain_pin, tls_pin = link_ssl(plain_url, ZERO_KEY), link_ssl(tls_url, identity.fingerprint)
            connect_ms(tls_url, tls_pin, 5)  # warm up imports and the server
            result: dict[str, Any] = {
                "bench": "tls_links",
                "python": platform.python_version(),
                "torch_threads": torch.get_num_threads(),
                "connections": args.connections,
                "steps": args.steps,
                "connect": summary(
                    connect_ms(plain_url, plain_pin, args.connections),
                    connect_ms(tls_url, tls_pin, args.connections),
                ),
            }
            for name, shape in SHAPES.items():
                frame = encode_frame(torch.randn(shape), {"job": 1, "step": 0})
                result[name] = {
                    "frame_bytes": len(frame),
                    **summary(
                        step_ms(plain_url, plain_pin, frame, args.steps),
                        step_ms(tls_url, tls_pin, frame, args.steps),
                    ),
                }
        finally:
            server.terminate()
            server.wait(10)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

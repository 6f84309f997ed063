"""Network trips per token and loopback per-hop overhead: the old return path vs direct return.

Phase 1 (trips): a local chain and three SmolLM2 node processes, each behind a latency-adding TCP proxy
(bench/latency_proxy.py) that it announces with --public-url, so every link (client -> node 1, node ->
next node, last node -> client's return channel) crosses one. Greedy generations run at 0 and at
each of `--delays-ms` one-way delays, with the old return path (results back along the route) and with direct
return, interleaved in the same run. One-way trips per token = (decode step p50 at the delay - at 0) /
delay (on a loaded machine the larger delay gives the steadier figure). The proxies also count the
messages crossing them per decode step, which does not depend on the load. Goal: m + 1 = 4 for 3 nodes
(the old path: 2m = 6).

Phase 2 (loopback overhead): a fresh market without proxies; per-hop overhead = (route time of a decode
step - the nodes' layer time) / hops, p50, both paths. Goal: toward 0.3 ms.

Prints one JSON object and writes bench/results/wan.json, with os.getloadavg() before and after (the
machine is shared: read timings against the load).

Run: .venv/bin/python -m bench.bench_wan [--tokens 16] [--repeats 2] [--delays-ms 10,40]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.latency_proxy import ProxyFront
from client_sdk import Client, Generation, NodeUnavailable, StepFailed, TokenEvent
from client_sdk.failover import FailoverPolicy
from splitmesh_cli.localnet import CLIENT_KEY, SPLIT, start_market, stop_market

PROMPT = "Write a short poem about the sea."
RESULTS = Path(__file__).parent / "results" / "wan.json"
MODES = {"old_path": False, "direct": True}
ATTEMPTS = 3  # a generation that fails (a link dropped on the loaded machine) is run again, and counted
FAILED: list[str] = []  # why generations failed, for the JSON


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def generate(client: Client, tokens: int, direct: bool, front: ProxyFront | None = None) -> dict[str, Any]:
    for attempt in range(ATTEMPTS):
        try:
            return _generate(client, tokens, direct, front)
        except (StepFailed, NodeUnavailable) as exc:
            FAILED.append(f"{'direct' if direct else 'old_path'}: {exc}")
            log(f"  generation failed ({exc}); attempt {attempt + 2} of {ATTEMPTS}")
    raise RuntimeError(f"{ATTEMPTS} generations failed in a row: {FAILED[-ATTEMPTS:]}")


def _generate(client: Client, tokens: int, direct: bool, front: ProxyFront | None) -> dict[str, Any]:
    """One greedy generation; with `front`, the messages that crossed the proxies per decode step
    (counted between the first and the last token, so handshakes, prefill and end are left out)."""
    crossings = None
    no_failover = FailoverPolicy(max_failovers=0)  # one node per shard: a ban would leave no route
    events = client.stream(
        PROMPT, tokens, split=SPLIT, epsilon=math.inf, direct_return=direct, failover=no_failover
    )
    for event in events:
        if isinstance(event, TokenEvent) and front is not None:
            if event.index == 0:
                front.reset_counts()
            elif event.index == tokens - 1:
                crossings = front.crossings() / (tokens - 1)
        elif isinstance(event, Generation):
            out = event
    steps = out.receipt.steps
    decode = range(1, len(steps.route))
    return {
        "tokens": out.token_ids,
        "step_ms": [
            (steps.head[i] + steps.privacy[i] + steps.route[i] + steps.tail[i]) * 1e3 for i in decode
        ],
        "route_ms": [steps.route[i] * 1e3 for i in decode],
        "hop_overhead_ms": steps.hop_overhead_ms(),
        "node_local_ms": steps.node_local_ms(),
        "crossings_per_token": crossings,
    }


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def trips_phase(tokens: int, repeats: int, delays: list[float]) -> dict[str, Any]:
    front = ProxyFront(delay=0.0)
    tmp = Path(tempfile.mkdtemp(prefix="splitmesh-wan-"))
    log("phase 1: chain, 3 SmolLM2 nodes behind latency proxies ...")
    running = start_market(tmp, customize=front)
    try:
        client = Client(running.rpc_url, CLIENT_KEY, market=running.deployment.market)
        generate(client, 4, True)  # warm-up: caches, connections, the client's model
        runs: dict[tuple[str, float], list[dict[str, Any]]] = {}
        for repeat in range(repeats):
            for seconds in (0.0, *delays):
                front.set_delay(seconds)
                for mode, direct in MODES.items():
                    log(f"  repeat {repeat}: {mode} at {seconds * 1e3:g} ms")
                    runs.setdefault((mode, seconds), []).append(generate(client, tokens, direct, front))
        out: dict[str, Any] = {}
        for mode in MODES:
            at0 = p50([s for r in runs[(mode, 0.0)] for s in r["step_ms"]])
            row: dict[str, Any] = {"decode_step_ms_p50_at_0": at0}
            for seconds in delays:
                at = p50([s for r in runs[(mode, seconds)] for s in r["step_ms"]])
                row[f"decode_step_ms_p50_at_{seconds * 1e3:g}ms"] = at
                row[f"one_way_trips_per_token_at_{seconds * 1e3:g}ms"] = round(
                    (at - at0) / (seconds * 1e3), 2
                )
            # Load-independent: messages that crossed a proxy per decode step (each is one one-way trip).
            counted = [r["crossings_per_token"] for key, rs in runs.items() if key[0] == mode for r in rs]
            row["proxy_crossings_per_token_p50"] = p50([c for c in counted if c is not None])
            out[mode] = row
        token_sets = {tuple(r["tokens"]) for rs in runs.values() for r in rs}
        out["identical_tokens_across_modes_and_delays"] = len(token_sets) == 1
        return out
    finally:
        stop_market(running)
        front.close()


def overhead_phase(tokens: int, repeats: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="splitmesh-loopback-"))
    log("phase 2: a fresh chain and 3 SmolLM2 nodes on plain loopback ...")
    running = start_market(tmp)
    try:
        client = Client(running.rpc_url, CLIENT_KEY, market=running.deployment.market)
        generate(client, 4, True)
        runs: dict[str, list[dict[str, Any]]] = {}
        for repeat in range(repeats):
            for mode, direct in MODES.items():
                log(f"  repeat {repeat}: {mode}")
                runs.setdefault(mode, []).append(generate(client, tokens, direct))
        out: dict[str, Any] = {}
        for mode, rs in runs.items():
            local = [row for r in rs for row in r["node_local_ms"]]
            out[mode] = {
                "hop_overhead_ms_p50": p50([h for r in rs for h in r["hop_overhead_ms"]]),
                "route_ms_p50": p50([s for r in rs for s in r["route_ms"]]),
                "decode_step_ms_p50": p50([s for r in rs for s in r["step_ms"]]),
                # time inside each node outside its layers (and, on the old path, outside waiting downstream)
                "node_local_ms_p50": [p50(list(col)) for col in zip(*local, strict=True)],
            }
        return out
    finally:
        stop_market(running)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=2, help="generations per mode and delay")
    parser.add_argument(
        "--delays-ms", default="10,40", help="one-way delays per proxy, compared with 0 (comma-separated)"
    )
    parser.add_argument("--skip-loopback", action="store_true", help="phase 1 only")
    args = parser.parse_args()
    started, load_before = time.time(), os.getloadavg()
    delays = [float(d) for d in args.delays_ms.split(",")]
    result: dict[str, Any] = {
        "bench": "wan",
        "nodes": 3,
        "model": "SmolLM2-135M-Instruct (fp32, split 4)",
        "tokens_per_generation": args.tokens,
        "repeats": args.repeats,
        "delays_ms": delays,
        "goal": {"one_way_trips_per_token": 4, "hop_overhead_ms_p50": 0.3},
        "loadavg_before": [round(x, 2) for x in load_before],
    }
    result["trips"] = trips_phase(args.tokens, args.repeats, [d / 1e3 for d in delays])
    if not args.skip_loopback:
        result["loopback"] = overhead_phase(args.tokens, args.repeats)
    result["failed_generations"] = FAILED
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.time() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

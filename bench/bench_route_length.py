"""Decode rate and per-hop cost for routes of 2 to 6 node shards of SmolLM2, in the same run.

One hardhat node and one deployment; for each route length m the same model (SmolLM2-135M-Instruct
fp32, 30 layers, the client running layers [0, 4)) is registered with a plan of m node shards
(`client_split_plan`, the same 26 node layers in total) and m real `splitmesh node run` processes (1 torch
thread each, own funded keys) serve it; all routes run at once. The SDK generates greedily through each,
interleaved with the local `model.generate` baseline (per prompt: the baseline, then every route
length), so the machine's changing load hits all of them alike. Per route length: decode tokens/s (the
receipt's, after the first token), the decode step's p50 and its parts (client head + tail, route,
time in the nodes' layers), per-hop overhead = (route time - node layer time) / hops, and tokens
identical to `model.generate`. Across lengths: least-squares slopes of the step time and of the
route overhead against hops (ms per added hop). Goal: cost per hop constant (linear growth).

    .venv/bin/python bench/bench_route_length.py [--tokens 16] [--repeats 2] [--hops 2 3 4 5 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chainload import FastSender, emit, extra_keys, fund, machine
from client_sdk import Client
from splitmesh.chain import HARDHAT_DEV_KEYS, LocalChain, Marketplace, Sender, deploy
from splitmesh.model.identity import describe_model
from splitmesh.model.reference import reference_generate
from splitmesh.plan import client_split_plan
from splitmesh_cli.localnet import CLIENT_KEY, PARAMS, SPLIT, RunningMarket, open_market
from splitmesh_cli.procs import stop_nodes

ETHER = 10**18
PROMPTS = ["Explain in three sentences why the sky is blue.", "Write a short poem about the sea."]


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of ys on xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return round(b, 3), round(my - b * mx, 3)


def route_stats(hops: int, plan: list[int], receipts: list[Any], same: list[bool]) -> dict[str, Any]:
    """A route length's timings from its generations' receipts."""
    decode = [(r.steps, i) for r in receipts for i in range(1, len(r.steps.route))]  # step 0: prefill
    step_ms = [(s.head[i] + s.privacy[i] + s.route[i] + s.tail[i]) * 1e3 for s, i in decode]
    route_ms = [s.route[i] * 1e3 for s, i in decode]
    compute_ms = [sum(s.node_compute_ms[i]) for s, i in decode]
    local_ms = [(s.head[i] + s.privacy[i] + s.tail[i]) * 1e3 for s, i in decode]
    overhead = [v for r in receipts for v in r.steps.hop_overhead_ms()]
    return {
        "hops": hops,
        "plan": plan,
        "decode_tokens_per_s": p50([r.tokens_per_s for r in receipts if r.tokens_per_s]),
        "decode_step_ms_p50": p50(step_ms),
        "client_head_tail_ms_p50": p50(local_ms),
        "route_ms_p50": p50(route_ms),
        "node_layers_ms_p50": p50(compute_ms),
        "route_minus_layers_ms_p50": p50([r - c for r, c in zip(route_ms, compute_ms, strict=True)]),
        "per_hop_overhead_ms_p50": p50(overhead),
        "tokens_identical_to_generate": all(same),
        "generations": len(receipts),
    }


def open_routes(
    chain: LocalChain, market: Marketplace, tmp: Path, hop_counts: list[int], log: Any
) -> dict[int, tuple[RunningMarket, Client]]:
    """Per route length: its plan registered, its node processes (own keys) started, and a client bound
    to that plan (a client keeps the plan it prepared first; a new plan only binds new clients)."""
    deployer = Sender(market.w3, HARDHAT_DEV_KEYS[0])
    described = describe_model(None)
    keys = extra_keys(sum(hop_counts))
    fund(
        market.w3,
        FastSender(market.w3, HARDHAT_DEV_KEYS[1], market.chain_id),
        [Account.from_key(k).address for k in keys],
        2 * ETHER,
    )
    routes: dict[int, tuple[RunningMarket, Client]] = {}
    for hops in hop_counts:
        plan = client_split_plan(described.num_layers, SPLIT, hops)
        running = open_market(
            market, deployer, described, plan, rpc_url=chain.rpc_url, home=tmp / f"nodes-{hops}",
            log_dir=tmp / f"logs-{hops}",
        )  # fmt: skip
        running.duty_interval = 1.0  # 20 idle nodes polling the chain 5 times a second would load it
        log(f"{hops} hops, plan {plan}: starting {hops} node processes ...")
        mine, keys = keys[:hops], keys[hops:]
        running.start_nodes([running.spec(s, mine[s - 1]) for s in range(1, hops + 1)])
        client = Client(chain.rpc_url, CLIENT_KEY, market=market.deployment.market, commit_wait=5.0)
        client.prepare(SPLIT)
        routes[hops] = (running, client)
    return routes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=2, help="generations per prompt and route length")
    parser.add_argument("--hops", type=int, nargs="+", default=[2, 3, 4, 5, 6], help="route lengths")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "route_length.json")
    args = parser.parse_args()
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    load_before = machine()
    tmp = Path(tempfile.mkdtemp(prefix="splitmesh-routes-"))
    receipts: dict[int, list[Any]] = {h: [] for h in args.hops}
    same: dict[int, list[bool]] = {h: [] for h in args.hops}
    reference_rates: list[float] = []
    with LocalChain(log_path=tmp / "hardhat.log") as chain:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 120}))
        market = Marketplace(w3, deploy(w3, Sender(w3, HARDHAT_DEV_KEYS[0]), PARAMS))
        routes = open_routes(chain, market, tmp, args.hops, log)
        try:
            client = routes[args.hops[0]][1]
            prompt_ids = {p: client.encode_prompt(p) for p in PROMPTS}
            for _, c in routes.values():
                c.generate(PROMPTS[0], 4, split=SPLIT)  # warm-up: caches, kernels, connections
            # Interleaved: the machine's load (others' jobs share its 2 cores) moves every length alike.
            for round_ in range(args.repeats):
                for prompt in PROMPTS:
                    ref = reference_generate(None, prompt_ids[prompt], args.tokens, repeats=1)
                    reference_rates += [ref.tokens_per_s] if ref.tokens_per_s else []
                    for hops, (running, c) in routes.items():
                        out = c.generate(prompt, args.tokens, split=SPLIT)
                        assert out.receipt.model_id == running.model_id, "the client picked another plan"
                        receipts[hops].append(out.receipt)
                        same[hops].append(out.token_ids == ref.tokens)
                log(f"  round {round_ + 1}/{args.repeats} done")
        finally:
            for running, _ in routes.values():
                stop_nodes(running.nodes, timeout=40)
    stats = {str(h): route_stats(h, routes[h][0].plan, receipts[h], same[h]) for h in args.hops}
    xs = [float(h) for h in args.hops]
    step_fit = slope(xs, [stats[str(h)]["decode_step_ms_p50"] for h in args.hops])
    overhead_fit = slope(xs, [stats[str(h)]["route_minus_layers_ms_p50"] for h in args.hops])
    result = {
        "benchmark": "bench_route_length",
        "machine_before": load_before,
        "machine_after": machine(),
        "model": "SmolLM2-135M-Instruct (fp32), client layers [0, 4), 26 node layers split over the hops",
        "new_tokens": args.tokens,
        "node_threads": 1,
        "reference_tokens_per_s": p50(reference_rates),
        "reference_step_ms": round(1000 / statistics.median(reference_rates), 2),
        "routes": stats,
        "step_ms_per_added_hop": step_fit[0],
        "step_ms_at_zero_hops_fit": step_fit[1],
        "route_overhead_ms_per_added_hop": overhead_fit[0],
        "per_hop_overhead_ms_by_hops": {str(h): stats[str(h)]["per_hop_overhead_ms_p50"] for h in args.hops},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

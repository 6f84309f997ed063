"""Many concurrent sessions on one 3-node SmolLM2 route, with node batching on and off, in the same run.

For each mode a fresh local chain and three real node processes are started (batching off = every node
with SPLITMESH_NODE_BATCH_SESSIONS=1, each step through the layers alone as before). Then 1, 4, 8 and 16
concurrent sessions generate (each its own client key, client and job; greedy, epsilon inf, 32 new
tokens), client threads in this process. Per size: aggregate tokens/s end to end (all new tokens over
the wall time from start to the last session's end, job submission and prefill included) and over the
decode window (tokens after each session's first, from the first session's first token to the last
session's last), per-session decode tokens/s, p50/p99 decode step latency seen by the clients, the
ratio to the 1-session baseline of the same mode, where a step's time goes (client head, DP + signing,
route, client tail, each node's layers), the nodes' mean batch size, and whether every session's tokens
equal the same prompt's tokens served alone. os.getloadavg() is recorded before and after each mode.

Goal (issue 17): 8 sessions give at least 4x the aggregate tokens/s of one session.

Run: .venv/bin/python bench/bench_concurrency.py [--tokens 32] [--sizes 1 4 8 16]
Writes bench/results/concurrency.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from client_sdk import Client, Generation
from splitmesh.wire.tls import pinned_request
from splitmesh_cli.localnet import SPLIT, RunningMarket, start_market, stop_market

PROMPTS = [
    "Explain in three sentences why the sky is blue.",
    "Write a short poem about the sea.",
    "Give me three tips for learning a new language.",
    "Describe a busy market in a small town in a few sentences.",
]
RESULT = Path(__file__).parent / "results" / "concurrency.json"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def batch_histogram(running: RunningMarket) -> list[tuple[float, float]]:
    """(batches, steps) each node ran so far (splitmesh_node_batch_steps _count and _sum)."""
    out = []
    for node in running.nodes:
        _, _, body = pinned_request("GET", node.endpoint + "/metrics", node.tls_key, timeout=30)
        values = {}
        for line in body.decode().splitlines():
            for part in ("_count", "_sum"):
                if line.startswith("splitmesh_node_batch_steps" + part + " "):
                    values[part] = float(line.split()[1])
        out.append((values.get("_count", 0.0), values.get("_sum", 0.0)))
    return out


def run_sessions(clients: list[Client], tokens: int) -> tuple[list[Any], float, float]:
    """Each client generates once, all at the same time; (generations or the exception a session
    ended with, start perf_counter, wall s)."""
    results: list[Any] = [None] * len(clients)
    start = threading.Barrier(len(clients) + 1)

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = clients[i].generate(PROMPTS[i % len(PROMPTS)], tokens, epsilon=math.inf, split=SPLIT)
        except BaseException as exc:  # reported below, with the session's index
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(clients))]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    return results, began, wall


def summarize(
    gens: list[Generation], began: float, wall: float, alone: dict[tuple[int, ...], list[int]]
) -> dict:
    receipts = [g.receipt for g in gens]
    firsts = [r.token_times[0] for r in receipts]
    lasts = [r.token_times[-1] for r in receipts]
    decoded = sum(len(r.token_times) - 1 for r in receipts)
    steps_ms = [
        (h + p + rt + t) * 1e3
        for r in receipts
        for h, p, rt, t in list(zip(r.steps.head, r.steps.privacy, r.steps.route, r.steps.tail, strict=True))[
            1:
        ]
    ]

    def p50_of(attr: str) -> float:
        return round(statistics.median(v * 1e3 for r in receipts for v in getattr(r.steps, attr)[1:]), 2)

    return {
        "sessions": len(gens),
        "aggregate_tokens_per_s_end_to_end": round(sum(len(g.token_ids) for g in gens) / wall, 2),
        "aggregate_decode_tokens_per_s": round(decoded / (max(lasts) - min(firsts)), 2),
        "per_session_decode_tokens_per_s_median": round(
            statistics.median(r.tokens_per_s or 0 for r in receipts), 2
        ),
        "per_session_decode_tokens_per_s_min": round(min(r.tokens_per_s or 0 for r in receipts), 2),
        "step_latency_ms_p50": pct(steps_ms, 0.5),
        "step_latency_ms_p99": pct(steps_ms, 0.99),
        "wall_s": round(wall, 2),
        "first_token_s_max": round(max(firsts) - began, 2),  # job on chain, route, prefill
        "step_breakdown_ms_p50": {
            "client_head": p50_of("head"),
            "privacy_and_signing": p50_of("privacy"),
            "route": p50_of("route"),
            "client_tail": p50_of("tail"),
            "node_layers": [
                round(statistics.median(s[i] for r in receipts for s in r.steps.node_compute_ms[1:]), 2)
                for i in range(3)
            ],
        },
        "tokens_identical_to_alone": all(g.token_ids == alone[tuple(g.prompt_ids)] for g in gens),
    }


def layer_rates(sizes: list[int], tokens: int, log: Any) -> list[dict[str, Any]]:
    """In-process: decode tokens/s of one node's SmolLM2 shard (layers 4..13) for n sessions, their steps
    batched (forward_many) vs one after another (forward), interleaved per step so both see the same load.
    Isolates what batching buys in the layers from the clients, chain and network of the route runs."""
    import torch

    from splitmesh.model.runner import ShardRunner, StepInput

    torch.set_num_threads(1)  # as the node processes run
    rows = []
    for n in sizes:
        batched, alone = ShardRunner.load(None, 4, 13), ShardRunner.load(None, 4, 13)
        gen = torch.Generator().manual_seed(n)
        prompts = [torch.randn(1, 12 + 3 * i, 576, generator=gen) for i in range(n)]
        for i, h in enumerate(prompts):
            for runner in (batched, alone):
                runner.forward(f"s{i}", h, torch.arange(h.shape[1]))
        spent = {"batched": 0.0, "alone": 0.0}
        worst = worst_rel = 0.0
        for _ in range(tokens):
            steps = [
                StepInput(
                    f"s{i}",
                    torch.randn(1, 1, 576, generator=gen),
                    torch.tensor([batched.session_length(f"s{i}")]),
                )
                for i in range(n)
            ]
            t0 = time.perf_counter()
            outs = batched.forward_many(steps)
            t1 = time.perf_counter()
            refs = [alone.forward(s.session_id, s.hidden, s.positions) for s in steps]
            t2 = time.perf_counter()
            spent["batched"] += t1 - t0
            spent["alone"] += t2 - t1
            for out, ref in zip(outs, refs, strict=True):
                assert isinstance(out, torch.Tensor), out
                diff = float((out - ref).abs().max())
                worst = max(worst, diff)
                worst_rel = max(worst_rel, diff / float(ref.abs().max()))
        row = {
            "sessions": n,
            "batched_tokens_per_s": round(n * tokens / spent["batched"], 1),
            "alone_tokens_per_s": round(n * tokens / spent["alone"], 1),
            "max_abs_diff_batched_vs_alone": worst,  # SmolLM2 hidden states reach |h| ~ 1e2..1e3
            "max_diff_relative_to_max_abs_hidden": worst_rel,
        }
        rows.append(row)
        log(
            f"  [layers] {n:2d} sessions: batched {row['batched_tokens_per_s']} tok/s, "
            f"alone {row['alone_tokens_per_s']}"
        )
    for row in rows:
        row["batched_ratio_to_1_session"] = round(
            row["batched_tokens_per_s"] / rows[0]["batched_tokens_per_s"], 2
        )
    return rows


def run_mode(name: str, env: dict[str, str], sizes: list[int], tokens: int, log: Any) -> dict:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        running = start_market(Path(tempfile.mkdtemp(prefix=f"splitmesh-conc-{name}-")))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    load_before = os.getloadavg()
    try:
        keys = running.funded_keys(max(sizes))
        clients = [Client(running.rpc_url, k, market=running.deployment.market) for k in keys]
        clients[0].prepare(SPLIT)
        for client in clients[1:]:
            # One copy of the client's layers (embeddings, layers 0..3, LM head) for every session: 16
            # copies got this process OOM-killed on the shared machine. The layers keep no state.
            client._prepared = clients[0]._prepared
        # Reference tokens of each prompt served alone (also the warm-up).
        alone = {}
        for i, prompt in enumerate(PROMPTS):
            g = clients[i].generate(prompt, tokens, epsilon=math.inf, split=SPLIT)
            alone[tuple(g.prompt_ids)] = g.token_ids
        rows = []
        for n in sizes:
            before = batch_histogram(running)
            results, began, wall = run_sessions(clients[:n], tokens)
            after = batch_histogram(running)
            gens = [r for r in results if isinstance(r, Generation)]
            row = summarize(gens, began, wall, alone)
            # A failed session is reported, not hidden: its tokens are missing from the aggregate.
            row["failed_sessions"] = [repr(r)[:300] for r in results if not isinstance(r, Generation)]
            row["node_mean_batch_steps"] = [
                round((a[1] - b[1]) / max(1.0, a[0] - b[0]), 2) for a, b in zip(after, before, strict=True)
            ]
            rows.append(row)
            log(
                f"  [{name}] {n:2d} sessions: {row['aggregate_tokens_per_s_end_to_end']} tok/s e2e, "
                f"{row['aggregate_decode_tokens_per_s']} decode, p50 step {row['step_latency_ms_p50']} ms"
            )
        base = rows[0]
        for row in rows:
            for key in ("aggregate_tokens_per_s_end_to_end", "aggregate_decode_tokens_per_s"):
                row[key.replace("tokens_per_s", "ratio_to_1_session")] = round(row[key] / base[key], 2)
        return {
            "mode": name,
            "node_env": env,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "sizes": rows,
        }
    finally:
        stop_market(running)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per session")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16], help="concurrent sessions")
    args = parser.parse_args()
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    layers = {"loadavg_before": os.getloadavg(), "sizes": layer_rates(args.sizes, args.tokens, log)}
    layers["loadavg_after"] = os.getloadavg()
    modes = []
    for name, env in (("batching_on", {}), ("batching_off", {"SPLITMESH_NODE_BATCH_SESSIONS": "1"})):
        log(f"{name}: starting chain and 3 node processes ...")
        modes.append(run_mode(name, env, args.sizes, args.tokens, log))
    on, off = modes
    result = {
        "model": "SmolLM2-135M-Instruct fp32, 3 nodes (1 torch thread each), client threads in one process",
        "machine": {"cpus": os.cpu_count()},
        "new_tokens": args.tokens,
        "node_layers_in_process": layers,
        "modes": modes,
        "goal": "8 sessions >= 4x the aggregate tokens/s of 1 session",
        "batching_gain_at_each_size": {
            str(r_on["sessions"]): round(
                r_on["aggregate_tokens_per_s_end_to_end"] / r_off["aggregate_tokens_per_s_end_to_end"], 2
            )
            for r_on, r_off in zip(on["sizes"], off["sizes"], strict=True)
        },
        "loadavg_end": os.getloadavg(),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

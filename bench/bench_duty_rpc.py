"""What a node's duty pass costs as jobs await settlement: RPC calls and wall time per pass.

Starts its own hardhat chain, deploys with an EOA auditor (as the test suite does), registers a one-hop
model and runs a node's real ChainDuties (scanner, stake keeper) in this process over a Web3 whose
make_request is counted. For each size N it submits N jobs, lets the duties commit them, puts them in
dispute (holdForAudit), moves chain time past the holds set at the commit, and measures steady passes.
The baseline is N = 1 in the same run. Prints JSON and writes bench/results/duty_rpc.json; no assertions.
Usage: python bench/bench_duty_rpc.py [--sizes 1 10 40] [--passes 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from node.deadlines import ChainClock, JobDeadlines, default_margin
from node.duties import ChainDuties
from node.metrics import NodeMetrics
from node.pool import StakeKeeper
from node.scanner import JobScanner
from node.store import NodeStore
from splitmesh.chain import HARDHAT_DEV_KEYS, DeployParams, LocalChain, Marketplace, Sender, deploy
from splitmesh.chain.launcher import advance_time

RESULTS = Path(__file__).resolve().parent / "results"
PARAMS = DeployParams(
    unbonding_delay=3 * 3600,
    commit_timeout=3600,
    challenge_window=600,
    dispute_timeout=3600,
    auditor=Account.from_key(HARDHAT_DEV_KEYS[9]).address,
)
PRICE = 10**9  # wei per token
MAX_TOKENS = 16


def measure(
    rpc_url: str, market0: Marketplace, size: int, node_key: str, home: Path, passes: int
) -> dict[str, Any]:
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 60}))
    calls: Counter[str] = Counter()
    counting = [False]
    inner = w3.provider.make_request

    def make_request(method: str, params: Any) -> Any:
        if counting[0]:
            calls[method] += 1
        return inner(method, params)

    w3.provider.make_request = make_request  # type: ignore[method-assign]
    market = Marketplace(w3, market0.deployment)
    deployer = Sender(w3, HARDHAT_DEV_KEYS[0], market.chain_id)
    node = Sender(w3, node_key, market.chain_id)
    model_id, _ = market.register_model(deployer, f"bench{size}", os.urandom(32), 4, [0, 2, 4])
    market.register_node(node, model_id, 1, "https://127.0.0.1:1", PRICE, stake=PARAMS.min_stake)
    store = NodeStore(home / f"node{size}.sqlite")
    metrics = NodeMetrics()
    clock = ChainClock(int(w3.eth.get_block("latest")["timestamp"]))
    deadlines = JobDeadlines(market, clock, PARAMS.commit_timeout, default_margin(PARAMS.commit_timeout))
    duties = ChainDuties(
        market,
        node,
        store,
        metrics,
        deadlines=deadlines,
        scanner=JobScanner(market, node.address, store, deadlines, metrics),
        keeper=StakeKeeper(market, node, store, metrics, target_stake=PARAMS.min_stake, allowance=0),
    )
    client = Sender(w3, HARDHAT_DEV_KEYS[7], market.chain_id)
    auditor = Sender(w3, HARDHAT_DEV_KEYS[9], market.chain_id)
    escrow = market.escrow_for(MAX_TOKENS, PRICE, 1)
    jobs = [market.submit_job(client, model_id, 1, MAX_TOKENS, PRICE, escrow, b"{}") for _ in range(size)]
    duties.run_once()
    for job in jobs:
        store.mark_ended(job.job_id)
    duties.run_once()
    for job in jobs:
        market.hold_for_audit(auditor, job.job_id, job.packed_terms)
    advance_time(w3, PARAMS.challenge_window + 1)
    duties.run_once()  # re-reads the woken jobs once and holds them until their next due time
    per_pass: list[int] = []
    seconds: list[float] = []
    for _ in range(passes):
        w3.provider.make_request("evm_mine", [])  # a new block each pass, as on a live chain
        store.flush()
        calls.clear()
        counting[0] = True
        started = time.perf_counter()
        duties.run_once()
        store.flush()
        seconds.append(time.perf_counter() - started)
        counting[0] = False
        per_pass.append(sum(calls.values()))
    store.close()
    return {
        "unsettled_jobs": size,
        "rpc_calls_per_pass": per_pass,
        "rpc_methods_last_pass": dict(calls),
        "pass_ms_median": round(statistics.median(seconds) * 1e3, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 40])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "duty_rpc.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with LocalChain() as chain, tempfile.TemporaryDirectory() as tmp:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 60}))
        market = Marketplace(w3, deploy(w3, Sender(w3, HARDHAT_DEV_KEYS[0]), PARAMS))
        rows = [
            measure(chain.rpc_url, market, size, HARDHAT_DEV_KEYS[1 + i], Path(tmp), args.passes)
            for i, size in enumerate(args.sizes)
        ]
    base = statistics.median(rows[0]["rpc_calls_per_pass"])
    for row in rows:
        row["rpc_ratio_vs_baseline"] = round(statistics.median(row["rpc_calls_per_pass"]) / base, 3)
    result = {
        "bench": "duty_rpc",
        "what": "RPC calls and wall time of a steady duty pass with N disputed jobs awaiting settlement",
        "baseline": f"{args.sizes[0]} job(s), same run",
        "rows": rows,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

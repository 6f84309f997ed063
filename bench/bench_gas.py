"""Gas of a job as the marketplace grows: 3, 30 and 300 nodes per shard, and routes of 1 to 8 hops.

Starts a hardhat node and deploys the contracts (localnet's parameters: an AuditCourt, no sampling).
Registers two models: one of 4 shards whose jobs start at shard 1 (3 hops, the demo's route), one of 8
shards (the registry's maximum) whose jobs start at shard 8 - h (h hops). Node accounts come from
hardhat's public dev mnemonic beyond the 20 it funds, are funded here and stake and register through
the NodeRegistry. No node processes run: each lifecycle sends the calls the SDK and the nodes send,
through the Marketplace wrapper:

    submitJobWithHints (the SDK's hints; the contract matches one node per shard)
    commit by every hop (the first carries the client's signed receipt, as node/duties.py does)
    finalize after the challenge window (a node's claim), withdrawEarnings by every hop

The pool curve grows the same pools 3 -> 30 -> 300 nodes and runs `--jobs` lifecycles at each size;
the hop curve runs them on the 8-shard model with 3 nodes per shard. Per size: median gas per call and
of the whole lifecycle, and the growth ratio 300/3 (goal: flat). Also timed: what the SDK reads before
each submit (`Marketplace.pool` per route shard, one eth_call per pool entry), which grows with the pool.

    .venv/bin/python bench/bench_gas.py [--jobs 5] [--out bench/results/gas.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from eth_utils import keccak
from web3 import Web3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chainload import FastSender, emit, extra_keys, fund, machine, send_and_mine
from splitmesh.chain import HARDHAT_DEV_KEYS, LocalChain, Marketplace, Sender, deploy, hints_from_pools
from splitmesh.chain.launcher import advance_time
from splitmesh.signing import EMPTY_RECEIPT, EnvelopeSigner
from splitmesh_cli.localnet import PARAMS

ETHER = 10**18
PRICE = 10**9  # wei per token, every node
MAX_TOKENS = 64
BILLED = 48  # tokens the client's receipt bills
POOL_SIZES = (3, 30, 300)
HOPS = range(1, 9)
POOL_PLAN = [0, 1, 2, 3, 4]  # 4 shards; jobs from shard 1: 3 hops
WIDE_PLAN = list(range(9))  # 8 shards (the registry's MAX_SHARDS)
REGISTER_GAS = 400_000  # gas limit of a registerNode with stake (uses ~200k)
STEPS = ("submit", "commit", "finalize", "withdraw")


class Bench:
    """The deployment, its two models, and the accounts that serve them."""

    def __init__(self, w3: Web3, jobs: int):
        self.w3 = w3
        self.jobs = jobs
        deployer = Sender(w3, HARDHAT_DEV_KEYS[0])
        self.market = Marketplace(w3, deploy(w3, deployer, PARAMS))
        weights = keccak(text="bench_gas weights")
        self.pool_model, _ = self.market.register_model(deployer, "pool", weights, 4, POOL_PLAN)
        self.wide_model, _ = self.market.register_model(deployer, "wide", weights, 8, WIDE_PLAN)
        self.client = Sender(w3, HARDHAT_DEV_KEYS[7])
        self.signer = EnvelopeSigner(HARDHAT_DEV_KEYS[7], self.market.chain_id, self.market.deployment.market)
        self.funder = FastSender(w3, HARDHAT_DEV_KEYS[1], self.market.chain_id)
        self.keys = iter(extra_keys(3 * max(POOL_SIZES) + 8 * 3))
        self.senders: dict[str, Sender] = {}

    def add_nodes(self, model_id: int, shard: int, count: int) -> float:
        """Fund `count` new accounts and register them for (model, shard) with the minimum stake;
        returns seconds taken."""
        t = time.perf_counter()
        keys = [next(self.keys) for _ in range(count)]
        nodes = [FastSender(self.w3, k, self.market.chain_id) for k in keys]
        fund(self.w3, self.funder, [n.address for n in nodes], PARAMS.min_stake + ETHER // 10)
        raws = []
        for node in nodes:
            endpoint = f"https://{node.address.lower()}.example:8443"
            args = (model_id, shard, endpoint, PRICE, keccak(text=endpoint))
            raws.append(node.call(self.market.registry, "registerNode", args, REGISTER_GAS, PARAMS.min_stake))
        send_and_mine(self.w3, raws, per_block=50)
        for k in keys:
            sender = Sender(self.w3, k, self.market.chain_id)
            self.senders[sender.address] = sender
        return time.perf_counter() - t

    def lifecycle(self, model_id: int, first_shard: int, hints: list[int]) -> dict[str, Any]:
        """One job through submit, commits, finalize and withdrawals; gas per call."""
        m = self.market
        hops = WIDE_PLAN[-1] - first_shard if model_id == self.wide_model else POOL_PLAN[-1] - first_shard
        escrow = m.escrow_for(MAX_TOKENS, PRICE, hops)
        job = m.submit_job(self.client, model_id, first_shard, MAX_TOKENS, PRICE, escrow, b"{}", hints=hints)
        receipt = self.signer.sign(job.job_id, BILLED, BILLED, keccak(b"last frame")).as_receipt()
        commits = []
        for position, hop in enumerate(job.terms.route):
            chain_in = keccak(b"in" + bytes([position]))
            chain_out = keccak(b"in" + bytes([position + 1]))
            first = receipt if position == 0 else EMPTY_RECEIPT  # only a raising receipt is sent
            tx = m.commit(
                self.senders[hop.node], job.job_id, job.packed_terms, position, chain_in, chain_out, first
            )
            commits.append(tx.gas_used)
        advance_time(self.w3, PARAMS.challenge_window + 1)
        route = [self.senders[h.node] for h in job.terms.route]
        finalize = m.finalize(route[-1], job.job_id, job.packed_terms).gas_used
        withdraws = [m.withdraw_earnings(s).gas_used for s in route]
        return {
            "hops": hops,
            "submit": job.tx.gas_used if job.tx is not None else 0,
            "commit": commits,
            "finalize": finalize,
            "withdraw": withdraws,
        }

    def measure(self, model_id: int, first_shard: int) -> dict[str, Any]:
        """`jobs` lifecycles (medians per call), and the SDK's pool read before a submit."""
        shards = range(first_shard, self.market.get_model(model_id).num_shards)
        t = time.perf_counter()
        pools = [self.market.pool(model_id, s) for s in shards]
        read_s = time.perf_counter() - t
        hints = hints_from_pools(pools, PRICE)
        runs = [self.lifecycle(model_id, first_shard, hints) for _ in range(self.jobs)]
        med = lambda xs: int(statistics.median(xs))  # noqa: E731
        out: dict[str, Any] = {
            "hops": runs[0]["hops"],
            "submit": med([r["submit"] for r in runs]),
            "commits": [med([r["commit"][p] for r in runs]) for p in range(runs[0]["hops"])],
            "finalize": med([r["finalize"] for r in runs]),
            "withdraws": [med([r["withdraw"][p] for r in runs]) for p in range(runs[0]["hops"])],
        }
        out["commit_total"] = sum(out["commits"])
        out["withdraw_total"] = sum(out["withdraws"])
        out["job_total"] = out["submit"] + out["commit_total"] + out["finalize"]
        out["lifecycle_total"] = out["job_total"] + out["withdraw_total"]
        out["sdk_pool_read_ms"] = round(read_s * 1000, 1)
        return out


def pool_curve(bench: Bench, log: Any) -> dict[str, Any]:
    curve: dict[str, Any] = {}
    have = 0
    for size in POOL_SIZES:
        setup = sum(bench.add_nodes(bench.pool_model, s, size - have) for s in (1, 2, 3))
        have = size
        curve[str(size)] = bench.measure(bench.pool_model, 1)
        curve[str(size)]["register_s"] = round(setup, 1)
        log(f"  {size} nodes per shard: {curve[str(size)]['lifecycle_total']} gas per lifecycle")
    return curve


def ratios(curve: dict[str, Any], lo: str, hi: str) -> dict[str, float]:
    keys = ("submit", "commit_total", "finalize", "withdraw_total", "job_total", "lifecycle_total")
    return {k: round(curve[hi][k] / curve[lo][k], 4) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5, help="lifecycles per size (medians)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gas.json")
    args = parser.parse_args()
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    load_before = machine()
    with LocalChain() as chain:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 120}))
        bench = Bench(w3, args.jobs)
        log("pool curve: 3 hops, 3 -> 30 -> 300 nodes per shard ...")
        pools = pool_curve(bench, log)
        log("hop curve: 8-shard model, 3 nodes per shard, 1..8 hops ...")
        for shard in range(8):
            bench.add_nodes(bench.wide_model, shard, 3)
        hops = {str(h): bench.measure(bench.wide_model, 8 - h) for h in HOPS}
    per_hop = [hops[str(h + 1)]["job_total"] - hops[str(h)]["job_total"] for h in range(1, 8)]
    result = {
        "benchmark": "bench_gas",
        "machine_before": load_before,
        "machine_after": machine(),
        "params": {
            "jobs_per_size": args.jobs,
            "max_tokens": MAX_TOKENS,
            "billed": BILLED,
            "price_wei": PRICE,
        },
        "lifecycle": "submitJobWithHints, commit x hops (receipt on the first), finalize, "
        "withdrawEarnings x hops",
        "pool_sizes": pools,
        "pool_growth_300_over_3": ratios(pools, "3", "300"),
        "hops": hops,
        "job_gas_per_added_hop": per_hop,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

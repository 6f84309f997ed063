"""The coordinator after 1k and 10k real jobs: catch-up time of its indexer, and query latency.

Starts a hardhat node, deploys (localnet's parameters), registers a 4-shard model and 2 nodes per
shard 1..3, then fills the chain with real jobs of 3 hops: 10 clients submit (with SDK metadata), the
matched hops commit (the first with the client's signed receipt), a keeper finalizes. About 90% of the
jobs are finalized, the rest stay committed. The transactions are signed locally and sent in JSON-RPC
batches with automine off, ~100 per block (bench/chainload.py); generation time is reported.

At each size (default 1000 then 10000 jobs):
- catch-up: a fresh index built from the deployment block by `coordinator.indexer.Indexer.sync` in
  process, and by a `splitmesh coordinator run` process (start to synced, process start included);
- queries, median of `--repeat` calls: `jobs list` (newest 50), by status, by client, by node,
  `jobs show` (a job in the middle), `nodes list`; through the query layer on the index file and
  through the running coordinator's HTTP API.
Goal: 10k jobs indexed in under 60 s, queries under 50 ms.

    .venv/bin/python bench/bench_coordinator_growth.py [--sizes 1000 10000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eth_utils import keccak
from web3 import Web3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chainload import FastSender, emit, machine, send_and_mine
from coordinator import schema
from coordinator.indexer import Indexer
from coordinator.queries import JobFilter, NodeFilter
from coordinator.sources import ApiSource, IndexSource, Source
from splitmesh.chain import HARDHAT_DEV_KEYS, LocalChain, Marketplace, Sender, deploy
from splitmesh.chain.launcher import advance_time, dev_key
from splitmesh.chain.terms import JobTerms
from splitmesh.jobmeta import JobMeta
from splitmesh.signing import EMPTY_RECEIPT, EnvelopeSigner
from splitmesh_cli.demo_explorer import CoordinatorProcess
from splitmesh_cli.localnet import PARAMS

GWEI = 10**9
PLAN = [0, 4, 13, 22, 30]  # the demo's SmolLM2 plan: the client runs shard 0, jobs have 3 hops
NODES = {1: (1, 2), 2: (3, 4), 3: (5, 6)}  # shard -> dev accounts serving it
CLIENTS = range(7, 17)
KEEPER = 17
ROUND = 500  # jobs per generation round (submits mined, then their commits)
PER_BLOCK = 100  # transactions per mined block
GAS = {"submit": 150_000, "commit": 120_000, "finalize": 150_000}  # limits (use ~75k/65k/67k)


class JobFactory:
    """Real jobs on the chain, made fast."""

    def __init__(self, w3: Web3, seed: int = 7):
        self.w3 = w3
        deployer = Sender(w3, HARDHAT_DEV_KEYS[0])
        self.market = Marketplace(w3, deploy(w3, deployer, PARAMS))
        self.model_id, _ = self.market.register_model(deployer, "SmolLM2-like", keccak(text="w"), 30, PLAN)
        for shard, accounts in NODES.items():
            for i in accounts:
                price = (2 + i % 3) * GWEI
                self.market.register_node(
                    Sender(w3, dev_key(i)),
                    self.model_id,
                    shard,
                    f"http://127.0.0.1:{9000 + i}",
                    price,
                    stake=2 * 10**18,
                )
        cid = self.market.chain_id
        self.fast = {i: FastSender(w3, dev_key(i), cid) for i in [*range(1, 7), *CLIENTS, KEEPER]}
        self.by_address = {s.address: s for s in self.fast.values()}
        self.signers = {
            self.fast[i].address: EnvelopeSigner(dev_key(i), cid, self.market.deployment.market)
            for i in CLIENTS
        }
        self.seed = seed
        self.made = 0
        self.jobs: list[tuple[int, JobTerms, bytes]] = []
        self.generation_s = 0.0

    def _submits(self, count: int) -> list[bytes]:
        jm = self.market.job_market
        raws = []
        for k in range(count):
            n = self.made + k
            client = self.fast[CLIENTS[n % len(CLIENTS)]]
            tokens = 8 + n % 57
            epsilon = (math.inf, 8.0, 1.0)[n % 3]
            clip = None if math.isinf(epsilon) else 50.0
            meta = JobMeta(epsilon=epsilon, delta=1e-5, clip=clip, split=4).to_json()
            escrow = self.market.escrow_for(tokens, 10 * GWEI, 3)
            args = (self.model_id, 1, tokens, 10 * GWEI, meta)
            raws.append(client.call(jm, "submitJob", args, GAS["submit"], value=escrow))
        return raws

    def _commits(self, jobs: list[tuple[int, JobTerms, bytes]]) -> list[bytes]:
        jm = self.market.job_market
        raws = []
        for job_id, terms, packed in jobs:
            billed = max(1, terms.max_tokens - job_id % 5)
            receipt = self.signers[terms.client].sign(job_id, billed, billed, keccak(b"frame%d" % job_id))
            for p, hop in enumerate(terms.route):
                chain_in, chain_out = keccak(b"%d/%d" % (job_id, p)), keccak(b"%d/%d" % (job_id, p + 1))
                rec = receipt.as_receipt() if p == 0 else EMPTY_RECEIPT
                args = (job_id, packed, p, chain_in, chain_out, rec)
                raws.append(self.by_address[hop.node].call(jm, "commit", args, GAS["commit"]))
        return raws

    def grow(self, total: int, log: Callable[[str], None]) -> None:
        """Add jobs until `total` exist; ~90% of the new ones finalized."""
        t = time.perf_counter()
        new: list[tuple[int, JobTerms, bytes]] = []
        while self.made < total:
            count = min(ROUND, total - self.made)
            first = self.w3.eth.block_number + 1
            send_and_mine(self.w3, self._submits(count), PER_BLOCK)
            submitted = self.market.events("JobSubmitted", from_block=first)
            batch = [
                (
                    int(e["args"]["jobId"]),
                    JobTerms.decode(bytes(e["args"]["terms"])),
                    bytes(e["args"]["terms"]),
                )
                for e in submitted
            ]
            if len(batch) != count:
                raise RuntimeError(f"{count} submits gave {len(batch)} JobSubmitted events")
            send_and_mine(self.w3, self._commits(batch), PER_BLOCK)
            self.made += count
            new += batch
            log(f"  {self.made} jobs ({time.perf_counter() - t:.0f} s)")
        advance_time(self.w3, PARAMS.challenge_window + 1)
        keeper = self.fast[KEEPER]
        jm = self.market.job_market
        finalize = [
            keeper.call(jm, "finalize", (j, packed), GAS["finalize"]) for j, _, packed in new if j % 10
        ]
        send_and_mine(self.w3, finalize, PER_BLOCK)
        self.jobs += new
        self.generation_s += time.perf_counter() - t


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of `repeat` calls (after one untimed warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 2)


def queries(factory: JobFactory) -> dict[str, Callable[[Source], object]]:
    job_id = factory.jobs[len(factory.jobs) // 2][0]
    client = factory.fast[CLIENTS[0]].address
    node = factory.fast[NODES[2][0]].address
    return {
        "jobs list": lambda s: s.list_jobs(JobFilter(), 50, 0),
        "jobs list --status committed": lambda s: s.list_jobs(JobFilter(status="committed"), 50, 0),
        "jobs list --client": lambda s: s.list_jobs(JobFilter(client=client), 50, 0),
        "jobs list --node": lambda s: s.list_jobs(JobFilter(node=node), 50, 0),
        "jobs list --offset 5000": lambda s: s.list_jobs(JobFilter(), 50, min(5000, len(factory.jobs) - 1)),
        "jobs show": lambda s: s.get_job(job_id),
        "nodes list": lambda s: s.list_nodes(NodeFilter(), 100, 0),
    }


def measure(factory: JobFactory, chain: LocalChain, tmp: Path, repeat: int) -> dict[str, Any]:
    size = factory.made
    head = factory.w3.eth.block_number
    db = tmp / f"index-{size}.sqlite"
    t = time.perf_counter()
    report = Indexer(factory.market, schema.connect(db)).sync()
    catch_up = time.perf_counter() - t
    t = time.perf_counter()
    coordinator = CoordinatorProcess(
        chain.rpc_url,
        factory.market.deployment.market,
        tmp / f"proc-{size}.sqlite",
        tmp / f"coord-{size}.log",
        0,
    )
    try:
        coordinator.wait_synced(head, timeout=600)
        process_catch_up = time.perf_counter() - t
        local = IndexSource.file(db)
        api = ApiSource(coordinator.url)
        results = {}
        for name, query in queries(factory).items():
            results[name] = {
                "query_layer_ms": timed(lambda q=query: q(local), repeat),  # type: ignore[misc]
                "http_api_ms": timed(lambda q=query: q(api), repeat),  # type: ignore[misc]
                "same_answer": query(local) == query(api),
            }
    finally:
        coordinator.stop()
    events = schema.connect(db).execute("SELECT COUNT(*) FROM logs").fetchone()[0]
    return {
        "jobs": size,
        "blocks": head - factory.market.deployment.block,
        "events": events,
        "catch_up_s": round(catch_up, 2),
        "catch_up_events_per_s": round(report.logs / catch_up),
        "process_catch_up_s": round(process_catch_up, 2),
        "queries": results,
        "slowest_query_ms": max(max(r["query_layer_ms"], r["http_api_ms"]) for r in results.values()),
        "machine": machine(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="job counts, ascending")
    parser.add_argument("--repeat", type=int, default=7, help="timed calls per query (median)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "coordinator_growth.json"
    )
    args = parser.parse_args()
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    load_before = machine()
    curve: dict[str, Any] = {}
    with LocalChain() as chain, tempfile.TemporaryDirectory() as tmp:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 300}))
        factory = JobFactory(w3)
        for size in sorted(args.sizes):
            log(f"generating jobs up to {size} ...")
            factory.grow(size, log)
            log(f"measuring at {size} jobs ...")
            curve[str(size)] = measure(factory, chain, Path(tmp), args.repeat)
            curve[str(size)]["generation_s_so_far"] = round(factory.generation_s, 1)
            log(json.dumps({k: v for k, v in curve[str(size)].items() if k != "queries"}))
    sizes = [str(s) for s in sorted(args.sizes)]
    result = {
        "benchmark": "bench_coordinator_growth",
        "machine_before": load_before,
        "machine_after": machine(),
        "job": "3 hops: submitJob, 3 commits (receipt on the first), finalize for ~90%",
        "sizes": curve,
        "goals": {
            "index_10k_under_60_s": curve.get("10000", {}).get("catch_up_s", math.inf) < 60,
            "queries_under_50_ms": all(curve[s]["slowest_query_ms"] < 50 for s in sizes),
        },
        "catch_up_growth": round(curve[sizes[-1]]["catch_up_s"] / curve[sizes[0]]["catch_up_s"], 2),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

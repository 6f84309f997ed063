"""How much faster queries are from the coordinator's index than from a direct scan of the chain.

Starts a hardhat node, deploys, runs random marketplace activity (the coordinator tests' driver), then
times the same queries three ways: `jobs list`/`jobs show`/`nodes list` by scanning the chain
(what `--rpc-url` alone does), from a running coordinator's HTTP API (`--coordinator`), and the
coordinator's initial catch-up. Prints one JSON object.

    .venv/bin/python bench/bench_coordinator.py [--steps 600] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from web3 import Web3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator import schema
from coordinator.indexer import Indexer
from coordinator.queries import JobFilter, NodeFilter
from coordinator.sources import ApiSource, IndexSource
from splitmesh.chain import LocalChain
from splitmesh_cli.demo_explorer import CoordinatorProcess
from tests.integration.chain_activity import Activity, deploy_court_market


def timed(fn: object, repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=600, help="random marketplace actions (default 600)")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions per query (default 5)")
    args = parser.parse_args()
    with LocalChain() as chain, tempfile.TemporaryDirectory() as tmp:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 60}))
        market, model_id = deploy_court_market(w3)
        activity = Activity(market, model_id, seed=3)
        activity.register_nodes()
        t = time.perf_counter()
        for _ in range(args.steps):
            activity.step()
        activity.settle()
        activity_s = time.perf_counter() - t
        head = w3.eth.block_number

        t = time.perf_counter()
        Indexer(market, schema.connect(Path(tmp) / "catchup.sqlite")).sync()
        catchup_s = time.perf_counter() - t

        coordinator = CoordinatorProcess(
            chain.rpc_url,
            market.deployment.market,
            Path(tmp) / "index.sqlite",
            Path(tmp) / "coordinator.log",
            0,
        )
        try:
            coordinator.wait_synced(head)
            api = ApiSource(coordinator.url)
            job_id = activity.jobs[len(activity.jobs) // 2][0]
            queries = {
                "jobs list": lambda s: s.list_jobs(JobFilter(), 50, 0),
                "jobs list --status finalized": lambda s: s.list_jobs(JobFilter(status="finalized"), 50, 0),
                "jobs show": lambda s: s.get_job(job_id),
                "nodes list": lambda s: s.list_nodes(NodeFilter(), 100, 0),
            }
            results = {}
            for name, query in queries.items():
                # Direct: what `--rpc-url` alone does for every command: scan, fold, then answer.
                direct = timed(lambda q=query: q(IndexSource.scan(market)), args.repeat)
                via_api = timed(lambda q=query: q(api), args.repeat)
                same = query(IndexSource.scan(market)) == query(api)
                results[name] = {
                    "direct_scan_ms": round(direct * 1000, 1),
                    "coordinator_api_ms": round(via_api * 1000, 2),
                    "speedup": round(direct / via_api, 1),
                    "same_answer": same,
                }
        finally:
            coordinator.stop()
        events = schema.connect(Path(tmp) / "index.sqlite").execute("SELECT COUNT(*) FROM logs").fetchone()[0]
        print(
            json.dumps(
                {
                    "blocks": head,
                    "events": events,
                    "jobs": market.job_count(),
                    "activity_s": round(activity_s, 1),
                    "catch_up_s": round(catchup_s, 3),
                    "catch_up_events_per_s": round(events / catchup_s),
                    "queries": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

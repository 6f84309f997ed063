"""A node's duty pass costs the same number of RPC calls however many jobs await settlement.

Real hardhat chain (the session deployment, reverted after each test), the node's real ChainDuties,
JobScanner and StakeKeeper in this process over a web3 provider whose make_request is counted. A one-hop
route (model of two shards, the client runs shard 0), so this node alone commits and completes each job.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from node.deadlines import ChainClock, JobDeadlines, default_margin
from node.duties import ChainDuties
from node.metrics import NodeMetrics
from node.pool import StakeKeeper
from node.scanner import JobScanner
from node.store import JobPhase, NodeStore
from splitmesh.chain import HARDHAT_DEV_KEYS, Deployment, JobStatus, Marketplace, Sender
from tests.conftest import AUDITOR_KEY, TEST_PARAMS, Actors, increase_time

PRICE = 10**9  # wei per token
MAX_TOKENS = 16


class CountingProvider:
    """Counts the JSON-RPC methods a Web3 sends while `counting` is on."""

    def __init__(self, w3: Web3):
        self.calls: Counter[str] = Counter()
        self.counting = False
        inner: Callable[..., Any] = w3.provider.make_request

        def make_request(method: str, params: Any) -> Any:
            if self.counting:
                self.calls[method] += 1
            return inner(method, params)

        w3.provider.make_request = make_request  # type: ignore[method-assign]

    def pass_cost(self, duties: ChainDuties) -> Counter[str]:
        duties.market.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]  # a new block
        duties.store.flush()
        self.calls.clear()
        self.counting = True
        try:
            duties.run_once()
            duties.store.flush()
        finally:
            self.counting = False
        return Counter(self.calls)


def node_duties(w3: Web3, deployment: Deployment, key: str, home: Path) -> ChainDuties:
    """The duties of a node process (node.daemon.chain_duties' parts), over this Web3."""
    market = Marketplace(w3, deployment)
    sender = Sender(w3, key, market.chain_id)
    store = NodeStore(home / "node.sqlite")
    metrics = NodeMetrics()
    clock = ChainClock(int(w3.eth.get_block("latest")["timestamp"]))
    timeout = TEST_PARAMS.commit_timeout
    deadlines = JobDeadlines(market, clock, timeout, default_margin(timeout))
    scanner = JobScanner(market, sender.address, store, deadlines, metrics)
    keeper = StakeKeeper(market, sender, store, metrics, target_stake=TEST_PARAMS.min_stake, allowance=0)
    return ChainDuties(market, sender, store, metrics, deadlines=deadlines, scanner=scanner, keeper=keeper)


def settle_into(
    market: Marketplace, actors: Actors, duties: ChainDuties, model_id: int, jobs: int, *, disputed: bool
) -> list[int]:
    """`jobs` one-hop jobs, committed by this node (Committed, or held for audit when `disputed`)."""
    client = actors.clients[0]
    escrow = market.escrow_for(MAX_TOKENS, PRICE, 1)
    ids = [
        market.submit_job(client, model_id, 1, MAX_TOKENS, PRICE, escrow, b"{}").job_id for _ in range(jobs)
    ]
    duties.run_once()  # the scanner opens them
    for job_id in ids:
        duties.store.mark_ended(job_id)  # as if each session ended (nothing served)
    duties.run_once()  # commits them
    auditor = Sender(market.w3, AUDITOR_KEY, market.chain_id)
    for job_id in ids:
        assert market.get_job(job_id).status == JobStatus.COMMITTED
        assert duties.store.job(job_id).phase == JobPhase.COMMITTED  # type: ignore[union-attr]
        if disputed:
            market.hold_for_audit(auditor, job_id, market.job_submitted(job_id).packed_terms)
    return ids


def steady_pass_cost(
    w3_factory: Callable[[], Web3],
    deployment: Deployment,
    actors: Actors,
    home: Path,
    node_key: str,
    jobs: int,
    disputed: bool,
) -> Counter[str]:
    """RPC calls of a duty pass with `jobs` unsettled jobs, once their holds ran out and were renewed."""
    home.mkdir(parents=True)
    w3 = w3_factory()
    counter = CountingProvider(w3)
    market = Marketplace(w3, deployment)
    node = Sender(w3, node_key, market.chain_id)
    model_id, _ = market.register_model(actors.deployer, f"m{jobs}", os.urandom(32), 4, [0, 2, 4])
    market.register_node(node, model_id, 1, "https://127.0.0.1:1", PRICE, stake=TEST_PARAMS.min_stake)
    duties = node_duties(w3, deployment, node_key, home)
    settle_into(market, actors, duties, model_id, jobs, disputed=disputed)
    # Committed: inside the challenge window (nothing is due). Disputed: past every hold set at the commit
    # (the challenge window) and inside the dispute timeout: nothing is due either.
    increase_time(w3, TEST_PARAMS.challenge_window + 1 if disputed else TEST_PARAMS.challenge_window // 2)
    for _ in range(2):  # the first pass re-reads the jobs woken or due and holds them again
        counter.pass_cost(duties)
    cost = counter.pass_cost(duties)
    duties.store.close()
    return cost


@pytest.mark.parametrize("disputed", [False, True], ids=["committed", "disputed"])
def test_a_duty_pass_costs_the_same_with_1_or_10_unsettled_jobs(
    w3: Web3, deployment: Deployment, actors: Actors, tmp_path: Path, disputed: bool
) -> None:
    rpc_url = w3.provider.endpoint_uri  # type: ignore[attr-defined]

    def fresh() -> Web3:
        return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 60}))

    one = steady_pass_cost(fresh, deployment, actors, tmp_path / "one", HARDHAT_DEV_KEYS[1], 1, disputed)
    ten = steady_pass_cost(fresh, deployment, actors, tmp_path / "ten", HARDHAT_DEV_KEYS[2], 10, disputed)
    print(f"RPC calls per duty pass: 1 job {dict(one)}, 10 jobs {dict(ten)}")
    assert sum(ten.values()) == sum(one.values()), f"1 job: {dict(one)}; 10 jobs: {dict(ten)}"
    assert "eth_call" not in ten or ten["eth_call"] == one["eth_call"]
    # The latest block, one eth_getLogs, the registry entry (web3 adds eth_chainId reads).
    assert one["eth_getLogs"] == 1 and one["eth_getBlockByNumber"] == 1 and one["eth_call"] <= 2, dict(one)

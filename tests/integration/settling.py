"""Settle every job a generation used and check the money to the wei (tests of failover)."""

from __future__ import annotations

from client_sdk import Client
from client_sdk.receipts import Settlement
from splitmesh.chain import HARDHAT_DEV_KEYS, JobStatus, Marketplace, Sender
from splitmesh.chain.launcher import advance_time
from splitmesh.errors import ContractRevert
from splitmesh_cli.localnet import PARAMS
from splitmesh_cli.wait import wait_until


def settle_exactly(
    market: Marketplace, reader: Client, jobs: list[int], *, timeout: float
) -> list[Settlement]:
    """Wait up to `timeout` s for every node of every job to commit (a node that failed mid-job commits
    what it served once it is back), move past every window, finalize each job and check it paid exactly:
    escrow = paid + refund, every hop price x billed tokens + the hop fee. Returns the settlements."""
    routes = {job: market.job_submitted(job).terms.route for job in jobs}

    def all_committed() -> bool:
        return all(market.get_job(j).committed_mask == (1 << len(routes[j])) - 1 for j in jobs)

    wait_until(
        all_committed,
        timeout=timeout,
        interval=0.5,
        message=lambda: f"not every node committed: {[(j, market.get_job(j).committed_mask) for j in jobs]}",
        error=AssertionError,
    )
    advance_time(market.w3, PARAMS.commit_timeout + PARAMS.dispute_timeout + PARAMS.challenge_window + 1)
    settler = Sender(market.w3, HARDHAT_DEV_KEYS[0])
    fee = market.hop_fee()
    settlements = []
    for job in jobs:
        try:  # a node's keeper may have finalized it already
            market.finalize(settler, job, market.job_submitted(job).packed_terms)
        except ContractRevert as exc:
            assert exc.name == "WrongJobStatus", exc
        assert market.get_job(job).status == JobStatus.FINALIZED
        s = reader.settlement(job)
        assert s.escrow_wei == s.total_paid_wei + s.refund_wei, s
        assert s.total_paid_wei == sum(hop.price_per_token * s.billed_tokens + fee for hop in routes[job]), s
        settlements.append(s)
    return settlements


def assert_nobody_slashed(market: Marketplace, stakes: dict[str, int]) -> None:
    """No node lost stake since `stakes` (node -> stake then) was read."""
    for node, stake in stakes.items():
        assert market.events("Slashed", node=node) == [], f"{node} was slashed"
        assert market.get_node(node).stake == stake, node

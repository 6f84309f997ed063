"""Transcript pruning (node.pruning) against jobs in every state on a real chain with an AuditCourt.

A node drops a job's frames only once no audit can ask for them: the chain shows the job Finalized or
Cancelled, and its audit (if any) resolved or past its reveal deadline. The local phase only nominates
candidates: a job that failed locally may still be open, committed or disputed on-chain, and is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from eth_utils import keccak
from web3 import Web3

from node.metrics import NodeMetrics
from node.pruning import TranscriptPruner
from node.store import NodeStore
from splitmesh.chain import AuditStatus, JobStatus, Marketplace, Sender, SubmittedJob
from splitmesh.chain.due import Windows
from splitmesh.chain.launcher import dev_key
from splitmesh.chain.sampling import open_audit_if_ready
from splitmesh.signing import EMPTY_RECEIPT
from tests.conftest import increase_time
from tests.integration.chain_activity import PARAMS as COURT_PARAMS
from tests.integration.chain_activity import deploy_court_market

PARAMS = replace(COURT_PARAMS, audit_rate_bps=0)  # nothing sampled: every dispute is the test's
GWEI = 10**9
FRAME = b"frame bytes " * 8


@pytest.fixture()
def court(w3: Web3, snapshot: None) -> tuple[Marketplace, int]:
    return deploy_court_market(w3, PARAMS)


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[NodeStore]:
    with NodeStore(tmp_path / "node.sqlite") as s:
        yield s


def _job(market: Marketplace, client: Sender, model_id: int, node: Sender, *, commit: bool) -> SubmittedJob:
    """A one-hop job (shard 2 of 3) routed through `node`, committed or not."""
    job = market.submit_job(client, model_id, 2, 10, GWEI, escrow=market.escrow_for(10, GWEI, 1))
    assert [h.node for h in job.terms.route] == [node.address]
    if commit:
        link = keccak(text=f"link {job.job_id}")
        market.commit(node, job.job_id, job.packed_terms, 0, link, keccak(link), EMPTY_RECEIPT)
    return job


def _open_audit(market: Marketplace, opener: Sender, job: SubmittedJob) -> None:
    for _ in range(3):  # the dispute block's hash is readable from the next block on
        if open_audit_if_ready(market, opener, job.job_id, job.packed_terms):
            return
    raise AssertionError(f"job {job.job_id}'s audit did not open")


def _served(store: NodeStore, job: SubmittedJob, client: str) -> None:
    store.open_job(job.job_id, 0, client, job.packed_terms)
    for step in range(3):
        digest = keccak(text=f"{job.job_id} {step}")
        store.record_step(
            job.job_id, step, step, step + 1, digest, digest, digest, digest, None, FRAME, FRAME
        )


def _frames(store: NodeStore, job: SubmittedJob) -> list[bytes]:
    return [s.input_frame + s.output_frame for s in store.transcript(job.job_id)]


def test_only_transcripts_no_audit_can_ask_for_are_pruned(
    w3: Web3, court: tuple[Marketplace, int], store: NodeStore, caplog: pytest.LogCaptureFixture
) -> None:
    market, model_id = court
    node, client, keeper = Sender(w3, dev_key(4)), Sender(w3, dev_key(7)), Sender(w3, dev_key(9))
    # Twice the minimum stake: the cancelled job slashes it 10 % and it must stay in the pool.
    market.register_node(node, model_id, 2, "http://node.test", GWEI, stake=2 * 10**18)

    # Settled long ago: finalized after its window, cancelled past its deadline, finalized by its audit.
    finalized = _job(market, client, model_id, node, commit=True)
    cancelled = _job(market, client, model_id, node, commit=False)
    audited = _job(market, client, model_id, node, commit=True)
    market.challenge(client, audited.job_id, audited.packed_terms)
    _open_audit(market, keeper, audited)
    increase_time(w3, PARAMS.commit_timeout + 1)  # past the commit deadline, challenge and reveal windows
    market.finalize(keeper, finalized.job_id, finalized.packed_terms)
    market.cancel(keeper, cancelled.job_id, cancelled.packed_terms)
    market.resolve_audit(keeper, audited.job_id, audited.packed_terms)
    # Still live: in its challenge window, disputed with an audit in its commit phase, never committed.
    committed = _job(market, client, model_id, node, commit=True)
    disputed = _job(market, client, model_id, node, commit=True)
    market.challenge(client, disputed.job_id, disputed.packed_terms)
    _open_audit(market, keeper, disputed)
    still_open = _job(market, client, model_id, node, commit=False)
    statuses = {j.job_id: market.get_job(j.job_id).status for j in (finalized, cancelled, audited)}
    assert set(statuses.values()) == {JobStatus.FINALIZED, JobStatus.CANCELLED}
    assert market.get_audit(audited.job_id).status == AuditStatus.RESOLVED
    assert market.get_audit(disputed.job_id).status == AuditStatus.OPEN

    # The node's view: every job settled locally (a local failure is not the chain's verdict).
    for job in (finalized, cancelled, audited, committed, disputed, still_open):
        _served(store, job, client.address)
    for job in (finalized, audited):
        store.mark_ended(job.job_id)
        store.mark_committed(job.job_id, "0x01")
        store.mark_finalized(job.job_id)
        store.mark_paid(job.job_id, None)
    store.mark_cancelled(cancelled.job_id)
    for job in (committed, disputed, still_open):
        store.mark_failed(job.job_id, "gave up locally")

    metrics = NodeMetrics()
    pruner = TranscriptPruner(market, store, metrics, Windows.of(market))
    now = int(w3.eth.get_block("latest")["timestamp"])
    with caplog.at_level(logging.INFO, logger="node.pruning"):
        assert pruner.run(now) == 3
    for job in (finalized, cancelled, audited):
        assert _frames(store, job) == [b""] * 3, f"job {job.job_id}'s frames should be gone"
        assert all(s.input_digest for s in store.transcript(job.job_id))  # digests stay
    for job in (committed, disputed, still_open):
        assert _frames(store, job) == [FRAME + FRAME] * 3, f"job {job.job_id} can still be audited"
    assert metrics.transcripts_pruned_total._value.get() == 3
    logged = [r.getMessage() for r in caplog.records]
    assert any(f"job {finalized.job_id}: dropped its transcript (3 steps): finalized" in m for m in logged)
    assert pruner.run(now) == 0  # nothing left to prune; the live jobs wait for their recheck

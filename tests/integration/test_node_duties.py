"""A node's duties towards the chain, whatever its client does: commit every job it is matched to before
the commit deadline, stop serving in time, recover what a crash left open, say when it leaves the pool.

Real hardhat chain, real node processes (SmolLM2 shards), chain time moved with evm_increaseTime.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from client_sdk import StepFailed
from client_sdk.link import RouteLink
from splitmesh.chain import JobStatus, Sender, SubmittedJob
from splitmesh.chain.launcher import advance_time
from splitmesh.protocol import ZERO_CHAIN, StepMeta, extend_chain, hex32, tensor_digest
from splitmesh.signing import EnvelopeSigner
from splitmesh.wire import encode_frame
from splitmesh.wire.tls import pinned_request
from splitmesh_cli.localnet import (
    CLIENT_KEY,
    NODE_KEYS,
    PARAMS,
    PRICE,
    RunningMarket,
    start_market,
    stop_market,
)
from splitmesh_cli.procs import NodeProcess
from splitmesh_cli.wait import wait_until

HIDDEN = 576  # SmolLM2-135M hidden size
MAX_TOKENS = 16
PROMPT = 3  # tokens of each test job's first step
ETHER = 10**18


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMarket]:
    market = start_market(tmp_path_factory.mktemp("duties"))
    yield market
    stop_market(market)


@pytest.fixture(scope="module")
def client(running: RunningMarket) -> Sender:
    return running.market.sender(CLIENT_KEY)


# ---------------------------------------------------------------------- helpers


def get(node: NodeProcess, path: str) -> str:
    status, _, body = pinned_request("GET", node.endpoint.rstrip("/") + path, node.tls_key, timeout=10)
    assert status == 200, f"GET {path}: HTTP {status}"
    return body.decode()


def health(node: NodeProcess) -> dict[str, Any]:
    return dict(json.loads(get(node, "/health")))


def metric(node: NodeProcess, name: str) -> float | None:
    found = re.search(rf"^{name} (\S+)$", get(node, "/metrics"), re.MULTILINE)
    return float(found.group(1)) if found else None


def submit(running: RunningMarket, client: Sender) -> SubmittedJob:
    escrow = running.market.escrow_for(MAX_TOKENS, PRICE, len(running.nodes))
    job = running.market.submit_job(client, running.model_id, 1, MAX_TOKENS, PRICE, escrow, b"{}")
    assert [hop.node for hop in job.terms.route] == [n.address for n in running.nodes]
    return job


def cutoff_of(running: RunningMarket, job: SubmittedJob) -> int:
    """Chain second from which the route stops serving the job (all nodes run the default margin)."""
    margin = int(health(running.nodes[0])["commit_margin_s"])
    assert margin == 180, "default margin: 10% of the 1800 s commit timeout"
    return running.market.get_job(job.job_id).timestamp + PARAMS.commit_timeout - margin


def advance_to(running: RunningMarket, timestamp: int) -> None:
    now = int(running.w3.eth.get_block("latest")["timestamp"])
    assert timestamp > now
    advance_time(running.w3, timestamp - now)


def step(
    running: RunningMarket, link: RouteLink, job: SubmittedJob, number: int, start: int, q: int
) -> bytes:
    """Send one signed step of a random hidden state [1, q, hidden]; returns the payload digest."""
    z = torch.randn(1, q, HIDDEN)
    digest = tensor_digest(z)
    signer = EnvelopeSigner(CLIENT_KEY, running.market.chain_id, running.deployment.market)
    meta = StepMeta(
        job=job.job_id,
        step=number,
        tokens=start + q,
        start=start,
        payload_hash=hex32(digest),
        signature=hex32(signer.sign(job.job_id, number, start + q, digest).signature),
        terms=hex32(job.packed_terms),
        want="last",
    )
    link.step(encode_frame(z, meta.model_dump()), "float32")
    return digest


def commits(running: RunningMarket, job: SubmittedJob) -> dict[int, tuple[bytes, bytes]]:
    """position -> (input commitment, output commitment) from the JobCommitted events."""
    events = running.market.events("JobCommitted", jobId=job.job_id)
    return {
        int(e["args"]["position"]): (
            bytes(e["args"]["inputCommitment"]),
            bytes(e["args"]["outputCommitment"]),
        )
        for e in events
    }


def matched(node: NodeProcess) -> Callable[[], float | None]:
    """Probe: how many jobs the node learned from JobSubmitted events."""
    return lambda: metric(node, "splitmesh_node_jobs_matched_total") or None  # 0.0: none yet


def stakes(running: RunningMarket) -> list[int]:
    return [running.market.get_node(n.address).stake for n in running.nodes]


def store_row(running: RunningMarket, node: NodeProcess, job_id: int) -> tuple[Any, ...] | None:
    """(phase, steps, input_chain, output_chain) of a job in a node's SQLite, read-only."""
    name = f"{node.address.lower()}-{running.market.chain_id}-{running.deployment.market.lower()[:10]}.sqlite"
    path: Path = running.state_dir / name
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row: tuple[Any, ...] | None = conn.execute(
            "SELECT phase, steps, input_chain, output_chain FROM jobs WHERE job_id = ?", (str(job_id),)
        ).fetchone()
    finally:
        conn.close()
    return row


# ---------------------------------------------------------------------- tests


def test_a_job_whose_client_never_connects_is_committed_by_every_hop(
    running: RunningMarket, client: Sender
) -> None:
    before = stakes(running)
    job = submit(running, client)  # the client never sends a frame
    for node in running.nodes:
        wait_until(
            matched(node), timeout=30.0, message=f"timed out waiting for {node.address} to see its job"
        )
    assert running.market.get_job(job.job_id).committed_mask == 0, "nothing commits before the cutoff"

    advance_to(running, cutoff_of(running, job) + 5)  # still 175 s before the commit deadline
    running.wait_status(job.job_id, JobStatus.COMMITTED, timeout=30)
    assert commits(running, job) == {p: (ZERO_CHAIN, ZERO_CHAIN) for p in range(3)}
    assert running.market.get_job(job.job_id).billed_tokens == 0

    advance_time(running.w3, PARAMS.challenge_window + 1)
    running.wait_status(job.job_id, JobStatus.FINALIZED, timeout=30)  # a node's claim duty finalizes
    assert stakes(running) == before


def test_a_session_kept_alive_is_ended_and_committed_before_the_deadline(
    running: RunningMarket, client: Sender
) -> None:
    before = stakes(running)
    job = submit(running, client)
    first = running.nodes[0]
    link = RouteLink(first.endpoint, job.job_id, first.address, first.tls_key, timeout=60)
    try:
        digest = step(running, link, job, 0, 0, PROMPT)
        advance_to(running, cutoff_of(running, job) + 5)
        # The node ends the session by itself (no client frame) and commits the step it served.
        wait_until(
            lambda: running.market.get_job(job.job_id).committed_mask & 1 or None,
            timeout=30.0,
            message="timed out waiting for the first hop's commit",
        )
        with pytest.raises(StepFailed) as refused:
            step(running, link, job, 1, PROMPT, 1)
        assert (refused.value.status, refused.value.code) == (410, "job_deadline")
    finally:
        link.close()
    running.wait_status(job.job_id, JobStatus.COMMITTED, timeout=30)
    assert commits(running, job)[0][0] == extend_chain(ZERO_CHAIN, 0, digest)
    assert running.market.get_job(job.job_id).billed_tokens == PROMPT
    assert stakes(running) == before


def test_a_job_left_serving_by_a_crash_is_committed_at_restart(
    running: RunningMarket, client: Sender
) -> None:
    before = stakes(running)
    job = submit(running, client)
    first, middle = running.nodes[0], running.nodes[1]
    link = RouteLink(first.endpoint, job.job_id, first.address, first.tls_key, timeout=60)
    try:
        step(running, link, job, 0, 0, PROMPT)
        wait_until(
            lambda: (store_row(running, middle, job.job_id) or [0, 0])[1] or None,
            timeout=30.0,
            message="timed out waiting for the middle hop to persist step 0",
        )
        middle.stop(sig=signal.SIGKILL)
        phase, steps, input_chain, output_chain = store_row(running, middle, job.job_id) or ()
        assert (phase, steps) == ("serving", 1)
        # The first hop cannot deliver step 1: it must not commit that step as sent.
        with pytest.raises(StepFailed) as failed:
            step(running, link, job, 1, PROMPT, 1)
        assert failed.value.status in (502, 504)
    finally:
        link.close()

    running.restart(2)  # no client frame follows: the restarted node commits on its own
    wait_until(
        lambda: running.market.get_job(job.job_id).committed_mask & 2 or None,
        timeout=30.0,
        message="timed out waiting for the restarted hop's commit",
    )
    assert commits(running, job)[1] == (input_chain, output_chain)

    advance_to(running, cutoff_of(running, job) + 5)
    running.wait_status(job.job_id, JobStatus.COMMITTED, timeout=30)  # not Disputed: the chains link
    chains = commits(running, job)
    assert chains[0][1] == chains[1][0] and chains[1][1] == chains[2][0]
    assert stakes(running) == before


def test_leaving_the_pool_is_reported_and_auto_top_up_restakes(running: RunningMarket) -> None:
    shard, min_stake = 3, PARAMS.min_stake
    key = NODE_KEYS[shard - 1]
    node = running.nodes[shard - 1]

    def unbond(amount: int) -> None:
        running.market.unbond(running.market.sender(key), amount)  # a fresh nonce: the node sends too

    def out_of_pool() -> dict[str, Any] | None:
        body = health(running.nodes[shard - 1])
        return body if body["pooled"] is False else None

    unbond(ETHER // 2)
    body = wait_until(
        out_of_pool, timeout=30.0, message="timed out waiting for /health to show the node out of the pool"
    )
    assert body["pool_reason"].startswith(f"below minimum stake by {ETHER // 2} wei")
    assert metric(node, "splitmesh_node_pooled") == 0.0
    assert "is OUT of the matching pool: below minimum stake" in node.log_path.read_text()

    # Restart with an allowance of 0.6 ETH (the start itself stakes back up to --stake, 1 ETH).
    node.stop()
    spec = dataclasses.replace(
        running.spec(shard), env={"SPLITMESH_NODE_AUTO_TOPUP_WEI": str(6 * ETHER // 10)}
    )
    node = running.nodes[shard - 1] = NodeProcess(spec, node.log_path).start()
    assert health(node)["stake_wei"] == ETHER
    try:
        unbond(ETHER // 2)
        wait_until(
            lambda: running.market.get_node(node.address).stake == ETHER,
            timeout=30.0,
            message="timed out waiting for the top-up",
        )
        wait_until(
            lambda: health(node)["pooled"] is True,
            timeout=30.0,
            message="timed out waiting for /health to show the node pooled",
        )
        unbond(ETHER // 2)  # only 0.1 ETH of the allowance is left
        body = wait_until(
            out_of_pool,
            timeout=30.0,
            message="timed out waiting for /health to show the node out of the pool",
        )
        assert running.market.get_node(node.address).stake == 6 * ETHER // 10
        assert body["pool_reason"].startswith(f"below minimum stake by {min_stake - 6 * ETHER // 10} wei")
        assert metric(node, "splitmesh_node_topup_wei_total") == 6 * ETHER // 10
    finally:
        missing = ETHER - running.market.get_node(node.address).stake
        if missing > 0:
            running.market.stake(running.market.sender(key), missing)
    wait_until(
        lambda: health(node)["pooled"] is True,
        timeout=30.0,
        message="timed out waiting for /health to show the node pooled again",
    )

"""A full route: the client learns it before it locks escrow, and a job refused at its first step ends
without anyone slashed.

Real hardhat chain, three real SmolLM2 node processes that hold one job session each
(SPLITMESH_NODE_MAX_SESSIONS=1), chain time moved with evm_increaseTime. One client holds the route's
only sessions with a job it keeps open; a second client then asks for the same route.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from client_sdk import Client, NodeBusy, RouteBusy, StepFailed
from client_sdk.capacity import CapacityProbe
from client_sdk.link import RouteLink
from splitmesh.chain import JobStatus, Sender, SubmittedJob
from splitmesh.chain.launcher import advance_time
from splitmesh.protocol import END_PAYLOAD, END_STEP, EndMeta, StepMeta, hex32, tensor_digest
from splitmesh.signing import EnvelopeSigner
from splitmesh.wire import encode_frame
from splitmesh.wire.tls import pinned_request
from splitmesh_cli.localnet import (
    CLIENT_KEY,
    OTHER_KEY,
    PARAMS,
    PRICE,
    SPLIT,
    RunningMarket,
    start_market,
    stop_market,
)
from splitmesh_cli.procs import NodeProcess
from splitmesh_cli.wait import wait_until

HIDDEN = 576  # SmolLM2-135M hidden size
MAX_TOKENS = 16
RETRY_AFTER = 2.0  # the nodes' default retry hint (node.config retry_after), seconds
PROMPT = "Say hello."


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMarket]:
    market = start_market(tmp_path_factory.mktemp("capacity"), node_env={"SPLITMESH_NODE_MAX_SESSIONS": "1"})
    yield market
    stop_market(market)


@pytest.fixture()
def holder(running: RunningMarket) -> Iterator[SubmittedJob]:
    """A job of CLIENT_KEY with one step served: it holds the one session of every route node until the
    test ends it (or chain time passes its cutoff)."""
    market = running.market
    escrow = market.escrow_for(MAX_TOKENS, PRICE, len(running.nodes))
    job = market.submit_job(market.sender(CLIENT_KEY), running.model_id, 1, MAX_TOKENS, PRICE, escrow, b"{}")
    first = running.nodes[0]
    link = RouteLink(first.endpoint, job.job_id, first.address, first.tls_key)
    signer = EnvelopeSigner(CLIENT_KEY, market.chain_id, running.deployment.market)
    z = torch.randn(1, 3, HIDDEN)
    digest = tensor_digest(z)
    meta = StepMeta(
        job=job.job_id,
        step=0,
        tokens=3,
        start=0,
        payload_hash=hex32(digest),
        signature=hex32(signer.sign(job.job_id, 0, 3, digest).signature),
        terms=hex32(job.packed_terms),
        want="last",
    )
    link.step(encode_frame(z, meta.model_dump()), "float32")
    wait_until(
        lambda: all(health(n)["capacity"]["free_sessions"] == 0 for n in running.nodes) or None,
        timeout=30,
        message="the holder's job did not take every node's session",
    )
    yield job
    end = signer.sign(job.job_id, END_STEP, 3, END_PAYLOAD).signature
    # Free the sessions for the next test; a job past its cutoff (chain time moved) is ended already.
    with contextlib.suppress(StepFailed):
        link.end(EndMeta(job=job.job_id, tokens=3, signature=hex32(end)))
    link.close()
    wait_until(
        lambda: all(health(n)["capacity"]["free_sessions"] == 1 for n in running.nodes) or None,
        timeout=30,
        message="the holder's sessions were not freed",
    )


@pytest.fixture(scope="module")
def other(running: RunningMarket) -> Client:
    return Client(running.rpc_url, OTHER_KEY, market=running.deployment.market)


def health(node: NodeProcess) -> dict[str, Any]:
    status, _, body = pinned_request("GET", node.endpoint.rstrip("/") + "/health", node.tls_key, timeout=10)
    assert status == 200
    return dict(json.loads(body))


def metric(node: NodeProcess, name: str) -> float:
    status, _, body = pinned_request("GET", node.endpoint.rstrip("/") + "/metrics", node.tls_key, timeout=10)
    assert status == 200
    found = re.search(rf"^{name} (\S+)$", body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def stakes(running: RunningMarket) -> list[int]:
    return [running.market.get_node(n.address).stake for n in running.nodes]


def test_nodes_advertise_their_room_and_a_full_route_is_refused_before_any_escrow(
    running: RunningMarket, holder: SubmittedJob, other: Client
) -> None:
    for node in running.nodes:
        capacity = health(node)["capacity"]
        assert capacity["max_sessions"] == 1
        assert capacity["free_sessions"] == 0, "the holder's job takes every node's one session"
        assert capacity["retry_after"] == RETRY_AFTER
    jobs, balance = running.market.job_count(), running.market.balance(other.address)
    with pytest.raises(RouteBusy) as refused:
        other.generate(PROMPT, 2, split=SPLIT)
    assert refused.value.shard == 1 and refused.value.full == [running.nodes[0].address]
    assert refused.value.retry_after == RETRY_AFTER
    assert isinstance(refused.value, ConnectionRefusedError)
    # Nothing submitted, no escrow locked, no gas spent: the probe is reads only.
    assert running.market.job_count() == jobs
    assert running.market.balance(other.address) == balance


def refused_job(running: RunningMarket, other: Client) -> tuple[SubmittedJob, int]:
    """A job of OTHER_KEY whose first step the full route refused (the probe off: the race it cannot
    close); its escrow."""
    with pytest.raises(NodeBusy) as refused:
        other.generate(PROMPT, 2, split=SPLIT, capacity=CapacityProbe(enabled=False))
    busy = refused.value
    assert (busy.status, busy.code, busy.retry_after) == (503, "busy", RETRY_AFTER)
    assert isinstance(busy, StepFailed)
    assert busy.job_id is not None and running.market.is_released(busy.job_id)
    assert running.market.events("JobReleased", jobId=busy.job_id), "the release is an on-chain event"
    job = running.market.job_submitted(busy.job_id)
    return job, job.terms.escrow


def cancel_slashes_nobody(running: RunningMarket, job: SubmittedJob, stakes_before: list[int]) -> None:
    """Past the commit deadline: the cancel refunds the whole escrow and slashes nobody."""
    tx = running.market.cancel(Sender(running.w3, CLIENT_KEY), job.job_id, job.packed_terms)
    events = running.market.decode_receipt_events(tx.receipt)
    (cancelled,) = [args for name, args in events if name == "JobCancelled"]
    assert (cancelled["missingMask"], cancelled["paid"], cancelled["slashed"]) == (0b111, 0, 0)
    assert cancelled["refund"] == job.terms.escrow
    assert not [name for name, _ in events if name == "Slashed"]
    assert running.market.get_job(job.job_id).status == JobStatus.CANCELLED
    assert stakes(running) == stakes_before, "nobody was slashed"


def test_a_job_refused_at_its_first_step_is_not_committed_and_costs_its_client_nothing(
    running: RunningMarket, holder: SubmittedJob, other: Client
) -> None:
    """The route filled up after the probe: the first step gets a typed 503 busy, the SDK releases the
    job, the route's nodes see the release and leave the job uncommitted, its cancel refunds everything.
    Before: every hop committed the refused job with empty chains and the client paid three hop fees."""
    before = stakes(running)
    job, _ = refused_job(running, other)
    submitted = running.market.get_job(job.job_id).timestamp
    margin = int(health(running.nodes[0])["commit_margin_s"])
    now = int(running.w3.eth.get_block("latest")["timestamp"])
    advance_time(running.w3, submitted + PARAMS.commit_timeout - margin + 5 - now)  # past its serving cutoff
    for node in running.nodes:
        wait_until(
            lambda n=node: metric(n, "splitmesh_node_jobs_released_total") >= 1 or None,
            timeout=60,
            message=f"node {node.address} did not drop the released job",
        )
    assert running.market.get_job(job.job_id).committed_mask == 0
    advance_time(running.w3, margin)  # past the commit deadline: anyone may cancel
    cancel_slashes_nobody(running, job, before)


def test_a_refused_job_whose_route_could_not_commit_in_time_slashes_nobody(
    running: RunningMarket, holder: SubmittedJob, other: Client
) -> None:
    """The issue's miss-slash: a refused job the route nodes did not commit by its deadline (here chain
    time jumps past it, as for a node away at its cutoff) was cancelled with every hop slashed, though
    none of them could have served it. Released, it slashes nobody."""
    before = stakes(running)
    job, _ = refused_job(running, other)
    submitted = running.market.get_job(job.job_id).timestamp
    now = int(running.w3.eth.get_block("latest")["timestamp"])
    advance_time(running.w3, submitted + PARAMS.commit_timeout + 1 - now)
    cancel_slashes_nobody(running, job, before)

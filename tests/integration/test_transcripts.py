"""Audit transcripts served by real nodes: who may read them, and that they are the committed ones."""

from __future__ import annotations

import pytest

from client_sdk import Client
from splitmesh.audit.transcript import (
    TranscriptError,
    TranscriptUnavailable,
    check_transcript,
    decode_transcript,
    encode_transcript,
    fetch_transcript,
)
from splitmesh.chain import JobStatus
from splitmesh.wire import decode_frame, encode_frame
from splitmesh_cli.localnet import CLIENT_KEY, OTHER_KEY, SPLIT, RunningMarket


@pytest.fixture(scope="module")
def served(running_market: RunningMarket) -> tuple[Client, int, dict[int, tuple[bytes, bytes]]]:
    client = Client(running_market.rpc_url, CLIENT_KEY, market=running_market.deployment.market)
    out = client.generate("Name a planet.", 4, split=SPLIT)
    job_id = out.receipt.job_id
    running_market.wait_status(job_id, JobStatus.COMMITTED)
    commits = {
        e["args"]["position"]: (bytes(e["args"]["inputCommitment"]), bytes(e["args"]["outputCommitment"]))
        for e in running_market.market.events("JobCommitted", jobId=job_id)
    }
    return client, job_id, commits


def _fetch(running_market: RunningMarket, job_id: int, position: int, key: str = CLIENT_KEY) -> bytes:
    node = running_market.nodes[position]
    d = running_market.deployment
    return fetch_transcript(node.endpoint, job_id, position, key, d.chain_id, d.market, key=node.tls_key)


def test_each_hop_serves_the_transcript_it_committed_to(running_market: RunningMarket, served) -> None:  # type: ignore[no-untyped-def]
    client, job_id, commits = served
    route = [n.address for n in running_market.nodes]
    for position in range(3):
        steps = decode_transcript(_fetch(running_market, job_id, position))
        assert [s.step for s in steps] == list(range(4))
        check_transcript(
            steps,
            chain_id=running_market.deployment.chain_id,
            market=running_market.deployment.market,
            job_id=job_id,
            position=position,
            client=client.address,
            previous_hop=route[position - 1] if position else None,
            input_commitment=commits[position][0],
            output_commitment=commits[position][1],
        )
    # Neighbours: what node p sent is what node p+1 received.
    first, second = (decode_transcript(_fetch(running_market, job_id, p)) for p in (0, 1))
    assert [s.output_digest for s in first] == [s.input_digest for s in second]


def test_a_tampered_transcript_fails_the_checks(running_market: RunningMarket, served) -> None:  # type: ignore[no-untyped-def]
    client, job_id, commits = served
    raw = _fetch(running_market, job_id, 1)
    steps = decode_transcript(raw)
    kwargs = dict(
        chain_id=running_market.deployment.chain_id,
        market=running_market.deployment.market,
        job_id=job_id,
        position=1,
        client=client.address,
        previous_hop=running_market.nodes[0].address,
        input_commitment=commits[1][0],
        output_commitment=commits[1][1],
    )
    # Another output at one step: the chains no longer match the on-chain commitment.
    pairs = []
    for i, s in enumerate(steps):
        received = encode_frame(s.input, s.meta.model_dump())
        sent = encode_frame(s.output * (1.01 if i == 2 else 1.0))
        pairs.append((received, sent))
    with pytest.raises(TranscriptError, match="commitments"):
        check_transcript(decode_transcript(encode_transcript(pairs)), **kwargs)  # type: ignore[arg-type]
    # Checked against the wrong previous hop, the relay signatures give it away.
    with pytest.raises(TranscriptError, match="not relayed by"):
        check_transcript(steps, **{**kwargs, "previous_hop": running_market.nodes[2].address})  # type: ignore[arg-type]
    with pytest.raises(TranscriptError):
        decode_transcript(raw[:-5])
    assert decode_frame(encode_frame(steps[0].input)).tensor.shape == steps[0].input.shape


def test_only_the_client_or_an_auditor_may_read_it(running_market: RunningMarket, served) -> None:  # type: ignore[no-untyped-def]
    _, job_id, _ = served
    with pytest.raises(TranscriptUnavailable) as refused:
        _fetch(running_market, job_id, 0, key=OTHER_KEY)
    assert refused.value.status == 403
    with pytest.raises(TranscriptUnavailable) as unknown:
        _fetch(running_market, 10**9, 0)
    assert unknown.value.status == 404

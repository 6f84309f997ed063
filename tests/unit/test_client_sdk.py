"""Client SDK pieces that need no network: sampling, commitment checks, timing arithmetic."""

from __future__ import annotations

import pytest
import torch

from client_sdk.errors import CommitmentMismatch
from client_sdk.receipts import GenerationReceipt, StepStats
from client_sdk.route_job import check_commitments
from client_sdk.sampling import sample_token
from splitmesh.protocol import HopTiming, NodeCommitment, extend_chain


def test_greedy_is_argmax_and_sampling_respects_top_p() -> None:
    logits = torch.tensor([0.0, 3.0, 2.9, -5.0])
    assert sample_token(logits, 0.0, 1.0, None) == 1
    gen = torch.Generator().manual_seed(0)
    # top_p small enough keeps only the best token, whatever the draw.
    assert {sample_token(logits, 1.0, 0.3, gen) for _ in range(50)} == {1}
    # With top_p = 1 and a high temperature the two close tokens both appear, the rest never does.
    drawn = {sample_token(logits, 1.0, 0.95, gen) for _ in range(200)}
    assert drawn == {1, 2}
    a = [sample_token(logits, 2.0, 1.0, torch.Generator().manual_seed(3)) for _ in range(5)]
    b = [sample_token(logits, 2.0, 1.0, torch.Generator().manual_seed(3)) for _ in range(5)]
    assert a == b
    with pytest.raises(ValueError):
        sample_token(logits, -1.0, 1.0, None)


def _commitment(position: int, inp: bytes, out: bytes) -> NodeCommitment:
    return NodeCommitment(
        node=f"0x{position:040x}",
        position=position,
        steps=1,
        input_chain="0x" + inp.hex(),
        output_chain="0x" + out.hex(),
    )


def test_commitment_check_catches_each_kind_of_mismatch() -> None:
    c0, c1, c2, c3 = (extend_chain(b"\0" * 32, 0, bytes([i]) * 32) for i in range(4))
    good = [_commitment(0, c0, c1), _commitment(1, c1, c2), _commitment(2, c2, c3)]
    check_commitments(good, c0, c3, 3)
    with pytest.raises(CommitmentMismatch, match="differs from what we sent"):
        check_commitments(good, c1, c3, 3)
    with pytest.raises(CommitmentMismatch, match="differs from what we got"):
        check_commitments(good, c0, c2, 3)
    with pytest.raises(CommitmentMismatch, match="disagree"):
        check_commitments([good[0], _commitment(1, c3, c2), good[2]], c0, c3, 3)
    with pytest.raises(CommitmentMismatch, match="expected 3 commitments"):
        check_commitments(good[:2], c0, c2, 3)


def _hop(position: int, compute: float, handle: float, relay: float) -> HopTiming:
    return HopTiming(node="n", position=position, compute_ms=compute, handle_ms=handle, relay_ms=relay)


def test_link_and_node_overheads_are_derived_from_the_nodes_reports() -> None:
    stats = StepStats()
    prefill = [_hop(0, 50, 80, 25), _hop(1, 10, 24, 12), _hop(2, 11, 11.5, 0)]
    # Client waited 31 ms; node 0 handled 30 (of which 10 layers, 18 waiting), node 1 17 (9 + 7), node 2 6.5.
    decode = [_hop(0, 10, 30, 18), _hop(1, 9, 17, 7), _hop(2, 6, 6.5, 0)]
    stats.record(0, 0.01, 0.001, 0.090, 0.007, prefill)
    stats.record(1, 0.005, 0.0002, 0.031, 0.007, decode)
    (links,) = stats.link_ms()
    assert links == pytest.approx([1.0, 1.0, 0.5])
    (local,) = stats.node_local_ms()
    assert local == pytest.approx([2.0, 1.0, 0.5])
    assert stats.hop_overhead_ms() == pytest.approx([(31 - 25) / 3])
    assert stats.summary()["steps"] == 2


def test_tokens_per_s_is_wall_clock_after_the_first_token() -> None:
    receipt = GenerationReceipt(
        job_id=1,
        client="c",
        model_id=1,
        split=4,
        route=[],
        prompt_tokens=3,
        max_tokens=8,
        escrow_wei=1,
        tx={},
        gas_used={},
    )
    assert receipt.tokens_per_s is None
    receipt.token_times = [10.0, 10.5, 11.0, 12.0]
    assert receipt.tokens_per_s == pytest.approx(3 / 2.0)

"""Private generation end to end: real node processes, a real chain, the real SmolLM2 weights."""

from __future__ import annotations

import itertools
import math
import sqlite3

import pytest
import torch

from client_sdk import Client, Generation, NotSettled, TokenEvent
from client_sdk.privacy import noise_std
from splitmesh.chain import JobStatus
from splitmesh.chain.launcher import advance_time
from splitmesh.model.reference import reference_generate
from splitmesh.wire import decode_frame
from splitmesh_cli.localnet import CLIENT_KEY, PARAMS, PRICE, SPLIT, RunningMarket
from splitmesh_cli.wait import wait_until

PROMPT = "Name three colors of the rainbow."


@pytest.fixture(scope="module")
def client(running_market: RunningMarket) -> Client:
    return Client(running_market.rpc_url, CLIENT_KEY, market=running_market.deployment.market)


def _settle(running_market: RunningMarket, client: Client, job_id: int):  # type: ignore[no-untyped-def]
    running_market.wait_status(job_id, JobStatus.COMMITTED)
    with pytest.raises(NotSettled):
        client.finalize(job_id)  # the challenge window is still open
    advance_time(running_market.w3, PARAMS.challenge_window)
    return client.finalize(job_id)


def test_three_node_generation_equals_the_unsplit_model(
    running_market: RunningMarket, client: Client
) -> None:
    out = client.generate(PROMPT, 12, epsilon=math.inf, split=SPLIT)
    reference = reference_generate(None, out.prompt_ids, 12, repeats=1)
    assert out.token_ids == reference.tokens
    assert out.text == client.tokenizer.decode(reference.tokens, skip_special_tokens=True)
    receipt = out.receipt
    assert [h.node for h in receipt.route] == [n.address for n in running_market.nodes]
    assert receipt.billed_tokens == receipt.prompt_tokens + len(out.token_ids) - 1
    # Neighbours agree on what passed between them; the client checked both ends itself.
    chains = receipt.commitments
    assert [c["steps"] for c in chains] == [len(out.token_ids)] * 3
    for left, right in itertools.pairwise(chains):
        assert left["output_chain"] == right["input_chain"]
    # Each node's on-chain commitment equals what it reported to the client at the end of the job.
    running_market.wait_status(receipt.job_id, JobStatus.COMMITTED)
    events = running_market.market.events("JobCommitted", jobId=receipt.job_id)
    on_chain = {e["args"]["position"]: "0x" + bytes(e["args"]["inputCommitment"]).hex() for e in events}
    assert on_chain == {c["position"]: c["input_chain"] for c in chains}


def test_stream_yields_tokens_then_the_generation(client: Client) -> None:
    events = list(client.stream(PROMPT, 5, split=SPLIT))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert isinstance(events[-1], Generation)
    assert [t.token_id for t in tokens] == events[-1].token_ids
    assert "".join(t.text for t in tokens) == events[-1].text


def test_payments_and_refund_add_up_to_the_escrow(running_market: RunningMarket, client: Client) -> None:
    market = running_market.market
    out = client.generate(PROMPT, 6, split=SPLIT)
    job_id = out.receipt.job_id
    escrow = out.receipt.escrow_wei
    fee = PARAMS.hop_fee  # each committed hop earns it per job, on top of price x tokens
    assert escrow == (out.receipt.max_tokens * PRICE + fee) * 3
    settlement = _settle(running_market, client, job_id)
    billed = out.receipt.billed_tokens
    assert market.get_job(job_id).status == JobStatus.FINALIZED
    assert settlement.billed_tokens == billed
    assert settlement.paid_wei == {n.address: PRICE * billed + fee for n in running_market.nodes}
    assert settlement.total_paid_wei == 3 * (PRICE * billed + fee)
    assert settlement.total_paid_wei + settlement.refund_wei == escrow
    # The refund reached the client (minus gas if the client's finalize won the race with the nodes'),
    # in the settling transaction's own block: other jobs of this shared client may settle meanwhile.
    receipt = market.w3.eth.get_transaction_receipt(settlement.tx_hash)
    gas_cost = receipt["gasUsed"] * receipt["effectiveGasPrice"] if receipt["from"] == client.address else 0
    block = receipt["blockNumber"]
    assert len(market.w3.eth.get_block(block)["transactions"]) == 1  # automine: one transaction a block
    before, after = (market.w3.eth.get_balance(client.address, b) for b in (block - 1, block))
    assert after == before + settlement.refund_wei - gas_cost
    # Each node's duty loop withdraws what it earned.
    for node in running_market.nodes:
        wait_until(
            lambda node=node: market.get_node(node.address).earnings == 0,  # type: ignore[misc]
            timeout=30,
            interval=0.1,
            message=f"node {node.address} did not withdraw its earnings",
        )
        withdrawn = market.events("EarningsWithdrawn", node=node.address)
        # Earlier jobs may be swept by the same withdrawal; this job's pay is in the total.
        assert sum(e["args"]["amount"] for e in withdrawn) >= PRICE * billed + fee


def test_noise_at_finite_epsilon_has_the_expected_scale(
    running_market: RunningMarket, client: Client
) -> None:
    epsilon, delta, clip = 50.0, 1e-5, 2.0
    out = client.generate(PROMPT, 2, epsilon=epsilon, delta=delta, clip=clip, split=SPLIT, seed=7)
    job_id = out.receipt.job_id
    # Prefill noises every prompt vector but the public BOS, the decode step one more.
    assert out.receipt.privacy["tokens"] == out.receipt.prompt_tokens
    # What node 1 actually received (its audit transcript) against the client's noiseless Z.
    node = running_market.nodes[0]
    running_market.wait_status(job_id, JobStatus.COMMITTED)
    db = next(running_market.state_dir.glob(f"{node.address.lower()}-*.sqlite"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (frame,) = conn.execute(
            "SELECT input_frame FROM steps WHERE job_id = ? AND step = 0", (str(job_id),)
        ).fetchone()
    received = decode_frame(frame).tensor  # [1, prompt, 576]
    prepared = client.prepare(SPLIT)
    with torch.inference_mode():
        ids = torch.tensor([out.prompt_ids])
        z = prepared.model.head(ids, torch.arange(ids.shape[1]).unsqueeze(0))
    norms = z.norm(dim=-1, keepdim=True)
    clipped = z * torch.clamp(clip / norms, max=1.0)
    assert torch.equal(received[0, 0], z[0, 0])  # the public BOS travels un-noised
    noise = (received - clipped)[0, 1:]
    expected = noise_std(epsilon, delta, clip)
    assert abs(noise.std().item() / expected - 1) < 0.05
    assert abs(noise.mean().item()) < 0.05 * expected
    # No noise at all at epsilon = inf: the node got exactly Z.
    plain = client.generate(PROMPT, 1, split=SPLIT)
    running_market.wait_status(plain.receipt.job_id, JobStatus.COMMITTED)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (frame,) = conn.execute(
            "SELECT input_frame FROM steps WHERE job_id = ? AND step = 0", (str(plain.receipt.job_id),)
        ).fetchone()
    assert torch.equal(decode_frame(frame).tensor, z)


def test_node_restart_between_commit_and_claim_still_gets_paid(
    running_market: RunningMarket, client: Client
) -> None:
    market = running_market.market
    out = client.generate(PROMPT, 4, split=SPLIT)
    job_id = out.receipt.job_id
    running_market.wait_status(job_id, JobStatus.COMMITTED)
    node = running_market.nodes[1]
    address = node.address
    assert node.stop() == 0  # SIGTERM: a clean exit
    advance_time(running_market.w3, PARAMS.challenge_window)
    paid_before = market.events("EarningsWithdrawn", node=address)
    restarted = running_market.restart(2)
    assert restarted.address == address
    # The restarted node resumes its pending claim from SQLite: finalize (or see it final), withdraw.
    wait_until(
        lambda: len(market.events("EarningsWithdrawn", node=address)) > len(paid_before),
        timeout=60,
        message="the restarted node never withdrew its earnings",
    )
    assert market.get_job(job_id).status == JobStatus.FINALIZED
    assert market.get_node(address).earnings == 0
    # And it serves again.
    again = client.generate(PROMPT, 2, split=SPLIT)
    assert len(again.token_ids) == 2


def test_a_bf16_client_sends_float32_nodes_their_dtype_and_is_refused_in_its_own(
    running_market: RunningMarket,
) -> None:
    from client_sdk import StepFailed
    from splitmesh.chain.launcher import dev_key

    # A client computing in bfloat16 (what --dtype auto picks on a GPU; run on the CPU here) in front
    # of float32 nodes: its frames are converted to the route's dtype before they are hashed and sent,
    # and the float32 replies are read back in bfloat16.
    key, market = dev_key(9), running_market.deployment.market  # a key no other test of this module uses
    bf16 = Client(running_market.rpc_url, key, market=market, dtype="bfloat16", wire_dtype="float32")
    out = bf16.generate(PROMPT, 4, split=SPLIT)
    assert len(out.token_ids) == 4
    assert out.receipt.billed_tokens == out.receipt.prompt_tokens + 3
    running_market.wait_status(out.receipt.job_id, JobStatus.COMMITTED)
    # Without the conversion it sends bfloat16 frames, which float32 nodes refuse with a typed 400.
    same_dtype = Client(running_market.rpc_url, key, market=market, dtype="bfloat16")
    with pytest.raises(StepFailed) as refused:
        same_dtype.generate(PROMPT, 2, split=SPLIT)
    assert refused.value.code == "bad_dtype" and refused.value.status == 400

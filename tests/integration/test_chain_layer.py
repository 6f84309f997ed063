"""The Python chain layer against a real hardhat node: deployment, calls, events, decoded reverts."""

from __future__ import annotations

from dataclasses import replace

import pytest
from eth_utils import keccak
from web3 import Web3

from splitmesh.chain import Deployment, DeployParams, JobStatus, Marketplace, NodeStatus, Sender, terms_hash
from splitmesh.chain.deploy import (
    ZERO_ADDRESS,
    deployment_from_market,
    find_deployment,
    is_live,
    save_deployment,
)
from splitmesh.errors import ChainError, ConfigError, ContractRevert
from splitmesh.signing import EMPTY_RECEIPT, EnvelopeSigner, recover_envelope_signer
from tests.conftest import TEST_PARAMS, Actors, increase_time, tx_cost

GWEI = 10**9
PLAN = [0, 2, 5, 8]


def link(job_id: int, boundary: int) -> bytes:
    """Commitment to the frames crossing a boundary of a job: node p commits (link(p), link(p + 1))."""
    return keccak(text=f"link-{job_id}-{boundary}")


def setup_model_and_nodes(
    market: Marketplace, actors: Actors, prices: tuple[int, ...] = (GWEI, 2 * GWEI)
) -> int:
    model_id, _ = market.register_model(actors.deployer, "tiny", b"\x07" * 32, 8, PLAN)
    for shard, (node, price) in enumerate(zip(actors.nodes[:2], prices, strict=True), start=1):
        market.register_node(
            node, model_id, shard, f"http://127.0.0.1:{9100 + shard}", price, stake=2 * 10**18
        )
    return model_id


def test_deployment_is_bound_and_remembered(w3: Web3, market: Marketplace, chain) -> None:  # type: ignore[no-untyped-def]
    d = market.deployment
    assert market.registry.functions.jobMarket().call() == d.market
    assert market.market.functions.registry().call() == d.registry
    assert market.parameters()["challenge_window"] == TEST_PARAMS.challenge_window
    assert is_live(w3, d)
    save_deployment(d, chain.rpc_url)
    assert find_deployment(w3, chain.rpc_url) == d
    assert find_deployment(w3, "http://127.0.0.1:1") is None
    rebuilt = deployment_from_market(w3, d.market)
    assert (rebuilt.registry, rebuilt.params, rebuilt.court) == (d.registry, d.params, ZERO_ADDRESS)
    # An EOA auditor: no court was deployed, and the court wrappers say so.
    assert not d.has_court and market.court is None
    assert market.parameters()["audit_rate_bps"] == 0
    with pytest.raises(ChainError, match="has no AuditCourt"):
        market.get_audit(1)


def test_deployment_files_from_before_the_court_still_load() -> None:
    old = {
        "chain_id": 31337,
        "registry": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
        "market": "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512",
        "deployer": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
        "block": 1,
        "params": {"min_stake": 10**18, "commit_timeout": 60, "auditor": ZERO_ADDRESS},
        "gas_used": {"NodeRegistry": 1, "JobMarket": 2},
    }
    d = Deployment.from_json(old)
    assert (d.court, d.has_court, d.params.commit_timeout) == (ZERO_ADDRESS, False, 60)
    assert d.params.audit_rate_bps == 0 and d.params.verifiers_per_position == 3
    assert Deployment.from_json(d.to_json()) == d
    court = replace(d, court="0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0")
    assert Deployment.from_json(court.to_json()) == court and court.has_court


def test_deploy_params_are_validated() -> None:
    DeployParams().validate()
    with pytest.raises(ConfigError, match="audit_rate_bps"):
        DeployParams(audit_rate_bps=10_001).validate()
    with pytest.raises(ConfigError, match="dispute_timeout must exceed"):
        DeployParams(dispute_timeout=601, audit_commit_window=300, audit_reveal_window=300).validate()
    DeployParams(dispute_timeout=602, audit_commit_window=300, audit_reveal_window=300).validate()
    with pytest.raises(ConfigError, match="verifiers_per_position"):
        DeployParams(verifiers_per_position=17).validate()
    with pytest.raises(ConfigError, match="verifier_bond"):
        DeployParams(verifier_bond=0).validate()
    # With another account as the auditor no court is deployed: its parameters do not matter.
    DeployParams(auditor=TEST_PARAMS.auditor, verifier_bond=0, dispute_timeout=60).validate()


def test_model_and_node_views(market: Marketplace, actors: Actors) -> None:
    model_id = setup_model_and_nodes(market, actors)
    info = market.get_model(model_id)
    assert (info.name, info.num_layers, info.boundaries, info.num_shards) == ("tiny", 8, tuple(PLAN), 3)
    assert list(info.layers_of(1)) == [2, 3, 4]
    assert market.find_model(b"\x07" * 32, PLAN) == model_id
    assert market.find_model(b"\x07" * 32, [0, 8]) is None
    node = market.get_node(actors.nodes[0].address)
    assert (node.status, node.shard, node.stake, node.pooled) == (NodeStatus.ACTIVE, 1, 2 * 10**18, True)
    assert [h.node for h in market.pool(model_id, 1)] == [actors.nodes[0].address]


def test_reverts_are_decoded_into_named_errors(market: Marketplace, actors: Actors) -> None:
    model_id = setup_model_and_nodes(market, actors)
    with pytest.raises(ContractRevert) as info:
        market.submit_job(actors.clients[0], model_id, 1, 10, 2 * GWEI, escrow=1)
    assert info.value.name == "EscrowTooSmall"
    assert info.value.args_by_name == {"required": 10 * 3 * GWEI, "provided": 1}
    with pytest.raises(ContractRevert) as info:
        market.submit_job(actors.clients[0], model_id, 1, 10, GWEI // 2, escrow=10**18)
    assert (info.value.name, info.value.args_by_name) == ("NoEligibleNode", {"modelId": model_id, "shard": 1})
    with pytest.raises(ContractRevert, match=r"UnknownModel\(modelId=99\)"):
        market.get_model(99)
    # A revert reported when the transaction is sent (no estimate first, as in a race with another
    # sender) is decoded the same way.
    fn = market.market.functions.finalize(77, b"\0" * 69)
    with pytest.raises(ContractRevert) as info:
        actors.clients[0].transact(fn, gas=300_000)
    assert (info.value.name, info.value.args_by_name) == ("UnknownJob", {"jobId": 77})
    # The sender's nonce tracking survives failed estimates and sends: the next transaction goes through.
    job = market.submit_job(actors.clients[0], model_id, 1, 10, 2 * GWEI, escrow=30 * GWEI)
    assert job.job_id == 1


def test_python_hashes_and_digests_match_the_contract(market: Marketplace, actors: Actors) -> None:
    model_id = setup_model_and_nodes(market, actors)
    job = market.submit_job(actors.clients[0], model_id, 1, 16, 2 * GWEI, escrow=16 * 3 * GWEI)
    assert market.get_job(job.job_id).terms_hash == terms_hash(job.job_id, job.packed_terms)
    assert market.hash_terms(job.job_id, job.packed_terms) == terms_hash(job.job_id, job.packed_terms)
    assert job.terms.encode() == job.packed_terms
    signer = EnvelopeSigner(
        "0x" + actors.clients[0].account.key.hex().removeprefix("0x"),
        market.chain_id,
        market.deployment.market,
    )
    env = signer.sign(job.job_id, 4, 9, b"\x33" * 32)
    from splitmesh.signing import envelope_digest

    digest = envelope_digest(market.chain_id, market.deployment.market, job.job_id, 4, 9, b"\x33" * 32)
    assert market.envelope_digest(job.job_id, 4, 9, b"\x33" * 32) == digest
    assert (
        recover_envelope_signer(
            market.chain_id, market.deployment.market, job.job_id, 4, 9, b"\x33" * 32, env.signature
        )
        == actors.clients[0].address
    )
    assert market.job_submitted(job.job_id).packed_terms == job.packed_terms


def _node_sender(actors: Actors, address: str) -> Sender:
    return next(n for n in actors.nodes if n.address == address)


def test_full_job_lifecycle_pays_exactly(w3: Web3, market: Marketplace, actors: Actors) -> None:
    model_id = setup_model_and_nodes(market, actors, prices=(GWEI, 3 * GWEI))
    client = actors.clients[0]
    escrow = 100 * 4 * GWEI + 12345
    job = market.submit_job(client, model_id, 1, 100, 3 * GWEI, escrow=escrow, metadata=b'{"epsilon":8}')
    assert job.metadata == b'{"epsilon":8}'
    assert [h.price_per_token for h in job.terms.route] == [GWEI, 3 * GWEI]
    signer = EnvelopeSigner(client.account.key, market.chain_id, market.deployment.market)
    receipt = signer.sign(job.job_id, 61, 61, b"\x44" * 32).as_receipt()
    for position, hop in enumerate(job.terms.route):
        node = _node_sender(actors, hop.node)
        market.commit(
            node,
            job.job_id,
            job.packed_terms,
            position,
            link(job.job_id, position),
            link(job.job_id, position + 1),
            receipt if position == 0 else EMPTY_RECEIPT,
        )
    assert market.links_of(job.job_id) == b"\0" * 32  # the accumulator slot is freed at completion
    state = market.get_job(job.job_id)
    assert (state.status, state.committed_mask, state.billed_tokens) == (JobStatus.COMMITTED, 0b11, 61)
    with pytest.raises(ContractRevert, match="ChallengeWindowOpen"):
        market.finalize(client, job.job_id, job.packed_terms)
    increase_time(w3, TEST_PARAMS.challenge_window)
    before = market.balance(client.address)
    tx = market.finalize(client, job.job_id, job.packed_terms)
    paid = 61 * GWEI + 61 * 3 * GWEI
    events = dict(market.decode_receipt_events(tx.receipt))
    assert events["JobFinalized"]["paid"] == paid
    assert events["JobFinalized"]["refund"] == escrow - paid
    assert market.balance(client.address) == before + escrow - paid - tx_cost(w3, tx.receipt)
    assert market.get_node(job.terms.route[1].node).earnings == 61 * 3 * GWEI
    assert market.get_job(job.job_id).status == JobStatus.FINALIZED
    # Earnings are withdrawn from the JobMarket, exactly once.
    node = _node_sender(actors, job.terms.route[1].node)
    before = market.balance(node.address)
    wtx = market.withdraw_earnings(node)
    assert market.balance(node.address) == before + 61 * 3 * GWEI - tx_cost(w3, wtx.receipt)
    with pytest.raises(ContractRevert, match="NothingToWithdraw"):
        market.withdraw_earnings(node)


def test_commitments_that_do_not_link_up_dispute_the_job(
    w3: Web3, market: Marketplace, actors: Actors
) -> None:
    model_id = setup_model_and_nodes(market, actors)
    client = actors.clients[0]
    job = market.submit_job(client, model_id, 1, 10, 2 * GWEI, escrow=30 * GWEI)
    first, second = (_node_sender(actors, hop.node) for hop in job.terms.route)
    market.commit(first, job.job_id, job.packed_terms, 0, link(job.job_id, 0), b"\x05" * 32, EMPTY_RECEIPT)
    assert market.links_of(job.job_id) != b"\0" * 32
    tx = market.commit(
        second, job.job_id, job.packed_terms, 1, b"\x06" * 32, link(job.job_id, 2), EMPTY_RECEIPT
    )
    names = [name for name, _ in market.decode_receipt_events(tx.receipt)]
    assert names == ["JobCommitted", "JobDisputed", "CommitmentsMismatched"]
    state = market.get_job(job.job_id)
    disputed_at = int(w3.eth.get_block(tx.block_number)["timestamp"])
    assert (state.status, state.timestamp) == (JobStatus.DISPUTED, disputed_at)
    assert [e["args"]["jobId"] for e in market.events("CommitmentsMismatched")] == [job.job_id]
    # The EOA auditor of the test deployment settles it like a held job.
    auditor = actors.auditor
    resolved = market.resolve_dispute(auditor, job.job_id, job.packed_terms, 0)
    assert dict(market.decode_receipt_events(resolved.receipt))["DisputeResolved"]["slashed"] == 0
    assert market.get_job(job.job_id).status == JobStatus.FINALIZED


def test_cancel_slashes_the_node_that_never_committed(w3: Web3, market: Marketplace, actors: Actors) -> None:
    model_id = setup_model_and_nodes(market, actors)
    client = actors.clients[1]
    job = market.submit_job(client, model_id, 1, 10, 2 * GWEI, escrow=30 * GWEI)
    signer = EnvelopeSigner(client.account.key, market.chain_id, market.deployment.market)
    first = _node_sender(actors, job.terms.route[0].node)
    market.commit(
        first,
        job.job_id,
        job.packed_terms,
        0,
        b"\x01" * 32,
        b"\x02" * 32,
        signer.sign(job.job_id, 5, 5, b"\x00" * 32).as_receipt(),
    )
    with pytest.raises(ContractRevert, match="CommitWindowOpen"):
        market.cancel(client, job.job_id, job.packed_terms)
    increase_time(w3, TEST_PARAMS.commit_timeout + 1)
    missing = job.terms.route[1].node
    bond = market.get_node(missing).stake
    tx = market.cancel(client, job.job_id, job.packed_terms)
    events = dict(market.decode_receipt_events(tx.receipt))
    slashed = bond * TEST_PARAMS.miss_slash_bps // 10_000
    assert events["JobCancelled"]["missingMask"] == 0b10
    assert events["JobCancelled"]["slashed"] == slashed
    assert events["JobCancelled"]["refund"] == 30 * GWEI - 5 * GWEI + slashed
    assert market.get_node(missing).stake == bond - slashed
    assert market.get_node(job.terms.route[0].node).earnings == 5 * GWEI
    assert market.get_job(job.job_id).status == JobStatus.CANCELLED


def test_unbonded_stake_is_locked_then_withdrawable(w3: Web3, market: Marketplace, actors: Actors) -> None:
    # The exact-second boundaries are covered by the Hardhat tests (they can pin block timestamps).
    setup_model_and_nodes(market, actors)
    node = actors.nodes[0]
    market.unbond(node, 2 * 10**18)
    info = market.get_node(node.address)
    assert (info.stake, info.unbonding, info.pooled) == (0, 2 * 10**18, False)
    with pytest.raises(ContractRevert, match="UnbondingLocked"):
        market.withdraw_unbonded(node)
    increase_time(w3, TEST_PARAMS.unbonding_delay + 1)
    before = market.balance(node.address)
    tx = market.withdraw_unbonded(node)
    assert market.balance(node.address) == before + 2 * 10**18 - tx_cost(w3, tx.receipt)
    assert market.get_node(node.address).unbonding == 0

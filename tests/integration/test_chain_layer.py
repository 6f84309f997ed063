"""The Python chain layer against a real hardhat node: deployment, calls, events, decoded reverts."""

from __future__ import annotations

from dataclasses import replace

import pytest
from eth_utils import keccak
from web3 import Web3

from splitmesh.chain import (
    Deployment,
    DeployParams,
    JobStatus,
    Marketplace,
    NodeStatus,
    Sender,
    SubmittedJob,
    deploy,
    terms_hash,
)
from splitmesh.chain.deploy import (
    ZERO_ADDRESS,
    deployment_from_market,
    find_deployment,
    is_live,
    save_deployment,
)
from splitmesh.chain.launcher import dev_key
from splitmesh.chain.sampling import sample_if_drawn
from splitmesh.errors import ChainError, ConfigError, ContractRevert
from splitmesh.signing import EMPTY_RECEIPT, EnvelopeSigner, recover_envelope_signer
from tests.conftest import TEST_PARAMS, Actors, increase_time, tx_cost

GWEI = 10**9
PLAN = [0, 2, 5, 8]
FEE = TEST_PARAMS.hop_fee  # wei each committed hop earns per job on top of price x tokens
BURN = "0x000000000000000000000000000000000000dEaD"


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
    assert market.job_market.functions.registry().call() == d.registry
    assert market.parameters()["challenge_window"] == TEST_PARAMS.challenge_window
    assert (market.hop_fee(), market.challenge_bond()) == (FEE, TEST_PARAMS.challenge_bond)
    assert market.parameters()["hop_fee"] == FEE
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
    # Parameters added later take their defaults; unknown ones (a newer writer) are ignored.
    assert (d.params.hop_fee, d.params.challenge_bond) == (DeployParams().hop_fee, 10**18 // 20)
    assert Deployment.from_json({**old, "params": {**old["params"], "from_the_future": 1}}) == d  # type: ignore[dict-item]
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
    with pytest.raises(ConfigError, match="hop_fee"):
        DeployParams(hop_fee=2**64).validate()
    with pytest.raises(ConfigError, match="challenge_bond"):
        DeployParams(challenge_bond=-1).validate()
    DeployParams(hop_fee=0, challenge_bond=0).validate()
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
    assert info.value.args_by_name == {"required": 10 * 3 * GWEI + 2 * FEE, "provided": 1}
    with pytest.raises(ContractRevert) as info:
        market.submit_job(actors.clients[0], model_id, 1, 10, GWEI // 2, escrow=10**18)
    assert (info.value.name, info.value.args_by_name) == ("NoEligibleNode", {"modelId": model_id, "shard": 1})
    with pytest.raises(ContractRevert, match=r"UnknownModel\(modelId=99\)"):
        market.get_model(99)
    # A revert reported when the transaction is sent (no estimate first, as in a race with another
    # sender) is decoded the same way.
    fn = market.job_market.functions.finalize(77, b"\0" * 69)
    with pytest.raises(ContractRevert) as info:
        actors.clients[0].transact(fn, gas=300_000)
    assert (info.value.name, info.value.args_by_name) == ("UnknownJob", {"jobId": 77})
    # The sender's nonce tracking survives failed estimates and sends: the next transaction goes through.
    job = market.submit_job(actors.clients[0], model_id, 1, 10, 2 * GWEI, escrow=30 * GWEI + 2 * FEE)
    assert job.job_id == 1


def test_python_hashes_and_digests_match_the_contract(market: Marketplace, actors: Actors) -> None:
    model_id = setup_model_and_nodes(market, actors)
    job = market.submit_job(
        actors.clients[0], model_id, 1, 16, 2 * GWEI, escrow=market.escrow_for(16, 2 * GWEI, 2)
    )
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
    escrow = 100 * 4 * GWEI + 2 * FEE + 12345
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
    assert market.links_of(job.job_id) == b"\0" * 32  # no sampling: the accumulator slot is freed
    state = market.get_job(job.job_id)
    assert (state.status, state.committed_mask, state.billed_tokens) == (JobStatus.COMMITTED, 0b11, 61)
    with pytest.raises(ContractRevert, match="ChallengeWindowOpen"):
        market.finalize(client, job.job_id, job.packed_terms)
    increase_time(w3, TEST_PARAMS.challenge_window)
    before = market.balance(client.address)
    tx = market.finalize(client, job.job_id, job.packed_terms)
    paid = 61 * GWEI + 61 * 3 * GWEI + 2 * FEE  # price x billed + the hop fee, per committed hop
    events = dict(market.decode_receipt_events(tx.receipt))
    assert events["JobFinalized"]["paid"] == paid
    assert events["JobFinalized"]["refund"] == escrow - paid
    assert market.balance(client.address) == before + escrow - paid - tx_cost(w3, tx.receipt)
    assert market.get_node(job.terms.route[1].node).earnings == 61 * 3 * GWEI + FEE
    assert market.get_job(job.job_id).status == JobStatus.FINALIZED
    # Earnings are withdrawn from the JobMarket, exactly once.
    node = _node_sender(actors, job.terms.route[1].node)
    before = market.balance(node.address)
    wtx = market.withdraw_earnings(node)
    assert market.balance(node.address) == before + 61 * 3 * GWEI + FEE - tx_cost(w3, wtx.receipt)
    with pytest.raises(ContractRevert, match="NothingToWithdraw"):
        market.withdraw_earnings(node)


def test_commitments_that_do_not_link_up_dispute_the_job(
    w3: Web3, market: Marketplace, actors: Actors
) -> None:
    model_id = setup_model_and_nodes(market, actors)
    client = actors.clients[0]
    job = market.submit_job(client, model_id, 1, 10, 2 * GWEI, escrow=30 * GWEI + 2 * FEE)
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
    assert market.dispute_block_of(job.job_id) == tx.block_number  # its hash will seed the audit panels
    assert [e["args"]["jobId"] for e in market.events("CommitmentsMismatched")] == [job.job_id]
    # The EOA auditor of the test deployment settles it like a held job.
    auditor = actors.auditor
    resolved = market.resolve_dispute(auditor, job.job_id, job.packed_terms, 0)
    assert dict(market.decode_receipt_events(resolved.receipt))["DisputeResolved"]["slashed"] == 0
    assert market.get_job(job.job_id).status == JobStatus.FINALIZED


def test_cancel_burns_a_capped_slash_of_the_node_that_never_committed(
    w3: Web3, market: Marketplace, actors: Actors
) -> None:
    model_id = setup_model_and_nodes(market, actors)
    client = actors.clients[1]
    escrow = 30 * GWEI + 2 * FEE
    job = market.submit_job(client, model_id, 1, 10, 2 * GWEI, escrow=escrow)
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
    missing = job.terms.route[1]
    bond = market.get_node(missing.node).stake
    burned_before = market.balance(BURN)
    tx = market.cancel(client, job.job_id, job.packed_terms)
    events = dict(market.decode_receipt_events(tx.receipt))
    # 10 % of the bond (0.2 ETH) is capped at what the job offered the hop: price x max tokens + fee.
    slashed = min(bond * TEST_PARAMS.miss_slash_bps // 10_000, missing.price_per_token * 10 + FEE)
    assert slashed == 2 * GWEI * 10 + FEE
    paid = 5 * GWEI + FEE
    assert events["JobCancelled"] == {
        "jobId": job.job_id,
        "missingMask": 0b10,
        "paid": paid,
        "slashed": slashed,
        "refund": escrow - paid,  # the slash is burned, never refunded: a ghost job earns its client nothing
    }
    assert market.balance(BURN) == burned_before + slashed
    assert market.get_node(missing.node).stake == bond - slashed
    assert market.get_node(job.terms.route[0].node).earnings == 5 * GWEI + FEE
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


# ---------------------------------------------------------------- issue 12: hints, challenges, sampling


def _completed_job(market: Marketplace, actors: Actors, model_id: int, billed: int = 7) -> SubmittedJob:
    """A 2-hop job, both hops committed with linked commitments and a receipt for `billed` tokens."""
    client = actors.clients[0]
    job = market.submit_job(client, model_id, 1, 10, 2 * GWEI, escrow=market.escrow_for(10, 2 * GWEI, 2))
    receipt = EnvelopeSigner(client.account.key, market.chain_id, market.deployment.market).sign(
        job.job_id, billed, billed, b"\x44" * 32
    )
    for position, hop in enumerate(job.terms.route):
        market.commit(
            _node_sender(actors, hop.node),
            job.job_id,
            job.packed_terms,
            position,
            link(job.job_id, position),
            link(job.job_id, position + 1),
            receipt.as_receipt() if position == 0 else EMPTY_RECEIPT,
        )
    return job


def test_hints_find_the_eligible_node_behind_overpriced_ones(
    w3: Web3, market: Marketplace, actors: Actors
) -> None:
    model_id, _ = market.register_model(actors.deployer, "stuffed", b"\x08" * 32, 8, PLAN)
    stuffers = [Sender(w3, "0x" + keccak(text=f"stuffer {i}").hex(), market.chain_id) for i in range(9)]
    for s in stuffers:
        w3.provider.make_request("hardhat_setBalance", [s.address, hex(10 * 10**18)])  # type: ignore[arg-type]
        market.register_node(s, model_id, 1, "http://stuffer.test", 100 * GWEI, stake=10**18)
    market.register_node(actors.nodes[0], model_id, 1, "http://cheap.test", GWEI, stake=10**18)
    market.register_node(actors.nodes[1], model_id, 2, "http://second.test", GWEI, stake=10**18)
    assert market.route_hints(model_id, 1, GWEI) == [10, 1]  # 1 + pool index, per shard
    assert market.route_hints(model_id, 1, GWEI // 2) == []
    for _ in range(4):  # ten entries, eight probes: without the hint some seeds miss the cheap node
        job = market.submit_job(actors.clients[0], model_id, 1, 5, GWEI, escrow=market.escrow_for(5, GWEI, 2))
        assert [h.node for h in job.terms.route] == [actors.nodes[0].address, actors.nodes[1].address]


def test_checkpointed_receipt_raises_the_billed_count(market: Marketplace, actors: Actors) -> None:
    model_id = setup_model_and_nodes(market, actors)
    client = actors.clients[0]
    job = market.submit_job(client, model_id, 1, 10, 2 * GWEI, escrow=market.escrow_for(10, 2 * GWEI, 2))
    signer = EnvelopeSigner(client.account.key, market.chain_id, market.deployment.market)
    receipt = signer.sign(job.job_id, 3, 7, b"\x01" * 32).as_receipt()
    tx = market.checkpoint_receipt(actors.nodes[0], job.job_id, job.packed_terms, receipt)  # anyone may
    assert dict(market.decode_receipt_events(tx.receipt))["ReceiptCheckpointed"] == {
        "jobId": job.job_id,
        "billedTokens": 7,
    }
    assert market.get_job(job.job_id).billed_tokens == 7
    with pytest.raises(ContractRevert) as info:
        market.checkpoint_receipt(actors.nodes[0], job.job_id, job.packed_terms, receipt)
    assert (info.value.name, info.value.args_by_name) == (
        "ReceiptNotNewer",
        {"jobId": job.job_id, "tokens": 7, "billedTokens": 7},
    )


def _challenged(market: Marketplace, actors: Actors) -> tuple[SubmittedJob, Sender, int]:
    """A completed job challenged by the second client; returns it, the challenger and the bond."""
    model_id = setup_model_and_nodes(market, actors)
    job = _completed_job(market, actors, model_id)
    challenger = actors.clients[1]
    bond = market.challenge_bond()
    with pytest.raises(ContractRevert) as info:
        market.challenge(challenger, job.job_id, job.packed_terms, bond=bond - 1)
    assert info.value.args_by_name == {"required": bond, "provided": bond - 1}
    tx = market.challenge(challenger, job.job_id, job.packed_terms)
    names = [name for name, _ in market.decode_receipt_events(tx.receipt)]
    assert names == ["JobDisputed", "JobChallenged"]
    assert market.get_job(job.job_id).status == JobStatus.DISPUTED
    assert market.dispute_block_of(job.job_id) == tx.block_number
    info_ = market.challenge_of(job.job_id)
    assert (info_.challenger, info_.bond, info_.open) == (challenger.address, bond, True)
    return job, challenger, bond


def test_challenge_found_honest_pays_the_route_and_the_verifiers(
    w3: Web3, market: Marketplace, actors: Actors
) -> None:
    job, challenger, bond = _challenged(market, actors)
    auditor_before = market.balance(actors.auditor.address)
    tx = market.resolve_dispute(actors.auditor, job.job_id, job.packed_terms, 0)
    events = dict(market.decode_receipt_events(tx.receipt))
    to_verifiers = bond // 2
    per_node = (bond - to_verifiers) // 2
    assert events["ChallengeSettled"] == {
        "jobId": job.job_id,
        "challenger": challenger.address,
        "toChallenger": 0,
        "perNode": per_node,
        "toAuditor": bond - 2 * per_node,
    }
    # The auditor (here an EOA; normally the court, for the honest verifiers) receives its share.
    assert market.balance(actors.auditor.address) == auditor_before + bond - 2 * per_node - tx_cost(
        w3, tx.receipt
    )
    for hop in job.terms.route:
        assert market.get_node(hop.node).earnings == hop.price_per_token * 7 + FEE + per_node
    assert not market.challenge_of(job.job_id).open


def test_challenge_found_fraud_returns_the_bond(w3: Web3, market: Marketplace, actors: Actors) -> None:
    job, challenger, bond = _challenged(market, actors)
    before = market.balance(challenger.address)
    cheat = job.terms.route[1]
    stake = market.get_node(cheat.node).stake
    tx = market.resolve_dispute(actors.auditor, job.job_id, job.packed_terms, 0b10)
    events = dict(market.decode_receipt_events(tx.receipt))
    assert events["ChallengeSettled"]["toChallenger"] == bond
    assert market.balance(challenger.address) == before + bond
    assert market.get_node(cheat.node).stake == stake - stake * TEST_PARAMS.fraud_slash_bps // 10_000
    assert market.get_node(cheat.node).earnings == 0
    assert market.get_node(job.terms.route[0].node).earnings == job.terms.route[0].price_per_token * 7 + FEE


def test_challenge_left_unjudged_goes_to_the_route(w3: Web3, market: Marketplace, actors: Actors) -> None:
    job, _, bond = _challenged(market, actors)
    increase_time(w3, TEST_PARAMS.dispute_timeout)
    burned_before = market.balance(BURN)
    tx = market.finalize(actors.clients[0], job.job_id, job.packed_terms)
    per_node = bond // 2
    assert dict(market.decode_receipt_events(tx.receipt))["ChallengeSettled"]["perNode"] == per_node
    assert market.balance(BURN) == burned_before + bond - 2 * per_node
    for hop in job.terms.route:
        assert market.get_node(hop.node).earnings == hop.price_per_token * 7 + FEE + per_node


def test_challenges_and_sampling_need_their_parameters(market: Marketplace, actors: Actors) -> None:
    model_id = setup_model_and_nodes(market, actors)
    job = _completed_job(market, actors, model_id)
    with pytest.raises(ContractRevert, match="SamplingDisabled"):
        market.sample_audit(actors.clients[1], job.job_id, job.packed_terms)
    assert market.audit_draw(job.job_id) == (False, False)
    assert sample_if_drawn(market, actors.clients[1], job.job_id, job.packed_terms) is False
    increase_time(market.w3, TEST_PARAMS.challenge_window)
    with pytest.raises(ContractRevert, match="ChallengeWindowClosed"):
        market.challenge(actors.clients[1], job.job_id, job.packed_terms)


def test_sampled_audits_are_drawn_from_the_completing_block(
    w3: Web3, market: Marketplace, actors: Actors
) -> None:
    sampled = Marketplace(w3, deploy(w3, actors.deployer, replace(TEST_PARAMS, audit_rate_bps=10_000)))
    model_id = setup_model_and_nodes(sampled, actors)
    job = _completed_job(sampled, actors, model_id)
    # Completing no longer disputes: the draw needs the completing block's hash, unknown to the last
    # committer when it sent its commit.
    assert sampled.get_job(job.job_id).status == JobStatus.COMMITTED
    completed = int.from_bytes(sampled.links_of(job.job_id), "big")
    assert completed == w3.eth.block_number
    assert sampled.audit_draw(job.job_id) == (True, True)
    assert sample_if_drawn(sampled, actors.clients[1], job.job_id, job.packed_terms) is True
    assert sampled.get_job(job.job_id).status == JobStatus.DISPUTED
    assert [e["args"]["jobId"] for e in sampled.events("AuditSampled")] == [job.job_id]
    assert sampled.dispute_block_of(job.job_id) == w3.eth.block_number
    # A second keeper finds nothing to do.
    assert sample_if_drawn(sampled, actors.clients[0], job.job_id, job.packed_terms) is False
    # Past 256 blocks the draw is lost; a job left alone that long is simply not sampled.
    late = _completed_job(sampled, actors, model_id)
    w3.provider.make_request("hardhat_mine", [hex(257)])  # type: ignore[arg-type]
    assert sampled.audit_draw(late.job_id) == (False, False)
    with pytest.raises(ContractRevert, match="DrawUnavailable"):
        sampled.sample_audit(actors.clients[1], late.job_id, late.packed_terms)
    assert sample_if_drawn(sampled, actors.clients[1], late.job_id, late.packed_terms) is False


def test_a_key_used_by_two_senders_resyncs_its_nonce(w3: Web3) -> None:
    """The same key signing from two places (the SDK and a CLI command): the stale cached nonce is read
    again from the chain and the transaction goes through, once."""
    key = dev_key(17)
    first, second = Sender(w3, key), Sender(w3, key)
    to = Sender(w3, dev_key(16)).address
    before = w3.eth.get_balance(to)
    first.send_value(to, 1)  # caches the next nonce
    second.send_value(to, 2)  # uses that nonce from another Sender
    third = first.send_value(to, 3)  # the cached nonce is stale: "nonce too low", resync, send
    assert w3.eth.get_transaction(third.tx_hash)["nonce"] == w3.eth.get_transaction_count(first.address) - 1
    assert w3.eth.get_balance(to) == before + 6

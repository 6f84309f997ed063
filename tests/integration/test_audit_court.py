"""The AuditCourt through the Python chain layer on a real hardhat node: deployment, a full audit round with
three verifiers per position, verdicts, payouts to the wei, decoded reverts, sampled audits, challenges.

The rules asserted (issue 12): a position is fraud iff more than half of its drawn panel revealed fraud;
bonds stay in the court until resolve; winners (revealed the verdict) get their bond back plus an equal
share of: the slash's reward part, the bonds of losers and non-revealers, one bond slashed from the stake
of every drawn verifier that never committed, and half a losing challenger's bond; the rest goes to the
challenger (if any) or the client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from eth_utils import keccak
from web3 import Web3

from splitmesh.chain import (
    HARDHAT_DEV_KEYS,
    AuditStatus,
    Deployment,
    JobStatus,
    Marketplace,
    Sender,
    SubmittedJob,
    Verdict,
    VoteStatus,
    deploy,
)
from splitmesh.chain.deploy import ZERO_ADDRESS, deployment_from_market, is_live
from splitmesh.chain.sampling import open_audit_if_ready, sample_if_drawn
from splitmesh.errors import ContractRevert
from splitmesh.signing import EMPTY_RECEIPT, EnvelopeSigner
from tests.conftest import TEST_PARAMS, increase_time, tx_cost

GWEI = 10**9
ETHER = 10**18
PLAN = [0, 2, 5, 8]  # three shards; a job from shard 1 has two hops
STAKE = 2 * ETHER
MAX_TOKENS = 20
BILLED = 12
FEE = TEST_PARAMS.hop_fee  # wei per committed hop and job
ESCROW = MAX_TOKENS * 2 * GWEI + 2 * FEE  # every node charges 1 gwei per token
# The court deployment: TEST_PARAMS without the EOA auditor, so deploy() adds an AuditCourt (3 verifiers per
# position, 0.01 ETH bond, 300 s + 300 s windows, 50 % of a slash to the verifiers). Audit rate 0: disputes
# come from commitments that do not link up.
COURT_PARAMS = replace(TEST_PARAMS, auditor=ZERO_ADDRESS)
BOND = COURT_PARAMS.verifier_bond
# Eight node accounts: four per shard, so each position has its node and three verifiers to draw. The
# package knows ten dev keys; two more are derived here and funded per test.
EXTRA_KEYS = tuple("0x" + keccak(text=f"splitmesh audit test node {i}").hex() for i in range(2))
NODE_KEYS = (*HARDHAT_DEV_KEYS[1:7], *EXTRA_KEYS)
CLIENT_KEY = HARDHAT_DEV_KEYS[7]
OTHER_KEY = HARDHAT_DEV_KEYS[8]


def rpc(w3: Web3, method: str, params: list[Any]) -> Any:
    return w3.provider.make_request(method, params)["result"]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def court_deployment(w3: Web3, deployment: Deployment) -> Iterator[Deployment]:
    """A registry, market and court of their own, deployed once for the module and reverted after it.

    Depends on the session `deployment` so that it exists before this snapshot (and outlives the revert)."""
    snap = rpc(w3, "evm_snapshot", [])
    yield deploy(w3, Sender(w3, HARDHAT_DEV_KEYS[0]), COURT_PARAMS)
    assert rpc(w3, "evm_revert", [snap]) is True


@pytest.fixture()
def court(w3: Web3, court_deployment: Deployment, snapshot: None) -> Marketplace:
    return Marketplace(w3, court_deployment)


@dataclass
class Cast:
    nodes: list[Sender]
    client: Sender
    other: Sender
    signer: EnvelopeSigner  # the client's receipts

    def sender(self, address: str) -> Sender:
        return next(s for s in self.nodes if s.address == address)


@pytest.fixture()
def cast(w3: Web3, court: Marketplace) -> Cast:
    for key in EXTRA_KEYS:  # reverted with the test's snapshot
        rpc(w3, "hardhat_setBalance", [Sender(w3, key, court.chain_id).address, hex(100 * ETHER)])
    client = Sender(w3, CLIENT_KEY, court.chain_id)
    return Cast(
        nodes=[Sender(w3, key, court.chain_id) for key in NODE_KEYS],
        client=client,
        other=Sender(w3, OTHER_KEY, court.chain_id),
        signer=EnvelopeSigner(CLIENT_KEY, court.chain_id, court.deployment.market),
    )


def link(job_id: int, boundary: int) -> bytes:
    return keccak(text=f"link-{job_id}-{boundary}")


def setup_pools(court: Marketplace, cast: Cast) -> int:
    model_id, _ = court.register_model(cast.nodes[0], "audited", keccak(text="audited weights"), 8, PLAN)
    for i, node in enumerate(cast.nodes):
        court.register_node(node, model_id, 1 + i // 4, f"http://node{i}.test", GWEI, stake=STAKE)
    return model_id


def run_job(court: Marketplace, cast: Cast, model_id: int, *, mismatch: bool) -> SubmittedJob:
    """Submit and commit a 2-hop job; with `mismatch` node 1's input differs from node 0's output."""
    job = court.submit_job(cast.client, model_id, 1, MAX_TOKENS, GWEI, escrow=ESCROW)
    receipt = cast.signer.sign(job.job_id, BILLED, BILLED, keccak(b"frame")).as_receipt()
    for p, hop in enumerate(job.terms.route):
        given = keccak(b"not what node 0 sent") if mismatch and p == 1 else link(job.job_id, p)
        court.commit(
            cast.sender(hop.node),
            job.job_id,
            job.packed_terms,
            p,
            given,
            link(job.job_id, p + 1),
            receipt if p == 0 else EMPTY_RECEIPT,
        )
    return job


def salt_of(job_id: int, position: int, verifier: str) -> bytes:
    return keccak(text=f"salt {job_id} {position} {verifier}")


def vote(
    court: Marketplace, cast: Cast, job: SubmittedJob, position: int, verifier: str, verdict: int
) -> int:
    """Commit a vote; returns the gas the verifier paid."""
    commitment = court.vote_commitment(
        job.job_id, position, verdict, salt_of(job.job_id, position, verifier), verifier
    )
    tx = court.commit_vote(cast.sender(verifier), job.job_id, position, commitment)
    return tx_cost(court.w3, tx.receipt)


def reveal(
    court: Marketplace, cast: Cast, job: SubmittedJob, position: int, verifier: str, verdict: int
) -> int:
    salt = salt_of(job.job_id, position, verifier)
    tx = court.reveal_vote(cast.sender(verifier), job.job_id, position, verdict, salt)
    return tx_cost(court.w3, tx.receipt)


def jump_past(w3: Web3, timestamp: int) -> None:
    """Mine a block strictly after `timestamp`."""
    now = int(w3.eth.get_block("latest")["timestamp"])
    if now <= timestamp:
        increase_time(w3, timestamp - now + 1)


def assert_ledgers(court: Marketplace, cast: Cast, escrowed: int = 0, challenged: int = 0) -> None:
    """Registry == bonds; market == unsettled escrow + open challenge bonds + credits + earnings;
    court == bonds held + credits."""
    infos = [court.get_node(n.address) for n in cast.nodes]
    assert court.balance(court.deployment.registry) == sum(i.stake + i.unbonding for i in infos)
    earnings = sum(i.earnings for i in infos)
    assert court.balance(court.deployment.market) == escrowed + challenged + court.total_credits() + earnings
    assert court.court is not None
    assert court.balance(court.court.address) == court.court_bonds_held() + court.court_total_credits()


def test_court_deployment_is_bound_and_round_trips(w3: Web3, court: Marketplace) -> None:
    d = court.deployment
    assert d.has_court and set(d.gas_used) == {"NodeRegistry", "JobMarket", "AuditCourt"}
    assert court.job_market.functions.auditor().call() == d.court
    assert court.court is not None and court.court.functions.market().call() == d.market
    assert court.court.functions.registry().call() == d.registry
    assert court.audit_parameters() == {
        "verifiers_per_position": 3,
        "verifier_bond": BOND,
        "commit_window": 300,
        "reveal_window": 300,
        "reward_bps": 5000,
    }
    assert is_live(w3, d)
    rebuilt = deployment_from_market(w3, d.market)
    assert (rebuilt.registry, rebuilt.court, rebuilt.params) == (d.registry, d.court, d.params)
    assert Deployment.from_json(d.to_json()) == d


def test_full_audit_round_with_three_verifiers(w3: Web3, court: Marketplace, cast: Cast) -> None:
    model_id = setup_pools(court, cast)
    job = run_job(court, cast, model_id, mismatch=True)
    assert court.get_job(job.job_id).status == JobStatus.DISPUTED
    assert [e["args"]["jobId"] for e in court.events("CommitmentsMismatched")] == [job.job_id]

    opened = court.open_audit(cast.other, job.job_id, job.packed_terms)
    assert court.audit_opened(opened)
    # Opening restarts the dispute timeout (the accused cannot finalize just before resolve).
    names = [name for name, _ in court.decode_receipt_events(opened.receipt)]
    assert names.count("JobDisputed") == 1 and names.count("AuditOpened") == 2
    audit = court.get_audit(job.job_id)
    opened_at = int(w3.eth.get_block(opened.block_number)["timestamp"])
    assert court.get_job(job.job_id).timestamp == opened_at
    assert (audit.status, audit.hops, audit.unverifiable_mask, audit.opened_at) == (
        AuditStatus.OPEN,
        2,
        0,
        opened_at,
    )
    assert (audit.commit_deadline, audit.reveal_deadline) == (opened_at + 300, opened_at + 600)
    events = court.events("AuditOpened", jobId=job.job_id)
    for p, panel in enumerate(audit.panels):
        audited = job.terms.route[p].node
        pool = {n.address for n in cast.nodes[4 * p : 4 * p + 4]}  # shard 1 + p
        assert len(panel.verifiers) == 3 and len(set(panel.verifiers)) == 3
        assert set(panel.verifiers) == pool - {audited}
        assert panel.votes == (VoteStatus.DRAWN,) * 3
        assert (events[p]["args"]["position"], events[p]["args"]["node"]) == (p, audited)
        assert tuple(events[p]["args"]["verifiers"]) == panel.verifiers

    # Position 0 is honest 3:0; position 1 is fraud 2:1.
    verdicts = {0: [Verdict.HONEST] * 3, 1: [Verdict.FRAUD, Verdict.FRAUD, Verdict.HONEST]}
    gas: dict[str, int] = {}
    before = {v: court.balance(v) for panel in audit.panels for v in panel.verifiers}
    for p, panel in enumerate(audit.panels):
        for verifier, verdict in zip(panel.verifiers, verdicts[p], strict=True):
            gas[verifier] = vote(court, cast, job, p, verifier, verdict)
    assert court.court_bonds_held() == 6 * BOND
    assert court.get_panel(job.job_id, 1).committed == 3
    assert_ledgers(court, cast, escrowed=ESCROW)
    # Every verifier of each panel committed: reveals are open before the commit deadline.
    for p, panel in enumerate(audit.panels):
        for verifier, verdict in zip(panel.verifiers, verdicts[p], strict=True):
            gas[verifier] += reveal(court, cast, job, p, verifier, verdict)
    for verifier, balance in before.items():  # bonds stay in the court until resolve
        assert court.balance(verifier) == balance - BOND - gas[verifier]
    panel = court.get_panel(job.job_id, 1)
    assert (panel.honest_votes, panel.fraud_votes, panel.votes[2]) == (1, 2, VoteStatus.HONEST)
    assert court.court_bonds_held() == 6 * BOND

    with pytest.raises(ContractRevert) as info:
        court.resolve_audit(cast.other, job.job_id, job.packed_terms)
    assert (info.value.name, info.value.args_by_name) == (
        "RevealPhaseOpen",
        {"jobId": job.job_id, "revealDeadline": audit.reveal_deadline},
    )
    jump_past(w3, audit.reveal_deadline)
    cheat, honest = job.terms.route[1].node, job.terms.route[0].node
    slashed = STAKE * TEST_PARAMS.fraud_slash_bps // 10_000
    # Winners: the three honest voters of position 0 and the two fraud voters of position 1. The honest
    # minority of position 1 forfeits its bond to them.
    pool = slashed * 5000 // 10_000 + BOND
    share = pool // 5
    to_client = slashed + BOND - 5 * share
    refund = ESCROW - BILLED * GWEI - FEE  # only node 0 is paid
    watched = [cast.client.address, court.deployment.market, court.deployment.registry, court.court.address]
    balances = {a: court.balance(a) for a in watched}  # type: ignore[union-attr]
    tx = court.resolve_audit(cast.other, job.job_id, job.packed_terms)
    decoded = court.decode_receipt_events(tx.receipt)
    named = dict(decoded)
    assert named["AuditResolved"] == {
        "jobId": job.job_id,
        "fraudMask": 0b10,
        "slashed": slashed,
        "rewarded": 5 * share,
        "toClient": to_client,
    }
    assert named["DisputeResolved"] == {"jobId": job.job_id, "fraudMask": 0b10, "slashed": slashed}
    judged = [(a["position"], a["fraud"], a["forfeited"]) for n, a in decoded if n == "PositionJudged"]
    assert judged == [(0, False, 0), (1, True, BOND)]
    winners = [*audit.panels[0].verifiers, *audit.panels[1].verifiers[:2]]
    rewarded = {a["verifier"]: a["amount"] for n, a in decoded if n == "VerifierRewarded"}
    assert rewarded == dict.fromkeys(winners, BOND + share)
    deltas = {a: court.balance(a) - balances[a] for a in watched}
    assert deltas == {
        cast.client.address: refund + to_client,
        court.deployment.market: -refund,
        court.deployment.registry: -slashed,
        court.court.address: slashed - to_client,  # type: ignore[union-attr]
    }
    assert court.get_node(cheat).stake == STAKE - slashed and court.get_node(cheat).earnings == 0
    assert court.get_node(honest).earnings == BILLED * GWEI + FEE and court.get_node(honest).stake == STAKE
    assert court.get_job(job.job_id).status == JobStatus.FINALIZED
    assert court.get_audit(job.job_id).fraud_mask == 0b10
    assert [court.court_credit_of(w) for w in winners] == [BOND + share] * 5
    assert court.court_credit_of(audit.panels[1].verifiers[2]) == 0
    assert court.court_bonds_held() == 0
    assert_ledgers(court, cast)

    winner = cast.sender(winners[0])
    before_withdraw = court.balance(winner.address)
    wtx = court.withdraw_court_credit(winner)
    assert court.balance(winner.address) == before_withdraw + BOND + share - tx_cost(w3, wtx.receipt)
    with pytest.raises(ContractRevert, match="NothingToWithdraw"):
        court.withdraw_court_credit(winner)
    # CreditWithdrawn is an event of both the JobMarket and the court.
    withdrawn = court.events("CreditWithdrawn", court=True, account=winner.address)
    assert [e["args"]["amount"] for e in withdrawn] == [BOND + share]
    assert court.events("CreditWithdrawn", account=winner.address) == []
    assert_ledgers(court, cast)


def test_minority_and_silent_verifiers_pay_the_honest_one(w3: Web3, court: Marketplace, cast: Cast) -> None:
    model_id = setup_pools(court, cast)
    job = run_job(court, cast, model_id, mismatch=True)
    court.open_audit(cast.client, job.job_id, job.packed_terms)
    audit = court.get_audit(job.job_id)
    liar, honest, silent = audit.panels[1].verifiers
    vote(court, cast, job, 1, liar, Verdict.FRAUD)
    vote(court, cast, job, 1, honest, Verdict.HONEST)
    vote(court, cast, job, 1, silent, Verdict.FRAUD)
    # Position 1's whole panel committed, so it may reveal at once; position 0's panel never votes.
    with pytest.raises(ContractRevert, match="RevealNotOpen"):
        reveal(court, cast, job, 0, audit.panels[0].verifiers[0], Verdict.HONEST)
    jump_past(w3, audit.commit_deadline)
    reveal(court, cast, job, 1, liar, Verdict.FRAUD)
    reveal(court, cast, job, 1, honest, Verdict.HONEST)
    jump_past(w3, audit.reveal_deadline)
    before = court.balance(cast.client.address)
    absent = audit.panels[0].verifiers
    stakes = {v: court.get_node(v).stake for v in absent}
    tx = court.resolve_audit(cast.other, job.job_id, job.packed_terms)
    decoded = court.decode_receipt_events(tx.receipt)
    named = dict(decoded)
    # 1 fraud reveal of 3 drawn is no majority of the panel: honest (a silent panel never slashes).
    # The liar's and the silent verifier's bonds, and one bond from the stake of each of position 0's
    # verifiers who never committed, all go to the one winner; nothing is left for the client.
    assert named["AuditResolved"] == {
        "jobId": job.job_id,
        "fraudMask": 0,
        "slashed": 0,
        "rewarded": 5 * BOND,
        "toClient": 0,
    }
    judged = [(a["position"], a["fraud"], a["forfeited"]) for n, a in decoded if n == "PositionJudged"]
    assert judged == [(0, False, 0), (1, False, 2 * BOND)]
    penalized = [(a["verifier"], a["amount"]) for n, a in decoded if n == "VerifierPenalized"]
    assert sorted(penalized) == sorted((v, BOND) for v in absent)
    for v in absent:
        assert court.get_node(v).stake == stakes[v] - BOND
    assert court.court_credit_of(honest) == BOND + 5 * BOND
    assert court.court_credit_of(liar) == court.court_credit_of(silent) == 0
    paid = 2 * (BILLED * GWEI + FEE)
    assert court.balance(cast.client.address) == before + ESCROW - paid
    for hop in job.terms.route:
        assert court.get_node(hop.node).earnings == BILLED * GWEI + FEE
    assert_ledgers(court, cast)


def test_audit_reverts_are_decoded(w3: Web3, court: Marketplace, cast: Cast) -> None:
    model_id = setup_pools(court, cast)
    linked = run_job(court, cast, model_id, mismatch=False)
    assert court.get_job(linked.job_id).status == JobStatus.COMMITTED
    with pytest.raises(ContractRevert) as info:
        court.open_audit(cast.other, linked.job_id, linked.packed_terms)
    assert (info.value.name, info.value.args_by_name) == (
        "JobNotDisputed",
        {"jobId": linked.job_id, "status": int(JobStatus.COMMITTED)},
    )
    job = run_job(court, cast, model_id, mismatch=True)
    court.open_audit(cast.other, job.job_id, job.packed_terms)
    with pytest.raises(ContractRevert, match="AuditAlreadyOpened"):
        court.open_audit(cast.other, job.job_id, job.packed_terms)
    audit = court.get_audit(job.job_id)
    verifier = audit.panels[0].verifiers[0]
    with pytest.raises(ContractRevert) as info:
        court.commit_vote(cast.sender(job.terms.route[0].node), job.job_id, 0, b"\1" * 32)
    assert info.value.name == "NotVerifier"
    with pytest.raises(ContractRevert) as info:
        court.commit_vote(cast.sender(verifier), job.job_id, 0, b"\1" * 32, bond=BOND - 1)
    assert info.value.args_by_name == {"required": BOND, "provided": BOND - 1}
    vote(court, cast, job, 0, verifier, Verdict.FRAUD)
    jump_past(w3, audit.commit_deadline)
    with pytest.raises(ContractRevert, match="CommitPhaseClosed"):
        vote(court, cast, job, 0, audit.panels[0].verifiers[1], Verdict.FRAUD)
    with pytest.raises(ContractRevert) as info:
        court.reveal_vote(cast.sender(verifier), job.job_id, 0, Verdict.FRAUD, b"\0" * 32)
    assert info.value.name == "CommitmentMismatch"
    with pytest.raises(ContractRevert, match="InvalidVerdict"):
        court.reveal_vote(cast.sender(verifier), job.job_id, 0, 7, salt_of(job.job_id, 0, verifier))


def test_an_old_dispute_block_anchors_first_then_opens(w3: Web3, court: Marketplace, cast: Cast) -> None:
    """Panels come from the dispute block's hash; past 256 blocks the first call records a later block
    and opens nothing, the next call (a later block) opens from that block's hash."""
    model_id = setup_pools(court, cast)
    job = run_job(court, cast, model_id, mismatch=True)
    rpc(w3, "hardhat_mine", [hex(300)])
    first = court.open_audit(cast.other, job.job_id, job.packed_terms)
    assert not court.audit_opened(first)
    assert court.decode_receipt_events(first.receipt) == [
        ("AuditAnchored", {"jobId": job.job_id, "blockNumber": first.block_number})
    ]
    assert court.get_audit(job.job_id).status == AuditStatus.NONE
    assert open_audit_if_ready(court, cast.other, job.job_id, job.packed_terms) is True
    assert court.get_audit(job.job_id).status == AuditStatus.OPEN


def test_sampled_audit_at_rate_10000(w3: Web3, court: Marketplace, cast: Cast) -> None:
    """Every completed job of a market sampling at 10000 bps is drawn, from its completing block's hash;
    someone (a keeper, a verifier node) calls sampleAudit after that block."""
    sampled = Marketplace(
        w3, deploy(w3, Sender(w3, HARDHAT_DEV_KEYS[0]), replace(COURT_PARAMS, audit_rate_bps=10_000))
    )
    assert sampled.parameters()["audit_rate_bps"] == 10_000
    assert deployment_from_market(w3, sampled.deployment.market).params.audit_rate_bps == 10_000
    model_id = setup_pools(sampled, cast)
    cast.signer = EnvelopeSigner(CLIENT_KEY, sampled.chain_id, sampled.deployment.market)
    job = run_job(sampled, cast, model_id, mismatch=False)
    assert sampled.get_job(job.job_id).status == JobStatus.COMMITTED
    assert sampled.audit_draw(job.job_id) == (True, True)
    assert sample_if_drawn(sampled, cast.other, job.job_id, job.packed_terms)
    assert sampled.get_job(job.job_id).status == JobStatus.DISPUTED
    assert [e["args"]["jobId"] for e in sampled.events("AuditSampled")] == [job.job_id]
    assert sampled.events("CommitmentsMismatched") == []
    assert open_audit_if_ready(sampled, cast.other, job.job_id, job.packed_terms) is True
    assert sampled.get_audit(job.job_id).status == AuditStatus.OPEN


def _judge_all(w3: Web3, court: Marketplace, cast: Cast, job: SubmittedJob, verdicts: dict[int, int]) -> Any:
    """The client opens the audit, every verifier votes `verdicts[position]`, the client resolves."""
    court.open_audit(cast.client, job.job_id, job.packed_terms)
    audit = court.get_audit(job.job_id)
    for p, panel in enumerate(audit.panels):
        for verifier in panel.verifiers:
            vote(court, cast, job, p, verifier, verdicts[p])
    for p, panel in enumerate(audit.panels):
        for verifier in panel.verifiers:
            reveal(court, cast, job, p, verifier, verdicts[p])
    jump_past(w3, audit.reveal_deadline)
    return court.resolve_audit(cast.client, job.job_id, job.packed_terms)


def _challenged_job(court: Marketplace, cast: Cast):  # type: ignore[no-untyped-def]
    """An honest, committed job that a bystander (`cast.other`) has challenged: (job, bond, challenger)."""
    model_id = setup_pools(court, cast)
    job = run_job(court, cast, model_id, mismatch=False)
    bond = court.challenge_bond()
    challenger = cast.other
    court.challenge(challenger, job.job_id, job.packed_terms)
    return job, bond, challenger


def test_a_challenge_found_honest_costs_the_challenger_its_bond(
    w3: Web3, court: Marketplace, cast: Cast
) -> None:
    job, bond, challenger = _challenged_job(court, cast)
    assert_ledgers(court, cast, escrowed=ESCROW, challenged=bond)
    before = court.balance(challenger.address)
    tx = _judge_all(w3, court, cast, job, {0: Verdict.HONEST, 1: Verdict.HONEST})
    named = dict(court.decode_receipt_events(tx.receipt))
    per_node = (bond - bond // 2) // 2
    to_court = bond - 2 * per_node
    share = to_court // 6  # six honest winners split the verifiers' half of the bond
    assert named["ChallengeSettled"] == {
        "jobId": job.job_id,
        "challenger": challenger.address,
        "toChallenger": 0,
        "perNode": per_node,
        "toAuditor": to_court,
    }
    assert named["AuditResolved"] == {
        "jobId": job.job_id,
        "fraudMask": 0,
        "slashed": 0,
        "rewarded": 6 * share,
        "toClient": to_court - 6 * share,  # rounding dust, to the challenger
    }
    assert court.balance(challenger.address) == before + to_court - 6 * share
    for hop in job.terms.route:
        assert court.get_node(hop.node).earnings == BILLED * GWEI + FEE + per_node
    for panel in court.get_audit(job.job_id).panels:
        for verifier in panel.verifiers:
            assert court.court_credit_of(verifier) == BOND + share
    assert_ledgers(court, cast)


def test_a_challenge_found_fraud_refunds_and_pays_the_challenger(
    w3: Web3, court: Marketplace, cast: Cast
) -> None:
    job, bond, challenger = _challenged_job(court, cast)
    before = court.balance(challenger.address)
    tx = _judge_all(w3, court, cast, job, {0: Verdict.HONEST, 1: Verdict.FRAUD})
    named = dict(court.decode_receipt_events(tx.receipt))
    slashed = STAKE * TEST_PARAMS.fraud_slash_bps // 10_000
    share = slashed * 5000 // 10_000 // 6
    assert named["ChallengeSettled"]["toChallenger"] == bond
    assert named["AuditResolved"]["toClient"] == slashed - 6 * share
    # The bond comes back, and the client's part of the slash goes to the challenger, not the client.
    assert court.balance(challenger.address) == before + bond + slashed - 6 * share
    assert court.get_node(job.terms.route[1].node).earnings == 0
    assert_ledgers(court, cast)

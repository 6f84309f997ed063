"""Property-based test of the marketplace on a real local chain.

A hypothesis RuleBasedStateMachine drives random sequences of marketplace actions (staking, node
registration, unbonding, jobs, receipt checkpoints, commits, overbilling attempts, challenges, sampled
audits, finalization, cancellation, audits, withdrawals, time travel, block mining) from several accounts
against the session's hardhat node, keeps an exact Python model of both contracts next to it, and after
every step checks:

1. NodeRegistry balance == sum over node accounts of stake + unbonding (exact);
2. JobMarket balance == escrow of unsettled jobs + totalCredits() + node earnings + open challenge bonds
   (exact);
3. job statuses only move forward (Open -> Committed -> (Disputed ->) Finalized, or Open -> Cancelled);
4. nobody is paid twice: each job settles at most once, earnings grow by exactly price x billedTokens + the
   hop fee (+ a lost challenge bond's share) per paid position, and the refund in JobFinalized/JobCancelled
   is escrow - paid (a cancel's miss-slash is burned, never refunded);
6. protocol-following parties never lose to the market: one node (PROTOCOL_NODE) follows the protocol:
   it commits every job it is matched to as soon as it is submitted (client or no client) with its true
   commitments, and when drawn as a verifier commits its true verdict at once and reveals it at the first
   chance. Its bond (stake + unbonding) never falls below what it put in and took out itself, and no
   client ever gets more wei from the JobMarket (refunds, pushed or credited; returned challenge bonds)
   than it paid in (escrows, challenge bonds). Under the old rules, where cancel added the miss-slash to
   the refund, the first cancel of a job with a missing hop broke the client half. The node half assumes
   what every court assumes, an honest majority: fewer than half of the verifiers drawn for the protocol
   node's position ever vote fraud (the others vote at random or abstain), and the EOA auditor (the
   MarketMachine's stand-in for the court) never names its positions;

plus the model itself (every node's stake, unbonding, unlock time, earnings, pool membership; every job's
status, commit mask, billed tokens, timestamp, per-job word (link accumulator, completing or dispute
block), challenge; credits) and the balance change of every account a transaction pays, the burn address
included. Commits mostly link up (node p's output commitment is node p+1's input commitment); some lie,
and the model predicts which last commits dispute their job. A transaction either succeeds where the model
says it must, or reverts with exactly the custom error the model predicts (ambiguous only where matching is
random; see submit_job).

Block timestamps are pinned (evm_setNextBlockTimestamp), so the model knows block.timestamp exactly. Time-
gated actions can be aimed 1 s before, on or 1 s after their window's edge, and every time-gated action,
and every status change, also dry-runs the call (a gas estimate on the pinned pending block; nothing is
mined) at those three instants: each window edge is checked from both sides in every run.

Every example starts from the same chain state (set up once by the module fixture: a model, nodes, and a
job in every live status): the machine takes an evm_snapshot when it is created and reverts to it in
teardown(). Settings are derandomized, so a run is reproducible; SPLITMESH_PROPERTY_EXAMPLES overrides the
number of examples (100) for a deeper local run.

A second machine, AuditMachine, runs the same rules against a deployment whose auditor is the AuditCourt
(half of the completed jobs sampled for audit) and adds the court's: opening audits, committing and
revealing votes (right, wrong, late, by strangers), resolving, withdrawing rewards. Its model predicts
every verdict, slash, reward share and payout, and its invariant adds:

5. AuditCourt balance == bonds held + credits (exact), each equal to the model's.

Sampling is drawn from the hash of the block a job completed in (sampleAudit, a separate call within 256
blocks), panels from the hash of the dispute block (or of an anchor block the court records when that hash
is out of reach): the model reads those hashes back from the chain and predicts the draw, and checks each
drawn panel's properties (distinct, pooled on the position's shard, never the audited node, the whole pool
when it is small) and that it is NodeRegistry.samplePool's stake-weighted draw for that seed.
SPLITMESH_AUDIT_PROPERTY_EXAMPLES overrides its number of examples (20).
"""

from __future__ import annotations

import copy
import itertools
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, cast

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address
from eth_utils.abi import get_abi_output_types
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError

from splitmesh.chain import (
    HARDHAT_DEV_KEYS,
    AuditStatus,
    Deployment,
    JobStatus,
    Marketplace,
    NodeStatus,
    Sender,
    deploy,
)
from splitmesh.chain.deploy import ZERO_ADDRESS
from splitmesh.chain.terms import JobTerms
from splitmesh.chain.tx import TxResult, call_view, revert_from_exception
from splitmesh.errors import ContractRevert
from splitmesh.signing import EMPTY_RECEIPT, EnvelopeSigner
from tests.conftest import AUDITOR_KEY, TEST_PARAMS, increase_time, tx_cost

ETHER = 10**18
GWEI = 10**9
HOP_FEE = TEST_PARAMS.hop_fee
CHALLENGE_BOND = TEST_PARAMS.challenge_bond
CHALLENGE_VERIFIER_BPS = 5_000  # JobMarket.CHALLENGE_VERIFIER_BPS
BURN = to_checksum_address("0x000000000000000000000000000000000000dead")  # JobMarket.BURN_ADDRESS
DRAW_HORIZON = 256  # blocks blockhash() reaches back
MIN_STAKE = TEST_PARAMS.min_stake
UNBONDING_DELAY = TEST_PARAMS.unbonding_delay
COMMIT_TIMEOUT = TEST_PARAMS.commit_timeout
CHALLENGE_WINDOW = TEST_PARAMS.challenge_window
DISPUTE_TIMEOUT = TEST_PARAMS.dispute_timeout
MISS_SLASH_BPS = TEST_PARAMS.miss_slash_bps
FRAUD_SLASH_BPS = TEST_PARAMS.fraud_slash_bps
BPS = 10_000

PLAN = [0, 2, 4, 6]  # three shards; the client runs shard 0, so a job from firstShard 1 has 2 hops
NUM_SHARDS = len(PLAN) - 1
PRICES = (2 * GWEI, 3 * GWEI, 5 * GWEI)  # few distinct prices: exact escrow is often predictable
MAX_PRICES = (2 * GWEI, 3 * GWEI, 5 * GWEI, 2**64 - 1)
NODE_KEYS = HARDHAT_DEV_KEYS[1:7]
# The node that follows the protocol (invariant 6): it joins after the set-up jobs, so it is on none of them.
PROTOCOL_NODE = 5
CLIENT_KEYS = HARDHAT_DEV_KEYS[7:9]
AUDITOR = to_checksum_address(TEST_PARAMS.auditor)
# Advances chosen to land exactly on and next to every window boundary (each transaction adds 1 s).
TIME_STEPS = (
    1,
    CHALLENGE_WINDOW - 1,
    CHALLENGE_WINDOW,
    COMMIT_TIMEOUT - 1,
    COMMIT_TIMEOUT + 1,
    UNBONDING_DELAY + 1,
)
# Runtime code that reverts on everything: an account holding it refuses payments (a contract client or
# node, or an EIP-7702 account, that cannot receive). Its key still signs transactions and receipts.
REJECTING_CODE = "0x60006000fd"

# The AuditMachine's deployment: the same windows, the AuditCourt as the auditor, half of the completed
# jobs sampled. Two more node accounts (keys derived here, funded by the fixture) fill the verifier pools.
COURT_PARAMS = replace(TEST_PARAMS, auditor=ZERO_ADDRESS, audit_rate_bps=5000)
VERIFIERS = COURT_PARAMS.verifiers_per_position
BOND = COURT_PARAMS.verifier_bond
AUDIT_COMMIT = COURT_PARAMS.audit_commit_window
AUDIT_REVEAL = COURT_PARAMS.audit_reveal_window
REWARD_BPS = COURT_PARAMS.audit_reward_bps
EXTRA_NODE_KEYS = tuple("0x" + keccak(text=f"splitmesh property node {i}").hex() for i in range(2))
HONEST, FRAUD = 1, 2
LIE = keccak(text="a commitment that links to nothing")

JOB_ORDER = {
    JobStatus.OPEN: {
        JobStatus.OPEN,
        JobStatus.COMMITTED,
        JobStatus.DISPUTED,
        JobStatus.FINALIZED,
        JobStatus.CANCELLED,
    },
    JobStatus.COMMITTED: {JobStatus.COMMITTED, JobStatus.DISPUTED, JobStatus.FINALIZED},
    JobStatus.DISPUTED: {JobStatus.DISPUTED, JobStatus.FINALIZED},
    JobStatus.FINALIZED: {JobStatus.FINALIZED},
    JobStatus.CANCELLED: {JobStatus.CANCELLED},
}
SETTLED = (JobStatus.FINALIZED, JobStatus.CANCELLED)


def rpc(w3: Web3, method: str, params: list[Any]) -> Any:
    response = w3.provider.make_request(method, params)  # type: ignore[arg-type]
    assert "error" not in response, f"{method}{params}: {response['error']}"
    return response["result"]


def link(job_id: int, boundary: int) -> bytes:
    """An honest commitment to the frames crossing a boundary (position p commits link(p), link(p + 1))."""
    return keccak(text=f"link-{job_id}-{boundary}")


def link_term(job_id: int, boundary: int, commitment: bytes) -> int:
    """JobMarket's term of one side of a boundary: keccak256(abi.encode(jobId, boundary, commitment))."""
    return int.from_bytes(keccak(abi_encode(["uint256", "uint8", "bytes32"], [job_id, boundary, commitment])))


def is_sampled(block_hash: bytes, job_id: int, rate_bps: int) -> bool:
    """JobMarket's audit draw: keccak256(abi.encode(blockhash(completing block), jobId, "audit"))."""
    draw = keccak(abi_encode(["bytes32", "uint256", "string"], [block_hash, job_id, "audit"]))
    return int.from_bytes(draw) % BPS < rate_bps


def popcount(mask: int) -> int:
    return bin(mask).count("1")


class BatchReader:
    """Views and balances read in one JSON-RPC batch at `latest`: one HTTP round trip per invariant check
    (web3's per-call overhead, not the node, dominated the run time)."""

    def __init__(self, w3: Web3):
        self.w3 = w3
        self.requests: list[tuple[str, list[Any]]] = []
        self.decoders: list[Callable[[str], Any]] = []

    def call(self, fn: ContractFunction) -> int:
        types = get_abi_output_types(fn.abi)
        self.requests.append(
            ("eth_call", [{"to": fn.address, "data": fn._encode_transaction_data()}, "latest"])
        )
        self.decoders.append(lambda raw: self.w3.codec.decode(types, bytes.fromhex(raw[2:])))
        return len(self.requests) - 1

    def balance(self, address: str) -> int:
        self.requests.append(("eth_getBalance", [address, "latest"]))
        self.decoders.append(lambda raw: int(raw, 16))
        return len(self.requests) - 1

    def run(self) -> list[Any]:
        if not self.requests:
            return []
        responses = cast(Any, self.w3.provider).make_batch_request(self.requests)
        assert isinstance(responses, list) and len(responses) == len(self.requests), responses
        responses = sorted(responses, key=lambda response: int(response["id"]))
        out = []
        for (method, params), decode, response in zip(self.requests, self.decoders, responses, strict=True):
            assert "error" not in response, f"{method}{params}: {response['error']}"
            out.append(decode(response["result"]))
        return out


# ---------------------------------------------------------------------------------------------- model


@dataclass
class NodeModel:
    address: str
    status: NodeStatus
    shard: int
    price: int
    stake: int
    unbonding: int
    unlock_at: int
    earnings: int

    @property
    def pooled(self) -> bool:
        return self.status == NodeStatus.ACTIVE and self.stake >= MIN_STAKE

    @property
    def bond(self) -> int:
        return self.stake + self.unbonding

    def slash(self, amount: int) -> int:
        """What NodeRegistry.slash takes: at most `amount`, from the stake first, then from unbonding."""
        from_stake = min(amount, self.stake)
        from_unbonding = min(amount - from_stake, self.unbonding)
        self.stake -= from_stake
        self.unbonding -= from_unbonding
        return from_stake + from_unbonding


@dataclass
class JobModel:
    job_id: int
    terms: JobTerms
    packed: bytes
    status: JobStatus
    mask: int
    billed: int
    timestamp: int
    settled_events: int = 0  # JobFinalized + JobCancelled events seen for this job
    commitments: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # position: (input, output)
    # The per-job word once complete (linksOf): the completing block (sampling on) or the dispute block.
    word: int = 0
    challenger: str | None = None  # of the open challenge
    challenge_bond: int = 0

    def lied(self, position: int) -> bool:
        """The node at `position` committed a false input commitment (the truth a verifier votes on)."""
        return self.commitments.get(position, (b"",))[0] == LIE

    @property
    def hops(self) -> int:
        return len(self.terms.route)

    @property
    def full_mask(self) -> int:
        return (1 << self.hops) - 1

    def mismatched(self) -> bool:
        """Some node's output commitment differs from the next node's input commitment."""
        c = self.commitments
        return any(c[p][1] != c[p + 1][0] for p in range(self.hops - 1))

    def links(self) -> int:
        """The JobMarket's link accumulator over the positions committed so far."""
        acc = 0
        for p, (given, sent) in self.commitments.items():
            if p > 0:
                acc ^= link_term(self.job_id, p, given)
            if p < self.hops - 1:
                acc ^= link_term(self.job_id, p + 1, sent)
        return acc


@dataclass
class VoteModel:
    verdict: int  # the verdict committed to (3 is invalid: such a vote can never be revealed)
    salt: bytes
    revealed: bool = False


@dataclass
class AuditModel:
    job: JobModel
    opened_at: int
    panels: list[list[str]]  # verifiers drawn per route position
    votes: dict[tuple[int, str], VoteModel] = field(default_factory=dict)  # (position, verifier)
    resolved: bool = False

    @property
    def commit_deadline(self) -> int:
        return self.opened_at + AUDIT_COMMIT

    @property
    def reveal_deadline(self) -> int:
        return self.commit_deadline + AUDIT_REVEAL

    def all_committed(self, position: int) -> bool:
        return all((position, v) in self.votes for v in self.panels[position])


@dataclass
class ClientLedger:
    """What a client paid into the JobMarket and what the JobMarket paid (or credited) it (invariant 6)."""

    paid_in: int = 0  # escrows and challenge bonds
    paid_out: int = 0  # refunds pushed or credited, challenge bonds returned


@dataclass
class Env:
    """What the module fixture set up once; every example starts from this chain state."""

    w3: Web3
    deployment: Deployment
    model_id: int
    node_keys: tuple[str, ...]  # nodes[i] is node_keys[i]'s
    nodes: list[NodeModel]
    jobs: list[JobModel]
    credits: dict[str, int]  # JobMarket credit of each client
    clients: dict[str, ClientLedger]  # what the set-up jobs took from and gave back to each client
    start_time: int  # block.timestamp of the latest block at the examples' starting state


@dataclass
class Outcome:
    tx: TxResult
    events: list[tuple[str, dict[str, Any]]]
    deltas: dict[str, int]  # balance change per watched address, gas paid added back

    def named(self, name: str) -> list[dict[str, Any]]:
        return [args for n, args in self.events if n == name]


@dataclass
class Stats:
    outcomes: Counter[str] = field(default_factory=Counter)
    examples: int = 0
    steps: int = 0


def _read_node(m: Marketplace, address: str) -> tuple[NodeModel, bool]:
    """A node's on-chain state in model form, and whether the chain has it in its pool."""
    n = m.get_node(address)
    model = NodeModel(
        address, n.status, n.shard, n.price_per_token, n.stake, n.unbonding, n.unlock_at, n.earnings
    )
    return model, n.pooled


# -------------------------------------------------------------------------------------------- fixture


def _build_env(w3: Web3, deployment: Deployment, node_keys: tuple[str, ...]) -> Env:
    """A model, node accounts in various states and four jobs in every live status."""
    m = Marketplace(w3, deployment)
    # The exact ledger invariants assume the deployment is as deployed (every other test reverts its state).
    assert m.job_count() == 0 and m.balance(deployment.registry) == 0 and m.balance(deployment.market) == 0
    chain_id = m.chain_id
    deployer = Sender(w3, HARDHAT_DEV_KEYS[0], chain_id)
    nodes = [Sender(w3, key, chain_id) for key in node_keys]
    clients = [Sender(w3, key, chain_id) for key in CLIENT_KEYS]
    auditor = Sender(w3, AUDITOR_KEY, chain_id)
    model_id, _ = m.register_model(
        nodes[0], "props-model", keccak(text="props-model weights"), PLAN[-1], PLAN
    )
    # (shard, price, stake): two nodes in the pool of shard 1, three in that of shard 2 (so that leaving
    # exercises the pool's swap-and-pop from the middle); the court deployment's two extra nodes join shards
    # 1 and 2, so audits have panels to draw. Node 6 (PROTOCOL_NODE) joins shard 2 after the set-up jobs.
    configs: list[tuple[int, int, int] | None] = [
        (1, PRICES[0], 2 * ETHER),
        (1, PRICES[1], ETHER),
        (2, PRICES[0], ETHER),
        (2, PRICES[2], 3 * ETHER),
        (2, PRICES[1], ETHER + ETHER // 4),
        None,
        (1, PRICES[2], ETHER),
        (2, PRICES[1], 2 * ETHER),
    ]
    for sender, config in zip(nodes, configs, strict=False):
        if config is not None:
            shard, price, stake = config
            m.register_node(sender, model_id, shard, f"http://{sender.address[:10]}.test", price, stake=stake)
    signers = [EnvelopeSigner(c.account.key, chain_id, deployment.market) for c in clients]

    def submit(client: int, first_shard: int, max_tokens: int) -> tuple[int, JobTerms, bytes]:
        escrow = max_tokens * 10 * GWEI + 2 * HOP_FEE
        job = m.submit_job(clients[client], model_id, first_shard, max_tokens, 2**64 - 1, escrow, hints=[])
        return job.job_id, job.terms, job.packed_terms

    def commit(
        job: tuple[int, JobTerms, bytes], client: int, position: int, tokens: int, lie: bool = False
    ) -> None:
        job_id, terms, packed = job
        by = next(x for x in nodes if x.address == terms.route[position].node)
        receipt = signers[client].sign(job_id, tokens, tokens, keccak(b"frame")).as_receipt()
        given = LIE if lie else link(job_id, position)
        m.commit(by, job_id, packed, position, given, link(job_id, position + 1), receipt)

    # History: node 5 has unlocked unbonding (and exactly minStake left), nodes have earnings, client 1
    # has a credited refund.
    m.unbond(nodes[4], ETHER // 4)
    rpc(w3, "hardhat_setCode", [clients[1].address, REJECTING_CODE])
    paid = submit(1, 1, 6)
    commit(paid, 1, 0, 4)
    commit(paid, 1, 1, 4)
    increase_time(w3, CHALLENGE_WINDOW)
    m.finalize(deployer, paid[0], paid[2])  # Finalized; the refund to client 1 is credited
    rpc(w3, "hardhat_setCode", [clients[1].address, "0x"])
    increase_time(w3, UNBONDING_DELAY + 1)

    # Live jobs, one in each status.
    submit(0, 1, 20)  # Open, nothing committed
    half = submit(1, 1, 10)
    commit(half, 1, 0, 7)  # Open, position 0 committed
    done = submit(0, 2, 8)
    commit(done, 0, 0, 5)  # Committed (one hop), challenge window running
    held = submit(1, 1, 12)
    commit(held, 1, 0, 9)
    if deployment.has_court:
        commit(held, 1, 1, 12, lie=True)  # Disputed: its commitments do not link up
    else:
        commit(held, 1, 1, 12)
        m.hold_for_audit(auditor, held[0], held[2])  # Disputed: held by the (EOA) auditor
    # The disputed job's first node unbonds nearly all its stake after being matched: a slash for it must
    # reach into its unbonding (stake first, then unbonding).
    heavy = next(x for x in nodes if x.address == held[1].route[0].node)
    m.unbond(heavy, m.get_node(heavy.address).stake * 19 // 20)
    protocol = nodes[PROTOCOL_NODE]
    m.register_node(protocol, model_id, 2, f"http://{protocol.address[:10]}.test", PRICES[1], stake=2 * ETHER)

    jobs = []
    for job_id in range(1, m.job_count() + 1):
        sub, state = m.job_submitted(job_id), m.get_job(job_id)
        commitments = {
            int(e["args"]["position"]): (
                bytes(e["args"]["inputCommitment"]),
                bytes(e["args"]["outputCommitment"]),
            )
            for e in m.events("JobCommitted", jobId=job_id)
        }
        jobs.append(
            JobModel(
                job_id,
                sub.terms,
                sub.packed_terms,
                state.status,
                state.committed_mask,
                state.billed_tokens,
                state.timestamp,
                int(state.status in SETTLED),
                commitments,
                word=0 if state.status == JobStatus.OPEN else int.from_bytes(m.links_of(job_id)),
            )
        )
    assert [j.status for j in jobs] == [
        JobStatus.FINALIZED,
        JobStatus.OPEN,
        JobStatus.OPEN,
        JobStatus.COMMITTED,
        JobStatus.DISPUTED,
    ]
    return Env(
        w3=w3,
        deployment=deployment,
        model_id=model_id,
        node_keys=node_keys,
        nodes=[_read_node(m, x.address)[0] for x in nodes],
        jobs=jobs,
        credits={c.address: m.credit_of(c.address) for c in clients},
        clients=_client_ledgers(m, jobs, [c.address for c in clients]),
        start_time=int(w3.eth.get_block("latest")["timestamp"]),
    )


def _client_ledgers(m: Marketplace, jobs: list[JobModel], clients: list[str]) -> dict[str, ClientLedger]:
    """Escrows the set-up jobs took and refunds they gave, per client (no challenges in the set-up)."""
    ledgers = {c: ClientLedger() for c in clients}
    for job in jobs:
        ledgers[job.terms.client].paid_in += job.terms.escrow
    for name in ("JobFinalized", "JobCancelled"):
        for event in m.events(name):
            job = jobs[int(event["args"]["jobId"]) - 1]
            ledgers[job.terms.client].paid_out += int(event["args"]["refund"])
    return ledgers


@pytest.fixture(scope="module")
def market_env(w3: Web3, deployment: Deployment) -> Iterator[Env]:
    """The session deployment (an EOA auditor) set up by _build_env, then reverted."""
    snap = rpc(w3, "evm_snapshot", [])
    yield _build_env(w3, deployment, NODE_KEYS)
    assert rpc(w3, "evm_revert", [snap]) is True


@pytest.fixture(scope="module")
def court_env(w3: Web3, deployment: Deployment) -> Iterator[Env]:
    """A deployment of its own with the AuditCourt as the auditor, set up by _build_env, then reverted."""
    snap = rpc(w3, "evm_snapshot", [])
    court = deploy(w3, Sender(w3, HARDHAT_DEV_KEYS[0]), COURT_PARAMS)
    for key in EXTRA_NODE_KEYS:
        rpc(w3, "hardhat_setBalance", [Sender(w3, key).address, hex(10_000 * ETHER)])
    yield _build_env(w3, court, (*NODE_KEYS, *EXTRA_NODE_KEYS))
    assert rpc(w3, "evm_revert", [snap]) is True


# ------------------------------------------------------------------------------------------- machine

job_pick = st.integers(min_value=0, max_value=2**16)
# When an action happens: now, or just before / on / just after the deadline or window end it depends on.
when = st.sampled_from(["now", "before", "on", "after"])
# For the newer rules: mostly now (their window edges are dry-run from both sides every time anyway).
mostly_now = st.sampled_from(["now"] * 4 + ["before", "on", "after"])
node_pick = st.integers(min_value=0, max_value=2**16)


class MarketMachine(RuleBasedStateMachine):
    env: ClassVar[Env | None] = None
    stats: ClassVar[Stats] = Stats()
    eoa_auditor: ClassVar[bool] = True  # the auditor is dev account 9 (False: the AuditCourt)

    def __init__(self) -> None:
        super().__init__()
        env = self.env
        assert env is not None, "MarketMachine.env is set by the test"
        self.w3 = env.w3
        self.model_id = env.model_id
        self.snapshot = rpc(self.w3, "evm_snapshot", [])
        self.m = Marketplace(self.w3, env.deployment)
        chain_id = self.m.chain_id
        # Fresh Senders: their nonce caches would be stale after the previous example's revert.
        self.node_senders = [Sender(self.w3, key, chain_id) for key in env.node_keys]
        self.client_senders = [Sender(self.w3, key, chain_id) for key in CLIENT_KEYS]
        self.auditor = Sender(self.w3, AUDITOR_KEY, chain_id)
        self.deployer = Sender(self.w3, HARDHAT_DEV_KEYS[0], chain_id)
        self.everyone = [self.deployer, *self.node_senders, *self.client_senders, self.auditor]
        self.signers = [EnvelopeSigner(key, chain_id, env.deployment.market) for key in CLIENT_KEYS]
        self.strangers = [EnvelopeSigner(key, chain_id, env.deployment.market) for key in NODE_KEYS[:3]]
        self.nodes = copy.deepcopy(env.nodes)
        self.node_by_address = {n.address: n for n in self.nodes}
        self.jobs = copy.deepcopy(env.jobs)
        self.last_status = {j.job_id: j.status for j in self.jobs}
        self.credits = dict(env.credits)
        self.challenge_bonds = 0  # wei the JobMarket holds for open challenges
        self.clients = copy.deepcopy(env.clients)
        self.protocol = self.nodes[PROTOCOL_NODE]
        # The protocol node's bond it put in and took out itself: it must never hold less (invariant 6).
        self.protocol_floor = self.protocol.bond
        self.duties_running = False
        self.attempts = 0  # transactions tried in this example
        self.randao_seed = b"splitmesh property randao"
        self.rejecting: set[str] = set()
        self.now = env.start_time
        self.pools_dirty = True
        self.audit_rate_bps = env.deployment.params.audit_rate_bps
        # The AuditCourt's ledger (AuditMachine only): bonds held and credits per account.
        self.audits: dict[int, AuditModel] = {}
        self.anchors: dict[int, int] = {}  # AuditCourt's fallback seed block per job
        self.bonds_held = 0
        self.court_credits: dict[str, int] = {}
        self.stats.examples += 1

    @initialize(seed=st.integers(0, 2**32))
    def seed_randao(self, seed: int) -> None:
        """Each example its own prevrandao sequence (so its own routes), the same on every replay."""
        self.randao_seed = seed.to_bytes(8, "big")

    def teardown(self) -> None:
        assert rpc(self.w3, "evm_revert", [self.snapshot]) is True

    # ----------------------------------------------------------------- helpers

    def _tick(self) -> int:
        """Pin the next block (the next transaction) at one second after the model's clock, after the
        protocol node did what is due by then."""
        self._protocol_duties(self.now + 1)
        self.now += 1
        rpc(self.w3, "evm_setNextBlockTimestamp", [self.now])
        return self.now

    def _advance_to(self, target: int) -> None:
        """Move the clock to `target` (never back); the protocol node acts on what the jump would skip."""
        if target > self.now:
            self._protocol_duties(target)
            self.now = max(self.now, target)

    def _protocol_duties(self, until: int) -> None:
        """What the protocol node must do before the clock passes `until` (the AuditMachine's votes)."""

    def _next_block(self) -> int:
        """Number of the block the next transaction (or a pending-block dry run) lands in."""
        return int(self.w3.eth.block_number) + 1

    def _attempt(
        self,
        rule_name: str,
        sender: Sender,
        call: Callable[[], TxResult],
        expect: str | set[str] | None,
        watch: tuple[str, ...] = (),
    ) -> Outcome | None:
        """Send a transaction; it must succeed iff `expect` is None, else revert with (one of) `expect`."""
        self.stats.steps += 1
        self.attempts += 1
        # Pin the block's prevrandao too (hardhat draws a fresh one per block): it picks routes, so without
        # this the same derandomized examples take other paths in another run (a CI run once missed a
        # required path that way). Counted per example: a replayed example (hypothesis re-runs them) draws
        # the same routes, so the protocol node's immediate commits and the preconditions come out the same.
        randao = keccak(self.randao_seed + self.attempts.to_bytes(8, "big"))
        rpc(self.w3, "hardhat_setPrevRandao", ["0x" + randao.hex()])
        self.last_revert: ContractRevert | None = None
        watched = tuple(dict.fromkeys((*watch, sender.address)))
        before = {a: self.m.balance(a) for a in watched}
        try:
            tx = call()
        except ContractRevert as exc:
            self.last_revert = exc
            allowed = {expect} if isinstance(expect, str) else expect
            assert allowed, f"{rule_name}: model expected success, chain reverted: {exc}"
            assert exc.name in allowed, f"{rule_name}: expected revert {sorted(allowed)}, got {exc}"
            self.stats.outcomes[f"{rule_name}:{exc.name}"] += 1
            return None
        assert expect is None or (isinstance(expect, set) and None in expect), (
            f"{rule_name}: succeeded but the model expected revert {expect}"
        )
        self.stats.outcomes[f"{rule_name}:ok"] += 1
        assert int(self.w3.eth.get_block("latest")["timestamp"]) == self.now, "block timestamp not pinned"
        cost = tx_cost(self.w3, tx.receipt)
        deltas = {a: self.m.balance(a) - before[a] + (cost if a == sender.address else 0) for a in watched}
        return Outcome(tx, self.m.decode_receipt_events(tx.receipt), deltas)

    def _probe_and_jump(
        self,
        label: str,
        sender: Sender,
        fn: ContractFunction,
        expect_at: Callable[[int], str | None],
        edge: int | None,
        when: str,
        value: int = 0,
    ) -> None:
        """Check a time window's edge (see _probe), then, for `when` before / on / after, move the clock so
        that the real transaction lands there too."""
        if edge is None:
            return
        self._probe(label, sender, fn, expect_at, edge, value)
        if when != "now":
            target = edge + {"before": -1, "on": 0, "after": 1}[when]
            self._advance_to(target - 1)

    def _probe(
        self,
        label: str,
        sender: Sender,
        fn: ContractFunction,
        expect_at: Callable[[int], str | None],
        edge: int,
        value: int = 0,
    ) -> None:
        """Dry-run a call 1 s before, on and 1 s after a window edge (those still ahead); require the model's
        outcome at each instant: the boundary must sit exactly where the model puts it.

        A gas estimate on the pending block, whose timestamp is pinned in turn; nothing is mined, and the
        next _tick() pins the real next block again.
        """
        for ts in (edge - 1, edge, edge + 1):
            if ts <= self.now:  # the next block must come after the latest, which is at most `now`
                continue
            rpc(self.w3, "evm_setNextBlockTimestamp", [ts])
            try:
                fn.estimate_gas({"from": sender.address, "value": value}, block_identifier="pending")
                got = None
            except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
                error = revert_from_exception(exc)
                got = error.name if isinstance(error, ContractRevert) else str(error)
            want = expect_at(ts)
            assert got == want, (
                f"{label} at edge{ts - edge:+d}: chain says {got or 'ok'}, model {want or 'ok'}"
            )
            self.stats.outcomes[f"(probe {label} at edge{ts - edge:+d}: {got or 'ok'})"] += 1

    def _probe_windows(self, job: JobModel) -> None:
        """After a job changes status, probe the edges of its new window from both sides."""
        edge = self._window_edge(job)
        if edge is None:
            return
        market = self.m.job_market.functions
        if job.status == JobStatus.OPEN:
            self._probe(
                "cancel OPEN",
                self.deployer,
                market.cancel(job.job_id, job.packed),
                lambda t: self._cancel_expect(job, t),
                edge,
            )
        else:
            self._probe(
                f"finalize {job.status.name}",
                self.deployer,
                market.finalize(job.job_id, job.packed),
                lambda t: self._finalize_expect(job, t),
                edge,
            )
        if job.status == JobStatus.COMMITTED:
            self._probe(
                "hold_for_audit COMMITTED",
                self.auditor,
                market.holdForAudit(job.job_id, job.packed),
                lambda t: self._hold_expect(job, t, True),
                edge,
            )

    @staticmethod
    def _window_edge(job: JobModel) -> int | None:
        """When the job's current window turns: last commit/no-cancel second, challenge or dispute end."""
        window = {
            JobStatus.OPEN: COMMIT_TIMEOUT,
            JobStatus.COMMITTED: CHALLENGE_WINDOW,
            JobStatus.DISPUTED: DISPUTE_TIMEOUT,
        }.get(job.status)
        return None if window is None else job.timestamp + window

    def _live(self, *statuses: JobStatus) -> list[JobModel]:
        return [j for j in self.jobs if j.status in statuses]

    def _committable(self) -> list[JobModel]:
        """Open jobs whose commit deadline has not passed at the next transaction."""
        return [j for j in self._live(JobStatus.OPEN) if self.now + 1 <= j.timestamp + COMMIT_TIMEOUT]

    def _pick_node(self, k: int, wanted: Callable[[NodeModel], bool]) -> int:
        """Index of a node for which the action can succeed, three times in four when there is one."""
        candidates = [i for i, n in enumerate(self.nodes) if wanted(n)]
        if not candidates or k % 4 == 3:
            candidates = list(range(len(self.nodes)))
        return candidates[(k // 4) % len(candidates)]

    def _sender_of(self, address: str) -> Sender:
        return next(s for s in self.everyone if s.address == address)

    def _payout(self, address: str, amount: int, out: Outcome, expected: dict[str, int]) -> None:
        """A push payment by the JobMarket's _refund: sent, or credited when the account refuses it."""
        if amount == 0:
            return
        if address in self.clients:
            self.clients[address].paid_out += amount
        if address in self.rejecting:
            self.stats.outcomes["(refund credited)"] += 1
            self.credits[address] = self.credits.get(address, 0) + amount
            assert {"account": address, "amount": amount} in out.named("RefundCredited")
        else:
            expected[address] = expected.get(address, 0) + amount

    def _check_deltas(self, rule_name: str, out: Outcome, expected: dict[str, int]) -> None:
        for address, delta in out.deltas.items():
            assert delta == expected.get(address, 0), (
                f"{rule_name}: balance of {address} changed by {delta}, expected {expected.get(address, 0)}"
            )

    def _credit_earnings(self, job: JobModel, paid_mask: int, bonus: int = 0) -> int:
        """Node earnings the settlement must add: price x billed + the hop fee per paid position, plus a lost
        challenge bond's share (invariant 4). Returns what the escrow pays (the bonus is not escrow)."""
        paid = 0
        for i, hop in enumerate(job.terms.route):
            if paid_mask >> i & 1:
                amount = hop.price_per_token * job.billed + HOP_FEE
                self.node_by_address[hop.node].earnings += amount + bonus
                paid += amount
        return paid

    def _settle_challenge(
        self,
        job: JobModel,
        paid_mask: int,
        fraud: bool,
        verdict: bool,
        out: Outcome,
        expected: dict[str, int],
    ) -> tuple[int, int]:
        """JobMarket._settleChallenge: the bond back on fraud, else half (with a verdict) to the auditor for
        the honest verifiers and the rest to the paid hops, rounding dust burned without a verdict. Returns
        (per paid node, to the auditor)."""
        if job.challenger is None:
            assert out.named("ChallengeSettled") == []
            return 0, 0
        challenger, bond = job.challenger, job.challenge_bond
        job.challenger, job.challenge_bond = None, 0
        self.challenge_bonds -= bond
        paid_hops = popcount(paid_mask & job.full_mask)
        returned = per_node = to_auditor = 0
        if fraud or paid_hops == 0:
            returned = bond
            self._payout(challenger, bond, out, expected)
            self.stats.outcomes["(challenge bond returned)"] += 1
        else:
            for_verifiers = bond * CHALLENGE_VERIFIER_BPS // BPS if verdict else 0
            per_node = (bond - for_verifiers) // paid_hops
            dust = bond - for_verifiers - per_node * paid_hops
            to_auditor = for_verifiers + dust if verdict else 0
            if not verdict and dust:
                expected[BURN] = expected.get(BURN, 0) + dust
            self.stats.outcomes[f"(challenge bond to the nodes{'' if verdict else ', no verdict'})"] += 1
        assert out.named("ChallengeSettled") == [
            {
                "jobId": job.job_id,
                "challenger": challenger,
                "toChallenger": returned,
                "perNode": per_node,
                "toAuditor": to_auditor,
            }
        ]
        return per_node, to_auditor

    def _settled(self, job: JobModel, out: Outcome, status: JobStatus) -> None:
        settlements = out.named("JobFinalized") + out.named("JobCancelled")
        assert len(settlements) == 1 and settlements[0]["jobId"] == job.job_id, settlements
        assert job.settled_events == 0, f"job {job.job_id} settled twice"
        job.settled_events += 1
        job.status = status

    def _slash_node(self, address: str, amount: int, events: list[dict[str, Any]]) -> int:
        """NodeRegistry.slash of at most `amount`; appends the Slashed event it emits (none for nothing)."""
        node = self.node_by_address[address]
        unbonding = node.unbonding
        taken = node.slash(amount)
        if node.unbonding < unbonding:
            self.stats.outcomes["(slash reached into unbonding)"] += 1
        if taken:
            events.append({"node": address, "amount": taken})
            self.pools_dirty = True
        return taken

    def _slash_fraud(self, job: JobModel, mask: int, events: list[dict[str, Any]]) -> int:
        """JobMarket._slashPositions at fraudSlashBps of each position's bond."""
        total = 0
        for i, hop in enumerate(job.terms.route):
            if mask >> i & 1:
                bond = self.node_by_address[hop.node].bond
                total += self._slash_node(hop.node, bond * FRAUD_SLASH_BPS // BPS, events)
        if total:
            self.stats.outcomes[f"(slashed at {FRAUD_SLASH_BPS} bps)"] += 1
        return total

    def _slash_missing(self, job: JobModel, mask: int, events: list[dict[str, Any]]) -> int:
        """JobMarket._slashMissing: missSlashBps of the bond, capped at what the job offered the hop."""
        total = 0
        for i, hop in enumerate(job.terms.route):
            if mask >> i & 1:
                amount = self.node_by_address[hop.node].bond * MISS_SLASH_BPS // BPS
                cap = hop.price_per_token * job.terms.max_tokens + HOP_FEE
                if amount > cap:
                    self.stats.outcomes["(miss slash capped at the job's offer)"] += 1
                total += self._slash_node(hop.node, min(amount, cap), events)
        if total:
            self.stats.outcomes["(miss slash burned)"] += 1
        return total

    # ----------------------------------------------------------------- registry rules

    @rule(node=st.integers(0, 5), amount=st.sampled_from([0, MIN_STAKE // 2, MIN_STAKE, 2 * MIN_STAKE]))
    def stake(self, node: int, amount: int) -> None:
        n, sender = self.nodes[node], self.node_senders[node]
        self._tick()
        out = self._attempt(
            "stake", sender, lambda: self.m.stake(sender, amount), "ZeroAmount" if amount == 0 else None
        )
        if out:
            n.stake += amount
            if n is self.protocol:
                self.protocol_floor += amount
            assert out.named("Staked") == [{"node": n.address, "amount": amount, "stake": n.stake}]
            self._check_deltas("stake", out, {n.address: -amount})
            self.pools_dirty = True

    @rule(
        k=node_pick,
        shard=st.sampled_from([1, 2]),
        price=st.sampled_from(PRICES),
        amount=st.sampled_from([0, MIN_STAKE]),
    )
    def register_node(self, k: int, shard: int, price: int, amount: int) -> None:
        node = self._pick_node(k, lambda n: n.status != NodeStatus.ACTIVE)
        n, sender = self.nodes[node], self.node_senders[node]
        self._tick()
        expect = "NodeAlreadyActive" if n.status == NodeStatus.ACTIVE else None
        out = self._attempt(
            "register_node",
            sender,
            lambda: self.m.register_node(
                sender, self.model_id, shard, "http://node.test", price, stake=amount
            ),
            expect,
        )
        if out:
            n.status, n.shard, n.price, n.stake = NodeStatus.ACTIVE, shard, price, n.stake + amount
            if n is self.protocol:
                self.protocol_floor += amount
            self._check_deltas("register_node", out, {n.address: -amount})
            self.pools_dirty = True

    @rule(k=node_pick)
    def deactivate(self, k: int) -> None:
        node = self._pick_node(k, lambda n: n.status == NodeStatus.ACTIVE)
        n, sender = self.nodes[node], self.node_senders[node]
        self._tick()
        expect = None if n.status == NodeStatus.ACTIVE else "NodeNotActive"
        if self._attempt("deactivate", sender, lambda: self.m.deactivate(sender), expect):
            n.status = NodeStatus.INACTIVE
            self.pools_dirty = True

    @rule(k=node_pick, part=st.sampled_from(["zero", "half", "half", "all", "all", "too_much"]))
    def unbond(self, k: int, part: str) -> None:
        node = self._pick_node(k, lambda n: n.stake > 0)
        n, sender = self.nodes[node], self.node_senders[node]
        amount = {"zero": 0, "half": n.stake // 2, "all": n.stake, "too_much": n.stake + 1}[part]
        t = self._tick()
        expect = "ZeroAmount" if amount == 0 else "InsufficientStake" if amount > n.stake else None
        out = self._attempt("unbond", sender, lambda: self.m.unbond(sender, amount), expect)
        if out:
            n.stake -= amount
            n.unbonding += amount
            n.unlock_at = t + UNBONDING_DELAY
            assert out.named("UnbondingStarted") == [
                {"node": n.address, "amount": amount, "unlockAt": n.unlock_at}
            ]
            self._check_deltas("unbond", out, {})
            self.pools_dirty = True
            self._probe(
                "withdraw_unbonded",
                sender,
                self.m.registry.functions.withdrawUnbonded(),
                lambda ts: self._withdraw_unbonded_expect(n, ts),
                n.unlock_at,
            )

    def _withdraw_unbonded_expect(self, n: NodeModel, t: int) -> str | None:
        if n.unbonding == 0:
            return "NothingToWithdraw"
        if t <= n.unlock_at:
            return "UnbondingLocked"
        return "TransferFailed" if n.address in self.rejecting else None

    @rule(k=node_pick, at=when)
    def withdraw_unbonded(self, k: int, at: str) -> None:
        node = self._pick_node(k, lambda n: n.unbonding > 0)
        n, sender = self.nodes[node], self.node_senders[node]
        expect_at = lambda t: self._withdraw_unbonded_expect(n, t)  # noqa: E731
        fn = self.m.registry.functions.withdrawUnbonded()
        self._probe_and_jump(
            "withdraw_unbonded", sender, fn, expect_at, n.unlock_at if n.unbonding else None, at
        )
        expect = expect_at(self._tick())
        out = self._attempt("withdraw_unbonded", sender, lambda: self.m.withdraw_unbonded(sender), expect)
        if out:
            self._check_deltas("withdraw_unbonded", out, {n.address: n.unbonding})
            if n is self.protocol:
                self.protocol_floor -= n.unbonding
            n.unbonding = 0

    # ----------------------------------------------------------------- clock and accounts

    @rule(seconds=st.sampled_from(TIME_STEPS))
    def advance_time(self, seconds: int) -> None:
        # The next transaction's block is pinned at now + 1, so no block needs mining here.
        self._advance_to(self.now + seconds)

    def _boundaries(self) -> list[int]:
        """Every live deadline: unbonding unlocks and the window edges of unsettled jobs."""
        return [n.unlock_at for n in self.nodes if n.unbonding] + [
            job.timestamp
            + {
                JobStatus.OPEN: COMMIT_TIMEOUT,
                JobStatus.COMMITTED: CHALLENGE_WINDOW,
                JobStatus.DISPUTED: DISPUTE_TIMEOUT,
            }[job.status]
            for job in self.jobs
            if job.status not in SETTLED
        ]

    @rule(k=st.integers(0, 2**16), offset=st.sampled_from([-1, 0, 1]))
    def advance_to_boundary(self, k: int, offset: int) -> None:
        """Jump so that the next transaction lands one second before, on, or after a live deadline."""
        boundaries = self._boundaries()
        future = sorted(b + offset - 1 for b in boundaries if b + offset - 1 >= self.now)
        if future:
            self._advance_to(future[k % len(future)])

    @rule(who=st.integers(0, 11))
    def toggle_rejecting(self, who: int) -> None:
        """Give an account (node or client) code that refuses payments, or take it away again."""
        accounts = self.node_senders + self.client_senders * 3  # clients more often: refunds become credits
        address = accounts[who % len(accounts)].address
        refusing = address not in self.rejecting
        rpc(self.w3, "hardhat_setCode", [address, REJECTING_CODE if refusing else "0x"])
        (self.rejecting.add if refusing else self.rejecting.discard)(address)

    # ----------------------------------------------------------------- job rules

    @rule(
        client=st.integers(0, 1),
        first_shard=st.sampled_from([1, 1, 2]),
        max_tokens=st.integers(0, 40),
        max_price=st.sampled_from(MAX_PRICES + MAX_PRICES[-2:] * 2),
        escrow_mode=st.sampled_from(["exact_max", "exact_max", "exact_min", "plus", "plus", "short"]),
        metadata_length=st.sampled_from([0, 0, 0, 32, 32, 257]),
        hints=st.sampled_from(["none"] * 4 + ["hinted", "too_many"]),
    )
    def submit_job(
        self,
        client: int,
        first_shard: int,
        max_tokens: int,
        max_price: int,
        escrow_mode: str,
        metadata_length: int,
        hints: str = "none",
    ) -> None:
        """Submit a job; the protocol node, if matched, commits it at once (it learns of the job from the
        JobSubmitted event, whether or not the client ever sends it a frame)."""
        sender = self.client_senders[client]
        hops = NUM_SHARDS - first_shard
        # Hints (1 + a pool index per shard) only count when the seeded probes find nobody; pools here are
        # smaller than MAX_PROBES, so they never change the route.
        hint_list = {"none": [], "hinted": [1] * hops, "too_many": [1] * (hops + 1)}[hints]
        # Who matching may pick per shard: pooled, on the shard, within the price limit (pools here are
        # smaller than MAX_PROBES, so every entry is probed).
        candidates = [
            sorted({n.price for n in self.nodes if n.pooled and n.shard == shard and n.price <= max_price})
            for shard in range(first_shard, NUM_SHARDS)
        ]
        empty_shard = next((first_shard + i for i, c in enumerate(candidates) if not c), None)
        min_sum = sum(c[0] for c in candidates if c)
        max_sum = sum(c[-1] for c in candidates if c)
        fees = hops * HOP_FEE  # the escrow also covers every hop's fee
        escrow = {
            "exact_max": max_tokens * max_sum + fees,
            "exact_min": max_tokens * min_sum + fees,
            "plus": max_tokens * max_sum + fees + 12_345,
            "short": max(max_tokens * min_sum + fees - 1, 0),
        }[escrow_mode]
        expect: str | set[str | None] | None
        if max_tokens == 0:
            expect = "ZeroMaxTokens"
        elif metadata_length > 256:
            expect = "MetadataTooLong"
        elif len(hint_list) > hops:
            expect = "TooManyHints"
        elif empty_shard is not None:
            expect = "NoEligibleNode"
        elif escrow < max_tokens * min_sum + fees:
            expect = "EscrowTooSmall"
        elif escrow >= max_tokens * max_sum + fees:
            expect = None
        else:  # enough for some routes only: which route matching picks depends on prevrandao
            expect = {None, "EscrowTooSmall"}
        t = self._tick()
        submitted: list[Any] = []

        def call() -> TxResult:
            job = self.m.submit_job(
                sender,
                self.model_id,
                first_shard,
                max_tokens,
                max_price,
                escrow,
                b"\x5a" * metadata_length,
                hints=hint_list,
            )
            submitted.append(job)
            assert job.tx is not None
            return job.tx

        out = self._attempt("submit_job", sender, call, expect)  # type: ignore[arg-type]
        if not out:
            args = self.last_revert.args_by_name if self.last_revert else {}
            if self.last_revert and self.last_revert.name == "NoEligibleNode":
                assert args == {"modelId": self.model_id, "shard": empty_shard}, args
            if self.last_revert and self.last_revert.name == "EscrowTooSmall":
                route_sums = {sum(prices) for prices in itertools.product(*candidates)}
                assert args["provided"] == escrow < cast(int, args["required"]), args
                assert args["required"] in {max_tokens * route_sum + fees for route_sum in route_sums}, args
            if self.last_revert and self.last_revert.name == "TooManyHints":
                assert args == {"hints": hops + 1, "shards": hops}, args
            return
        job = submitted[0]
        terms: JobTerms = job.terms
        assert (terms.client, terms.model_id, terms.first_shard, terms.max_tokens, terms.escrow) == (
            sender.address,
            self.model_id,
            first_shard,
            max_tokens,
            escrow,
        )
        assert len(terms.route) == NUM_SHARDS - first_shard
        for i, hop in enumerate(terms.route):
            n = self.node_by_address.get(hop.node)
            assert n is not None and n.pooled and n.shard == first_shard + i, f"matched ineligible node {hop}"
            assert hop.price_per_token == n.price <= max_price
        assert escrow >= max_tokens * sum(h.price_per_token for h in terms.route) + fees
        assert job.job_id == len(self.jobs) + 1
        self.jobs.append(JobModel(job.job_id, terms, job.packed_terms, JobStatus.OPEN, 0, 0, t))
        self.last_status[job.job_id] = JobStatus.OPEN
        self.clients[sender.address].paid_in += escrow
        self._probe_windows(self.jobs[-1])
        self._check_deltas("submit_job", out, {sender.address: -escrow})
        self._protocol_commits(self.jobs[-1])

    def _protocol_commits(self, job: JobModel) -> None:
        """The protocol node commits its positions of a new job with its true commitments and no receipt:
        a job whose client never shows up still costs that client the hop fee, never the node its stake."""
        protocol = self.node_senders[PROTOCOL_NODE]
        for position, hop in enumerate(job.terms.route):
            if hop.node == protocol.address:
                assert self._commit("protocol_commit", job, position, protocol, 0, False, "now", probe=False)

    def _commit_expectation(self, job: JobModel, t: int, position: int, by: str) -> str | None:
        if job.status != JobStatus.OPEN:
            return "WrongJobStatus"
        if t > job.timestamp + COMMIT_TIMEOUT:
            return "CommitDeadlinePassed"
        if position >= job.hops:
            return "InvalidPosition"
        if job.terms.route[position].node != by:
            return "NotRouteNode"
        if job.mask >> position & 1:
            return "AlreadyCommitted"
        return None

    def _commit(
        self,
        rule_name: str,
        job: JobModel,
        position: int,
        by: Sender,
        tokens: int,
        signed: bool,
        at: str,
        lie: bool = False,
        probe: bool = True,
    ) -> bool:
        """One commit; the node's input commitment links to the previous output unless it lies."""
        client = [s.address for s in self.client_senders].index(job.terms.client)
        receipt = (
            self.signers[client]
            .sign(job.job_id, tokens, tokens, keccak(tokens.to_bytes(4, "big")))
            .as_receipt()
            if signed
            else EMPTY_RECEIPT
        )
        given, sent = (LIE if lie else link(job.job_id, position)), link(job.job_id, position + 1)
        fn = self.m.job_market.functions.commit(job.job_id, job.packed, position, given, sent, receipt)
        if probe:
            self._probe_and_jump(
                rule_name,
                by,
                fn,
                lambda ts: self._commit_expectation(job, ts, position, by.address),
                self._window_edge(job),
                at,
            )
        t = self._tick()
        expect = self._commit_expectation(job, t, position, by.address)
        out = self._attempt(
            rule_name,
            by,
            lambda: self.m.commit(by, job.job_id, job.packed, position, given, sent, receipt),
            expect,
        )
        if not out:
            return False
        if receipt[1] > job.billed:
            job.billed = receipt[1]
        job.mask |= 1 << position
        job.commitments[position] = (given, sent)
        disputes: list[str] = []
        if job.mask == job.full_mask:
            # The last commit decides only the links; an audit draw comes later, from this block's hash
            # (sampleAudit), which nobody knew when sending this commit.
            if job.mismatched():
                disputes = ["JobDisputed", "CommitmentsMismatched"]
                self.stats.outcomes["(commitments mismatched)"] += 1
            job.status = JobStatus.DISPUTED if disputes else JobStatus.COMMITTED
            job.timestamp = t
            if disputes or self.audit_rate_bps:
                job.word = out.tx.block_number  # the completing block: the draw's or the panels' seed
            self._probe_windows(job)
        events = out.named("JobCommitted")
        assert (
            len(events) == 1 and events[0]["billedTokens"] == job.billed and events[0]["position"] == position
        )
        assert [name for name, _ in out.events if name != "JobCommitted"] == disputes
        for name in disputes:
            assert out.named(name) == [{"jobId": job.job_id}]
        self._check_deltas(rule_name, out, {})
        return True

    @rule(
        k=job_pick,
        where=st.sampled_from(["uncommitted"] * 4 + ["any", "beyond_route"]),
        who=st.sampled_from(["route"] * 4 + ["other"]),
        tokens=st.integers(0, 2**16),
        signed=st.sampled_from([True, True, True, False]),
        at=when,
        lie=st.sampled_from([False] * 5 + [True]),
    )
    @precondition(lambda self: self._committable())
    def commit(self, k: int, where: str, who: str, tokens: int, signed: bool, at: str, lie: bool) -> None:
        """One node commits with the client's receipt (tokens <= maxTokens) or an empty receipt; its input
        commitment links to the previous node's output, or lies."""
        jobs = self._committable()
        job = jobs[k % len(jobs)]
        uncommitted = [i for i in range(job.hops) if not job.mask >> i & 1]
        if where == "beyond_route":
            position = job.hops
        elif where == "uncommitted" and uncommitted:
            position = uncommitted[tokens % len(uncommitted)]
        else:
            position = tokens % job.hops
        owner = job.terms.route[position].node if position < job.hops else None
        by = next(
            s for s in self.node_senders if (s.address == owner) == (who == "route" and owner is not None)
        )
        self._commit("commit", job, position, by, tokens % (job.terms.max_tokens + 1), signed, at, lie)

    @rule(k=job_pick, tokens=st.integers(0, 2**16), at=when, liar=st.sampled_from([None, None, None, 0, 1]))
    @precondition(lambda self: self._committable())
    def commit_all(self, k: int, tokens: int, at: str, liar: int | None) -> None:
        """Every node of the route that has not committed yet commits (the client's last receipt); the
        `liar` position's input commitment does not link up (at position 0 it is no link: no dispute)."""
        jobs = self._committable()
        job = jobs[k % len(jobs)]
        tokens %= job.terms.max_tokens + 1
        for position in range(job.hops):
            if not job.mask >> position & 1 or job.status != JobStatus.OPEN:
                node = self._sender_of(job.terms.route[position].node)
                if not self._commit("commit_all", job, position, node, tokens, True, at, position == liar):
                    break  # a late or settled job: the other positions would revert the same way

    @rule(k=job_pick, extra=st.integers(1, 2**16))
    @precondition(lambda self: self._committable())
    def overbill(self, k: int, extra: int) -> None:
        """A route node presents receipts the client never signed (a stranger's signature, the client's
        signature over another job, more tokens than maxTokens): each must revert, nothing changes."""
        jobs = self._committable()
        job = jobs[k % len(jobs)]
        open_positions = [i for i in range(job.hops) if not job.mask >> i & 1] or [0]
        position = open_positions[extra % len(open_positions)]
        by = self._sender_of(job.terms.route[position].node)
        client = [s.address for s in self.client_senders].index(job.terms.client)
        max_tokens, billed = job.terms.max_tokens, job.billed
        # A forged receipt only matters if it raises the billed count: tokens in (billed, maxTokens].
        raised = billed + 1 + extra % max(max_tokens - billed, 1)
        forgeries = [
            (raised, self.strangers[extra % len(self.strangers)], job.job_id),
            (raised, self.signers[client], job.job_id + 1 + extra),
            (max_tokens + 1 + extra % 5, self.signers[client], job.job_id),
        ]
        for tokens, signer, signed_job in forgeries:
            receipt = signer.sign(signed_job, tokens, tokens, keccak(b"forged")).as_receipt()
            t = self._tick()
            expect = self._commit_expectation(job, t, position, by.address)
            late_or_done = expect is not None  # reverts before the receipt is looked at: once is enough
            if expect is None:
                expect = "TokensExceedMax" if tokens > max_tokens else "InvalidReceiptSignature"
            out = self._attempt(
                "overbill",
                by,
                lambda receipt=receipt: self.m.commit(  # type: ignore[misc]
                    by, job.job_id, job.packed, position, keccak(b"in"), keccak(b"out"), receipt
                ),
                expect,
            )
            assert out is None
            if late_or_done:
                break

    @rule(k=job_pick, caller=st.integers(0, 9), at=when)
    @precondition(lambda self: self._live(JobStatus.COMMITTED, JobStatus.DISPUTED))
    def finalize(self, k: int, caller: int, at: str) -> None:
        jobs = self._live(JobStatus.COMMITTED, JobStatus.DISPUTED)
        self._finalize(jobs[k % len(jobs)], caller, at)

    @staticmethod
    def _finalize_expect(job: JobModel, t: int) -> str | None:
        if job.status == JobStatus.DISPUTED:  # the auditor did not resolve in time
            return "ChallengeWindowOpen" if t < job.timestamp + DISPUTE_TIMEOUT else None
        if job.status != JobStatus.COMMITTED:
            return "WrongJobStatus"
        return "ChallengeWindowOpen" if t < job.timestamp + CHALLENGE_WINDOW else None

    def _timed_job_call(
        self,
        name: str,
        solidity_name: str,
        job: JobModel,
        sender: Sender,
        expect_at: Callable[[int], str | None],
        at: str,
        watch: tuple[str, ...] = (),
    ) -> tuple[Outcome | None, int]:
        """A time-gated call taking (jobId, terms): dry-run at its window's edges, jump to `at`, send it.
        Returns the outcome and the block time it was sent at."""
        fn = getattr(self.m.job_market.functions, solidity_name)(job.job_id, job.packed)
        self._probe_and_jump(f"{name} {job.status.name}", sender, fn, expect_at, self._window_edge(job), at)
        t = self._tick()
        send = getattr(self.m, name)
        out = self._attempt(name, sender, lambda: send(sender, job.job_id, job.packed), expect_at(t), watch)
        return out, t

    def _watch(self, job: JobModel) -> tuple[str, ...]:
        """Who a settlement of the job may pay: its client, its challenger, the burn address."""
        return (job.terms.client, BURN, *([job.challenger] if job.challenger else []))

    def _finalize(self, job: JobModel, caller: int, at: str) -> None:
        expect_at = lambda t: self._finalize_expect(job, t)  # noqa: E731
        watch = self._watch(job)
        out, _ = self._timed_job_call(
            "finalize", "finalize", job, self.everyone[caller], expect_at, at, watch
        )
        if not out:
            return
        expected: dict[str, int] = {}
        per_node = 0
        if job.status == JobStatus.DISPUTED:
            self.stats.outcomes["(finalized after the dispute timeout)"] += 1
            # No verdict came: an open challenge's bond goes to the nodes.
            per_node, _ = self._settle_challenge(job, job.mask, False, False, out, expected)
        paid = self._credit_earnings(job, job.mask, per_node)
        refund = job.terms.escrow - paid
        assert out.named("JobFinalized") == [
            {"jobId": job.job_id, "billedTokens": job.billed, "paid": paid, "refund": refund}
        ]
        self._payout(job.terms.client, refund, out, expected)
        self._settled(job, out, JobStatus.FINALIZED)
        job.word = 0
        self._check_deltas("finalize", out, expected)

    @rule(k=job_pick, caller=st.integers(0, 9), at=when)
    @precondition(lambda self: self._live(JobStatus.OPEN))
    def cancel(self, k: int, caller: int, at: str) -> None:
        jobs = self._live(JobStatus.OPEN)
        self._cancel(jobs[k % len(jobs)], caller, at)

    @staticmethod
    def _cancel_expect(job: JobModel, t: int) -> str | None:
        if job.status != JobStatus.OPEN:
            return "WrongJobStatus"
        return "CommitWindowOpen" if t <= job.timestamp + COMMIT_TIMEOUT else None

    def _cancel(self, job: JobModel, caller: int, at: str) -> None:
        expect_at = lambda t: self._cancel_expect(job, t)  # noqa: E731
        out, _ = self._timed_job_call(
            "cancel", "cancel", job, self.everyone[caller], expect_at, at, self._watch(job)
        )
        if not out:
            return
        missing = job.full_mask & ~job.mask
        slashes: list[dict[str, Any]] = []
        slashed = self._slash_missing(job, missing, slashes)
        assert out.named("Slashed") == slashes
        paid = self._credit_earnings(job, job.mask)
        refund = job.terms.escrow - paid  # the slash is burned: no client profits from a missed commit
        assert out.named("JobCancelled") == [
            {"jobId": job.job_id, "missingMask": missing, "paid": paid, "slashed": slashed, "refund": refund}
        ]
        expected: dict[str, int] = {BURN: slashed}
        self._payout(job.terms.client, refund, out, expected)
        self._settled(job, out, JobStatus.CANCELLED)
        self._check_deltas("cancel", out, expected)

    @rule(k=job_pick, as_auditor=st.sampled_from([True, True, True, False]), at=when)
    @precondition(lambda self: self._live(JobStatus.COMMITTED, JobStatus.DISPUTED))
    def hold_for_audit(self, k: int, as_auditor: bool, at: str) -> None:
        """Hold a committed job, or restart a disputed job's dispute timeout (what opening an audit does)."""
        jobs = self._live(JobStatus.COMMITTED, JobStatus.DISPUTED)
        self._hold_for_audit(jobs[k % len(jobs)], as_auditor, at)

    def _hold_expect(self, job: JobModel, t: int, as_auditor: bool) -> str | None:
        if not as_auditor or not self.eoa_auditor:
            return "NotAuditor"
        if job.status == JobStatus.DISPUTED:
            return None
        if job.status != JobStatus.COMMITTED:
            return "WrongJobStatus"
        return "ChallengeWindowClosed" if t >= job.timestamp + CHALLENGE_WINDOW else None

    def _hold_for_audit(self, job: JobModel, as_auditor: bool, at: str) -> None:
        sender = self.auditor if as_auditor else self.client_senders[0]
        expect_at = lambda t: self._hold_expect(job, t, as_auditor)  # noqa: E731
        out, t = self._timed_job_call("hold_for_audit", "holdForAudit", job, sender, expect_at, at)
        if out:
            if job.status == JobStatus.DISPUTED:
                self.stats.outcomes["(dispute timeout restarted)"] += 1  # the dispute block stays
            else:
                job.status, job.word = JobStatus.DISPUTED, out.tx.block_number
            job.timestamp = t
            assert out.named("JobDisputed") == [{"jobId": job.job_id}]
            self._probe_windows(job)
            self._check_deltas("hold_for_audit", out, {})

    @rule(k=job_pick, fraud_mask=st.integers(0, 3), as_auditor=st.sampled_from([True, True, True, False]))
    @precondition(lambda self: self._live(JobStatus.DISPUTED))
    def resolve_dispute(self, k: int, fraud_mask: int, as_auditor: bool) -> None:
        jobs = self._live(JobStatus.DISPUTED)
        challenged = [j for j in jobs if j.challenger]  # half the time one of those, if any
        jobs = challenged if challenged and k % 2 else jobs
        # Mixed with k: derandomized draws of a small integers() range keep coming back to 0.
        self._resolve_dispute(jobs[(k // 2) % len(jobs)], (fraud_mask + k // 2) % 4, as_auditor)

    def _resolve_dispute(self, job: JobModel, fraud_mask: int, as_auditor: bool) -> None:
        sender = self.auditor if as_auditor else self.node_senders[0]
        # The EOA auditor stands in for an honest court: it never finds the protocol node's position fraud.
        fraud_mask &= ~self._protocol_mask(job)
        self._tick()
        expect: str | None
        if not as_auditor or not self.eoa_auditor:
            expect = "NotAuditor"
        elif job.status != JobStatus.DISPUTED:
            expect = "WrongJobStatus"
        else:
            expect = "InvalidFraudMask" if fraud_mask >> job.hops else None
        out = self._attempt(
            "resolve_dispute",
            sender,
            lambda: self.m.resolve_dispute(sender, job.job_id, job.packed, fraud_mask),
            expect,
            self._watch(job),
        )
        if not out:
            return
        expected: dict[str, int] = {}
        slashes: list[dict[str, Any]] = []
        slashed, share = self._settle_dispute(job, fraud_mask, out, expected, slashes)
        assert out.named("Slashed") == slashes
        expected[AUDITOR] = slashed + share
        self._check_deltas("resolve_dispute", out, expected)

    def _settle_dispute(
        self,
        job: JobModel,
        fraud_mask: int,
        out: Outcome,
        expected: dict[str, int],
        slashes: list[dict[str, Any]],
    ) -> tuple[int, int]:
        """JobMarket.resolveDispute's effects: slash the fraud, settle the challenge, pay the rest, refund.
        Returns (slashed, the challenge bond's share for the auditor), both sent to the auditor."""
        slashed = self._slash_fraud(job, fraud_mask, slashes)
        assert out.named("DisputeResolved") == [
            {"jobId": job.job_id, "fraudMask": fraud_mask, "slashed": slashed}
        ]
        paid_mask = job.mask & ~fraud_mask
        per_node, share = self._settle_challenge(job, paid_mask, fraud_mask != 0, True, out, expected)
        paid = self._credit_earnings(job, paid_mask, per_node)
        refund = job.terms.escrow - paid
        assert out.named("JobFinalized") == [
            {"jobId": job.job_id, "billedTokens": job.billed, "paid": paid, "refund": refund}
        ]
        self._payout(job.terms.client, refund, out, expected)
        self._settled(job, out, JobStatus.FINALIZED)
        job.word = 0
        return slashed, share

    def _protocol_mask(self, job: JobModel) -> int:
        """Route positions of the job that the protocol node holds."""
        return sum(1 << i for i, hop in enumerate(job.terms.route) if hop.node == self.protocol.address)

    # ----------------------------------------------------------------- checkpoints, challenges, sampling

    CHECKPOINTS = ("raise", "raise", "raise", "stale", "over_max", "stranger", "other_job")

    @rule(k=job_pick, who=st.integers(0, 2**16), at=mostly_now)
    @precondition(lambda self: self._live(JobStatus.OPEN))
    def checkpoint_receipt(self, k: int, who: int, at: str) -> None:
        """Anyone records a client receipt of an Open job early; only a newer, genuine one counts (the
        receipt's kind comes from an integer: derandomized sampled_from favoured one kind heavily)."""
        jobs = self._committable() if k % 4 != 3 else []
        jobs = jobs or self._live(JobStatus.OPEN)
        mode = self.CHECKPOINTS[who % len(self.CHECKPOINTS)]
        self._checkpoint(jobs[(k // 4) % len(jobs)], mode, who, at)

    @staticmethod
    def _checkpoint_expect(job: JobModel, t: int, tokens: int, forged: bool) -> str | None:
        if job.status != JobStatus.OPEN:
            return "WrongJobStatus"
        if t > job.timestamp + COMMIT_TIMEOUT:
            return "CommitDeadlinePassed"
        if tokens <= job.billed:
            return "ReceiptNotNewer"
        if tokens > job.terms.max_tokens:
            return "TokensExceedMax"
        return "InvalidReceiptSignature" if forged else None

    def _checkpoint(self, job: JobModel, mode: str, who: int, at: str) -> None:
        sender = self.everyone[who % len(self.everyone)]
        max_tokens, billed = job.terms.max_tokens, job.billed
        tokens = {
            "stale": billed,
            "over_max": max_tokens + 1,
        }.get(mode, billed + 1 + who % max(max_tokens - billed, 1))
        client = [c.address for c in self.client_senders].index(job.terms.client)
        signer = self.strangers[who % len(self.strangers)] if mode == "stranger" else self.signers[client]
        signed_job = job.job_id + 1 + who % 7 if mode == "other_job" else job.job_id
        receipt = signer.sign(signed_job, tokens, tokens, keccak(b"checkpoint")).as_receipt()
        forged = mode in ("stranger", "other_job")
        expect_at = lambda t: self._checkpoint_expect(job, t, tokens, forged)  # noqa: E731
        fn = self.m.job_market.functions.checkpointReceipt(job.job_id, job.packed, receipt)
        self._probe_and_jump("checkpoint_receipt", sender, fn, expect_at, self._window_edge(job), at)
        t = self._tick()
        out = self._attempt(
            "checkpoint_receipt",
            sender,
            lambda: self.m.checkpoint_receipt(sender, job.job_id, job.packed, receipt),
            expect_at(t),
        )
        if out:
            job.billed = tokens
            assert out.named("ReceiptCheckpointed") == [{"jobId": job.job_id, "billedTokens": tokens}]
            self._check_deltas("checkpoint_receipt", out, {})

    @rule(
        k=job_pick,
        who=st.integers(0, 2**16),
        bond=st.sampled_from(["exact"] * 6 + ["less", "more"]),
        at=mostly_now,
    )
    @precondition(lambda self: self._live(JobStatus.COMMITTED))
    def challenge(self, k: int, who: int, bond: str, at: str) -> None:
        """The job's client (mostly), the other client or a node posts the challenge bond."""
        jobs = self._live(JobStatus.COMMITTED)
        in_window = [j for j in jobs if self.now + 1 < j.timestamp + CHALLENGE_WINDOW]
        jobs = in_window if in_window and k % 4 != 3 else jobs
        self._challenge(jobs[(k // 4) % len(jobs)], who, bond, at)

    @rule(client=st.integers(0, 1), tokens=st.integers(1, 40), fraud_mask=st.integers(0, 2**16))
    def challenged_job(self, client: int, tokens: int, fraud_mask: int) -> None:
        """A whole challenge: a two-hop job committed with linked commitments, challenged by its client,
        then (EOA auditor) resolved with a verdict; on the court deployment its audit rules judge it."""
        count = len(self.jobs)
        self.submit_job(client, 1, 40, MAX_PRICES[-1], "exact_max", 0)
        if len(self.jobs) == count:
            return  # nothing to match
        job = self.jobs[-1]
        for position in range(job.hops):
            if not job.mask >> position & 1:
                by = self._sender_of(job.terms.route[position].node)
                self._commit("commit_all", job, position, by, tokens, True, "now", probe=False)
        if job.status == JobStatus.COMMITTED:
            self._challenge(job, 0, "exact", "now")
        if job.challenger and self.eoa_auditor:
            self._resolve_dispute(job, fraud_mask % 4, True)

    @staticmethod
    def _challenge_expect(job: JobModel, t: int, value: int) -> str | None:
        if CHALLENGE_BOND == 0:
            return "ChallengesDisabled"
        if value != CHALLENGE_BOND:
            return "WrongChallengeBond"
        if job.status != JobStatus.COMMITTED:
            return "WrongJobStatus"
        return "ChallengeWindowClosed" if t >= job.timestamp + CHALLENGE_WINDOW else None

    def _challenge(self, job: JobModel, who: int, bond: str, at: str) -> None:
        own = self._sender_of(job.terms.client)
        challengers = [own] * 4 + [*self.client_senders, *self.node_senders]
        sender = challengers[who % len(challengers)]
        value = CHALLENGE_BOND + {"exact": 0, "less": -1, "more": 1}[bond]
        expect_at = lambda t: self._challenge_expect(job, t, value)  # noqa: E731
        fn = self.m.job_market.functions.challenge(job.job_id, job.packed)
        edge = self._window_edge(job) if job.status == JobStatus.COMMITTED else None
        self._probe_and_jump(f"challenge {job.status.name}", sender, fn, expect_at, edge, at, value)
        t = self._tick()
        out = self._attempt(
            "challenge",
            sender,
            lambda: self.m.challenge(sender, job.job_id, job.packed, bond=value),
            expect_at(t),
        )
        if not out:
            return
        job.status, job.timestamp, job.word = JobStatus.DISPUTED, t, out.tx.block_number
        job.challenger, job.challenge_bond = sender.address, value
        self.challenge_bonds += value
        if sender.address in self.clients:
            self.clients[sender.address].paid_in += value
        assert [name for name, _ in out.events] == ["JobDisputed", "JobChallenged"]
        assert out.named("JobChallenged") == [
            {"jobId": job.job_id, "challenger": sender.address, "bond": value}
        ]
        self._probe_windows(job)
        self._check_deltas("challenge", out, {sender.address: -value})

    @rule(k=job_pick, caller=st.integers(0, 9), at=when)
    @precondition(lambda self: self._live(JobStatus.COMMITTED))
    def sample_audit(self, k: int, caller: int, at: str) -> None:
        jobs = self._live(JobStatus.COMMITTED)
        self._sample_audit(jobs[k % len(jobs)], caller, at)

    def _block_hash(self, number: int) -> bytes:
        return bytes(self.w3.eth.get_block(number)["hash"])

    def _sample_expect(self, job: JobModel, t: int, block: int) -> str | None:
        if self.audit_rate_bps == 0:
            return "SamplingDisabled"
        if job.status != JobStatus.COMMITTED:
            return "WrongJobStatus"
        if t >= job.timestamp + CHALLENGE_WINDOW:
            return "ChallengeWindowClosed"
        if not job.word < block <= job.word + DRAW_HORIZON:  # blockhash of the completing block
            return "DrawUnavailable"
        return (
            None if is_sampled(self._block_hash(job.word), job.job_id, self.audit_rate_bps) else "NotSampled"
        )

    def _sample_audit(self, job: JobModel, caller: int, at: str) -> None:
        """Anyone disputes a committed job the audit draw selected (from its completing block's hash)."""
        sender = self.everyone[caller % len(self.everyone)]
        # Every dry run and the transaction land in the next block; only the clock moves between them.
        expect_at = lambda t: self._sample_expect(job, t, self._next_block())  # noqa: E731
        out, t = self._timed_job_call("sample_audit", "sampleAudit", job, sender, expect_at, at)
        if not out:
            return
        job.status, job.timestamp, job.word = JobStatus.DISPUTED, t, out.tx.block_number
        assert [name for name, _ in out.events] == ["JobDisputed", "AuditSampled"]
        assert out.named("AuditSampled") == [{"jobId": job.job_id}]
        self.stats.outcomes["(job sampled)"] += 1
        self._probe_windows(job)
        self._check_deltas("sample_audit", out, {})

    @rule()
    def mine_past_the_draw_horizon(self) -> None:
        """257 empty blocks, one a second: completing and dispute blocks fall out of blockhash's reach."""
        self._protocol_duties(self.now + DRAW_HORIZON + 1)
        rpc(self.w3, "evm_setNextBlockTimestamp", [self.now + 1])
        rpc(self.w3, "hardhat_mine", [hex(DRAW_HORIZON + 1), hex(1)])
        self.now += DRAW_HORIZON + 1
        assert int(self.w3.eth.get_block("latest")["timestamp"]) == self.now

    @rule(
        k=job_pick,
        action=st.sampled_from(
            ["commit", "finalize", "cancel", "hold_for_audit", "resolve_dispute", "challenge", "sample_audit"]
        ),
        caller=st.integers(0, 9),
        at=when,
    )
    def act_on_any_job(self, k: int, action: str, caller: int, at: str) -> None:
        """The same actions on any job, settled ones included: the wrong-status and wrong-time paths."""
        job = self.jobs[k % len(self.jobs)]
        if action == "challenge":
            self._challenge(job, caller, "exact", at)
        elif action == "sample_audit":
            self._sample_audit(job, caller, at)
        elif action == "commit":
            by = self._sender_of(job.terms.route[0].node)
            self._commit("commit", job, 0, by, 0, False, at)  # position 0's input is no link
        elif action == "finalize":
            self._finalize(job, caller, at)
        elif action == "cancel":
            self._cancel(job, caller, at)
        elif action == "hold_for_audit":
            self._hold_for_audit(job, caller != 0, at)
        else:
            self._resolve_dispute(job, caller % 4, caller != 0)

    # ----------------------------------------------------------------- withdrawals

    @rule(k=node_pick)
    def withdraw_earnings(self, k: int) -> None:
        node = self._pick_node(k, lambda n: n.earnings > 0)
        n, sender = self.nodes[node], self.node_senders[node]
        self._tick()
        if n.earnings == 0:
            expect = "NothingToWithdraw"
        elif n.address in self.rejecting:
            expect = "TransferFailed"
        else:
            expect = None
        out = self._attempt("withdraw_earnings", sender, lambda: self.m.withdraw_earnings(sender), expect)
        if out:
            assert out.named("EarningsWithdrawn") == [{"node": n.address, "amount": n.earnings}]
            self._check_deltas("withdraw_earnings", out, {n.address: n.earnings})
            n.earnings = 0

    @rule(client=st.integers(0, 3))
    def withdraw_credit(self, client: int) -> None:
        with_credit = [c for c in self.client_senders if self.credits[c.address]]
        sender = with_credit[0] if with_credit and client < 3 else self.client_senders[client % 2]
        credit = self.credits[sender.address]
        self._tick()
        if credit == 0:
            expect = "NothingToWithdraw"
        elif sender.address in self.rejecting:
            expect = "TransferFailed"
        else:
            expect = None
        out = self._attempt("withdraw_credit", sender, lambda: self.m.withdraw_credit(sender), expect)
        if out:
            assert out.named("CreditWithdrawn") == [{"account": sender.address, "amount": credit}]
            self._check_deltas("withdraw_credit", out, {sender.address: credit})
            self.credits[sender.address] = 0

    # ----------------------------------------------------------------- invariants

    def _check_protocol_parties(self, protocol: NodeModel) -> None:
        """(6) Whoever follows the protocol never loses to the market. The protocol node's bond (read from
        the chain) is at least what it staked minus what it withdrew itself: no slash ever reached it. No
        client got more from the JobMarket than it paid in: under the old cancel, which refunded the
        miss-slash, the first cancel with a missing hop broke this."""
        assert protocol.bond >= self.protocol_floor, (
            f"the protocol node {protocol.address} holds {protocol.bond} wei of bond, less than the "
            f"{self.protocol_floor} it put in and took out itself: it lost stake while following the protocol"
        )
        for address, ledger in self.clients.items():
            assert ledger.paid_out <= ledger.paid_in, (
                f"client {address} got {ledger.paid_out} wei from the JobMarket, more than the "
                f"{ledger.paid_in} it paid in: it gained from a node's stake"
            )

    @invariant()
    def ledgers_balance(self) -> None:
        m, reg, mkt = self.m, self.m.registry.functions, self.m.job_market.functions
        batch = BatchReader(self.w3)
        registry_balance = batch.balance(m.registry.address)
        market_balance = batch.balance(m.job_market.address)
        node_reads = [batch.call(reg.getNode(n.address)) for n in self.nodes]
        job_count = batch.call(mkt.jobCount())
        job_reads = [batch.call(mkt.getJob(j.job_id)) for j in self.jobs]
        link_reads = [batch.call(mkt.linksOf(j.job_id)) for j in self.jobs]
        challenge_reads = {
            j.job_id: batch.call(mkt.challengeOf(j.job_id)) for j in self._live(JobStatus.DISPUTED)
        }
        total_credits_read = batch.call(mkt.totalCredits())
        credit_reads = {a: batch.call(mkt.creditOf(a)) for a in self.credits}
        pool_sizes = (
            [batch.call(reg.poolSize(self.model_id, s)) for s in range(NUM_SHARDS)]
            if self.pools_dirty
            else []
        )
        court = m.court
        if court is not None:
            cf = court.functions
            court_balance = batch.balance(court.address)
            bonds_read = batch.call(cf.bondsHeld())
            court_credits_read = batch.call(cf.totalCredits())
            court_credit_reads = {a: batch.call(cf.creditOf(a)) for a in self.court_credits}
            audit_reads = {j: batch.call(cf.getAudit(j)) for j in self.audits}
        r = batch.run()

        chain_nodes = []
        for model, i in zip(self.nodes, node_reads, strict=True):
            (status, _model_id, shard, price, stake, unbonding, unlock_at, earnings, pooled, _key, _url) = r[
                i
            ][0]
            chain = NodeModel(
                model.address, NodeStatus(status), shard, price, stake, unbonding, unlock_at, earnings
            )
            # The model of every node: registration, price, stake, unbonding, unlock time, earnings, pooling.
            assert chain == model, f"node {model.address}: chain {chain} != model {model}"
            assert pooled == model.pooled, f"node {model.address}: pooled {pooled}, model {model.pooled}"
            chain_nodes.append(chain)
        # (1) the registry holds exactly the bonded value: stake + unbonding of every node account.
        bonded = sum(n.stake + n.unbonding for n in chain_nodes)
        assert r[registry_balance] == bonded, f"NodeRegistry balance {r[registry_balance]} != bonded {bonded}"

        if self.pools_dirty:  # the pools themselves (swap-and-pop), after anything that can change them
            pools = BatchReader(self.w3)
            entries = [
                [pools.call(reg.poolAt(self.model_id, s, i)) for i in range(r[pool_sizes[s]][0])]
                for s in range(NUM_SHARDS)
            ]
            p = pools.run()
            for shard, reads in enumerate(entries):
                pool = [(to_checksum_address(p[i][0][0]), p[i][0][1]) for i in reads]
                assert len(pool) == len(set(pool)), f"duplicate entry in the pool of shard {shard}: {pool}"
                assert set(pool) == {
                    (n.address, n.price) for n in self.nodes if n.pooled and n.shard == shard
                }, f"pool of shard {shard}: {pool}"
            self.pools_dirty = False

        # (3) job statuses only move forward; every job matches the model.
        assert r[job_count][0] == len(self.jobs)
        escrowed = 0
        for job, i, li in zip(self.jobs, job_reads, link_reads, strict=True):
            (_hash, status, mask, billed, timestamp) = r[i][0]
            status = JobStatus(status)
            last = self.last_status[job.job_id]
            assert status in JOB_ORDER[last], f"job {job.job_id} went {last.name} -> {status.name}"
            self.last_status[job.job_id] = status
            assert (status, mask, billed, timestamp) == (job.status, job.mask, job.billed, job.timestamp), (
                f"job {job.job_id}: chain {(status, mask, billed, timestamp)} != model {job}"
            )
            # (4) a job settles (JobFinalized or JobCancelled) at most once; once settled, exactly once.
            assert job.settled_events == (1 if status in SETTLED else 0), f"job {job.job_id} settlements"
            # The per-job word: the XOR of the committed link terms while Open; then the completing block
            # (sampling on) or the dispute block; freed once settled.
            links = int.from_bytes(r[li][0])
            assert links == (job.links() if status == JobStatus.OPEN else job.word), f"job {job.job_id} word"
            if status not in SETTLED:
                escrowed += job.terms.escrow
        for job_id, i in challenge_reads.items():
            job = self.jobs[job_id - 1]
            challenger, bond = r[i]
            open_challenge = (job.challenger or ZERO_ADDRESS, job.challenge_bond)
            assert (to_checksum_address(challenger), bond) == open_challenge, f"challenge of job {job_id}"

        # (2) the market holds exactly: escrow of unsettled jobs + credits + node earnings.
        total_credits = r[total_credits_read][0]
        assert total_credits == sum(self.credits.values())
        for address, i in credit_reads.items():
            assert r[i][0] == self.credits[address], f"credit of {address}"
        earnings = sum(n.earnings for n in chain_nodes)
        bonds = self.challenge_bonds
        assert r[market_balance] == escrowed + total_credits + earnings + bonds, (
            f"JobMarket balance {r[market_balance]} != escrow {escrowed} + credits {total_credits} "
            f"+ earnings {earnings} + challenge bonds {bonds}"
        )
        self._check_protocol_parties(chain_nodes[PROTOCOL_NODE])

        if court is None:
            return
        # (5) the court holds exactly the bonds of unrevealed votes plus its credits, as the model says.
        bonds, credits = r[bonds_read][0], r[court_credits_read][0]
        assert (bonds, credits) == (self.bonds_held, sum(self.court_credits.values())), (
            f"court: chain {bonds} bonds, {credits} credits; model {self.bonds_held}, {self.court_credits}"
        )
        assert r[court_balance] == bonds + credits, (
            f"AuditCourt balance {r[court_balance]} != {bonds} + {credits}"
        )
        for address, i in court_credit_reads.items():
            assert r[i][0] == self.court_credits[address], f"court credit of {address}"
        for job_id, i in audit_reads.items():
            status, hops, _unverifiable, _fraud, opened_at, *_ = r[i][0]
            audit = self.audits[job_id]
            want = AuditStatus.RESOLVED if audit.resolved else AuditStatus.OPEN
            assert (status, hops, opened_at) == (want, audit.job.hops, audit.opened_at), f"audit of {job_id}"


# ---------------------------------------------------------------------------------------- audit machine

verdict_pick = st.sampled_from([HONEST, FRAUD, FRAUD, 3])  # 3: an invalid verdict, never revealable
stop_pick = st.sampled_from(["withdraw", "withdraw", "resolve", "commit", "reveal"])
plan_pick = st.lists(st.sampled_from([HONEST, HONEST, FRAUD, FRAUD, "silent", None]), min_size=6, max_size=6)


class AuditMachine(MarketMachine):
    """MarketMachine on the AuditCourt deployment, plus the court's rules and ledger."""

    eoa_auditor = False

    def _boundaries(self) -> list[int]:
        """Also the audit deadlines: latest opening of a disputed job, commit and reveal deadlines."""
        out = super()._boundaries()
        for job in self._live(JobStatus.DISPUTED):
            if job.job_id not in self.audits:
                out.append(self._latest_open(job))
        for audit in self.audits.values():
            if not audit.resolved:
                out += [audit.commit_deadline, audit.reveal_deadline]
        return out

    def _pick_audit(self, k: int, wanted: Callable[[AuditModel], bool]) -> AuditModel:
        """An audit for which the action can succeed, three times in four when there is one."""
        audits = list(self.audits.values())
        candidates = [a for a in audits if wanted(a)]
        if not candidates or k % 4 == 3:
            candidates = audits
        return candidates[(k // 4) % len(candidates)]

    @property
    def court(self) -> Any:
        assert self.m.court is not None
        return self.m.court

    # ----------------------------------------------------------------- openAudit

    def _protocol_duties(self, until: int) -> None:
        """The protocol node reveals each vote at its first chance (the commit deadline passed, or its
        whole panel committed) and never lets the clock pass a reveal deadline first."""
        if self.duties_running:  # the reveal below ticks the clock itself
            return
        self.duties_running = True
        try:
            for audit in list(self.audits.values()):
                for (p, verifier), vote in list(audit.votes.items()):
                    if audit.resolved or verifier != self.protocol.address or vote.revealed:
                        continue
                    opens = self.now + 1 if audit.all_committed(p) else audit.commit_deadline + 1
                    if max(opens, self.now + 1) <= min(until, audit.reveal_deadline):
                        self.now = max(self.now, opens - 1)
                        self._reveal_vote(audit, p, verifier, vote.verdict, vote.salt, "now")
                        assert vote.revealed, "the protocol node could not reveal its vote"
        finally:
            self.duties_running = False

    @staticmethod
    def _latest_open(job: JobModel) -> int:
        return job.timestamp + DISPUTE_TIMEOUT - AUDIT_COMMIT - AUDIT_REVEAL - 2

    def _open_expect(self, job: JobModel, t: int) -> str | None:
        if job.job_id in self.audits:
            return "AuditAlreadyOpened"
        if job.status != JobStatus.DISPUTED:
            return "JobNotDisputed"
        return "AuditTooLate" if t > self._latest_open(job) else None

    @rule(k=job_pick, fresh=st.sampled_from([True, True, True, False]), at=when)
    def open_audit(self, k: int, fresh: bool, at: str) -> None:
        candidates = [j for j in self._live(JobStatus.DISPUTED) if j.job_id not in self.audits]
        jobs = candidates if fresh and candidates else self.jobs
        self._open_audit(jobs[k % len(jobs)], at)

    def _open_audit(self, job: JobModel, at: str) -> AuditModel | None:
        """Open the audit (anyone may). The panels are drawn from the hash of the dispute block, or, when
        that is over 256 blocks old, of an anchor block the first call records (then nothing opens)."""
        sender = self.deployer
        edge = (
            self._latest_open(job)
            if job.status == JobStatus.DISPUTED and job.job_id not in self.audits
            else None
        )
        fn = self.court.functions.openAudit(job.job_id, job.packed)
        self._probe_and_jump("open_audit", sender, fn, lambda t: self._open_expect(job, t), edge, at)
        t = self._tick()
        out = self._attempt(
            "open_audit",
            sender,
            lambda: self.m.open_audit(sender, job.job_id, job.packed),
            self._open_expect(job, t),
        )
        if not out:
            return None
        self._check_deltas("open_audit", out, {})
        block = out.tx.block_number
        anchor = self._anchor_hash(job, block)
        if anchor is None:
            assert [name for name, _ in out.events] == ["AuditAnchored"]
            assert out.named("AuditAnchored") == [{"jobId": job.job_id, "blockNumber": block}]
            self.stats.outcomes["(audit anchored: dispute block out of reach)"] += 1
            return None
        opened = out.named("AuditOpened")
        assert [e["position"] for e in opened] == list(range(job.hops))
        panels = []
        for p, event in enumerate(opened):
            assert event["node"] == job.terms.route[p].node
            verifiers = [str(to_checksum_address(v)) for v in event["verifiers"]]
            seed_bytes = keccak(abi_encode(["bytes32", "uint256", "uint256"], [anchor, job.job_id, p]))
            seed = int.from_bytes(seed_bytes)
            self._check_panel(job, p, seed, verifiers)
            self.stats.outcomes["(unverifiable position)" if not verifiers else "(panel drawn)"] += 1
            panels.append(verifiers)
        # Opening restarts the dispute timeout (holdForAudit): resolving always has its whole window.
        assert out.named("JobDisputed") == [{"jobId": job.job_id}]
        job.timestamp = t
        audit = AuditModel(job, t, panels)
        self.audits[job.job_id] = audit
        for p, panel in enumerate(panels):  # the protocol node commits its true verdict at once
            if self.protocol.address in panel:
                self._commit_vote(audit, p, self.protocol.address, self._truth(job, p), BOND, "now")
        return audit

    def _anchor_hash(self, job: JobModel, block: int) -> bytes | None:
        """AuditCourt._anchorHash for an openAudit in `block`: the dispute block's hash while blockhash
        reaches it, else an anchor block's (recorded by the first call; None: this call recorded one)."""
        if block - job.word <= DRAW_HORIZON:
            return self._block_hash(job.word)
        own = self.anchors.get(job.job_id, 0)
        if own and block - own <= DRAW_HORIZON:  # an anchor is always from an earlier block here
            self.stats.outcomes["(audit opened from its anchor block)"] += 1
            return self._block_hash(own)
        self.anchors[job.job_id] = block
        return None

    def _check_panel(self, job: JobModel, position: int, seed: int, verifiers: list[str]) -> None:
        """A drawn panel: distinct pooled nodes of the position's shard, never the audited node; the whole
        pool when it is small (at most k + 1 entries); else NodeRegistry's stake-weighted draw for the seed,
        replayed here from the pool's order and stakes."""
        shard, node = job.terms.first_shard + position, job.terms.route[position].node
        reg = self.m.registry.functions
        size = call_view(reg.poolSize(self.model_id, shard))
        pool = [to_checksum_address(call_view(reg.poolAt(self.model_id, shard, i))[0]) for i in range(size)]
        others = [a for a in pool if a != node]
        assert len(set(verifiers)) == len(verifiers) and set(verifiers) <= set(others), (verifiers, others)
        assert set(pool) == {n.address for n in self.nodes if n.pooled and n.shard == shard}
        if size <= VERIFIERS + 1:  # taken whole, from a seeded start
            start = seed % size if size else 0
            assert verifiers == [a for a in pool[start:] + pool[:start] if a != node][:VERIFIERS]
            return
        self.stats.outcomes["(panel drawn by stake)"] += 1
        wanted = VERIFIERS * 4  # SAMPLE_PROBES_PER_NODE x count distinct uniform candidates
        candidates: list[str] = []
        for i in range(2 * wanted):
            if len(candidates) == wanted:
                break
            pick = pool[int.from_bytes(keccak(abi_encode(["uint256", "uint256"], [seed, i]))) % size]
            if pick != node and pick not in candidates:
                candidates.append(pick)
        weights: list[int] = [self.node_by_address[a].stake for a in candidates]
        drawn: list[str] = []
        while len(drawn) < VERIFIERS and sum(weights) > 0:
            r = int.from_bytes(
                keccak(abi_encode(["uint256", "string", "uint256"], [seed, "stake", len(drawn)]))
            )
            r %= sum(weights)
            k = 0
            while r >= weights[k]:
                r -= weights[k]
                k += 1
            drawn.append(candidates[k])
            weights[k] = 0
        assert verifiers == drawn, (verifiers, drawn)

    def _truth(self, job: JobModel, position: int) -> int:
        return FRAUD if job.lied(position) else HONEST

    # ----------------------------------------------------------------- commitVote

    def _commit_vote_expect(
        self, audit: AuditModel, t: int, position: int, verifier: str, value: int
    ) -> str | None:
        if audit.resolved:
            return "AuditNotOpen"
        if position >= audit.job.hops:
            return "InvalidPosition"
        if t > audit.commit_deadline:
            return "CommitPhaseClosed"
        if verifier not in audit.panels[position]:
            return "NotVerifier"
        if value != BOND:
            return "WrongBond"
        return "AlreadyCommitted" if (position, verifier) in audit.votes else None

    @rule(
        k=job_pick,
        seat=st.integers(0, 2**16),
        who=st.sampled_from(["panel"] * 6 + ["anyone", "beyond_route"]),
        verdict=verdict_pick,
        bond=st.sampled_from([BOND] * 6 + [BOND - 1, BOND + 1]),
        at=when,
    )
    @precondition(lambda self: self.audits)
    def commit_vote(self, k: int, seat: int, who: str, verdict: int, bond: int, at: str) -> None:
        audit = self._pick_audit(k, lambda a: not a.resolved)
        hops = audit.job.hops
        position = hops if who == "beyond_route" else seat % hops
        panel = audit.panels[position] if position < hops else []
        waiting = [v for v in panel if (position, v) not in audit.votes]
        if who == "panel" and (waiting or panel):
            verifier = (waiting or panel)[(seat // 8) % len(waiting or panel)]
        else:
            verifier = self.node_senders[seat % len(self.node_senders)].address
        self._commit_vote(audit, position, verifier, verdict, bond, at)

    def _commit_vote(
        self, audit: AuditModel, position: int, verifier: str, verdict: int, value: int, at: str
    ) -> None:
        job_id = audit.job.job_id
        sender = self._sender_of(verifier)
        verdict = self._vote_of(audit, position, verifier, verdict)
        salt = keccak(text=f"salt {job_id} {position} {verifier} {self.attempts}")
        commitment = Marketplace.vote_commitment(job_id, position, verdict, salt, verifier)
        expect_at = lambda t: self._commit_vote_expect(audit, t, position, verifier, value)  # noqa: E731
        fn = self.court.functions.commitVote(job_id, position, commitment)
        edge = None if audit.resolved else audit.commit_deadline
        self._probe_and_jump("commit_vote", sender, fn, expect_at, edge, at, value)
        t = self._tick()
        out = self._attempt(
            "commit_vote",
            sender,
            lambda: self.m.commit_vote(sender, job_id, position, commitment, bond=value),
            expect_at(t),
        )
        if not out:
            return
        assert out.named("VoteCommitted") == [
            {"jobId": job_id, "position": position, "verifier": verifier, "commitment": commitment}
        ]
        audit.votes[(position, verifier)] = VoteModel(verdict, salt)
        self.bonds_held += BOND
        self._check_deltas("commit_vote", out, {verifier: -BOND})

    def _vote_of(self, audit: AuditModel, position: int, verifier: str, verdict: int) -> int:
        """The verdict a verifier commits: the protocol node only ever the truth; on the protocol node's own
        position a fraud vote only while fraud voters stay under half of the panel (an honest majority)."""
        job = audit.job
        if position >= job.hops:
            return verdict
        if verifier == self.protocol.address:
            return self._truth(job, position)
        if job.terms.route[position].node == self.protocol.address and verdict == FRAUD:
            frauds = sum(1 for (q, _), v in audit.votes.items() if q == position and v.verdict == FRAUD)
            if 2 * (frauds + 1) > len(audit.panels[position]):
                return HONEST
            self.stats.outcomes["(minority fraud vote on the protocol node)"] += 1
        return verdict

    # ----------------------------------------------------------------- revealVote

    def _reveal_expect(
        self, audit: AuditModel, t: int, position: int, verifier: str, verdict: int, salt: bytes
    ) -> str | None:
        if audit.resolved:
            return "AuditNotOpen"
        if position >= audit.job.hops:
            return "InvalidPosition"
        if t <= audit.commit_deadline and not audit.all_committed(position):
            return "RevealNotOpen"
        if t > audit.reveal_deadline:
            return "RevealPhaseClosed"
        if verifier not in audit.panels[position]:
            return "NotVerifier"
        vote = audit.votes.get((position, verifier))
        if vote is None or vote.revealed:
            return "NothingToReveal"
        if verdict not in (HONEST, FRAUD):
            return "InvalidVerdict"
        if (verdict, salt) != (vote.verdict, vote.salt):
            return "CommitmentMismatch"
        return None  # the bond stays held: nothing is sent, so a verifier refusing payments reveals too

    @rule(
        k=job_pick,
        seat=st.integers(0, 2**16),
        mode=st.sampled_from(["right"] * 6 + ["wrong_salt", "wrong_verdict", "anyone"]),
        at=when,
    )
    @precondition(lambda self: self.audits)
    def reveal_vote(self, k: int, seat: int, mode: str, at: str) -> None:
        audit = self._pick_audit(
            k, lambda a: any(not v.revealed for v in a.votes.values()) and not a.resolved
        )
        pending = [key for key, v in audit.votes.items() if not v.revealed]
        if mode != "anyone" and pending:
            position, verifier = pending[seat % len(pending)]
            vote = audit.votes[(position, verifier)]
            verdict, salt = vote.verdict, vote.salt
            if mode == "wrong_salt":
                salt = keccak(salt)
            elif mode == "wrong_verdict":
                verdict = FRAUD if verdict == HONEST else HONEST
        else:
            position = seat % audit.job.hops
            verifier = self.node_senders[seat % len(self.node_senders)].address
            verdict, salt = FRAUD, keccak(b"no such vote")
        self._reveal_vote(audit, position, verifier, verdict, salt, at)

    def _reveal_vote(
        self, audit: AuditModel, position: int, verifier: str, verdict: int, salt: bytes, at: str
    ) -> None:
        job_id = audit.job.job_id
        sender = self._sender_of(verifier)
        expect_at = lambda t: self._reveal_expect(audit, t, position, verifier, verdict, salt)  # noqa: E731
        fn = self.court.functions.revealVote(job_id, position, verdict, salt)
        edge = None
        if not audit.resolved:
            edge = audit.commit_deadline if self.now < audit.commit_deadline else audit.reveal_deadline
        self._probe_and_jump("reveal_vote", sender, fn, expect_at, edge, at)
        t = self._tick()
        out = self._attempt(
            "reveal_vote",
            sender,
            lambda: self.m.reveal_vote(sender, job_id, position, verdict, salt),
            expect_at(t),
        )
        if not out:
            return
        assert out.named("VoteRevealed") == [
            {"jobId": job_id, "position": position, "verifier": verifier, "verdict": verdict}
        ]
        audit.votes[(position, verifier)].revealed = True
        if t <= audit.commit_deadline:
            self.stats.outcomes["(early reveal: whole panel committed)"] += 1
        # The bond stays held until resolve: back with a reward on the verdict's side, forfeited otherwise.
        self._check_deltas("reveal_vote", out, {})

    # ----------------------------------------------------------------- resolve

    @staticmethod
    def _resolve_expect(audit: AuditModel, t: int, bad_terms: bool) -> str | None:
        if audit.resolved:
            return "AuditNotOpen"
        if t <= audit.reveal_deadline:
            return "RevealPhaseOpen"
        return "TermsMismatch" if bad_terms else None

    @rule(k=job_pick, caller=st.integers(0, 9), bad_terms=st.sampled_from([False] * 7 + [True]), at=when)
    @precondition(lambda self: self.audits)
    def resolve_audit(self, k: int, caller: int, bad_terms: bool, at: str) -> None:
        audit = self._pick_audit(k, lambda a: not a.resolved)
        self._resolve_audit(audit, caller, bad_terms, at)

    def _resolve_audit(self, audit: AuditModel, caller: int, bad_terms: bool, at: str) -> None:
        job = audit.job
        sender = self.everyone[caller]
        packed = job.packed + b"\0" if bad_terms else job.packed
        expect_at = lambda t: self._resolve_expect(audit, t, bad_terms)  # noqa: E731
        fn = self.court.functions.resolve(job.job_id, packed)
        edge = None if audit.resolved else audit.reveal_deadline
        self._probe_and_jump("resolve_audit", sender, fn, expect_at, edge, at)
        t = self._tick()
        out = self._attempt(
            "resolve_audit",
            sender,
            lambda: self.m.resolve_audit(sender, job.job_id, packed),
            expect_at(t),
            self._watch(job),
        )
        if not out:
            return
        fraud_mask, winners, forfeited = self._judge(audit, out)
        slashes: list[dict[str, Any]] = []
        penalties = self._penalize_abstainers(audit, out, slashes)
        expected: dict[str, int] = {}
        slashed = share = 0
        payee = job.challenger or job.terms.client  # read before the settlement clears the challenge
        if job.status == JobStatus.DISPUTED:
            slashed, share = self._settle_dispute(job, fraud_mask, out, expected, slashes)
            if payee != job.terms.client:
                self.stats.outcomes["(challenger paid by the court)"] += 1
        else:  # the dispute timed out and someone finalized the job first: verdicts only
            assert job.status == JobStatus.FINALIZED
            assert out.named("JobSettledBeforeVerdict") == [{"jobId": job.job_id}]
            assert out.named("DisputeResolved") == []
            self.stats.outcomes["(audit resolved after the job settled)"] += 1
        assert out.named("Slashed") == slashes
        # The reward pool: the verifiers' part of the slash, forfeited bonds, penalties, a lost challenge's
        # share. Every verifier on its position's verdict gets its bond back and an equal share.
        pool = slashed * REWARD_BPS // BPS + forfeited + penalties + share
        each = pool // winners if winners else 0
        rewards = []
        for p in range(job.hops):
            verdict = FRAUD if fraud_mask >> p & 1 else HONEST
            for verifier in audit.panels[p]:
                vote = audit.votes.get((p, verifier))
                if vote is not None and vote.revealed and vote.verdict == verdict:
                    rewards.append(
                        {"jobId": job.job_id, "position": p, "verifier": verifier, "amount": BOND + each}
                    )
                    self.court_credits[verifier] = self.court_credits.get(verifier, 0) + BOND + each
        assert out.named("VerifierRewarded") == rewards and len(rewards) == winners
        to_client = slashed + forfeited + penalties + share - each * winners
        assert out.named("AuditResolved") == [
            {
                "jobId": job.job_id,
                "fraudMask": fraud_mask,
                "slashed": slashed,
                "rewarded": each * winners,
                "toClient": to_client,
            }
        ]
        if to_client and payee in self.rejecting:
            self.court_credits[payee] = self.court_credits.get(payee, 0) + to_client
            assert out.named("PaymentCredited") == [{"account": payee, "amount": to_client}]
            self.stats.outcomes["(court payment credited)"] += 1
        elif to_client:
            expected[payee] = expected.get(payee, 0) + to_client
        audit.resolved = True
        self.stats.outcomes["(audit found fraud)" if fraud_mask else "(audit honest)"] += 1
        if rewards:
            self.stats.outcomes["(verifiers rewarded)"] += 1
        self._check_deltas("resolve_audit", out, expected)

    def _judge(self, audit: AuditModel, out: Outcome) -> tuple[int, int, int]:
        """AuditCourt._judge: a position is fraud iff more than half of its DRAWN verifiers revealed fraud
        (abstainers never help a minority); the winners revealed the verdict, every other committed bond
        is forfeited. Returns (fraud mask, winners, forfeited wei); releases the held bonds."""
        job = audit.job
        fraud_mask, winners, forfeited, judged = 0, 0, 0, []
        for p in range(job.hops):
            votes = [v for (q, _), v in audit.votes.items() if q == p]
            honest = sum(1 for v in votes if v.revealed and v.verdict == HONEST)
            fraud = sum(1 for v in votes if v.revealed and v.verdict == FRAUD)
            found = 2 * fraud > len(audit.panels[p])
            if not found and fraud > honest:  # the old rule (a majority of the revealed) would have slashed
                self.stats.outcomes["(fraud minority of the panel: honest)"] += 1
            won = fraud if found else honest
            lost = (len(votes) - won) * BOND
            if lost and any(v.revealed for v in votes if v.verdict != (FRAUD if found else HONEST)):
                self.stats.outcomes["(minority bond forfeited)"] += 1
            fraud_mask |= found << p
            winners += won
            forfeited += lost
            self.bonds_held -= len(votes) * BOND
            judged.append(
                {
                    "jobId": job.job_id,
                    "position": p,
                    "fraud": found,
                    "honestVotes": honest,
                    "fraudVotes": fraud,
                    "forfeited": lost,
                }
            )
        assert out.named("PositionJudged") == judged
        if forfeited:
            self.stats.outcomes["(bond forfeited)"] += 1
        return fraud_mask, winners, forfeited

    def _penalize_abstainers(self, audit: AuditModel, out: Outcome, slashes: list[dict[str, Any]]) -> int:
        """AuditCourt._penalizeAbstainers: every drawn verifier that never committed loses one verifier bond
        of its stake (JobMarket.penalizeVerifier; the proceeds go to the court). Returns the total."""
        total, events = 0, []
        for p, panel in enumerate(audit.panels):
            for verifier in panel:
                if (p, verifier) in audit.votes:
                    continue
                taken = self._slash_node(verifier, BOND, slashes)
                events.append({"verifier": verifier, "amount": taken})
                total += taken
                self.stats.outcomes["(verifier penalized)"] += 1
        assert out.named("VerifierPenalized") == events
        return total

    # ----------------------------------------------------------------- a whole round, and withdrawals

    @rule(
        client=st.integers(0, 1),
        first_shard=st.sampled_from([1, 1, 2]),
        tokens=st.integers(1, 40),
        liar=st.sampled_from([None, 1, 1, 1]),
    )
    def disputed_job(self, client: int, first_shard: int, tokens: int, liar: int | None) -> None:
        """Submit a job and commit every position, the `liar`'s input not linking up: most such jobs end
        Disputed (a one-hop job has no link to break; linked ones may be drawn by sampleAudit)."""
        count = len(self.jobs)
        self.submit_job(client, first_shard, 40, MAX_PRICES[-1], "exact_max", 0)
        if len(self.jobs) == count:
            return  # nothing to match
        job = self.jobs[-1]
        for position in range(job.hops):
            if not job.mask >> position & 1:  # the protocol node committed its position already
                by = self._sender_of(job.terms.route[position].node)
                self._commit("commit_all", job, position, by, tokens, True, "now", position == liar)
        if job.status == JobStatus.COMMITTED:
            self._sample_audit(job, client, "now")

    @initialize(
        k=job_pick,
        plan=plan_pick,
        stop=stop_pick,
        client=st.integers(0, 1),
        tokens=st.integers(1, 40),
        liar=st.sampled_from([None, 1]),
    )
    def first_audit(
        self, k: int, plan: list[Any], stop: str, client: int, tokens: int, liar: int | None
    ) -> None:
        """Every example starts with a completed job (mismatched, or linked and maybe sampled) and an audit
        round of a disputed job, so that each example exercises the court whatever the rules after it."""
        self.disputed_job(client, 1, tokens, liar)
        self.audit_round(k, plan, stop)

    @rule(k=job_pick, plan=plan_pick, stop=stop_pick)
    @precondition(lambda self: any(j.job_id not in self.audits for j in self._live(JobStatus.DISPUTED)))
    def audit_round(self, k: int, plan: list[Any], stop: str) -> None:
        """Open the audit of a disputed job, vote per `plan` (HONEST, FRAUD, "silent": commits and never
        reveals, None: never commits) in panel order, reveal, resolve, or stop after the commits or the
        reveals (the single-step rules carry on), or go on to the winners' withdrawals: each step checked as
        on its own."""
        jobs = [j for j in self._live(JobStatus.DISPUTED) if j.job_id not in self.audits]
        job = jobs[k % len(jobs)]
        audit = self._open_audit(job, "now")
        if audit is None and job.job_id in self.anchors:  # that call anchored a block: now it opens
            audit = self._open_audit(job, "now")
        if audit is None:  # opened too late
            return
        seats = [(p, v) for p, panel in enumerate(audit.panels) for v in panel]
        # The protocol node's seats vote by its own duty (at once, the truth), not by the plan.
        choices = {
            seat: plan[i % len(plan)] for i, seat in enumerate(seats) if seat[1] != self.protocol.address
        }
        for (p, v), choice in choices.items():
            if choice is not None:
                self._commit_vote(audit, p, v, FRAUD if choice == "silent" else choice, BOND, "now")
        if stop == "commit":
            return
        # Close to each deadline, so the first reveal and the resolution probe both sides of their edge.
        self._advance_to(audit.commit_deadline - 2)
        at = "after"
        # Panels that did not all commit first: their reveals stay closed until the commit deadline.
        for (p, v), choice in sorted(choices.items(), key=lambda item: audit.all_committed(item[0][0])):
            vote = audit.votes.get((p, v))
            if choice in (HONEST, FRAUD) and vote is not None:
                self._reveal_vote(audit, p, v, vote.verdict, vote.salt, at)
                at = "now"
        if stop == "reveal":
            return
        self._advance_to(audit.reveal_deadline - 2)
        self._resolve_audit(audit, k % 10, False, "after")
        if stop == "withdraw":
            for _, v in seats:
                if self.court_credits.get(v):
                    self._withdraw_court_credit(v)

    @rule(k=st.integers(0, 2**16))
    @precondition(lambda self: any(self.court_credits.values()))
    def withdraw_court_credit(self, k: int) -> None:
        """Someone the court owes withdraws (a rule enabled only then, so it comes up soon after)."""
        owed = [a for a, c in self.court_credits.items() if c]
        self._withdraw_court_credit(owed[k % len(owed)])

    @rule(k=st.integers(0, 2**16))
    def withdraw_court_credit_anyone(self, k: int) -> None:
        self._withdraw_court_credit(self.everyone[k % len(self.everyone)].address)

    def _withdraw_court_credit(self, address: str) -> None:
        sender = self._sender_of(address)
        credit = self.court_credits.get(address, 0)
        self._tick()
        if credit == 0:
            expect = "NothingToWithdraw"
        elif address in self.rejecting:
            expect = "TransferFailed"
        else:
            expect = None
        out = self._attempt(
            "withdraw_court_credit", sender, lambda: self.m.withdraw_court_credit(sender), expect
        )
        if out:
            assert out.named("CreditWithdrawn") == [{"account": address, "amount": credit}]
            self._check_deltas("withdraw_court_credit", out, {address: credit})
            self.court_credits[address] = 0


SETTINGS = settings(
    max_examples=int(os.environ.get("SPLITMESH_PROPERTY_EXAMPLES", "100")),
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def _run_machine(machine: Any, env: Env, machine_settings: Any) -> str:
    """Run a state machine on `env`, print what it reached, and return the outcome names it reached."""
    machine.env = env
    machine.stats = Stats()
    started = time.perf_counter()
    try:
        run_state_machine_as_test(machine, settings=machine_settings)
    finally:
        machine.env = None
    stats = machine.stats
    print(
        f"\n{stats.examples} examples, {stats.steps} transactions in {time.perf_counter() - started:.1f}s;"
        " outcomes:\n" + "\n".join(f"  {name}: {count}" for name, count in sorted(stats.outcomes.items()))
    )
    assert stats.examples >= machine_settings.max_examples
    return "\n".join(name for name, count in stats.outcomes.items() if count)


# Paths that need a rare combination (a challenge that then resolves a certain way, a revert in one
# exact block). Chain timestamps follow the wall clock between pinned jumps, so whether the examples
# reach them varies from run to run: they are checked by the models whenever reached and reported here.
# Deterministic tests pin each: ReceiptNotNewer and DrawUnavailable in tests/contracts/JobMarket.test.js;
# challenge bonds returned / lost / unjudged in attacks.test.js (4) and test_chain_layer.py's challenge
# tests; the court paying the challenger, anchored audits, sampled jobs, minority and silent verifiers in
# test_audit_court.py; stake-weighted panels and minority fraud votes in attacks.test.js (3, 5).
MARKET_RARE_PATHS = (
    # Reached when a node that started unbonding is slashed before it withdraws: which nodes the on-chain
    # matcher picks depends on block hashes, so some runs never route a job to an unbonding node.
    # Pinned by tests/contracts/JobMarket.test.js ("slashes unbonding stake too ...").
    "(slash reached into unbonding)",
    "checkpoint_receipt:ReceiptNotNewer",
    "(challenge bond returned)",
    "(challenge bond to the nodes)",
    "(challenge bond to the nodes, no verdict)",
)
AUDIT_RARE_PATHS = (
    # Sampling draws and panels are seeded by block hashes, and those change with the block timestamps.
    "sample_audit:DrawUnavailable",
    "(audit anchored: dispute block out of reach)",
    "(job sampled)",
    "sample_audit:NotSampled",
    "(panel drawn by stake)",
    "(bond forfeited)",
    "(minority bond forfeited)",
    "(verifier penalized)",
    "(challenger paid by the court)",
    "(minority fraud vote on the protocol node)",
)


def _report_rare(reached: str, paths: tuple[str, ...]) -> None:
    missed = [p for p in paths if p not in reached]
    if missed:
        warnings.warn(f"this run's examples did not reach {missed} (checked whenever reached)", stacklevel=2)


def test_marketplace_properties(market_env: Env) -> None:
    """100 random action sequences; every step keeps the ledgers exact and the model in step."""
    reached = _run_machine(MarketMachine, market_env, SETTINGS)
    # The machine must reach the paths that move value, not only the reverts.
    for path in (
        "submit_job:ok",
        "commit:ok",
        "commit_all:ok",
        "finalize:ok",
        "cancel:ok",
        "hold_for_audit:ok",
        "resolve_dispute:ok",
        "withdraw_earnings:ok",
        "withdraw_unbonded:ok",
        "withdraw_credit:ok",
        "overbill:InvalidReceiptSignature",
        "overbill:TokensExceedMax",
        "protocol_commit:ok",
        "checkpoint_receipt:ok",
        "checkpoint_receipt:InvalidReceiptSignature",
        "challenge:ok",
        "challenge:WrongChallengeBond",
        "sample_audit:SamplingDisabled",
        "submit_job:TooManyHints",
        "(miss slash burned)",
        "(miss slash capped at the job's offer)",
        "(slashed at 5000 bps)",
        "(dispute timeout restarted)",
        "(refund credited)",
        # and both sides of every time window's edge
        "at edge+0: ok)",
        "at edge+1: CommitDeadlinePassed)",
        "(probe cancel OPEN at edge+0: CommitWindowOpen)",
        "(probe cancel OPEN at edge+1: ok)",
        "(probe finalize COMMITTED at edge-1: ChallengeWindowOpen)",
        "(probe finalize COMMITTED at edge+0: ok)",
        "(probe hold_for_audit COMMITTED at edge-1: ok)",
        "(probe hold_for_audit COMMITTED at edge+0: ChallengeWindowClosed)",
        "(probe finalize DISPUTED at edge-1: ChallengeWindowOpen)",
        "(probe finalize DISPUTED at edge+0: ok)",
        "(probe challenge COMMITTED at edge-1: ok)",
        "(probe challenge COMMITTED at edge+0: ChallengeWindowClosed)",
        "(probe withdraw_unbonded at edge+0: UnbondingLocked)",
        "(probe withdraw_unbonded at edge+1: ok)",
    ):
        assert path in reached, f"no example reached {path}"
    _report_rare(reached, MARKET_RARE_PATHS)


# Fewer, shorter examples than the market machine's (each starts with a whole audit round): the two
# property tests together stay within twice the market machine's former run time.
AUDIT_SETTINGS = settings(
    SETTINGS,
    max_examples=int(os.environ.get("SPLITMESH_AUDIT_PROPERTY_EXAMPLES", "20")),
    stateful_step_count=15,
)


def test_audit_court_properties(court_env: Env) -> None:
    """The same, on the AuditCourt deployment, with the court's rules: all three ledgers stay exact."""
    reached = _run_machine(AuditMachine, court_env, AUDIT_SETTINGS)
    for path in (
        "open_audit:ok",
        "commit_vote:ok",
        "reveal_vote:ok",
        "resolve_audit:ok",
        "withdraw_court_credit:ok",
        "(commitments mismatched)",
        "(panel drawn)",
        "(audit found fraud)",
        "(audit honest)",
        "(verifiers rewarded)",
        "(slashed at 5000 bps)",
        "hold_for_audit:NotAuditor",
        "resolve_dispute:NotAuditor",
        # both sides of every audit deadline
        "(probe open_audit at edge+0: ok)",
        "(probe open_audit at edge+1: AuditTooLate)",
        "(probe commit_vote at edge+0: ok)",
        "(probe commit_vote at edge+1: CommitPhaseClosed)",
        "(probe reveal_vote at edge+0: RevealNotOpen)",
        "(probe reveal_vote at edge+1: ok)",
        "(probe reveal_vote at edge+0: ok)",
        "(probe reveal_vote at edge+1: RevealPhaseClosed)",
        "(probe resolve_audit at edge+0: RevealPhaseOpen)",
        "(probe resolve_audit at edge+1: ok)",
    ):
        assert path in reached, f"no example reached {path}"
    _report_rare(reached, AUDIT_RARE_PATHS)

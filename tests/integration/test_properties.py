"""Property-based test of the marketplace on a real local chain.

A hypothesis RuleBasedStateMachine drives random sequences of marketplace actions (staking, node
registration, unbonding, jobs, commits, overbilling attempts, finalization, cancellation, audits,
withdrawals, time travel) from several accounts against the session's hardhat node, keeps an exact Python
model of both contracts next to it, and after every step checks:

1. NodeRegistry balance == sum over node accounts of stake + unbonding (exact);
2. JobMarket balance == escrow of unsettled jobs + totalCredits() + node earnings (exact);
3. job statuses only move forward (Open -> Committed -> (Disputed ->) Finalized, or Open -> Cancelled);
4. nobody is paid twice: each job settles at most once, earnings grow by exactly price x billedTokens per
   paid position, and the refund in JobFinalized/JobCancelled is escrow - paid (+ slashed on cancel);

plus the model itself (every node's stake, unbonding, unlock time, earnings, pool membership; every job's
status, commit mask, billed tokens, timestamp; credits) and the balance change of every account a
transaction pays. A transaction either succeeds where the model says it must, or reverts with exactly the
custom error the model predicts (ambiguous only where matching is random; see submit_job).

Block timestamps are pinned (evm_setNextBlockTimestamp), so the model knows block.timestamp exactly. Time-
gated actions can be aimed 1 s before, on or 1 s after their window's edge, and every time-gated action,
and every status change, also dry-runs the call (a gas estimate on the pinned pending block; nothing is
mined) at those three instants: each window edge is checked from both sides in every run.

Every example starts from the same chain state (set up once by the module fixture: a model, nodes, and a
job in every live status): the machine takes an evm_snapshot when it is created and reverts to it in
teardown(). Settings are derandomized, so a run is reproducible; SPLITMESH_PROPERTY_EXAMPLES overrides the
number of examples (100) for a deeper local run.
"""

from __future__ import annotations

import copy
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import pytest
from eth_utils import keccak, to_checksum_address
from eth_utils.abi import get_abi_output_types
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError

from splitmesh.chain import HARDHAT_DEV_KEYS, Deployment, JobStatus, Marketplace, NodeStatus, Sender
from splitmesh.chain.terms import JobTerms
from splitmesh.chain.tx import TxResult, revert_from_exception
from splitmesh.errors import ContractRevert
from splitmesh.signing import EMPTY_RECEIPT, EnvelopeSigner
from tests.conftest import AUDITOR_KEY, TEST_PARAMS, increase_time, tx_cost

ETHER = 10**18
GWEI = 10**9
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

    def slash(self, bps: int) -> int:
        """What NodeRegistry.slash takes for a slash of bps of the bond: stake first, then unbonding."""
        amount = (self.stake + self.unbonding) * bps // BPS
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

    @property
    def hops(self) -> int:
        return len(self.terms.route)

    @property
    def full_mask(self) -> int:
        return (1 << self.hops) - 1


@dataclass
class Env:
    """What the module fixture set up once; every example starts from this chain state."""

    w3: Web3
    deployment: Deployment
    model_id: int
    nodes: list[NodeModel]
    jobs: list[JobModel]
    credits: dict[str, int]  # JobMarket credit of each client
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


@pytest.fixture(scope="module")
def market_env(w3: Web3, deployment: Deployment) -> Iterator[Env]:
    """A model, six node accounts in various states and four jobs in every live status, then reverted."""
    snap = rpc(w3, "evm_snapshot", [])
    m = Marketplace(w3, deployment)
    # The exact ledger invariants assume the deployment is as deployed (every other test reverts its state).
    assert m.job_count() == 0 and m.balance(deployment.registry) == 0 and m.balance(deployment.market) == 0
    s = [Sender(w3, key, m.chain_id) for key in HARDHAT_DEV_KEYS]
    nodes, clients, auditor = s[1:7], s[7:9], s[9]
    model_id, _ = m.register_model(
        nodes[0], "props-model", keccak(text="props-model weights"), PLAN[-1], PLAN
    )
    # (shard, price, stake): two nodes in the pool of shard 1, three in that of shard 2 (so that leaving
    # exercises the pool's swap-and-pop from the middle), node 6 unregistered.
    for sender, (shard, price, stake) in zip(
        nodes,
        [
            (1, PRICES[0], 2 * ETHER),
            (1, PRICES[1], ETHER),
            (2, PRICES[0], ETHER),
            (2, PRICES[2], 3 * ETHER),
            (2, PRICES[1], ETHER + ETHER // 4),
        ],
        strict=False,
    ):
        m.register_node(sender, model_id, shard, f"http://{sender.address[:10]}.test", price, stake=stake)
    signers = [EnvelopeSigner(c.account.key, m.chain_id, deployment.market) for c in clients]

    def submit(client: int, first_shard: int, max_tokens: int) -> tuple[int, JobTerms, bytes]:
        job = m.submit_job(
            clients[client], model_id, first_shard, max_tokens, 2**64 - 1, max_tokens * 10 * GWEI
        )
        return job.job_id, job.terms, job.packed_terms

    def commit(job: tuple[int, JobTerms, bytes], client: int, position: int, tokens: int) -> None:
        job_id, terms, packed = job
        by = next(x for x in nodes if x.address == terms.route[position].node)
        receipt = signers[client].sign(job_id, tokens, tokens, keccak(b"frame")).as_receipt()
        m.commit(by, job_id, packed, position, keccak(b"in"), keccak(b"out"), receipt)

    # History: node 5 has unlocked unbonding (and exactly minStake left), nodes have earnings, client 1
    # has a credited refund.
    m.unbond(nodes[4], ETHER // 4)
    rpc(w3, "hardhat_setCode", [clients[1].address, REJECTING_CODE])
    paid = submit(1, 1, 6)
    commit(paid, 1, 0, 4)
    commit(paid, 1, 1, 4)
    increase_time(w3, CHALLENGE_WINDOW)
    m.finalize(s[0], paid[0], paid[2])  # Finalized; the refund to client 1 is credited
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
    commit(held, 1, 1, 12)
    m.hold_for_audit(auditor, held[0], held[2])  # Disputed
    # The disputed job's first node unbonds nearly all its stake after being matched: a slash for it must
    # reach into its unbonding (stake first, then unbonding).
    heavy = next(x for x in nodes if x.address == held[1].route[0].node)
    m.unbond(heavy, m.get_node(heavy.address).stake * 19 // 20)

    jobs = []
    for job_id in range(1, m.job_count() + 1):
        sub, state = m.job_submitted(job_id), m.get_job(job_id)
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
            )
        )
    env = Env(
        w3=w3,
        deployment=deployment,
        model_id=model_id,
        nodes=[_read_node(m, x.address)[0] for x in nodes],
        jobs=jobs,
        credits={c.address: m.credit_of(c.address) for c in clients},
        start_time=int(w3.eth.get_block("latest")["timestamp"]),
    )
    yield env
    assert rpc(w3, "evm_revert", [snap]) is True


# ------------------------------------------------------------------------------------------- machine

job_pick = st.integers(min_value=0, max_value=2**16)
# When an action happens: now, or just before / on / just after the deadline or window end it depends on.
when = st.sampled_from(["now", "before", "on", "after"])
node_pick = st.integers(min_value=0, max_value=2**16)


class MarketMachine(RuleBasedStateMachine):
    env: ClassVar[Env | None] = None
    stats: ClassVar[Stats] = Stats()

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
        self.node_senders = [Sender(self.w3, key, chain_id) for key in NODE_KEYS]
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
        self.rejecting: set[str] = set()
        self.now = env.start_time
        self.pools_dirty = True
        self.stats.examples += 1

    def teardown(self) -> None:
        assert rpc(self.w3, "evm_revert", [self.snapshot]) is True

    # ----------------------------------------------------------------- helpers

    def _tick(self) -> int:
        """Pin the next block (the next transaction) at one second after the model's clock."""
        self.now += 1
        rpc(self.w3, "evm_setNextBlockTimestamp", [self.now])
        return self.now

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
    ) -> None:
        """Check a time window's edge (see _probe), then, for `when` before / on / after, move the clock so
        that the real transaction lands there too."""
        if edge is None:
            return
        self._probe(label, sender, fn, expect_at, edge)
        if when != "now":
            target = edge + {"before": -1, "on": 0, "after": 1}[when]
            self.now = max(self.now, target - 1)

    def _probe(
        self,
        label: str,
        sender: Sender,
        fn: ContractFunction,
        expect_at: Callable[[int], str | None],
        edge: int,
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
                fn.estimate_gas({"from": sender.address}, block_identifier="pending")
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
        market = self.m.market.functions
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
        if address in self.rejecting:
            self.stats.outcomes["(refund credited)"] += 1
            self.credits[address] += amount
            assert {"account": address, "amount": amount} in out.named("RefundCredited")
        else:
            expected[address] = expected.get(address, 0) + amount

    def _check_deltas(self, rule_name: str, out: Outcome, expected: dict[str, int]) -> None:
        for address, delta in out.deltas.items():
            assert delta == expected.get(address, 0), (
                f"{rule_name}: balance of {address} changed by {delta}, expected {expected.get(address, 0)}"
            )

    def _credit_earnings(self, job: JobModel, paid_mask: int) -> int:
        """Node earnings the settlement must add: price x billed per paid position (invariant 4)."""
        paid = 0
        for i, hop in enumerate(job.terms.route):
            if paid_mask >> i & 1:
                amount = hop.price_per_token * job.billed
                self.node_by_address[hop.node].earnings += amount
                paid += amount
        return paid

    def _settled(self, job: JobModel, out: Outcome, status: JobStatus) -> None:
        settlements = out.named("JobFinalized") + out.named("JobCancelled")
        assert len(settlements) == 1 and settlements[0]["jobId"] == job.job_id, settlements
        assert job.settled_events == 0, f"job {job.job_id} settled twice"
        job.settled_events += 1
        job.status = status

    def _slash(self, job: JobModel, mask: int, bps: int, out: Outcome) -> int:
        """Slash the route positions in mask as JobMarket._slashPositions does; check the Slashed events."""
        total, expected_events = 0, []
        for i, hop in enumerate(job.terms.route):
            if mask >> i & 1:
                node = self.node_by_address[hop.node]
                unbonding = node.unbonding
                amount = node.slash(bps)
                if node.unbonding < unbonding:
                    self.stats.outcomes["(slash reached into unbonding)"] += 1
                if amount:
                    expected_events.append({"node": hop.node, "amount": amount})
                total += amount
        assert out.named("Slashed") == expected_events
        if expected_events:
            self.stats.outcomes[f"(slashed at {bps} bps)"] += 1
            self.pools_dirty = True
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
            n.unbonding = 0

    # ----------------------------------------------------------------- clock and accounts

    @rule(seconds=st.sampled_from(TIME_STEPS))
    def advance_time(self, seconds: int) -> None:
        # The next transaction's block is pinned at now + 1, so no block needs mining here.
        self.now += seconds

    @rule(k=st.integers(0, 2**16), offset=st.sampled_from([-1, 0, 1]))
    def advance_to_boundary(self, k: int, offset: int) -> None:
        """Jump so that the next transaction lands one second before, on, or after a live deadline."""
        boundaries = [n.unlock_at for n in self.nodes if n.unbonding] + [
            job.timestamp
            + {
                JobStatus.OPEN: COMMIT_TIMEOUT,
                JobStatus.COMMITTED: CHALLENGE_WINDOW,
                JobStatus.DISPUTED: DISPUTE_TIMEOUT,
            }[job.status]
            for job in self.jobs
            if job.status not in SETTLED
        ]
        future = sorted(b + offset - 1 for b in boundaries if b + offset - 1 >= self.now)
        if future:
            self.now = future[k % len(future)]

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
    )
    def submit_job(
        self,
        client: int,
        first_shard: int,
        max_tokens: int,
        max_price: int,
        escrow_mode: str,
        metadata_length: int,
    ) -> None:
        sender = self.client_senders[client]
        # Who matching may pick per shard: pooled, on the shard, within the price limit (pools here are
        # smaller than MAX_PROBES, so every entry is probed).
        candidates = [
            sorted({n.price for n in self.nodes if n.pooled and n.shard == shard and n.price <= max_price})
            for shard in range(first_shard, NUM_SHARDS)
        ]
        empty_shard = next((first_shard + i for i, c in enumerate(candidates) if not c), None)
        min_sum = sum(c[0] for c in candidates if c)
        max_sum = sum(c[-1] for c in candidates if c)
        escrow = {
            "exact_max": max_tokens * max_sum,
            "exact_min": max_tokens * min_sum,
            "plus": max_tokens * max_sum + 12_345,
            "short": max(max_tokens * min_sum - 1, 0),
        }[escrow_mode]
        expect: str | set[str | None] | None
        if max_tokens == 0:
            expect = "ZeroMaxTokens"
        elif metadata_length > 256:
            expect = "MetadataTooLong"
        elif empty_shard is not None:
            expect = "NoEligibleNode"
        elif escrow < max_tokens * min_sum:
            expect = "EscrowTooSmall"
        elif escrow >= max_tokens * max_sum:
            expect = None
        else:  # enough for some routes only: which route matching picks depends on prevrandao
            expect = {None, "EscrowTooSmall"}
        t = self._tick()
        submitted: list[Any] = []

        def call() -> TxResult:
            job = self.m.submit_job(
                sender, self.model_id, first_shard, max_tokens, max_price, escrow, b"\x5a" * metadata_length
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
                assert args["required"] in {max_tokens * route_sum for route_sum in route_sums}, args
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
        assert escrow >= max_tokens * sum(h.price_per_token for h in terms.route)
        assert job.job_id == len(self.jobs) + 1
        self.jobs.append(JobModel(job.job_id, terms, job.packed_terms, JobStatus.OPEN, 0, 0, t))
        self.last_status[job.job_id] = JobStatus.OPEN
        self._probe_windows(self.jobs[-1])
        self._check_deltas("submit_job", out, {sender.address: -escrow})

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
    ) -> bool:
        client = [s.address for s in self.client_senders].index(job.terms.client)
        receipt = (
            self.signers[client]
            .sign(job.job_id, tokens, tokens, keccak(tokens.to_bytes(4, "big")))
            .as_receipt()
            if signed
            else EMPTY_RECEIPT
        )
        fn = self.m.market.functions.commit(
            job.job_id, job.packed, position, keccak(b"in"), keccak(b"out"), receipt
        )
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
            lambda: self.m.commit(
                by, job.job_id, job.packed, position, keccak(b"in"), keccak(b"out"), receipt
            ),
            expect,
        )
        if not out:
            return False
        if receipt[1] > job.billed:
            job.billed = receipt[1]
        job.mask |= 1 << position
        if job.mask == job.full_mask:
            job.status, job.timestamp = JobStatus.COMMITTED, t
            self._probe_windows(job)
        events = out.named("JobCommitted")
        assert (
            len(events) == 1 and events[0]["billedTokens"] == job.billed and events[0]["position"] == position
        )
        self._check_deltas(rule_name, out, {})
        return True

    @rule(
        k=job_pick,
        where=st.sampled_from(["uncommitted"] * 4 + ["any", "beyond_route"]),
        who=st.sampled_from(["route"] * 4 + ["other"]),
        tokens=st.integers(0, 2**16),
        signed=st.sampled_from([True, True, True, False]),
        at=when,
    )
    @precondition(lambda self: self._committable())
    def commit(self, k: int, where: str, who: str, tokens: int, signed: bool, at: str) -> None:
        """One node commits with the client's receipt (tokens <= maxTokens) or an empty receipt."""
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
        self._commit("commit", job, position, by, tokens % (job.terms.max_tokens + 1), signed, at)

    @rule(k=job_pick, tokens=st.integers(0, 2**16), at=when)
    @precondition(lambda self: self._committable())
    def commit_all(self, k: int, tokens: int, at: str) -> None:
        """Every node of the route that has not committed yet commits (the client's last receipt)."""
        jobs = self._committable()
        job = jobs[k % len(jobs)]
        tokens %= job.terms.max_tokens + 1
        for position in range(job.hops):
            if not job.mask >> position & 1 or job.status != JobStatus.OPEN:
                node = self._sender_of(job.terms.route[position].node)
                if not self._commit("commit_all", job, position, node, tokens, True, at):
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

    def _finalize(self, job: JobModel, caller: int, at: str) -> None:
        sender = self.everyone[caller]
        fn = self.m.market.functions.finalize(job.job_id, job.packed)
        expect_at = lambda t: self._finalize_expect(job, t)  # noqa: E731
        self._probe_and_jump(f"finalize {job.status.name}", sender, fn, expect_at, self._window_edge(job), at)
        expect = expect_at(self._tick())
        out = self._attempt(
            "finalize",
            sender,
            lambda: self.m.finalize(sender, job.job_id, job.packed),
            expect,
            (job.terms.client,),
        )
        if not out:
            return
        if job.status == JobStatus.DISPUTED:
            self.stats.outcomes["(finalized after the dispute timeout)"] += 1
        paid = self._credit_earnings(job, job.mask)
        refund = job.terms.escrow - paid
        assert out.named("JobFinalized") == [
            {"jobId": job.job_id, "billedTokens": job.billed, "paid": paid, "refund": refund}
        ]
        expected: dict[str, int] = {}
        self._payout(job.terms.client, refund, out, expected)
        self._settled(job, out, JobStatus.FINALIZED)
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
        sender = self.everyone[caller]
        fn = self.m.market.functions.cancel(job.job_id, job.packed)
        expect_at = lambda t: self._cancel_expect(job, t)  # noqa: E731
        self._probe_and_jump(f"cancel {job.status.name}", sender, fn, expect_at, self._window_edge(job), at)
        expect = expect_at(self._tick())
        out = self._attempt(
            "cancel",
            sender,
            lambda: self.m.cancel(sender, job.job_id, job.packed),
            expect,
            (job.terms.client,),
        )
        if not out:
            return
        missing = job.full_mask & ~job.mask
        slashed = self._slash(job, missing, MISS_SLASH_BPS, out)
        paid = self._credit_earnings(job, job.mask)
        refund = job.terms.escrow - paid + slashed
        assert out.named("JobCancelled") == [
            {"jobId": job.job_id, "missingMask": missing, "paid": paid, "slashed": slashed, "refund": refund}
        ]
        expected: dict[str, int] = {}
        self._payout(job.terms.client, refund, out, expected)
        self._settled(job, out, JobStatus.CANCELLED)
        self._check_deltas("cancel", out, expected)

    @rule(k=job_pick, as_auditor=st.sampled_from([True, True, True, False]), at=when)
    @precondition(lambda self: self._live(JobStatus.COMMITTED))
    def hold_for_audit(self, k: int, as_auditor: bool, at: str) -> None:
        jobs = self._live(JobStatus.COMMITTED)
        self._hold_for_audit(jobs[k % len(jobs)], as_auditor, at)

    @staticmethod
    def _hold_expect(job: JobModel, t: int, as_auditor: bool) -> str | None:
        if not as_auditor:
            return "NotAuditor"
        if job.status != JobStatus.COMMITTED:
            return "WrongJobStatus"
        return "ChallengeWindowClosed" if t >= job.timestamp + CHALLENGE_WINDOW else None

    def _hold_for_audit(self, job: JobModel, as_auditor: bool, at: str) -> None:
        sender = self.auditor if as_auditor else self.client_senders[0]
        expect_at = lambda t: self._hold_expect(job, t, as_auditor)  # noqa: E731
        fn = self.m.market.functions.holdForAudit(job.job_id, job.packed)
        self._probe_and_jump(
            f"hold_for_audit {job.status.name}", sender, fn, expect_at, self._window_edge(job), at
        )
        t = self._tick()
        expect = expect_at(t)
        out = self._attempt(
            "hold_for_audit", sender, lambda: self.m.hold_for_audit(sender, job.job_id, job.packed), expect
        )
        if out:
            job.status, job.timestamp = JobStatus.DISPUTED, t
            assert out.named("JobDisputed") == [{"jobId": job.job_id}]
            self._probe_windows(job)
            self._check_deltas("hold_for_audit", out, {})

    @rule(k=job_pick, fraud_mask=st.integers(0, 3), as_auditor=st.sampled_from([True, True, True, False]))
    @precondition(lambda self: self._live(JobStatus.DISPUTED))
    def resolve_dispute(self, k: int, fraud_mask: int, as_auditor: bool) -> None:
        jobs = self._live(JobStatus.DISPUTED)
        self._resolve_dispute(jobs[k % len(jobs)], fraud_mask, as_auditor)

    def _resolve_dispute(self, job: JobModel, fraud_mask: int, as_auditor: bool) -> None:
        sender = self.auditor if as_auditor else self.node_senders[0]
        self._tick()
        expect: str | None
        if not as_auditor:
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
            (job.terms.client,),
        )
        if not out:
            return
        slashed = self._slash(job, fraud_mask, FRAUD_SLASH_BPS, out)
        assert out.named("DisputeResolved") == [
            {"jobId": job.job_id, "fraudMask": fraud_mask, "slashed": slashed}
        ]
        paid = self._credit_earnings(job, job.mask & ~fraud_mask)
        refund = job.terms.escrow - paid
        assert out.named("JobFinalized") == [
            {"jobId": job.job_id, "billedTokens": job.billed, "paid": paid, "refund": refund}
        ]
        expected: dict[str, int] = {AUDITOR: slashed}
        self._payout(job.terms.client, refund, out, expected)
        self._settled(job, out, JobStatus.FINALIZED)
        self._check_deltas("resolve_dispute", out, expected)

    @rule(
        k=job_pick,
        action=st.sampled_from(["commit", "finalize", "cancel", "hold_for_audit", "resolve_dispute"]),
        caller=st.integers(0, 9),
        at=when,
    )
    def act_on_any_job(self, k: int, action: str, caller: int, at: str) -> None:
        """The same actions on any job, settled ones included: the wrong-status and wrong-time paths."""
        job = self.jobs[k % len(self.jobs)]
        if action == "commit":
            by = self._sender_of(job.terms.route[0].node)
            self._commit("commit", job, 0, by, 0, False, at)
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

    @invariant()
    def ledgers_balance(self) -> None:
        m, reg, mkt = self.m, self.m.registry.functions, self.m.market.functions
        batch = BatchReader(self.w3)
        registry_balance = batch.balance(m.registry.address)
        market_balance = batch.balance(m.market.address)
        node_reads = [batch.call(reg.getNode(n.address)) for n in self.nodes]
        job_count = batch.call(mkt.jobCount())
        job_reads = [batch.call(mkt.getJob(j.job_id)) for j in self.jobs]
        total_credits_read = batch.call(mkt.totalCredits())
        credit_reads = {a: batch.call(mkt.creditOf(a)) for a in self.credits}
        pool_sizes = (
            [batch.call(reg.poolSize(self.model_id, s)) for s in range(NUM_SHARDS)]
            if self.pools_dirty
            else []
        )
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
        for job, i in zip(self.jobs, job_reads, strict=True):
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
            if status not in SETTLED:
                escrowed += job.terms.escrow

        # (2) the market holds exactly: escrow of unsettled jobs + credits + node earnings.
        total_credits = r[total_credits_read][0]
        assert total_credits == sum(self.credits.values())
        for address, i in credit_reads.items():
            assert r[i][0] == self.credits[address], f"credit of {address}"
        earnings = sum(n.earnings for n in chain_nodes)
        assert r[market_balance] == escrowed + total_credits + earnings, (
            f"JobMarket balance {r[market_balance]} != escrow {escrowed} + credits {total_credits} "
            f"+ earnings {earnings}"
        )


SETTINGS = settings(
    max_examples=int(os.environ.get("SPLITMESH_PROPERTY_EXAMPLES", "100")),
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def test_marketplace_properties(market_env: Env) -> None:
    """100 random action sequences; every step keeps the ledgers exact and the model in step."""
    MarketMachine.env = market_env
    MarketMachine.stats = Stats()
    started = time.perf_counter()
    try:
        run_state_machine_as_test(MarketMachine, settings=SETTINGS)
    finally:
        MarketMachine.env = None
    stats = MarketMachine.stats
    print(
        f"\n{stats.examples} examples, {stats.steps} transactions in {time.perf_counter() - started:.1f}s;"
        " outcomes:\n" + "\n".join(f"  {name}: {count}" for name, count in sorted(stats.outcomes.items()))
    )
    assert stats.examples >= SETTINGS.max_examples
    # The machine must reach the paths that move value, not only the reverts.
    reached = "\n".join(name for name, count in stats.outcomes.items() if count)
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
        "(slashed at 1000 bps)",
        "(slashed at 5000 bps)",
        "(slash reached into unbonding)",
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
        "(probe withdraw_unbonded at edge+0: UnbondingLocked)",
        "(probe withdraw_unbonded at edge+1: ok)",
    ):
        assert path in reached, f"no example reached {path}"

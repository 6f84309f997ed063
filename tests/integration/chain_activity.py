"""Random marketplace activity on a real chain, for the coordinator's tests.

A seeded driver that stakes and registers nodes, submits jobs, checkpoints receipts, commits (linked,
lying, or only part of the route), challenges and samples committed jobs, finalizes, cancels, audits
disputed jobs through the AuditCourt (votes committed and revealed, or never committed and penalized),
unbonds, withdraws and changes prices, with time travel in between. It only sends transactions: what the
index must show is read back from the contracts' views, never predicted here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from eth_utils import keccak
from web3 import Web3

from splitmesh.chain import (
    AuditStatus,
    DeployParams,
    JobStatus,
    Marketplace,
    NodeStatus,
    Sender,
    deploy,
)
from splitmesh.chain.deploy import ZERO_ADDRESS
from splitmesh.chain.launcher import advance_time, dev_key
from splitmesh.chain.sampling import DRAW_HORIZON_BLOCKS, sample_if_drawn
from splitmesh.chain.terms import JobTerms
from splitmesh.errors import ContractRevert
from splitmesh.jobmeta import JobMeta, epsilon_from_json
from splitmesh.signing import EnvelopeSigner
from tests.conftest import TEST_PARAMS

GWEI = 10**9
ETHER = 10**18
PLAN = [0, 2, 4, 6]  # the client runs shard 0; jobs from shard 1 have two hops
# The test suite's windows and slashes, with the AuditCourt as the auditor.
PARAMS = replace(
    TEST_PARAMS,
    auditor=ZERO_ADDRESS,
    audit_rate_bps=2500,
    verifiers_per_position=1,
    audit_commit_window=600,
    audit_reveal_window=600,
)
NODE_ACCOUNTS = range(1, 7)  # dev accounts 1..3 serve shard 1, 4..6 shard 2
CLIENT_ACCOUNTS = (7, 8)
KEEPER_ACCOUNT = 9


def deploy_court_market(w3: Web3, params: DeployParams = PARAMS) -> tuple[Marketplace, int]:
    """A deployment with the AuditCourt and a 3-shard model; returns it and the model id."""
    deployment = deploy(w3, Sender(w3, dev_key(0)), params)
    market = Marketplace(w3, deployment)
    model_id, _ = market.register_model(
        Sender(w3, dev_key(0)), "tiny", keccak(text="tiny weights"), PLAN[-1], PLAN
    )
    return market, model_id


@dataclass
class Activity:
    market: Marketplace
    model_id: int
    seed: int = 0
    rng: random.Random = field(init=False)
    jobs: list[tuple[int, JobTerms, bytes]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        w3 = self.market.w3
        self.w3 = w3
        self.senders = {i: Sender(w3, dev_key(i), self.market.chain_id) for i in range(20)}
        self.by_address = {s.address: s for s in self.senders.values()}
        self.signers = {
            i: EnvelopeSigner(dev_key(i), self.market.chain_id, self.market.deployment.market)
            for i in CLIENT_ACCOUNTS
        }
        self.salts: dict[tuple[int, int, str], tuple[int, bytes]] = {}

    # ------------------------------------------------------------------ setup

    def register_nodes(self) -> None:
        for i in NODE_ACCOUNTS:
            shard = 1 if i <= 3 else 2
            price = self.rng.choice((2, 3, 5)) * GWEI
            self.market.register_node(
                self.senders[i], self.model_id, shard, f"http://127.0.0.1:{9000 + i}", price, stake=2 * ETHER
            )

    # ------------------------------------------------------------------ actions

    def revive(self) -> None:
        """Every node active, pooled and staked again (random chores deactivate, unbond, get slashed)."""
        for i in NODE_ACCOUNTS:
            sender = self.senders[i]
            info = self.market.get_node(sender.address)
            if info.stake < 2 * ETHER:
                self.market.stake(sender, 2 * ETHER - info.stake)
            if info.status != NodeStatus.ACTIVE:
                self.market.register_node(
                    sender, self.model_id, 1 if i <= 3 else 2, info.endpoint, info.price_per_token or GWEI
                )

    def submit(self) -> None:
        client = self.rng.choice(CLIENT_ACCOUNTS)
        tokens = self.rng.randint(4, 40)
        epsilon = epsilon_from_json(self.rng.choice([1.0, 8.0, "inf"]))
        clip = None if math.isinf(epsilon) else 50.0  # what the SDK declares: no clip without noise
        meta = JobMeta(epsilon=epsilon, delta=1e-5, clip=clip, split=2).to_json().decode()
        escrow = self.market.escrow_for(tokens, 10 * GWEI, 2)
        args = (self.model_id, 1, tokens, 10 * GWEI, escrow, meta.encode(), [])
        try:
            job = self.market.submit_job(self.senders[client], *args)
        except ContractRevert as exc:
            if exc.name != "NoEligibleNode":
                raise
            self.revive()
            self.log.append("revive")
            job = self.market.submit_job(self.senders[client], *args)
        self.jobs.append((job.job_id, job.terms, job.packed_terms))
        self.log.append(f"submit {job.job_id}")

    def _jobs_in(self, status: JobStatus) -> list[tuple[int, JobTerms, bytes]]:
        return [j for j in self.jobs if self.market.get_job(j[0]).status == status]

    def _open_jobs(self) -> list[tuple[int, JobTerms, bytes]]:
        return self._jobs_in(JobStatus.OPEN)

    def _client_of(self, terms: JobTerms) -> int:
        return next(i for i in CLIENT_ACCOUNTS if self.senders[i].address == terms.client)

    def resync(self) -> None:
        """Forget cached nonces (after an evm_revert)."""
        for sender in self.senders.values():
            sender.resync()

    def commit(self, *, lie: bool = False, partial: bool = False) -> None:
        jobs = self._open_jobs()
        if jobs:
            self.commit_job(self.rng.choice(jobs), lie=lie, partial=partial)

    def commit_job(
        self, job: tuple[int, JobTerms, bytes], *, lie: bool = False, partial: bool = False
    ) -> None:
        """The route's nodes commit in order (only the first one if partial). A lie breaks the link
        between two hops, which disputes the job at its last commit."""
        job_id, terms, packed = job
        state = self.market.get_job(job_id)
        client = self._client_of(terms)
        tokens = self.rng.randint(1, terms.max_tokens)
        receipt = self.signers[client].sign(job_id, tokens, tokens, keccak(b"frame")).as_receipt()
        liar = self.rng.randrange(len(terms.route) - 1) if lie and len(terms.route) > 1 else None
        for position, hop in enumerate(terms.route):
            if state.committed_mask >> position & 1:
                continue
            given = keccak(text=f"link {job_id} {position}")
            sent = keccak(text=f"link {job_id} {position + 1}")
            if position == liar:
                sent = keccak(text="a lie")
            self.market.commit(self.by_address[hop.node], job_id, packed, position, given, sent, receipt)
            if partial:
                break
        self.log.append(f"commit {job_id} lie={lie} partial={partial}")

    def checkpoint(self) -> None:
        """Anyone records a newer client receipt of an Open job on-chain (the billed count only rises)."""
        jobs = self._open_jobs()
        if not jobs:
            return
        job_id, terms, packed = self.rng.choice(jobs)
        billed = self.market.get_job(job_id).billed_tokens
        if billed >= terms.max_tokens:
            return
        tokens = self.rng.randint(billed + 1, terms.max_tokens)
        receipt = self.signers[self._client_of(terms)].sign(job_id, tokens, tokens, keccak(b"frame"))
        self.market.checkpoint_receipt(self.senders[KEEPER_ACCOUNT], job_id, packed, receipt.as_receipt())
        self.log.append(f"checkpoint {job_id} {tokens}")

    def challenge(self) -> None:
        """A client, a node or a watcher posts the challenge bond against a committed job in its window."""
        now = int(self.w3.eth.get_block("latest")["timestamp"])
        jobs = [
            j
            for j in self._jobs_in(JobStatus.COMMITTED)
            if now + 1 < self.market.get_job(j[0]).timestamp + PARAMS.challenge_window
        ]
        if not jobs:
            return
        job_id, _terms, packed = self.rng.choice(jobs)
        who = self.rng.choice((*CLIENT_ACCOUNTS, KEEPER_ACCOUNT, *NODE_ACCOUNTS))
        self.market.challenge(self.senders[who], job_id, packed)
        self.log.append(f"challenge {job_id} by {who}")

    def sample(self) -> None:
        """Someone calls sampleAudit on every committed job whose draw selected it."""
        anyone = self.senders[KEEPER_ACCOUNT]
        for job_id, _terms, packed in self._jobs_in(JobStatus.COMMITTED):
            if sample_if_drawn(self.market, anyone, job_id, packed):
                self.log.append(f"sampled {job_id}")

    def challenged_audit(self, vote: int) -> int:
        """A committed job challenged and audited, every verifier voting `vote` (0: none votes, so the
        challenge is lost and the verifiers penalized). Returns the job id.

        The random chores may have left a shard with no other active, staked node, and a panel drawn from
        an empty pool is unverifiable: no votes, no penalty, no verdict. Every node is revived first so
        each position's panel has a verifier (checked in _audit_step)."""
        self.revive()
        self.submit()
        job = self.jobs[-1]
        self.commit_job(job)
        if self.market.get_job(job[0]).status == JobStatus.COMMITTED:  # not drawn by sampling meanwhile
            self.market.challenge(self.senders[self.rng.choice(CLIENT_ACCOUNTS)], job[0], job[2])
        self._audit_step(job[0], job[2], vote)
        return job[0]

    def anchored_audit(self) -> int:
        """A job disputed more than 256 blocks before its audit opens: the first openAudit only anchors a
        later block (AuditAnchored), the next one draws the panels. Returns the job id."""
        self.revive()
        self.submit()
        job = self.jobs[-1]
        self.commit_job(job, lie=True)
        assert self.market.get_job(job[0]).status == JobStatus.DISPUTED
        self.w3.provider.make_request("hardhat_mine", [hex(DRAW_HORIZON_BLOCKS + 1)])  # type: ignore[arg-type]
        self._audit_step(job[0], job[2])
        return job[0]

    def travel(self) -> None:
        seconds = self.rng.choice((PARAMS.challenge_window + 1, PARAMS.commit_timeout + 1, 30))
        advance_time(self.w3, seconds)
        self.log.append(f"travel {seconds}")

    def settle(self) -> None:
        """Whatever is due: finalize, cancel, open/vote/resolve audits (as anyone would)."""
        anyone = self.senders[KEEPER_ACCOUNT]
        for job_id, _terms, packed in self.jobs:
            status = self.market.get_job(job_id).status
            try:
                if status == JobStatus.COMMITTED:
                    if sample_if_drawn(self.market, anyone, job_id, packed):
                        self.log.append(f"sampled {job_id}")
                        continue
                    self.market.finalize(anyone, job_id, packed)
                elif status == JobStatus.OPEN:
                    self.market.cancel(anyone, job_id, packed)
                elif status == JobStatus.DISPUTED:
                    self._audit_step(job_id, packed)
                else:
                    continue
                self.log.append(f"settle {job_id} from {status.name}")
            except ContractRevert:
                pass  # not due yet

    def _audit_step(self, job_id: int, packed: bytes, vote: int | None = None) -> None:
        """Open the audit and vote (every verifier votes `vote`; 0: none commits; None: at random, some
        never commit or never reveal), or resolve it."""
        audit = self.market.get_audit(job_id)
        anyone = self.senders[KEEPER_ACCOUNT]
        if audit.status == AuditStatus.NONE:
            if not self.market.audit_opened(self.market.open_audit(anyone, job_id, packed)):
                # The dispute block's hash was gone: that call anchored this block; the next one opens.
                self.market.open_audit(anyone, job_id, packed)
            audit = self.market.get_audit(job_id)
            if vote is not None:
                empty = [panel.position for panel in audit.panels if not panel.verifiers]
                assert not empty, f"job {job_id}: no verifier could be drawn for positions {empty}"
            for panel in audit.panels:
                for verifier in panel.verifiers:
                    if vote == 0 or (vote is None and self.rng.random() < 0.1):  # penalized at resolve
                        continue
                    verdict = vote or self.rng.choice((1, 2))
                    salt = keccak(text=f"salt {job_id} {panel.position} {verifier}")
                    commitment = Marketplace.vote_commitment(job_id, panel.position, verdict, salt, verifier)
                    self.market.commit_vote(self.by_address[verifier], job_id, panel.position, commitment)
                    self.salts[(job_id, panel.position, verifier)] = (verdict, salt)
            advance_time(self.w3, PARAMS.audit_commit_window + 1)
            for (j, position, verifier), (verdict, salt) in list(self.salts.items()):
                if j == job_id and (vote or self.rng.random() < 0.9):  # some never reveal and forfeit
                    self.market.reveal_vote(self.by_address[verifier], job_id, position, verdict, salt)
        elif audit.status == AuditStatus.OPEN:
            self.market.resolve_audit(anyone, job_id, packed)

    def cash_out(self) -> None:
        """The node with the most earnings withdraws them."""
        infos = [self.market.get_node(self.senders[i].address) for i in NODE_ACCOUNTS]
        richest = max(infos, key=lambda info: info.earnings)
        if richest.earnings:
            self.market.withdraw_earnings(self.by_address[richest.address])
            self.log.append(f"cash out {richest.address}")

    def node_chores(self) -> None:
        i = self.rng.choice(list(NODE_ACCOUNTS))
        sender = self.senders[i]
        info = self.market.get_node(sender.address)
        choice = self.rng.random()
        try:
            if choice < 0.3 and info.earnings:
                self.market.withdraw_earnings(sender)
            elif choice < 0.5:
                self.market.update_node(sender, info.endpoint, self.rng.choice((2, 3, 5)) * GWEI)
            elif choice < 0.65:
                self.market.unbond(sender, ETHER // 8)
            elif choice < 0.75 and info.unbonding:
                self.market.withdraw_unbonded(sender)
            elif choice < 0.85:
                self.market.stake(sender, ETHER // 4)
            elif info.status == NodeStatus.ACTIVE and self.rng.random() < 0.3:
                self.market.deactivate(sender)
            self.log.append(f"node chore {i} {choice:.2f}")
        except ContractRevert:
            pass

    def step(self) -> None:
        action = self.rng.choices(
            [
                "submit",
                "commit",
                "lie",
                "partial",
                "travel",
                "settle",
                "node",
                "checkpoint",
                "challenge",
                "sample",
            ],
            weights=[4, 4, 1, 1, 2, 2, 2, 1, 2, 1],
        )[0]
        try:
            if action == "submit":
                self.submit()
            elif action in ("commit", "lie", "partial"):
                self.commit(lie=action == "lie", partial=action == "partial")
            elif action == "travel":
                self.travel()
            elif action == "settle":
                self.settle()
            elif action == "checkpoint":
                self.checkpoint()
            elif action == "challenge":
                self.challenge()
            elif action == "sample":
                self.sample()
            else:
                self.node_chores()
        except ContractRevert as exc:
            # Random actions may come too late (CommitDeadlinePassed, ChallengeWindowClosed) or find no node
            # (NoEligibleNode).
            self.log.append(f"{action} reverted {exc.name}")

"""Typed access to the deployed NodeRegistry, JobMarket and AuditCourt: every call, view and event."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.logs import DISCARD

from splitmesh.chain.artifacts import load_artifact
from splitmesh.chain.deploy import Deployment
from splitmesh.chain.records import (
    AuditInfo,
    AuditStatus,
    ChallengeInfo,
    JobState,
    JobStatus,
    ModelInfo,
    NodeInfo,
    NodeStatus,
    PanelInfo,
    SubmittedJob,
    VoteStatus,
)
from splitmesh.chain.terms import JobTerms, RouteHop
from splitmesh.chain.tx import Sender, TxResult, call_view
from splitmesh.errors import ChainError

logger = logging.getLogger(__name__)


def hints_from_pools(
    pools: Sequence[Sequence[RouteHop]], max_price_per_token: int, avoid: Sequence[str] = ()
) -> list[int]:
    """Per pool (one per route shard): 1 + the index of its cheapest node within the price and not in
    `avoid`, or 0. With these, overpriced pool entries cannot hide an eligible node from matching. [] when
    all are 0."""
    hints = []
    avoided = {a.lower() for a in avoid}
    for pool in pools:
        eligible = [
            (h.price_per_token, i)
            for i, h in enumerate(pool)
            if h.price_per_token <= max_price_per_token and h.node.lower() not in avoided
        ]
        hints.append(1 + min(eligible)[1] if eligible else 0)
    return hints if any(hints) else []


class Marketplace:
    """One deployment on one chain. Writes take the Sender that signs them."""

    def __init__(self, w3: Web3, deployment: Deployment):
        self.w3 = w3
        self.deployment = deployment
        self.registry = w3.eth.contract(
            address=to_checksum_address(deployment.registry), abi=load_artifact("NodeRegistry").abi
        )
        self.job_market = w3.eth.contract(
            address=to_checksum_address(deployment.market), abi=load_artifact("JobMarket").abi
        )
        # The AuditCourt, when the deployment has one (its auditor may also be a plain account).
        self.court = (
            w3.eth.contract(
                address=to_checksum_address(deployment.court), abi=load_artifact("AuditCourt").abi
            )
            if deployment.has_court
            else None
        )
        self._hop_fee: int | None = None
        self._challenge_bond: int | None = None
        self._audit_rate_bps: int | None = None

    @property
    def chain_id(self) -> int:
        return self.deployment.chain_id

    def sender(self, private_key: str) -> Sender:
        return Sender(self.w3, private_key, self.chain_id)

    # ------------------------------------------------------------ registry writes

    def register_model(
        self, sender: Sender, name: str, weights_hash: bytes, num_layers: int, boundaries: list[int]
    ) -> tuple[int, TxResult]:
        tx = sender.transact(
            self.registry.functions.registerModel(name, weights_hash, num_layers, list(boundaries)),
            label="registerModel",
        )
        events = self.registry.events.ModelRegistered().process_receipt(tx.receipt, errors=DISCARD)
        return int(events[0]["args"]["modelId"]), tx

    def find_model(self, weights_hash: bytes, boundaries: list[int]) -> int | None:
        """Id of a model already registered with these weights and this plan, if any."""
        for info in self.models(weights_hash):
            if list(info.boundaries) == list(boundaries):
                return info.model_id
        return None

    def models(self, weights_hash: bytes | None = None) -> list[ModelInfo]:
        """Registered models (ids start at 1), optionally only those with these weights; oldest first."""
        infos = [self.get_model(i) for i in range(1, self.model_count() + 1)]
        return [i for i in infos if weights_hash is None or i.weights_hash == weights_hash]

    def stake(self, sender: Sender, amount: int) -> TxResult:
        return sender.transact(self.registry.functions.stake(), value=amount, label="stake")

    def register_node(
        self,
        sender: Sender,
        model_id: int,
        shard: int,
        endpoint: str,
        price_per_token: int,
        encryption_key: bytes = b"\0" * 32,
        stake: int = 0,
    ) -> TxResult:
        fn = self.registry.functions.registerNode(model_id, shard, endpoint, price_per_token, encryption_key)
        return sender.transact(fn, value=stake, label="registerNode")

    def update_node(self, sender: Sender, endpoint: str, price_per_token: int) -> TxResult:
        return sender.transact(
            self.registry.functions.updateNode(endpoint, price_per_token), label="updateNode"
        )

    def set_encryption_key(self, sender: Sender, encryption_key: bytes) -> TxResult:
        """Announce a new encryption key (the SHA-256 of the node's TLS certificate); emits
        EncryptionKeyChanged."""
        return sender.transact(
            self.registry.functions.setEncryptionKey(encryption_key), label="setEncryptionKey"
        )

    def deactivate(self, sender: Sender) -> TxResult:
        return sender.transact(self.registry.functions.deactivate(), label="deactivate")

    def unbond(self, sender: Sender, amount: int) -> TxResult:
        return sender.transact(self.registry.functions.unbond(amount), label="unbond")

    def withdraw_unbonded(self, sender: Sender) -> TxResult:
        return sender.transact(self.registry.functions.withdrawUnbonded(), label="withdrawUnbonded")

    # ------------------------------------------------------------ market writes

    def submit_job(
        self,
        sender: Sender,
        model_id: int,
        first_shard: int,
        max_tokens: int,
        max_price_per_token: int,
        escrow: int,
        metadata: bytes = b"",
        hints: Sequence[int] | None = None,
        avoid: Sequence[str] = (),
    ) -> SubmittedJob:
        """Submit a job with escrow (see `escrow_for`). `hints` (1 + a pool index per shard, 0 = none) only
        matter when the contract's seeded probes find nobody within the price; None computes them from the
        pools (`route_hints`), an empty sequence submits without hints. `avoid`: nodes the matcher must not
        pick (at most the registry's MAX_AVOID; a failing-over client's banned nodes)."""
        if hints is None:
            hints = self.route_hints(model_id, first_shard, max_price_per_token)
        if avoid:
            fn = self.job_market.functions.submitJobAvoiding(
                model_id,
                first_shard,
                max_tokens,
                max_price_per_token,
                metadata,
                list(hints),
                [to_checksum_address(a) for a in avoid],
            )
        elif hints:
            fn = self.job_market.functions.submitJobWithHints(
                model_id, first_shard, max_tokens, max_price_per_token, metadata, list(hints)
            )
        else:
            fn = self.job_market.functions.submitJob(
                model_id, first_shard, max_tokens, max_price_per_token, metadata
            )
        tx = sender.transact(fn, value=escrow, label="submitJob")
        events = self.job_market.events.JobSubmitted().process_receipt(tx.receipt, errors=DISCARD)
        args = events[0]["args"]
        packed = bytes(args["terms"])
        return SubmittedJob(int(args["jobId"]), JobTerms.decode(packed), packed, bytes(args["metadata"]), tx)

    def route_hints(self, model_id: int, first_shard: int, max_price_per_token: int) -> list[int]:
        """Matching hints for a job from `first_shard` on, read from the pools (see `hints_from_pools`)."""
        shards = range(first_shard, self.get_model(model_id).num_shards)
        return hints_from_pools([self.pool(model_id, s) for s in shards], max_price_per_token)

    def escrow_for(self, max_tokens: int, max_price_per_token: int, hops: int) -> int:
        """Escrow that covers any route of `hops` nodes within the price: max tokens x max price and the
        hop fee, per hop. The contract refunds what the matched route does not use."""
        return hops * (max_tokens * max_price_per_token + self.hop_fee())

    def required_escrow(self, terms: JobTerms) -> int:
        """The least escrow the contract accepts for this route: max tokens x sum(prices) + hops x hop fee."""
        prices = sum(h.price_per_token for h in terms.route)
        return terms.max_tokens * prices + len(terms.route) * self.hop_fee()

    def commit(
        self,
        sender: Sender,
        job_id: int,
        packed_terms: bytes,
        position: int,
        input_commitment: bytes,
        output_commitment: bytes,
        receipt: tuple[int, int, bytes, bytes],
    ) -> TxResult:
        fn = self.job_market.functions.commit(
            job_id, packed_terms, position, input_commitment, output_commitment, receipt
        )
        return sender.transact(fn, label=f"commit job {job_id} position {position}")

    def finalize(self, sender: Sender, job_id: int, packed_terms: bytes) -> TxResult:
        return sender.transact(
            self.job_market.functions.finalize(job_id, packed_terms), label=f"finalize {job_id}"
        )

    def cancel(self, sender: Sender, job_id: int, packed_terms: bytes) -> TxResult:
        fn = self.job_market.functions.cancel(job_id, packed_terms)
        return sender.transact(fn, label=f"cancel {job_id}")

    def release_job(self, sender: Sender, job_id: int, packed_terms: bytes) -> TxResult:
        """Client only, on an Open job with no receipt on-chain: declare that no step was signed, so a
        cancel after the commit deadline slashes nobody (JobMarket.releaseJob)."""
        fn = self.job_market.functions.releaseJob(job_id, packed_terms)
        return sender.transact(fn, label=f"releaseJob {job_id}")

    def is_released(self, job_id: int) -> bool:
        return bool(call_view(self.job_market.functions.isReleased(job_id), "JobMarket"))

    def hold_for_audit(self, sender: Sender, job_id: int, packed_terms: bytes) -> TxResult:
        fn = self.job_market.functions.holdForAudit(job_id, packed_terms)
        return sender.transact(fn, label="holdForAudit")

    def resolve_dispute(self, sender: Sender, job_id: int, packed_terms: bytes, fraud_mask: int) -> TxResult:
        """Auditor only: settle a Disputed job (slash and a challenge's verifier share go to the sender)."""
        fn = self.job_market.functions.resolveDispute(job_id, packed_terms, fraud_mask)
        return sender.transact(fn, label="resolveDispute")

    def challenge(
        self, sender: Sender, job_id: int, packed_terms: bytes, bond: int | None = None
    ) -> TxResult:
        """Dispute a Committed job inside its challenge window, posting the challenge bond (read from the
        chain unless given). Lost on an honest verdict; returned, with the slash, on fraud."""
        value = self.challenge_bond() if bond is None else bond
        fn = self.job_market.functions.challenge(job_id, packed_terms)
        return sender.transact(fn, value=value, label=f"challenge {job_id}")

    def sample_audit(self, sender: Sender, job_id: int, packed_terms: bytes) -> TxResult:
        """Dispute a Committed job the audit draw selected (anyone; check `audit_draw` first)."""
        fn = self.job_market.functions.sampleAudit(job_id, packed_terms)
        return sender.transact(fn, label=f"sampleAudit {job_id}")

    def checkpoint_receipt(
        self, sender: Sender, job_id: int, packed_terms: bytes, receipt: tuple[int, int, bytes, bytes]
    ) -> TxResult:
        """Record a client receipt (step, tokens, payload hash, signature) on an Open job before its commit
        deadline, so the billed count survives a client signature that stops validating."""
        fn = self.job_market.functions.checkpointReceipt(job_id, packed_terms, receipt)
        return sender.transact(fn, label=f"checkpointReceipt {job_id}")

    def withdraw_earnings(self, sender: Sender) -> TxResult:
        return sender.transact(self.job_market.functions.withdrawEarnings(), label="withdrawEarnings")

    def withdraw_credit(self, sender: Sender) -> TxResult:
        return sender.transact(self.job_market.functions.withdrawCredit(), label="withdrawCredit")

    # ------------------------------------------------------------ audit court writes

    def _court(self) -> Any:
        if self.court is None:
            raise ChainError(
                f"the deployment of JobMarket {self.deployment.market} has no AuditCourt (its auditor is "
                f"{self.deployment.params.auditor}); redeploy without an auditor address to get one"
            )
        return self.court

    def open_audit(self, sender: Sender, job_id: int, packed_terms: bytes) -> TxResult:
        """Open the audit of a Disputed job (anyone may, from the block after the dispute: earlier reverts
        AuditTooEarly); verifiers are drawn for every route position from the dispute block's hash. When
        that hash is over 256 blocks old the call only records an anchor (AuditAnchored) and opens
        nothing: call again from the next block (`audit_opened` tells)."""
        return sender.transact(
            self._court().functions.openAudit(job_id, packed_terms), label=f"openAudit {job_id}"
        )

    def audit_opened(self, tx: TxResult) -> bool:
        """Whether an openAudit transaction drew panels (False: it only recorded an anchor)."""
        return bool(self._court().events.AuditOpened().process_receipt(tx.receipt, errors=DISCARD))

    def commit_vote(
        self, sender: Sender, job_id: int, position: int, commitment: bytes, bond: int | None = None
    ) -> TxResult:
        """Commit a vote with the verifier bond (read from the court unless given)."""
        value = self.audit_parameters()["verifier_bond"] if bond is None else bond
        fn = self._court().functions.commitVote(job_id, position, commitment)
        return sender.transact(fn, value=value, label=f"commitVote {job_id}/{position}")

    def reveal_vote(self, sender: Sender, job_id: int, position: int, verdict: int, salt: bytes) -> TxResult:
        fn = self._court().functions.revealVote(job_id, position, int(verdict), salt)
        return sender.transact(fn, label=f"revealVote {job_id}/{position}")

    def resolve_audit(self, sender: Sender, job_id: int, packed_terms: bytes) -> TxResult:
        """Count the votes and settle the job in the JobMarket (anyone may, after the reveal deadline)."""
        return sender.transact(
            self._court().functions.resolve(job_id, packed_terms), label=f"resolve {job_id}"
        )

    def withdraw_court_credit(self, sender: Sender) -> TxResult:
        """Withdraw rewards (and payments that could not be pushed) credited by the AuditCourt."""
        return sender.transact(self._court().functions.withdrawCredit(), label="court withdrawCredit")

    @staticmethod
    def vote_commitment(job_id: int, position: int, verdict: int, salt: bytes, verifier: str) -> bytes:
        """keccak256(abi.encode(jobId, position, verdict, salt, verifier)): what commit_vote posts."""
        return keccak(
            abi_encode(
                ["uint256", "uint8", "uint8", "bytes32", "address"],
                [job_id, position, int(verdict), salt, to_checksum_address(verifier)],
            )
        )

    # ------------------------------------------------------------ views

    def model_count(self) -> int:
        return int(call_view(self.registry.functions.modelCount(), "NodeRegistry"))

    def get_model(self, model_id: int) -> ModelInfo:
        info = call_view(self.registry.functions.getModel(model_id), "NodeRegistry")
        name, weights_hash, registrant, num_layers, boundaries = info
        return ModelInfo(model_id, name, bytes(weights_hash), registrant, num_layers, tuple(boundaries))

    def get_node(self, address: str) -> NodeInfo:
        address = to_checksum_address(address)
        r = call_view(self.registry.functions.getNode(address), "NodeRegistry")
        return NodeInfo(
            address=address,
            status=NodeStatus(r[0]),
            model_id=r[1],
            shard=r[2],
            price_per_token=r[3],
            stake=r[4],
            unbonding=r[5],
            unlock_at=r[6],
            earnings=r[7],
            pooled=r[8],
            encryption_key=bytes(r[9]),
            endpoint=r[10],
        )

    def pool(self, model_id: int, shard: int) -> list[RouteHop]:
        size = int(call_view(self.registry.functions.poolSize(model_id, shard), "NodeRegistry"))
        hops = []
        for i in range(size):
            node, price = call_view(self.registry.functions.poolAt(model_id, shard, i), "NodeRegistry")
            hops.append(RouteHop(to_checksum_address(node), int(price)))
        return hops

    def min_stake(self) -> int:
        return int(call_view(self.registry.functions.minStake(), "NodeRegistry"))

    def job_count(self) -> int:
        return int(call_view(self.job_market.functions.jobCount(), "JobMarket"))

    def get_job(self, job_id: int) -> JobState:
        terms_hash, status, mask, billed, timestamp = call_view(
            self.job_market.functions.getJob(job_id), "JobMarket"
        )
        return JobState(job_id, bytes(terms_hash), JobStatus(status), mask, billed, timestamp)

    def parameters(self) -> dict[str, int]:
        ct, cw, dt, ms, fs = call_view(self.job_market.functions.parameters(), "JobMarket")
        return {
            "commit_timeout": ct,
            "challenge_window": cw,
            "dispute_timeout": dt,
            "miss_slash_bps": ms,
            "fraud_slash_bps": fs,
            "audit_rate_bps": self.audit_rate_bps(),
            "hop_fee": self.hop_fee(),
            "challenge_bond": self.challenge_bond(),
        }

    def unbonding_delay(self) -> int:
        """Seconds an unbonding stays locked (NodeRegistry)."""
        return int(call_view(self.registry.functions.unbondingDelay(), "NodeRegistry"))

    def links_of(self, job_id: int) -> bytes:
        """An Open job's commitment-link accumulator; once complete, the block number of its completion
        (sampling on) or dispute; zero otherwise."""
        return bytes(call_view(self.job_market.functions.linksOf(job_id), "JobMarket"))

    def commitments_of(self, job_id: int) -> dict[int, tuple[bytes, bytes]]:
        """The job's on-chain commitments so far: route position -> (input chain, output chain)."""
        return {
            int(e["args"]["position"]): (
                bytes(e["args"]["inputCommitment"]),
                bytes(e["args"]["outputCommitment"]),
            )
            for e in self.events("JobCommitted", jobId=job_id)
        }

    def hop_fee(self) -> int:
        """Wei each committed hop earns per job on top of price x tokens (immutable: read once)."""
        if self._hop_fee is None:
            self._hop_fee = int(call_view(self.job_market.functions.hopFee(), "JobMarket"))
        return self._hop_fee

    def challenge_bond(self) -> int:
        """Wei a challenge posts (0: challenges disabled; immutable: read once)."""
        if self._challenge_bond is None:
            self._challenge_bond = int(call_view(self.job_market.functions.challengeBond(), "JobMarket"))
        return self._challenge_bond

    def audit_rate_bps(self) -> int:
        """Share of completed jobs drawn for a sampled audit, 1/10000 (immutable: read once)."""
        if self._audit_rate_bps is None:
            self._audit_rate_bps = int(call_view(self.job_market.functions.auditRateBps(), "JobMarket"))
        return self._audit_rate_bps

    def audit_draw(self, job_id: int) -> tuple[bool, bool]:
        """(available, sampled): whether the sampled-audit draw of a Committed job can be read now (not in
        its completing block, nor more than 256 blocks later) and whether it selected the job."""
        # Against "pending": the block a sampleAudit sent now lands in, whose blockhash reaches the latest.
        fn = self.job_market.functions.auditDraw(job_id)
        available, sampled = call_view(fn, "JobMarket", block_identifier="pending")
        return bool(available), bool(sampled)

    def dispute_block_of(self, job_id: int) -> int:
        """The block a Disputed job entered dispute in (its hash seeds the audit panels); 0 otherwise."""
        return int(call_view(self.job_market.functions.disputeBlockOf(job_id), "JobMarket"))

    def challenge_of(self, job_id: int) -> ChallengeInfo:
        challenger, bond = call_view(self.job_market.functions.challengeOf(job_id), "JobMarket")
        return ChallengeInfo(to_checksum_address(challenger), int(bond))

    def audit_parameters(self) -> dict[str, int]:
        k, bond, commit_window, reveal_window, reward_bps = call_view(
            self._court().functions.parameters(), "AuditCourt"
        )
        return {
            "verifiers_per_position": k,
            "verifier_bond": bond,
            "commit_window": commit_window,
            "reveal_window": reveal_window,
            "reward_bps": reward_bps,
        }

    def get_panel(self, job_id: int, position: int) -> PanelInfo:
        verifiers, votes, commitments, committed, honest, fraud = call_view(
            self._court().functions.getPanel(job_id, position), "AuditCourt"
        )
        return PanelInfo(
            position=position,
            verifiers=tuple(to_checksum_address(v) for v in verifiers),
            votes=tuple(VoteStatus(v) for v in votes),
            commitments=tuple(bytes(c) for c in commitments),
            committed=committed,
            honest_votes=honest,
            fraud_votes=fraud,
        )

    def get_audit(self, job_id: int) -> AuditInfo:
        """An audit and the panel of every position (no panels for an audit never opened)."""
        status, hops, unverifiable, fraud_mask, opened_at, commit_deadline, reveal_deadline = call_view(
            self._court().functions.getAudit(job_id), "AuditCourt"
        )
        return AuditInfo(
            job_id=job_id,
            status=AuditStatus(status),
            hops=hops,
            unverifiable_mask=unverifiable,
            fraud_mask=fraud_mask,
            opened_at=opened_at,
            commit_deadline=commit_deadline,
            reveal_deadline=reveal_deadline,
            panels=tuple(self.get_panel(job_id, p) for p in range(hops)),
        )

    def court_credit_of(self, address: str) -> int:
        fn = self._court().functions.creditOf(to_checksum_address(address))
        return int(call_view(fn, "AuditCourt"))

    def court_total_credits(self) -> int:
        return int(call_view(self._court().functions.totalCredits(), "AuditCourt"))

    def court_bonds_held(self) -> int:
        return int(call_view(self._court().functions.bondsHeld(), "AuditCourt"))

    def credit_of(self, address: str) -> int:
        return int(call_view(self.job_market.functions.creditOf(to_checksum_address(address)), "JobMarket"))

    def total_credits(self) -> int:
        return int(call_view(self.job_market.functions.totalCredits(), "JobMarket"))

    def envelope_digest(self, job_id: int, step: int, tokens: int, payload_hash: bytes) -> bytes:
        fn = self.job_market.functions.envelopeDigest(job_id, step, tokens, payload_hash)
        return bytes(call_view(fn, "JobMarket"))

    def hash_terms(self, job_id: int, packed_terms: bytes) -> bytes:
        return bytes(call_view(self.job_market.functions.hashTerms(job_id, packed_terms), "JobMarket"))

    def balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(to_checksum_address(address)))

    # ------------------------------------------------------------ events

    def job_submitted(self, job_id: int) -> SubmittedJob:
        """The job's terms, read back from its JobSubmitted event."""
        logs = self.job_market.events.JobSubmitted().get_logs(
            from_block=self.deployment.block, argument_filters={"jobId": job_id}
        )
        if not logs:
            raise ChainError(f"no JobSubmitted event for job {job_id} on JobMarket {self.deployment.market}")
        args = logs[0]["args"]
        packed = bytes(args["terms"])
        return SubmittedJob(job_id, JobTerms.decode(packed), packed, bytes(args["metadata"]), None)

    def _contracts(self) -> tuple[Any, ...]:
        contracts = (self.job_market, self.registry)
        return contracts if self.court is None else (*contracts, self.court)

    def events(
        self,
        name: str,
        from_block: int | None = None,
        to_block: int | str = "latest",
        *,
        court: bool = False,
        **filters: Any,
    ) -> list[Any]:
        """Decoded logs of one event, oldest first, from the first contract that declares it: JobMarket,
        NodeRegistry, AuditCourt. `court=True` reads the AuditCourt's event of a name the JobMarket shares
        (CreditWithdrawn)."""
        contracts = (self._court(),) if court else self._contracts()
        contract = next((c for c in contracts if hasattr(c.events, name)), self.registry)
        event = getattr(contract.events, name)()
        return list(
            event.get_logs(
                from_block=self.deployment.block if from_block is None else from_block,
                to_block=to_block,
                argument_filters=filters or None,
            )
        )

    def market_events(self, names: Sequence[str], from_block: int, to_block: int) -> list[Any]:
        """Decoded JobMarket logs of several events in one eth_getLogs (topic 0 any of `names`), oldest
        first; each has `event` (its name) and `args`. A duty pass reads every change of its jobs this way."""
        events = [getattr(self.job_market.events, name) for name in names]
        topics = {str(e.topic).lower(): e for e in events}
        logs = self.w3.eth.get_logs(
            {
                "address": self.job_market.address,
                "fromBlock": from_block,
                "toBlock": to_block,
                "topics": [list(topics)],
            }
        )
        return [topics["0x" + bytes(log["topics"][0]).hex()]().process_log(log) for log in logs]

    def decode_receipt_events(self, receipt: Any) -> list[tuple[str, dict[str, Any]]]:
        """Every splitmesh event in a transaction receipt as (name, args)."""
        out: list[tuple[str, dict[str, Any]]] = []
        for log in receipt["logs"]:
            for contract in self._contracts():
                if log["address"] != contract.address:
                    continue
                for item in contract.abi:
                    if item.get("type") != "event":
                        continue
                    try:
                        decoded = getattr(contract.events, str(item.get("name")))().process_log(log)
                    except Exception:
                        continue
                    out.append((decoded["event"], dict(decoded["args"])))
                    break
        return out

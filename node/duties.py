"""A node's on-chain duties: register and stake, commit ended jobs, claim payment after the window, and
drop transcripts once their jobs can no longer be audited (node.pruning).

Blocking (web3 calls): the daemon runs `run_once` in a worker thread every `duty_interval` seconds.
Everything is driven by the SQLite store, so a restart resumes exactly where the last pass stopped;
every step is idempotent against what the chain already shows. Jobs reach the store from their first
step (node.service) or from the chain's JobSubmitted events (node.scanner), so a job whose client never
connects is committed too; node.service ends every job at its deadline cutoff (node.deadlines).
After the commit, what is due for a job and from when (finalize, cancel, open or resolve its audit) is
the rule of splitmesh.chain.due, which the coordinator's keeper follows too; timed-out disputes and
sampled audits are left to keepers and the node's verifier.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from web3.exceptions import Web3Exception

from node.cheats import OVERBILL_EXTRA_TOKENS
from node.deadlines import JobDeadlines
from node.errors import NodeSetupError
from node.metrics import NodeMetrics
from node.pool import StakeKeeper
from node.pruning import TranscriptPruner
from node.scanner import JobScanner
from node.store import JobPhase, JobRecord, NodeStore
from splitmesh.chain import JobState, JobStatus, Marketplace, NodeStatus, Sender, TxResult
from splitmesh.chain.due import DueKind, Windows, due_action, send_due
from splitmesh.chain.sampling import open_audit_if_ready
from splitmesh.errors import ChainError, ContractRevert
from splitmesh.signing import EMPTY_RECEIPT, EnvelopeSigner

logger = logging.getLogger(__name__)

# Failures a duty pass logs in one line and retries on the next pass (RPC down, revert, bad reply).
RETRIED = (ChainError, OSError, ValueError, Web3Exception)

# The due actions a node sends for its jobs, the reverts that only mean someone else was first (or the
# clock moved under the call), and what the log says when the node's call went through.
_RACED = {
    DueKind.FINALIZE: ("WrongJobStatus", "ChallengeWindowOpen"),
    DueKind.CANCEL: ("WrongJobStatus", "CommitWindowOpen"),
    DueKind.RESOLVE_AUDIT: ("AuditNotOpen", "RevealPhaseOpen"),
}
_DONE = {
    DueKind.FINALIZE: "finalized",
    # Past the commit deadline and a hop never committed: cancelling pays the committed hops and slashes
    # the missing one.
    DueKind.CANCEL: "cancelled after the commit deadline; committed hops are paid",
    DueKind.RESOLVE_AUDIT: "audit resolved",
}


@dataclass(frozen=True)
class Registration:
    model_id: int
    shard: int
    endpoint: str
    price_wei: int
    stake_wei: int
    actions: tuple[str, ...]  # transactions sent, for the log; empty when nothing had to change


def ensure_registered(
    market: Marketplace,
    sender: Sender,
    model_id: int,
    shard: int,
    endpoint: str,
    price: int,
    stake: int,
    tls_key: bytes = b"\0" * 32,  # SHA-256 of the node's TLS certificate; zero = plaintext (dev only)
) -> Registration:
    """Make the chain show this node active for (model, shard) at endpoint, price and TLS key with
    >= stake."""
    info = market.get_node(sender.address)
    actions: list[str] = []
    if info.status == NodeStatus.ACTIVE and (info.model_id, info.shard) != (model_id, shard):
        market.deactivate(sender)
        actions.append(f"deactivated from model {info.model_id} shard {info.shard}")
        info = market.get_node(sender.address)
    if info.status != NodeStatus.ACTIVE:
        top_up = max(0, stake - info.stake)
        if info.stake + top_up < market.min_stake():
            raise NodeSetupError(
                f"stake {stake} wei is below the minimum {market.min_stake()} wei; raise --stake"
            )
        market.register_node(sender, model_id, shard, endpoint, price, tls_key, stake=top_up)
        actions.append(f"registered for model {model_id} shard {shard} staking {top_up} wei more")
    else:
        if info.endpoint != endpoint or info.price_per_token != price:
            market.update_node(sender, endpoint, price)
            actions.append(f"updated endpoint {endpoint} and price {price} wei")
        if info.encryption_key != tls_key:
            market.set_encryption_key(sender, tls_key)
            actions.append(f"announced TLS key 0x{tls_key.hex()} (was 0x{info.encryption_key.hex()})")
        if info.stake < stake:
            market.stake(sender, stake - info.stake)
            actions.append(f"staked {stake - info.stake} wei more")
    final = market.get_node(sender.address)
    return Registration(model_id, shard, final.endpoint, final.price_per_token, final.stake, tuple(actions))


class ChainDuties:
    """Commits and claims for one node, driven by its store; finds its jobs and watches its stake.

    RPC per pass: the latest block, one eth_getLogs over the new blocks (jobs matched to this node, and
    the events that moved a job it holds: node.scanner), the node's registry entry; plus reads and
    transactions for the jobs that need an action now (ended, woken by an event, or due by their hold).
    Every job waiting on the chain is held until its next due time (splitmesh.chain.due) or an event,
    so the pass costs the same however many jobs await settlement.
    """

    def __init__(
        self,
        market: Marketplace,
        sender: Sender,
        store: NodeStore,
        metrics: NodeMetrics,
        *,
        deadlines: JobDeadlines,
        scanner: JobScanner | None = None,
        keeper: StakeKeeper | None = None,
        overbill_key: str | None = None,  # demo/test cheat: forge receipts with this key
        prune_every: float = 0.0,  # seconds between drops of transcripts no audit can ask for; 0 = never
    ):
        self.market = market
        self.sender = sender
        self.store = store
        self.metrics = metrics
        self.deadlines = deadlines
        self.scanner = scanner
        self.keeper = keeper
        self.overbill_key = overbill_key
        self.windows = Windows.of(market)
        pruner = TranscriptPruner(market, store, metrics, self.windows, every=prune_every)
        self.pruner = pruner if prune_every > 0 else None

    def run_once(self) -> None:
        """One pass: read the chain clock, open newly matched jobs, commit every ended job, advance every
        committed one towards payment, check pool membership."""
        block = self.market.w3.eth.get_block("latest")
        self.deadlines.clock.observe(int(block["timestamp"]))
        if self.scanner is not None:
            self._stage("job scan", lambda: self.scanner.scan(int(block["number"])))  # type: ignore[union-attr]
        for record in self.store.jobs([JobPhase.ENDED]):
            self._guard(record, self.commit)
        for record in self.store.jobs([JobPhase.COMMITTED, JobPhase.FINALIZED], due_at=self._now()):
            self._guard(record, self.claim)
        if self.keeper is not None:
            self._stage("stake check", self.keeper.check)
        if self.pruner is not None:
            self._stage("transcript pruning", lambda: self.pruner.maybe_run(self._now()))  # type: ignore[union-attr]

    def _guard(self, record: JobRecord, duty: Callable[[JobRecord], None]) -> None:
        try:
            duty(record)
        except RETRIED as exc:
            # Chain hiccups and reverts are retried on the next pass; the store keeps the state.
            name = getattr(duty, "__name__", "duty")
            logger.warning("job %d: %s failed (%s); retrying on the next pass", record.job_id, name, exc)

    @staticmethod
    def _stage(name: str, action: Callable[[], object]) -> None:
        try:
            action()
        except RETRIED as exc:
            logger.warning("%s failed (%s); retrying on the next pass", name, exc)

    def _now(self) -> int:
        return int(self.deadlines.clock.now())

    def _hold(self, record: JobRecord, state: JobState) -> None:
        """Skip an Open or Committed job until its due action (splitmesh.chain.due). An Open job we
        committed may complete with another hop's commit, and its window ends at least `now + window` on."""
        now = self._now()
        at = due_action(state, now, self.windows).at
        assert at is not None
        if state.status == JobStatus.OPEN:
            at = min(at, now + self.windows.challenge_window)
        self.store.hold(record.job_id, at)

    def commit(self, record: JobRecord) -> None:
        """Post the job's input/output chains and the best receipt, unless the chain already has them."""
        state = self.market.get_job(record.job_id)
        mine = 1 << record.position
        if state.committed_mask & mine or state.status in (JobStatus.COMMITTED, JobStatus.FINALIZED):
            self.store.mark_committed(record.job_id, record.commit_tx or "")
            return
        if state.status == JobStatus.CANCELLED:
            self.store.mark_cancelled(record.job_id)
            return
        if state.status != JobStatus.OPEN:
            self.store.mark_failed(record.job_id, f"job is {state.status.name.lower()}; nothing to commit")
            return
        if self._now() > self.deadlines.deadline(state.timestamp):
            self.store.mark_failed(record.job_id, "the commit deadline passed before the node could commit")
            return
        if record.steps == 0 and state.billed_tokens == 0 and self.market.is_released(record.job_id):
            # The client signed no step (JobMarket.releaseJob): a cancel slashes nobody, so a commit would
            # only charge it a hop fee for nothing served.
            self.store.mark_cancelled(record.job_id)
            self.metrics.jobs_released_total.inc()
            logger.info("job %d: released by its client before any step here; not committed", record.job_id)
            return
        receipt = record.receipt
        if self.overbill_key is not None and receipt is not None:
            receipt = self._forged_receipt(record.job_id, receipt)
        # Only a receipt that raises the billed count is checked (and costs gas) on-chain.
        if receipt is None or receipt[1] <= state.billed_tokens:
            receipt = EMPTY_RECEIPT
        try:
            tx = self._commit(record, receipt)
        except ContractRevert as exc:
            if exc.name == "AlreadyCommitted":
                self.store.mark_committed(record.job_id, "")
                return
            if exc.name == "CommitDeadlinePassed":
                self.store.mark_failed(record.job_id, "the commit deadline passed")
                return
            if exc.name not in ("InvalidReceiptSignature", "TokensExceedMax"):
                raise
            # The contract refused the receipt (never more tokens than the client signed): commit the
            # chains anyway; the job is billed from the receipts that are valid.
            logger.warning(
                "job %d: the chain refused the receipt (%s); committing without one", record.job_id, exc
            )
            tx = self._commit(record, EMPTY_RECEIPT)
        self.store.mark_committed(record.job_id, tx.tx_hash)
        self._hold(record, state)
        self.metrics.jobs_committed_total.inc()
        logger.info("job %d: committed position %d (gas %d)", record.job_id, record.position, tx.gas_used)

    def _commit(self, record: JobRecord, receipt: tuple[int, int, bytes, bytes]) -> TxResult:
        return self.market.commit(
            self.sender,
            record.job_id,
            record.packed_terms,
            record.position,
            record.input_chain,
            record.output_chain,
            receipt,
        )

    def _forged_receipt(
        self, job_id: int, receipt: tuple[int, int, bytes, bytes]
    ) -> tuple[int, int, bytes, bytes]:
        """The overbill cheat: the node's own signature on more tokens than the client signed."""
        assert self.overbill_key is not None
        d = self.market.deployment
        signer = EnvelopeSigner(self.overbill_key, d.chain_id, d.market)
        tokens = receipt[1] + OVERBILL_EXTRA_TOKENS
        return signer.sign(job_id, receipt[0], tokens, receipt[2]).as_receipt()

    def keep_audits(self, record: JobRecord, state: JobState) -> bool:
        """For a disputed job of ours: open its audit if nobody did, resolve it once the votes are in.
        Returns whether it sent something (re-read the job); otherwise the job is held until its next due
        time: the audit's resolve, or the dispute timeout (a keeper's finalize, seen as an event)."""
        now = self._now()
        audit = self.market.get_audit(record.job_id) if self.market.court is not None else None
        due = due_action(state, now, self.windows, audit=audit)
        if due.kind is DueKind.OPEN_AUDIT and due.ready(now):
            # None means "call again next block" (the dispute block's hash is not readable yet, or this
            # call only anchored a fresh seed block): the next duty pass does.
            opened = open_audit_if_ready(self.market, self.sender, record.job_id, record.packed_terms)
            return opened is not None
        if due.kind is DueKind.RESOLVE_AUDIT and due.ready(now):
            self._send(record, due.kind)
            return True
        # Not ours to send now. Past the timeout a keeper finalizes (its JobFinalized wakes the job); the
        # hold then only bounds how long a missed event could go unnoticed.
        at = due.at if due.at is not None and due.at > now else now + self.windows.challenge_window
        self.store.hold(record.job_id, at)
        return False

    def claim(self, record: JobRecord) -> None:
        """Finalize once the window has passed (anyone may), or cancel after the commit deadline; then
        withdraw earnings. A disputed job is the court's (or, at its timeout, a keeper's) to settle: the
        node keeps its audit moving and holds the job until its next due time or an event moves it."""
        state = self.market.get_job(record.job_id)
        if state.status == JobStatus.DISPUTED:
            if not self.keep_audits(record, state):
                return
            state = self.market.get_job(record.job_id)
        if state.status in (JobStatus.OPEN, JobStatus.COMMITTED):
            now = self._now()
            due = due_action(state, now, self.windows)
            if not due.ready(now):
                self._hold(record, state)
                return
            self._send(record, due.kind)
            state = self.market.get_job(record.job_id)
        if state.status in (JobStatus.FINALIZED, JobStatus.CANCELLED):
            self._collect(record)

    def _send(self, record: JobRecord, kind: DueKind) -> None:
        try:
            send_due(self.market, self.sender, kind, record.job_id, record.packed_terms)
        except ContractRevert as exc:
            if exc.name not in _RACED[kind]:
                raise
            return
        logger.info("job %d: %s", record.job_id, _DONE[kind])

    def _collect(self, record: JobRecord) -> None:
        """A settled job of ours: withdraw the earnings it credited (if another job's withdrawal did not)."""
        if record.phase == JobPhase.COMMITTED:
            self.store.mark_finalized(record.job_id)
        earnings = self.market.get_node(self.sender.address).earnings
        if earnings == 0:
            # Another job's withdrawal already swept this one's earnings (or there were none).
            self.store.mark_paid(record.job_id, None)
            return
        tx = self.market.withdraw_earnings(self.sender)
        self.metrics.paid_wei_total.inc(earnings)
        self.store.mark_paid(record.job_id, tx.tx_hash)
        logger.info("job %d: withdrew %d wei of earnings", record.job_id, earnings)

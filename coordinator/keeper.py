"""Keeper duties: move jobs on when the protocol allows it, with the keeper's own key and gas.

What is due for a job, and from when, is the rule of splitmesh.chain.due (the route nodes' duties use
it too): cancel Open jobs past their commit deadline, sample Committed jobs whose audit draw (the hash of
their completing block) selected them, finalize Committed jobs after the challenge window, open and
resolve the audits of Disputed jobs (AuditCourt deployments), finalize Disputed jobs whose dispute timed
out. When the dispute block's hash is gone, the first openAudit only anchors a later block, so the keeper
calls again. The draw of a sampled audit is lost 256 blocks after the completion.

Candidates come from the index; each one is checked against the contracts' live state right before the
transaction, so a lagging index costs nothing but a skipped candidate. Route nodes do the same duties for
their own jobs: losing such a race is expected and logged at INFO.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from splitmesh.chain import AuditStatus, JobStatus, Marketplace, Sender, TxResult
from splitmesh.chain.due import Due, DueKind, Windows, due_action, send_due
from splitmesh.chain.sampling import DRAW_HORIZON_BLOCKS
from splitmesh.errors import ChainError, ContractRevert

logger = logging.getLogger(__name__)

# Reverts that only mean "not (or no longer) this keeper's to do", and what happens next.
_EXPECTED_REVERTS = {
    "AuditTooEarly": "the dispute block's hash is not readable yet; will retry next block",
    "DrawUnavailable": "the audit draw is not readable (same block, or over 256 blocks ago)",
    "NotSampled": "the audit draw passed the job over",
}
_UNSETTLED = {"open": JobStatus.OPEN, "committed": JobStatus.COMMITTED, "disputed": JobStatus.DISPUTED}


@dataclass(frozen=True, slots=True)
class _IndexedJob:
    """A job as the index last saw it (the due rule's JobClock)."""

    status: JobStatus
    timestamp: int


@dataclass(frozen=True, slots=True)
class _IndexedAudit:
    """An open audit as the index saw it (the due rule's AuditClock)."""

    status: AuditStatus
    opened_at: int


@dataclass
class KeeperAction:
    job_id: int
    action: str  # sample_audit | finalize | cancel | anchor_audit | open_audit | resolve_audit
    tx_hash: str | None = None
    gas_used: int = 0
    error: str | None = None  # set when the transaction reverted (someone else was faster)


@dataclass
class Keeper:
    market: Marketplace
    sender: Sender
    conn: sqlite3.Connection
    actions: list[KeeperAction] = field(default_factory=list)  # everything done so far
    # Committed jobs whose audit draw is known: not sampled, or lost (256 blocks passed). A draw never
    # changes once readable, so each job costs one auditDraw call per keeper run.
    drawn: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.windows = Windows.of(self.market)
        self.sampling = self.market.audit_rate_bps() != 0

    def tick(self) -> list[KeeperAction]:
        """One pass over the unsettled jobs of the index; returns the transactions sent."""
        latest = self.market.w3.eth.get_block("latest")
        now, head = int(latest["timestamp"]), int(latest["number"])
        done: list[KeeperAction] = []
        rows = self.conn.execute(
            "SELECT j.job_id, j.status, j.timestamp, j.terms, a.status AS audit, "
            "(SELECT MAX(h.commit_block) FROM hops h WHERE h.job_id = j.job_id) AS completed_block "
            "FROM jobs j LEFT JOIN audits a ON a.job_id = j.job_id "
            "WHERE j.status IN ('open', 'committed', 'disputed') ORDER BY j.job_id"
        ).fetchall()
        for row in rows:
            due = self._due(row, now)
            if not due.ready(now):
                continue
            if due.kind is DueKind.SAMPLE and not self._drawn_for_audit(row, head):
                continue
            done += self._act(row["job_id"], bytes.fromhex(row["terms"][2:]), due.kind, now)
        self.actions.extend(done)
        return done

    def _due(self, row: sqlite3.Row, now: int) -> Due:
        """What the index says is due for this job (checked again on-chain before acting)."""
        job = _IndexedJob(_UNSETTLED[row["status"]], int(row["timestamp"]))
        # openAudit holds the job in its own transaction: an open audit's opening time is the job's timestamp.
        audit = _IndexedAudit(AuditStatus.OPEN, job.timestamp) if row["audit"] == "open" else None
        sample = self.sampling and row["job_id"] not in self.drawn
        return due_action(job, now, self.windows, audit=audit, sample=sample)

    def _drawn_for_audit(self, row: sqlite3.Row, head: int) -> bool:
        """Whether the live audit draw selects this Committed job now; remembers a final 'no'."""
        job_id, completed_block = row["job_id"], row["completed_block"]
        available, sampled = self.market.audit_draw(job_id)
        if available and not sampled:
            self.drawn.add(job_id)
        elif not available and completed_block is not None and head > completed_block + DRAW_HORIZON_BLOCKS:
            logger.warning(
                "keeper: the audit draw of job %d was lost (completed in block %d, over %d blocks ago)",
                job_id,
                completed_block,
                DRAW_HORIZON_BLOCKS,
            )
            self.drawn.add(job_id)
        return available and sampled

    def _act(self, job_id: int, terms: bytes, kind: DueKind, now: int) -> list[KeeperAction]:
        m = self.market
        # Live check: the index may lag, and the route nodes do some of these duties themselves.
        state = m.get_job(job_id)
        audit = m.get_audit(job_id) if m.court is not None and state.status == JobStatus.DISPUTED else None
        live = due_action(state, now, self.windows, audit=audit, sample=kind is DueKind.SAMPLE)
        if live.kind is not kind or not live.ready(now):
            return []
        first = self._send(job_id, kind.value, lambda: send_due(m, self.sender, kind, job_id, terms))
        if kind is not DueKind.OPEN_AUDIT or first.tx is None or m.audit_opened(first.tx):
            return [first.action]
        # The dispute block's hash was gone: that call anchored its own block; from the next one it opens.
        first.action.action = "anchor_audit"
        again = self._send(job_id, kind.value, lambda: send_due(m, self.sender, kind, job_id, terms))
        return [first.action, again.action]

    def _send(self, job_id: int, action: str, transact: Callable[[], TxResult]) -> _Sent:
        try:
            tx = transact()
        except ContractRevert as exc:
            why = _EXPECTED_REVERTS.get(exc.name, "someone else was first")
            logger.info("keeper: %s of job %d reverted (%s); %s", action, job_id, exc.name, why)
            return _Sent(KeeperAction(job_id, action, error=exc.name))
        except ChainError as exc:
            logger.warning("keeper: %s of job %d failed: %s; will retry", action, job_id, exc)
            return _Sent(KeeperAction(job_id, action, error=str(exc)))
        logger.info("keeper: %s job %d (gas %d)", action, job_id, tx.gas_used)
        return _Sent(KeeperAction(job_id, action, tx.tx_hash, tx.gas_used), tx)


@dataclass
class _Sent:
    action: KeeperAction
    tx: TxResult | None = None

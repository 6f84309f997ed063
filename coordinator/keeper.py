"""Keeper duties: move jobs on when the protocol allows it, with the keeper's own key and gas.

- sample: call sampleAudit on a Committed job whose audit draw (the hash of its completing block) selected
  it, inside the challenge window and within 256 blocks of the completion (the draw is lost after that);
- finalize Committed jobs whose challenge window has passed (nodes are paid, the client refunded);
- cancel Open jobs past their commit deadline (missing nodes are slashed, the client refunded);
- open the audit of a Disputed job (AuditCourt deployments; when the dispute block's hash is gone the
  first call only anchors a later block, so the keeper calls again) and resolve it after the reveal
  deadline;
- finalize Disputed jobs whose dispute timed out without a verdict.

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
from splitmesh.chain.sampling import DRAW_HORIZON_BLOCKS
from splitmesh.errors import ChainError, ContractRevert

logger = logging.getLogger(__name__)

# Reverts that only mean "not (or no longer) this keeper's to do", and what happens next.
_EXPECTED_REVERTS = {
    "AuditTooEarly": "the dispute block's hash is not readable yet; will retry next block",
    "DrawUnavailable": "the audit draw is not readable (same block, or over 256 blocks ago)",
    "NotSampled": "the audit draw passed the job over",
}


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
        self.params = self.market.parameters()
        self.court_params = self.market.audit_parameters() if self.market.court is not None else None

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
            action = self._due(row, now)
            if action is None:
                continue
            if action == "sample_audit" and not self._drawn_for_audit(row, head):
                continue
            done += self._act(row["job_id"], bytes.fromhex(row["terms"][2:]), action, now)
        self.actions.extend(done)
        return done

    def _due(self, row: sqlite3.Row, now: int) -> str | None:
        """What the index says is due for this job (checked again on-chain before acting)."""
        p = self.params
        if row["status"] == "open":
            return "cancel" if now > row["timestamp"] + p["commit_timeout"] else None
        if row["status"] == "committed":
            if now >= row["timestamp"] + p["challenge_window"]:
                return "finalize"
            if p["audit_rate_bps"] and row["job_id"] not in self.drawn:
                return "sample_audit"
            return None
        timed_out = now >= row["timestamp"] + p["dispute_timeout"]
        if self.court_params is None:
            return "finalize" if timed_out else None
        if row["audit"] is None:
            if timed_out:
                return "finalize"
            # The court refuses to open an audit it could not finish before the dispute times out.
            c = self.court_params
            phases = c["commit_window"] + c["reveal_window"] + 2
            latest_open = row["timestamp"] + p["dispute_timeout"] - phases
            return "open_audit" if now <= latest_open else None
        if row["audit"] == "open":
            return "resolve_audit"
        return None

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

    def _act(self, job_id: int, terms: bytes, action: str, now: int) -> list[KeeperAction]:
        m = self.market
        state = m.get_job(job_id)
        # Live checks: the index may lag, and the route nodes do some of these duties themselves.
        if action == "cancel" and state.status != JobStatus.OPEN:
            return []
        if action == "sample_audit" and state.status != JobStatus.COMMITTED:
            return []
        if action == "finalize" and state.status not in (JobStatus.COMMITTED, JobStatus.DISPUTED):
            return []
        if action in ("open_audit", "resolve_audit"):
            if state.status != JobStatus.DISPUTED:
                return []
            audit = m.get_audit(job_id)
            if action == "open_audit" and audit.status != AuditStatus.NONE:
                return []
            if action == "resolve_audit" and (
                audit.status != AuditStatus.OPEN or now <= audit.reveal_deadline
            ):
                return []
        send = {
            "sample_audit": m.sample_audit,
            "cancel": m.cancel,
            "finalize": m.finalize,
            "open_audit": m.open_audit,
            "resolve_audit": m.resolve_audit,
        }[action]
        first = self._send(job_id, action, lambda: send(self.sender, job_id, terms))
        if action != "open_audit" or first.tx is None or m.audit_opened(first.tx):
            return [first.action]
        # The dispute block's hash was gone: that call anchored its own block; from the next one it opens.
        first.action.action = "anchor_audit"
        return [first.action, self._send(job_id, action, lambda: send(self.sender, job_id, terms)).action]

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

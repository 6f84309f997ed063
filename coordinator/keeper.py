"""Keeper duties: move jobs on when the protocol allows it, with the keeper's own key and gas.

- finalize Committed jobs whose challenge window has passed (nodes are paid, the client refunded);
- cancel Open jobs past their commit deadline (missing nodes are slashed, the client refunded);
- open the audit of a Disputed job (AuditCourt deployments) and resolve it after the reveal deadline;
- finalize Disputed jobs whose dispute timed out without a verdict.

Candidates come from the index; each one is checked against the contracts' live state right before the
transaction, so a lagging index costs nothing but a skipped candidate. Route nodes do the same duties for
their own jobs: losing such a race is expected and logged at INFO.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field

from splitmesh.chain import AuditStatus, JobStatus, Marketplace, Sender
from splitmesh.errors import ChainError, ContractRevert

logger = logging.getLogger(__name__)


@dataclass
class KeeperAction:
    job_id: int
    action: str  # finalize | cancel | open_audit | resolve_audit
    tx_hash: str | None = None
    gas_used: int = 0
    error: str | None = None  # set when the transaction reverted (someone else was faster)


@dataclass
class Keeper:
    market: Marketplace
    sender: Sender
    conn: sqlite3.Connection
    actions: list[KeeperAction] = field(default_factory=list)  # everything done so far

    def __post_init__(self) -> None:
        self.params = self.market.parameters()

    def tick(self) -> list[KeeperAction]:
        """One pass over the unsettled jobs of the index; returns the transactions sent."""
        now = int(self.market.w3.eth.get_block("latest")["timestamp"])
        done: list[KeeperAction] = []
        rows = self.conn.execute(
            "SELECT j.job_id, j.status, j.timestamp, j.terms, a.status AS audit FROM jobs j "
            "LEFT JOIN audits a ON a.job_id = j.job_id "
            "WHERE j.status IN ('open', 'committed', 'disputed') ORDER BY j.job_id"
        ).fetchall()
        for row in rows:
            action = self._due(row, now)
            if action is not None:
                result = self._act(row["job_id"], bytes.fromhex(row["terms"][2:]), action, now)
                if result is not None:
                    done.append(result)
        self.actions.extend(done)
        return done

    def _due(self, row: sqlite3.Row, now: int) -> str | None:
        """What the index says is due for this job (checked again on-chain before acting)."""
        p = self.params
        if row["status"] == "open":
            return "cancel" if now > row["timestamp"] + p["commit_timeout"] else None
        if row["status"] == "committed":
            return "finalize" if now >= row["timestamp"] + p["challenge_window"] else None
        timed_out = now >= row["timestamp"] + p["dispute_timeout"]
        if self.market.court is None:
            return "finalize" if timed_out else None
        if row["audit"] is None:
            return "finalize" if timed_out else "open_audit"
        if row["audit"] == "open":
            return "resolve_audit"
        return None

    def _act(self, job_id: int, terms: bytes, action: str, now: int) -> KeeperAction | None:
        m = self.market
        state = m.get_job(job_id)
        # Live checks: the index may lag, and the route nodes do some of these duties themselves.
        if action == "cancel" and state.status != JobStatus.OPEN:
            return None
        if action == "finalize" and state.status not in (JobStatus.COMMITTED, JobStatus.DISPUTED):
            return None
        if action in ("open_audit", "resolve_audit"):
            if state.status != JobStatus.DISPUTED:
                return None
            audit = m.get_audit(job_id)
            if action == "open_audit" and audit.status != AuditStatus.NONE:
                return None
            if action == "resolve_audit" and (
                audit.status != AuditStatus.OPEN or now <= audit.reveal_deadline
            ):
                return None
        send = {
            "cancel": m.cancel,
            "finalize": m.finalize,
            "open_audit": m.open_audit,
            "resolve_audit": m.resolve_audit,
        }[action]
        try:
            tx = send(self.sender, job_id, terms)
        except ContractRevert as exc:
            logger.info(
                "keeper: %s of job %d reverted (%s); someone else was first", action, job_id, exc.name
            )
            return KeeperAction(job_id, action, error=exc.name)
        except ChainError as exc:
            logger.warning("keeper: %s of job %d failed: %s; will retry", action, job_id, exc)
            return KeeperAction(job_id, action, error=str(exc))
        logger.info("keeper: %s job %d (gas %d)", action, job_id, tx.gas_used)
        return KeeperAction(job_id, action, tx.tx_hash, tx.gas_used)

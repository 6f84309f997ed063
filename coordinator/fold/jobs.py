"""JobMarket events: submission, commitments, disputes, checkpoints, challenges, payment, release, cancel."""

from __future__ import annotations

import logging
import sqlite3

from coordinator.fold.base import (
    LogRecord,
    add_wei,
    hops_of,
    job_row,
    on,
    settle,
    touch_job,
    wei,
)
from splitmesh.chain.terms import JobTerms

logger = logging.getLogger(__name__)


@on("JobMarket", "JobSubmitted")
def _submitted(conn: sqlite3.Connection, log: LogRecord) -> None:
    terms = JobTerms.decode(bytes.fromhex(log.args["terms"][2:]))
    conn.execute(
        "INSERT OR REPLACE INTO jobs (job_id, client, model_id, first_shard, hops, max_tokens, escrow, "
        "terms, metadata, status, timestamp, submitted_block, submitted_time, submitted_tx, updated_block) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?)",
        (
            log.job_id,
            terms.client,
            terms.model_id,
            terms.first_shard,
            len(terms.route),
            terms.max_tokens,
            str(terms.escrow),
            log.args["terms"],
            log.args["metadata"],
            log.block_time,
            log.block,
            log.block_time,
            log.tx_hash,
            log.block,
        ),
    )
    for position, hop in enumerate(terms.route):
        conn.execute(
            "INSERT OR REPLACE INTO hops (job_id, position, node, shard, price) VALUES (?, ?, ?, ?, ?)",
            (log.job_id, position, hop.node, terms.first_shard + position, str(hop.price_per_token)),
        )


@on("JobMarket", "JobCommitted")
def _committed(conn: sqlite3.Connection, log: LogRecord) -> None:
    job = job_row(conn, int(log.args["jobId"]))
    if job is None:
        return
    a = log.args
    conn.execute(
        "UPDATE hops SET input_commitment = ?, output_commitment = ?, commit_block = ?, commit_tx = ? "
        "WHERE job_id = ? AND position = ?",
        (a["inputCommitment"], a["outputCommitment"], log.block, log.tx_hash, log.job_id, a["position"]),
    )
    mask = job["committed_mask"] | (1 << a["position"])
    complete = mask == (1 << job["hops"]) - 1
    touch_job(
        conn,
        log,
        committed_mask=mask,
        billed_tokens=a["billedTokens"],
        status="committed" if complete else job["status"],
        timestamp=log.block_time if complete else job["timestamp"],
    )


@on("JobMarket", "JobDisputed")
def _disputed(conn: sqlite3.Connection, log: LogRecord) -> None:
    # Emitted on every move into dispute (the reason follows in the same transaction) and again when the
    # audit opens: that restarts the dispute timeout but keeps the dispute block.
    job = job_row(conn, int(log.args["jobId"]))
    if job is None:
        return
    again = job["status"] == "disputed"
    touch_job(
        conn,
        log,
        status="disputed",
        timestamp=log.block_time,
        dispute=job["dispute"] or "held",
        dispute_block=job["dispute_block"] if again else log.block,
    )


@on("JobMarket", "CommitmentsMismatched")
def _mismatched(conn: sqlite3.Connection, log: LogRecord) -> None:
    if job_row(conn, int(log.args["jobId"])) is not None:
        touch_job(conn, log, dispute="mismatch")


@on("JobMarket", "AuditSampled")
def _sampled(conn: sqlite3.Connection, log: LogRecord) -> None:
    if job_row(conn, int(log.args["jobId"])) is not None:
        touch_job(conn, log, dispute="sampled")


@on("JobMarket", "ReceiptCheckpointed")
def _checkpointed(conn: sqlite3.Connection, log: LogRecord) -> None:
    if job_row(conn, int(log.args["jobId"])) is not None:
        touch_job(conn, log, billed_tokens=int(log.args["billedTokens"]))


@on("JobMarket", "JobChallenged")
def _challenged(conn: sqlite3.Connection, log: LogRecord) -> None:
    if job_row(conn, int(log.args["jobId"])) is None:
        return
    touch_job(conn, log, dispute="challenged")
    conn.execute(
        "INSERT OR REPLACE INTO challenges (job_id, challenger, bond, status, block, tx_hash) "
        "VALUES (?, ?, ?, 'open', ?, ?)",
        (log.job_id, log.args["challenger"], str(wei(log.args["bond"])), log.block, log.tx_hash),
    )


@on("JobMarket", "ChallengeSettled")
def _challenge_settled(conn: sqlite3.Connection, log: LogRecord) -> None:
    # Emitted before the JobFinalized of the same transaction, after DisputeResolved (if a verdict came):
    # the lost bond's node share is credited to every hop the settlement pays.
    job = job_row(conn, int(log.args["jobId"]))
    if job is None:
        return
    a = log.args
    returned, per_node = wei(a["toChallenger"]), wei(a["perNode"])
    conn.execute(
        "UPDATE challenges SET status = ?, to_challenger = ?, per_node = ?, to_auditor = ?, "
        "settled_block = ?, settled_tx = ? WHERE job_id = ?",
        (
            "returned" if returned else "forfeited",
            str(returned),
            str(per_node),
            str(wei(a["toAuditor"])),
            log.block,
            log.tx_hash,
            log.job_id,
        ),
    )
    if per_node == 0:
        return
    paid_mask = job["committed_mask"] & ~job["fraud_mask"]
    for hop in hops_of(conn, log.job_id):
        if paid_mask >> hop["position"] & 1:
            conn.execute(
                "UPDATE hops SET bonus = ? WHERE job_id = ? AND position = ?",
                (str(per_node), log.job_id, hop["position"]),
            )
            add_wei(conn, "nodes", "earned", per_node, "address = ?", (hop["node"],))


@on("JobMarket", "VerifierPenalized")
def _penalized(conn: sqlite3.Connection, log: LogRecord) -> None:
    # Sent by the court's resolve (the registry's Slashed event came just before); the event names no job,
    # the court's PositionJudged events of the same transaction do.
    row = conn.execute(
        "SELECT job_id FROM logs WHERE tx_hash = ? AND event = 'PositionJudged' LIMIT 1", (log.tx_hash,)
    ).fetchone()
    if row is None:
        return
    conn.execute(
        "UPDATE votes SET status = 'penalized', penalty = ? "
        "WHERE job_id = ? AND verifier = ? AND status = 'drawn'",
        (str(wei(log.args["amount"])), row[0], log.args["verifier"]),
    )


@on("JobMarket", "DisputeResolved")
def _resolved(conn: sqlite3.Connection, log: LogRecord) -> None:
    # Emitted before the JobFinalized of the same transaction, after the Slashed events.
    job = job_row(conn, int(log.args["jobId"]))
    if job is None:
        return
    fraud_mask = int(log.args["fraudMask"])
    touch_job(conn, log, fraud_mask=fraud_mask, slashed=str(wei(log.args["slashed"])))
    for position in range(job["hops"]):
        conn.execute(
            "UPDATE hops SET fraud = ? WHERE job_id = ? AND position = ?",
            (int(bool(fraud_mask >> position & 1)), log.job_id, position),
        )


@on("JobMarket", "JobFinalized")
def _finalized(conn: sqlite3.Connection, log: LogRecord) -> None:
    job = job_row(conn, int(log.args["jobId"]))
    if job is None:
        return
    billed = int(log.args["billedTokens"])
    paid_mask = job["committed_mask"] & ~job["fraud_mask"]
    total = settle(conn, log, paid_mask, billed, job["fraud_mask"])
    if total != wei(log.args["paid"]):
        logger.warning(
            "job %d: hops credited %d wei, JobFinalized says %s", log.job_id, total, log.args["paid"]
        )
    touch_job(
        conn,
        log,
        status="finalized",
        billed_tokens=billed,
        paid=str(wei(log.args["paid"])),
        refund=str(wei(log.args["refund"])),
        closed_block=log.block,
        closed_tx=log.tx_hash,
    )


@on("JobMarket", "JobReleased")
def _released(conn: sqlite3.Connection, log: LogRecord) -> None:
    # The client signed no step: a cancel without a receipt on-chain slashes nobody (JobCancelled says so).
    if job_row(conn, int(log.args["jobId"])) is not None:
        touch_job(conn, log, released=1)


@on("JobMarket", "JobCancelled")
def _cancelled(conn: sqlite3.Connection, log: LogRecord) -> None:
    job = job_row(conn, int(log.args["jobId"]))
    if job is None:
        return
    # The missing hops' slash (JobCancelled.slashed) is burned, not refunded: paid + refund == escrow.
    missing = int(log.args["missingMask"])
    total = settle(conn, log, job["committed_mask"], job["billed_tokens"], missing)
    if total != wei(log.args["paid"]):
        logger.warning(
            "job %d: hops credited %d wei, JobCancelled says %s", log.job_id, total, log.args["paid"]
        )
    touch_job(
        conn,
        log,
        status="cancelled",
        missing_mask=missing,
        paid=str(wei(log.args["paid"])),
        slashed=str(wei(log.args["slashed"])),
        refund=str(wei(log.args["refund"])),
        closed_block=log.block,
        closed_tx=log.tx_hash,
    )

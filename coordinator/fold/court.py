"""AuditCourt events: anchors, panels, votes, penalties, rewards, verdicts."""

from __future__ import annotations

import sqlite3

from coordinator.fold.base import (
    LogRecord,
    add_wei,
    job_row,
    on,
    touch_job,
    wei,
)


@on("AuditCourt", "AuditAnchored")
def _anchored(conn: sqlite3.Connection, log: LogRecord) -> None:
    if job_row(conn, int(log.args["jobId"])) is not None:
        touch_job(conn, log, audit_anchor=int(log.args["blockNumber"]))


@on("AuditCourt", "AuditOpened")
def _audit_opened(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    conn.execute(
        "INSERT OR IGNORE INTO audits (job_id, status, opened_block, opened_tx) VALUES (?, 'open', ?, ?)",
        (log.job_id, log.block, log.tx_hash),
    )
    conn.execute(
        "INSERT OR REPLACE INTO panels (job_id, position, node) VALUES (?, ?, ?)",
        (log.job_id, a["position"], a["node"]),
    )
    for verifier in a["verifiers"]:
        conn.execute(
            "INSERT OR REPLACE INTO votes (job_id, position, verifier, status) VALUES (?, ?, ?, 'drawn')",
            (log.job_id, a["position"], verifier),
        )


def _vote(conn: sqlite3.Connection, log: LogRecord, status: str) -> None:
    conn.execute(
        "UPDATE votes SET status = ? WHERE job_id = ? AND position = ? AND verifier = ?",
        (status, log.job_id, log.args["position"], log.args["verifier"]),
    )


@on("AuditCourt", "VoteCommitted")
def _vote_committed(conn: sqlite3.Connection, log: LogRecord) -> None:
    _vote(conn, log, "committed")


@on("AuditCourt", "VoteRevealed")
def _vote_revealed(conn: sqlite3.Connection, log: LogRecord) -> None:
    _vote(conn, log, "fraud" if int(log.args["verdict"]) == 2 else "honest")


@on("AuditCourt", "PositionJudged")
def _judged(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    conn.execute(
        "UPDATE panels SET honest_votes = ?, fraud_votes = ?, fraud = ?, forfeited = ? "
        "WHERE job_id = ? AND position = ?",
        (a["honestVotes"], a["fraudVotes"], int(a["fraud"]), str(a["forfeited"]), log.job_id, a["position"]),
    )


@on("AuditCourt", "VerifierRewarded")
def _rewarded(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    add_wei(  # the verifier's own bond back plus its share of the pool
        conn,
        "votes",
        "reward",
        wei(a["amount"]),
        "job_id = ? AND position = ? AND verifier = ?",
        (log.job_id, a["position"], a["verifier"]),
    )


@on("AuditCourt", "AuditResolved")
def _audit_resolved(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    job = job_row(conn, int(a["jobId"]))
    # The court pays the challenger when the verdict settled an open challenge (in this transaction).
    challenge = conn.execute(
        "SELECT challenger FROM challenges WHERE job_id = ? AND settled_tx = ?", (log.job_id, log.tx_hash)
    ).fetchone()
    paid_to = challenge[0] if challenge is not None else (job["client"] if job is not None else None)
    conn.execute(
        "UPDATE audits SET status = 'resolved', fraud_mask = ?, slashed = ?, rewarded = ?, to_client = ?, "
        "paid_to = ?, resolved_block = ?, resolved_tx = ? WHERE job_id = ?",
        (
            a["fraudMask"],
            str(a["slashed"]),
            str(a["rewarded"]),
            str(a["toClient"]),
            paid_to,
            log.block,
            log.tx_hash,
            log.job_id,
        ),
    )


@on("AuditCourt", "JobSettledBeforeVerdict")
def _settled_before(conn: sqlite3.Connection, log: LogRecord) -> None:
    conn.execute("UPDATE audits SET settled_before_verdict = 1 WHERE job_id = ?", (log.job_id,))

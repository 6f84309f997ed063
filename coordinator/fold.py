"""Fold contract events, in chain order, into the read model (models, nodes, jobs, hops, audits).

Every handler mirrors what the contract did when it emitted the event, so the read model equals the
contracts' state: a node's stake, unbonding and earnings balance; a job's status, masks and payments.
Folding the same logs always gives the same tables, which is what lets the indexer heal a reorg by
deleting logs past the fork and folding again. The one input besides the logs is the JobMarket's hop fee
(immutable; the indexer stores it in `meta` when it creates the index).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from coordinator import schema
from splitmesh.chain.terms import JobTerms

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LogRecord:
    block: int
    log_index: int
    block_hash: str
    block_time: int  # unix seconds
    tx_hash: str
    contract: str  # NodeRegistry | JobMarket | AuditCourt
    event: str
    args: dict[str, Any]

    @property
    def job_id(self) -> int | None:
        value = self.args.get("jobId")
        return None if value is None else int(value)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> LogRecord:
        return cls(
            block=row["block"],
            log_index=row["log_index"],
            block_hash=row["block_hash"],
            block_time=row["block_time"],
            tx_hash=row["tx_hash"],
            contract=row["contract"],
            event=row["event"],
            args=json.loads(row["args"]),
        )


Handler = Callable[[sqlite3.Connection, LogRecord], None]
_HANDLERS: dict[tuple[str, str], Handler] = {}


def _on(contract: str, event: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _HANDLERS[(contract, event)] = fn
        return fn

    return register


def apply(conn: sqlite3.Connection, logs: Iterable[LogRecord]) -> None:
    """Fold logs (oldest first) into the read model. Events without a handler change nothing."""
    for log in logs:
        handler = _HANDLERS.get((log.contract, log.event))
        if handler is not None:
            handler(conn, log)


# ------------------------------------------------------------------ helpers


def _wei(value: object) -> int:
    return int(str(value))


def _add(conn: sqlite3.Connection, table: str, column: str, amount: int, where: str, key: tuple) -> None:
    """column += amount for a TEXT wei column (read, add in Python, write back)."""
    row = conn.execute(f"SELECT {column} FROM {table} WHERE {where}", key).fetchone()
    if row is None:
        return
    conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (str(_wei(row[0]) + amount), *key))


def _node(conn: sqlite3.Connection, address: str, log: LogRecord) -> sqlite3.Row:
    """The node's row, created (status 'staked') on the first event that names it."""
    row = conn.execute("SELECT * FROM nodes WHERE address = ?", (address,)).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO nodes (address, status, first_block, updated_block) VALUES (?, 'staked', ?, ?)",
            (address, log.block, log.block),
        )
        row = conn.execute("SELECT * FROM nodes WHERE address = ?", (address,)).fetchone()
    else:
        conn.execute("UPDATE nodes SET updated_block = ? WHERE address = ?", (log.block, address))
    return row


def _job(conn: sqlite3.Connection, job_id: int) -> sqlite3.Row | None:
    row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        logger.warning("event for job %d, which the index has no JobSubmitted for; ignored", job_id)
    return row


def _touch_job(conn: sqlite3.Connection, log: LogRecord, **columns: object) -> None:
    columns["updated_block"] = log.block
    sets = ", ".join(f"{name} = ?" for name in columns)
    conn.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", (*columns.values(), log.job_id))


def _slashes_in_tx(conn: sqlite3.Connection, tx_hash: str) -> dict[str, int]:
    """Wei slashed per node by the registry's Slashed events of one transaction."""
    out: dict[str, int] = {}
    for row in conn.execute(
        "SELECT args FROM logs WHERE tx_hash = ? AND event = 'Slashed' AND contract = 'NodeRegistry'",
        (tx_hash,),
    ):
        args = json.loads(row[0])
        out[args["node"]] = out.get(args["node"], 0) + _wei(args["amount"])
    return out


def hop_fee(conn: sqlite3.Connection) -> int:
    """The JobMarket's hop fee, wei per paid hop (stored by the indexer; immutable on-chain)."""
    return int(schema.get_meta(conn, "hop_fee") or 0)


def _hops(conn: sqlite3.Connection, job_id: int | None) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM hops WHERE job_id = ? ORDER BY position", (job_id,)).fetchall()


def _settle(conn: sqlite3.Connection, log: LogRecord, paid_mask: int, billed: int, slash_mask: int) -> int:
    """Credit each paid hop price x billed + the hop fee (as NodeRegistry.creditEarnings does) and
    attribute this transaction's slashes to the hops in slash_mask. Returns the total credited."""
    total = 0
    fee = hop_fee(conn)
    slashes = _slashes_in_tx(conn, log.tx_hash) if slash_mask else {}
    for hop in _hops(conn, log.job_id):
        bit = 1 << hop["position"]
        if paid_mask & bit:
            amount = _wei(hop["price"]) * billed + fee
            total += amount
            conn.execute(
                "UPDATE hops SET paid = ? WHERE job_id = ? AND position = ?",
                (str(amount), log.job_id, hop["position"]),
            )
            _add(conn, "nodes", "earned", amount, "address = ?", (hop["node"],))
        if slash_mask & bit and hop["node"] in slashes:
            conn.execute(
                "UPDATE hops SET slashed = ? WHERE job_id = ? AND position = ?",
                (str(slashes.pop(hop["node"])), log.job_id, hop["position"]),
            )
    return total


# ------------------------------------------------------------------ NodeRegistry


@_on("NodeRegistry", "ModelRegistered")
def _model_registered(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    conn.execute(
        "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            a["modelId"],
            a["name"],
            a["weightsHash"],
            a["numLayers"],
            json.dumps(a["boundaries"]),
            log.block,
            log.tx_hash,
        ),
    )


@_on("NodeRegistry", "Staked")
def _staked(conn: sqlite3.Connection, log: LogRecord) -> None:
    _node(conn, log.args["node"], log)
    conn.execute("UPDATE nodes SET stake = ? WHERE address = ?", (str(log.args["stake"]), log.args["node"]))


@_on("NodeRegistry", "NodeRegistered")
def _registered(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    _node(conn, a["node"], log)
    conn.execute(
        "UPDATE nodes SET model_id = ?, shard = ?, endpoint = ?, price = ?, encryption_key = ?, "
        "status = 'active' WHERE address = ?",
        (a["modelId"], a["shard"], a["endpoint"], str(a["pricePerToken"]), a["encryptionKey"], a["node"]),
    )


@_on("NodeRegistry", "NodeUpdated")
def _updated(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    _node(conn, a["node"], log)
    conn.execute(
        "UPDATE nodes SET endpoint = ?, price = ? WHERE address = ?",
        (a["endpoint"], str(a["pricePerToken"]), a["node"]),
    )


@_on("NodeRegistry", "EncryptionKeyChanged")
def _key_changed(conn: sqlite3.Connection, log: LogRecord) -> None:
    _node(conn, log.args["node"], log)
    conn.execute(
        "UPDATE nodes SET encryption_key = ? WHERE address = ?",
        (log.args["encryptionKey"], log.args["node"]),
    )


@_on("NodeRegistry", "NodeDeactivated")
def _deactivated(conn: sqlite3.Connection, log: LogRecord) -> None:
    _node(conn, log.args["node"], log)
    conn.execute("UPDATE nodes SET status = 'inactive' WHERE address = ?", (log.args["node"],))


@_on("NodeRegistry", "PoolMembershipChanged")
def _pooled(conn: sqlite3.Connection, log: LogRecord) -> None:
    _node(conn, log.args["node"], log)
    conn.execute("UPDATE nodes SET pooled = ? WHERE address = ?", (int(log.args["pooled"]), log.args["node"]))


@_on("NodeRegistry", "UnbondingStarted")
def _unbonding(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    row = _node(conn, a["node"], log)
    amount = _wei(a["amount"])
    conn.execute(
        "UPDATE nodes SET stake = ?, unbonding = ?, unlock_at = ? WHERE address = ?",
        (
            str(_wei(row["stake"]) - amount),
            str(_wei(row["unbonding"]) + amount),
            a["unlockAt"],
            a["node"],
        ),
    )


@_on("NodeRegistry", "UnbondedWithdrawn")
def _unbonded(conn: sqlite3.Connection, log: LogRecord) -> None:
    _node(conn, log.args["node"], log)
    conn.execute("UPDATE nodes SET unbonding = '0' WHERE address = ?", (log.args["node"],))


@_on("NodeRegistry", "EarningsWithdrawn")
def _earnings_withdrawn(conn: sqlite3.Connection, log: LogRecord) -> None:
    _node(conn, log.args["node"], log)
    _add(conn, "nodes", "withdrawn", _wei(log.args["amount"]), "address = ?", (log.args["node"],))


@_on("NodeRegistry", "Slashed")
def _slashed(conn: sqlite3.Connection, log: LogRecord) -> None:
    # NodeRegistry.slash takes from the stake first, then from unbonding.
    row = _node(conn, log.args["node"], log)
    amount = _wei(log.args["amount"])
    stake, unbonding = _wei(row["stake"]), _wei(row["unbonding"])
    from_stake = min(amount, stake)
    conn.execute(
        "UPDATE nodes SET stake = ?, unbonding = ?, slashed = ?, slash_count = slash_count + 1 "
        "WHERE address = ?",
        (
            str(stake - from_stake),
            str(unbonding - (amount - from_stake)),
            str(_wei(row["slashed"]) + amount),
            log.args["node"],
        ),
    )


# ------------------------------------------------------------------ JobMarket


@_on("JobMarket", "JobSubmitted")
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


@_on("JobMarket", "JobCommitted")
def _committed(conn: sqlite3.Connection, log: LogRecord) -> None:
    job = _job(conn, int(log.args["jobId"]))
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
    _touch_job(
        conn,
        log,
        committed_mask=mask,
        billed_tokens=a["billedTokens"],
        status="committed" if complete else job["status"],
        timestamp=log.block_time if complete else job["timestamp"],
    )


@_on("JobMarket", "JobDisputed")
def _disputed(conn: sqlite3.Connection, log: LogRecord) -> None:
    # Emitted on every move into dispute (the reason follows in the same transaction) and again when the
    # audit opens: that restarts the dispute timeout but keeps the dispute block.
    job = _job(conn, int(log.args["jobId"]))
    if job is None:
        return
    again = job["status"] == "disputed"
    _touch_job(
        conn,
        log,
        status="disputed",
        timestamp=log.block_time,
        dispute=job["dispute"] or "held",
        dispute_block=job["dispute_block"] if again else log.block,
    )


@_on("JobMarket", "CommitmentsMismatched")
def _mismatched(conn: sqlite3.Connection, log: LogRecord) -> None:
    if _job(conn, int(log.args["jobId"])) is not None:
        _touch_job(conn, log, dispute="mismatch")


@_on("JobMarket", "AuditSampled")
def _sampled(conn: sqlite3.Connection, log: LogRecord) -> None:
    if _job(conn, int(log.args["jobId"])) is not None:
        _touch_job(conn, log, dispute="sampled")


@_on("JobMarket", "ReceiptCheckpointed")
def _checkpointed(conn: sqlite3.Connection, log: LogRecord) -> None:
    if _job(conn, int(log.args["jobId"])) is not None:
        _touch_job(conn, log, billed_tokens=int(log.args["billedTokens"]))


@_on("JobMarket", "JobChallenged")
def _challenged(conn: sqlite3.Connection, log: LogRecord) -> None:
    if _job(conn, int(log.args["jobId"])) is None:
        return
    _touch_job(conn, log, dispute="challenged")
    conn.execute(
        "INSERT OR REPLACE INTO challenges (job_id, challenger, bond, status, block, tx_hash) "
        "VALUES (?, ?, ?, 'open', ?, ?)",
        (log.job_id, log.args["challenger"], str(_wei(log.args["bond"])), log.block, log.tx_hash),
    )


@_on("JobMarket", "ChallengeSettled")
def _challenge_settled(conn: sqlite3.Connection, log: LogRecord) -> None:
    # Emitted before the JobFinalized of the same transaction, after DisputeResolved (if a verdict came):
    # the lost bond's node share is credited to every hop the settlement pays.
    job = _job(conn, int(log.args["jobId"]))
    if job is None:
        return
    a = log.args
    returned, per_node = _wei(a["toChallenger"]), _wei(a["perNode"])
    conn.execute(
        "UPDATE challenges SET status = ?, to_challenger = ?, per_node = ?, to_auditor = ?, "
        "settled_block = ?, settled_tx = ? WHERE job_id = ?",
        (
            "returned" if returned else "forfeited",
            str(returned),
            str(per_node),
            str(_wei(a["toAuditor"])),
            log.block,
            log.tx_hash,
            log.job_id,
        ),
    )
    if per_node == 0:
        return
    paid_mask = job["committed_mask"] & ~job["fraud_mask"]
    for hop in _hops(conn, log.job_id):
        if paid_mask >> hop["position"] & 1:
            conn.execute(
                "UPDATE hops SET bonus = ? WHERE job_id = ? AND position = ?",
                (str(per_node), log.job_id, hop["position"]),
            )
            _add(conn, "nodes", "earned", per_node, "address = ?", (hop["node"],))


@_on("JobMarket", "VerifierPenalized")
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
        (str(_wei(log.args["amount"])), row[0], log.args["verifier"]),
    )


@_on("JobMarket", "DisputeResolved")
def _resolved(conn: sqlite3.Connection, log: LogRecord) -> None:
    # Emitted before the JobFinalized of the same transaction, after the Slashed events.
    job = _job(conn, int(log.args["jobId"]))
    if job is None:
        return
    fraud_mask = int(log.args["fraudMask"])
    _touch_job(conn, log, fraud_mask=fraud_mask, slashed=str(_wei(log.args["slashed"])))
    for position in range(job["hops"]):
        conn.execute(
            "UPDATE hops SET fraud = ? WHERE job_id = ? AND position = ?",
            (int(bool(fraud_mask >> position & 1)), log.job_id, position),
        )


@_on("JobMarket", "JobFinalized")
def _finalized(conn: sqlite3.Connection, log: LogRecord) -> None:
    job = _job(conn, int(log.args["jobId"]))
    if job is None:
        return
    billed = int(log.args["billedTokens"])
    paid_mask = job["committed_mask"] & ~job["fraud_mask"]
    total = _settle(conn, log, paid_mask, billed, job["fraud_mask"])
    if total != _wei(log.args["paid"]):
        logger.warning(
            "job %d: hops credited %d wei, JobFinalized says %s", log.job_id, total, log.args["paid"]
        )
    _touch_job(
        conn,
        log,
        status="finalized",
        billed_tokens=billed,
        paid=str(_wei(log.args["paid"])),
        refund=str(_wei(log.args["refund"])),
        closed_block=log.block,
        closed_tx=log.tx_hash,
    )


@_on("JobMarket", "JobCancelled")
def _cancelled(conn: sqlite3.Connection, log: LogRecord) -> None:
    job = _job(conn, int(log.args["jobId"]))
    if job is None:
        return
    # The missing hops' slash (JobCancelled.slashed) is burned, not refunded: paid + refund == escrow.
    missing = int(log.args["missingMask"])
    total = _settle(conn, log, job["committed_mask"], job["billed_tokens"], missing)
    if total != _wei(log.args["paid"]):
        logger.warning(
            "job %d: hops credited %d wei, JobCancelled says %s", log.job_id, total, log.args["paid"]
        )
    _touch_job(
        conn,
        log,
        status="cancelled",
        missing_mask=missing,
        paid=str(_wei(log.args["paid"])),
        slashed=str(_wei(log.args["slashed"])),
        refund=str(_wei(log.args["refund"])),
        closed_block=log.block,
        closed_tx=log.tx_hash,
    )


# ------------------------------------------------------------------ AuditCourt


@_on("AuditCourt", "AuditAnchored")
def _anchored(conn: sqlite3.Connection, log: LogRecord) -> None:
    if _job(conn, int(log.args["jobId"])) is not None:
        _touch_job(conn, log, audit_anchor=int(log.args["blockNumber"]))


@_on("AuditCourt", "AuditOpened")
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


@_on("AuditCourt", "VoteCommitted")
def _vote_committed(conn: sqlite3.Connection, log: LogRecord) -> None:
    _vote(conn, log, "committed")


@_on("AuditCourt", "VoteRevealed")
def _vote_revealed(conn: sqlite3.Connection, log: LogRecord) -> None:
    _vote(conn, log, "fraud" if int(log.args["verdict"]) == 2 else "honest")


@_on("AuditCourt", "PositionJudged")
def _judged(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    conn.execute(
        "UPDATE panels SET honest_votes = ?, fraud_votes = ?, fraud = ?, forfeited = ? "
        "WHERE job_id = ? AND position = ?",
        (a["honestVotes"], a["fraudVotes"], int(a["fraud"]), str(a["forfeited"]), log.job_id, a["position"]),
    )


@_on("AuditCourt", "VerifierRewarded")
def _rewarded(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    _add(  # the verifier's own bond back plus its share of the pool
        conn,
        "votes",
        "reward",
        _wei(a["amount"]),
        "job_id = ? AND position = ? AND verifier = ?",
        (log.job_id, a["position"], a["verifier"]),
    )


@_on("AuditCourt", "AuditResolved")
def _audit_resolved(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    job = _job(conn, int(a["jobId"]))
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


@_on("AuditCourt", "JobSettledBeforeVerdict")
def _settled_before(conn: sqlite3.Connection, log: LogRecord) -> None:
    conn.execute("UPDATE audits SET settled_before_verdict = 1 WHERE job_id = ?", (log.job_id,))

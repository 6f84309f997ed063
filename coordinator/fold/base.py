"""The fold's vocabulary: a decoded log, the handler registry, and the read-model helpers every handler
uses (wei columns, node and job rows, a transaction's slashes, paying a job's hops)."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from coordinator import schema

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
HANDLERS: dict[tuple[str, str], Handler] = {}


def on(contract: str, event: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[(contract, event)] = fn
        return fn

    return register


def apply(conn: sqlite3.Connection, logs: Iterable[LogRecord]) -> None:
    """Fold logs (oldest first) into the read model. Events without a handler change nothing."""
    for log in logs:
        handler = HANDLERS.get((log.contract, log.event))
        if handler is not None:
            handler(conn, log)


# ------------------------------------------------------------------ helpers


def wei(value: object) -> int:
    return int(str(value))


def add_wei(conn: sqlite3.Connection, table: str, column: str, amount: int, where: str, key: tuple) -> None:
    """column += amount for a TEXT wei column (read, add in Python, write back)."""
    row = conn.execute(f"SELECT {column} FROM {table} WHERE {where}", key).fetchone()
    if row is None:
        return
    conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (str(wei(row[0]) + amount), *key))


def node_row(conn: sqlite3.Connection, address: str, log: LogRecord) -> sqlite3.Row:
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


def job_row(conn: sqlite3.Connection, job_id: int) -> sqlite3.Row | None:
    row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        logger.warning("event for job %d, which the index has no JobSubmitted for; ignored", job_id)
    return row


def touch_job(conn: sqlite3.Connection, log: LogRecord, **columns: object) -> None:
    columns["updated_block"] = log.block
    sets = ", ".join(f"{name} = ?" for name in columns)
    conn.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", (*columns.values(), log.job_id))


def slashes_in_tx(conn: sqlite3.Connection, tx_hash: str) -> dict[str, int]:
    """Wei slashed per node by the registry's Slashed events of one transaction."""
    out: dict[str, int] = {}
    for row in conn.execute(
        "SELECT args FROM logs WHERE tx_hash = ? AND event = 'Slashed' AND contract = 'NodeRegistry'",
        (tx_hash,),
    ):
        args = json.loads(row[0])
        out[args["node"]] = out.get(args["node"], 0) + wei(args["amount"])
    return out


def hop_fee(conn: sqlite3.Connection) -> int:
    """The JobMarket's hop fee, wei per paid hop (stored by the indexer; immutable on-chain)."""
    return int(schema.get_meta(conn, "hop_fee") or 0)


def hops_of(conn: sqlite3.Connection, job_id: int | None) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM hops WHERE job_id = ? ORDER BY position", (job_id,)).fetchall()


def settle(conn: sqlite3.Connection, log: LogRecord, paid_mask: int, billed: int, slash_mask: int) -> int:
    """Credit each paid hop price x billed + the hop fee (as NodeRegistry.creditEarnings does) and
    attribute this transaction's slashes to the hops in slash_mask. Returns the total credited."""
    total = 0
    fee = hop_fee(conn)
    slashes = slashes_in_tx(conn, log.tx_hash) if slash_mask else {}
    for hop in hops_of(conn, log.job_id):
        bit = 1 << hop["position"]
        if paid_mask & bit:
            amount = wei(hop["price"]) * billed + fee
            total += amount
            conn.execute(
                "UPDATE hops SET paid = ? WHERE job_id = ? AND position = ?",
                (str(amount), log.job_id, hop["position"]),
            )
            add_wei(conn, "nodes", "earned", amount, "address = ?", (hop["node"],))
        if slash_mask & bit and hop["node"] in slashes:
            conn.execute(
                "UPDATE hops SET slashed = ? WHERE job_id = ? AND position = ?",
                (str(slashes.pop(hop["node"])), log.job_id, hop["position"]),
            )
    return total

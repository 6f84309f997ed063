"""NodeRegistry events: models, stake, registration, pools, unbonding, earnings, slashes."""

from __future__ import annotations

import json
import sqlite3

from coordinator.fold.base import (
    LogRecord,
    add_wei,
    node_row,
    on,
    wei,
)


@on("NodeRegistry", "ModelRegistered")
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


@on("NodeRegistry", "Staked")
def _staked(conn: sqlite3.Connection, log: LogRecord) -> None:
    node_row(conn, log.args["node"], log)
    conn.execute("UPDATE nodes SET stake = ? WHERE address = ?", (str(log.args["stake"]), log.args["node"]))


@on("NodeRegistry", "NodeRegistered")
def _registered(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    node_row(conn, a["node"], log)
    conn.execute(
        "UPDATE nodes SET model_id = ?, shard = ?, endpoint = ?, price = ?, encryption_key = ?, "
        "status = 'active' WHERE address = ?",
        (a["modelId"], a["shard"], a["endpoint"], str(a["pricePerToken"]), a["encryptionKey"], a["node"]),
    )


@on("NodeRegistry", "NodeUpdated")
def _updated(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    node_row(conn, a["node"], log)
    conn.execute(
        "UPDATE nodes SET endpoint = ?, price = ? WHERE address = ?",
        (a["endpoint"], str(a["pricePerToken"]), a["node"]),
    )


@on("NodeRegistry", "EncryptionKeyChanged")
def _key_changed(conn: sqlite3.Connection, log: LogRecord) -> None:
    node_row(conn, log.args["node"], log)
    conn.execute(
        "UPDATE nodes SET encryption_key = ? WHERE address = ?",
        (log.args["encryptionKey"], log.args["node"]),
    )


@on("NodeRegistry", "NodeDeactivated")
def _deactivated(conn: sqlite3.Connection, log: LogRecord) -> None:
    node_row(conn, log.args["node"], log)
    conn.execute("UPDATE nodes SET status = 'inactive' WHERE address = ?", (log.args["node"],))


@on("NodeRegistry", "PoolMembershipChanged")
def _pooled(conn: sqlite3.Connection, log: LogRecord) -> None:
    node_row(conn, log.args["node"], log)
    conn.execute("UPDATE nodes SET pooled = ? WHERE address = ?", (int(log.args["pooled"]), log.args["node"]))


@on("NodeRegistry", "UnbondingStarted")
def _unbonding(conn: sqlite3.Connection, log: LogRecord) -> None:
    a = log.args
    row = node_row(conn, a["node"], log)
    amount = wei(a["amount"])
    conn.execute(
        "UPDATE nodes SET stake = ?, unbonding = ?, unlock_at = ? WHERE address = ?",
        (
            str(wei(row["stake"]) - amount),
            str(wei(row["unbonding"]) + amount),
            a["unlockAt"],
            a["node"],
        ),
    )


@on("NodeRegistry", "UnbondedWithdrawn")
def _unbonded(conn: sqlite3.Connection, log: LogRecord) -> None:
    node_row(conn, log.args["node"], log)
    conn.execute("UPDATE nodes SET unbonding = '0' WHERE address = ?", (log.args["node"],))


@on("NodeRegistry", "EarningsWithdrawn")
def _earnings_withdrawn(conn: sqlite3.Connection, log: LogRecord) -> None:
    node_row(conn, log.args["node"], log)
    add_wei(conn, "nodes", "withdrawn", wei(log.args["amount"]), "address = ?", (log.args["node"],))


@on("NodeRegistry", "Slashed")
def _slashed(conn: sqlite3.Connection, log: LogRecord) -> None:
    # NodeRegistry.slash takes from the stake first, then from unbonding.
    row = node_row(conn, log.args["node"], log)
    amount = wei(log.args["amount"])
    stake, unbonding = wei(row["stake"]), wei(row["unbonding"])
    from_stake = min(amount, stake)
    conn.execute(
        "UPDATE nodes SET stake = ?, unbonding = ?, slashed = ?, slash_count = slash_count + 1 "
        "WHERE address = ?",
        (
            str(stake - from_stake),
            str(unbonding - (amount - from_stake)),
            str(wei(row["slashed"]) + amount),
            log.args["node"],
        ),
    )

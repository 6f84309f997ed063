"""The index's SQLite schema.

Two layers: `logs` holds every decoded contract event (the source of truth, keyed by block and log
index), the other tables are a read model folded from those logs in order (coordinator.fold). After a reorg
the logs past the fork are deleted and the read model is folded again from the remaining logs.

Wei amounts are stored as decimal TEXT: they exceed SQLite's 64-bit integers.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 3  # 2: hop fees, challenges, dispute blocks, verifier penalties; 3: releases

LOGS = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS logs (
    block INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    block_hash TEXT NOT NULL,
    block_time INTEGER NOT NULL,   -- unix seconds
    tx_hash TEXT NOT NULL,
    contract TEXT NOT NULL,        -- NodeRegistry | JobMarket | AuditCourt
    event TEXT NOT NULL,
    args TEXT NOT NULL,            -- JSON; addresses checksummed, bytes 0x-hex, integers as numbers
    job_id INTEGER,                -- the job the event is about, if any
    PRIMARY KEY (block, log_index)
);
CREATE INDEX IF NOT EXISTS logs_by_job ON logs (job_id);
CREATE INDEX IF NOT EXISTS logs_by_tx ON logs (tx_hash);
-- Hashes of recent blocks, to detect a reorg and find the fork point.
CREATE TABLE IF NOT EXISTS blocks (number INTEGER PRIMARY KEY, hash TEXT NOT NULL);
"""

READ_MODEL_TABLES = ("models", "nodes", "jobs", "hops", "challenges", "audits", "panels", "votes")

READ_MODEL = """
CREATE TABLE IF NOT EXISTS models (
    model_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    weights_hash TEXT NOT NULL,
    num_layers INTEGER NOT NULL,
    boundaries TEXT NOT NULL,      -- JSON list
    block INTEGER NOT NULL,
    tx_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    address TEXT PRIMARY KEY,
    model_id INTEGER,
    shard INTEGER,
    endpoint TEXT,
    price TEXT NOT NULL DEFAULT '0',
    encryption_key TEXT,
    status TEXT NOT NULL,          -- staked (never registered) | active | inactive
    pooled INTEGER NOT NULL DEFAULT 0,
    stake TEXT NOT NULL DEFAULT '0',
    unbonding TEXT NOT NULL DEFAULT '0',
    unlock_at INTEGER NOT NULL DEFAULT 0,
    earned TEXT NOT NULL DEFAULT '0',      -- credited by settled jobs (price x billed + hop fee + bonus)
    withdrawn TEXT NOT NULL DEFAULT '0',   -- earnings withdrawn
    slashed TEXT NOT NULL DEFAULT '0',
    slash_count INTEGER NOT NULL DEFAULT 0,
    first_block INTEGER NOT NULL,
    updated_block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    model_id INTEGER NOT NULL,
    first_shard INTEGER NOT NULL,
    hops INTEGER NOT NULL,
    max_tokens INTEGER NOT NULL,
    escrow TEXT NOT NULL,
    terms TEXT NOT NULL,           -- packed terms, 0x-hex (what finalize/cancel/openAudit take)
    metadata TEXT NOT NULL,        -- what the client declared, 0x-hex
    status TEXT NOT NULL,          -- open | committed | disputed | finalized | cancelled
    timestamp INTEGER NOT NULL,    -- as on-chain: open: submitted; committed: last commit; disputed:
                                   -- disputed, or its audit opened (the dispute timeout restarts)
    committed_mask INTEGER NOT NULL DEFAULT 0,
    billed_tokens INTEGER NOT NULL DEFAULT 0,
    dispute TEXT,                  -- mismatch | sampled | challenged | held
    dispute_block INTEGER,         -- block the job entered dispute in (its hash seeds the audit panels)
    audit_anchor INTEGER,          -- fallback seed block the court recorded (dispute block over 256 old)
    fraud_mask INTEGER NOT NULL DEFAULT 0,
    missing_mask INTEGER NOT NULL DEFAULT 0,
    released INTEGER NOT NULL DEFAULT 0,  -- 1: the client declared it signed no step (JobReleased)
    paid TEXT NOT NULL DEFAULT '0',
    refund TEXT NOT NULL DEFAULT '0',
    slashed TEXT NOT NULL DEFAULT '0',
    submitted_block INTEGER NOT NULL,
    submitted_time INTEGER NOT NULL,
    submitted_tx TEXT NOT NULL,
    closed_block INTEGER,
    closed_tx TEXT,
    updated_block INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_client ON jobs (client);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
CREATE TABLE IF NOT EXISTS hops (
    job_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    node TEXT NOT NULL,
    shard INTEGER NOT NULL,
    price TEXT NOT NULL,
    input_commitment TEXT,
    output_commitment TEXT,
    commit_block INTEGER,
    commit_tx TEXT,
    paid TEXT NOT NULL DEFAULT '0',        -- from the escrow: price x billed + the hop fee
    bonus TEXT NOT NULL DEFAULT '0',       -- share of a lost challenge bond
    slashed TEXT NOT NULL DEFAULT '0',
    fraud INTEGER,                 -- NULL: never judged; 0 honest; 1 fraud
    PRIMARY KEY (job_id, position)
);
-- Covering the per-node queries (`jobs list --node`, the job and fraud counts of `nodes list`): with the
-- index on (node) alone each of a node's hops cost a table read (bench_coordinator_growth: 125 and 194
-- ms at 10k jobs).
DROP INDEX IF EXISTS hops_by_node;
CREATE INDEX IF NOT EXISTS hops_by_node_job ON hops (node, job_id, fraud);
CREATE TABLE IF NOT EXISTS challenges (
    job_id INTEGER PRIMARY KEY,
    challenger TEXT NOT NULL,
    bond TEXT NOT NULL,
    status TEXT NOT NULL,          -- open | returned (fraud found) | forfeited (no fraud found)
    to_challenger TEXT NOT NULL DEFAULT '0',
    per_node TEXT NOT NULL DEFAULT '0',    -- credited to every paid hop
    to_auditor TEXT NOT NULL DEFAULT '0',  -- for the honest verifiers
    block INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    settled_block INTEGER,
    settled_tx TEXT
);
CREATE TABLE IF NOT EXISTS audits (
    job_id INTEGER PRIMARY KEY,
    status TEXT NOT NULL,          -- open | resolved
    fraud_mask INTEGER NOT NULL DEFAULT 0,
    slashed TEXT NOT NULL DEFAULT '0',
    rewarded TEXT NOT NULL DEFAULT '0',
    to_client TEXT NOT NULL DEFAULT '0',   -- paid to paid_to: the rest of the slash, an unwon pool, dust
    paid_to TEXT,                  -- the challenger of a challenged job, else the client
    settled_before_verdict INTEGER NOT NULL DEFAULT 0,
    opened_block INTEGER NOT NULL,
    opened_tx TEXT NOT NULL,
    resolved_block INTEGER,
    resolved_tx TEXT
);
CREATE TABLE IF NOT EXISTS panels (
    job_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    node TEXT NOT NULL,
    honest_votes INTEGER,
    fraud_votes INTEGER,
    fraud INTEGER,
    forfeited TEXT NOT NULL DEFAULT '0',
    PRIMARY KEY (job_id, position)
);
CREATE TABLE IF NOT EXISTS votes (
    job_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    verifier TEXT NOT NULL,
    status TEXT NOT NULL,          -- drawn | committed | honest | fraud | penalized (never committed)
    reward TEXT NOT NULL DEFAULT '0',      -- credited on the verdict's side: its own bond back + a share
    penalty TEXT NOT NULL DEFAULT '0',     -- slashed from its stake for never committing
    PRIMARY KEY (job_id, position, verifier)
);
"""


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) an index database; ':memory:' gives a throwaway index."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.row_factory = sqlite3.Row
    if str(path) != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")  # readers (the API) never block the indexer
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(LOGS + READ_MODEL)
    return conn


def clear_read_model(conn: sqlite3.Connection) -> None:
    for table in READ_MODEL_TABLES:
        conn.execute(f"DELETE FROM {table}")


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: object) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, str(value)),
    )

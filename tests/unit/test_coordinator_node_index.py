"""The per-node queries read a covering index (hops by node, job, fraud) and give the same answers as a
plain computation over the rows (bench_coordinator_growth found them at 125-194 ms after 10k jobs)."""

from __future__ import annotations

import random
import sqlite3

from coordinator import queries, schema

NODES = [f"0x{i:040x}" for i in range(1, 7)]  # all-digit addresses: checksummed as they are


def index(jobs: int = 600, seed: int = 3) -> sqlite3.Connection:
    rng = random.Random(seed)
    conn = schema.connect(":memory:")
    for job_id in range(1, jobs + 1):
        conn.execute(
            "INSERT INTO jobs (job_id, client, model_id, first_shard, hops, max_tokens, escrow, terms,"
            " metadata, status, timestamp, submitted_block, submitted_time, submitted_tx, updated_block)"
            " VALUES (?, ?, 1, 1, 3, 10, '1', '0x', '0x', 'finalized', 0, ?, 0, '0x', ?)",
            (job_id, NODES[0], job_id, job_id),
        )
        for position in range(3):
            node = NODES[2 * position + rng.randrange(2)]
            fraud = rng.choice((None, 0, 1))
            conn.execute(
                "INSERT INTO hops (job_id, position, node, shard, price, fraud) VALUES (?, ?, ?, ?, '1', ?)",
                (job_id, position, node, position + 1, fraud),
            )
    for address in NODES:
        conn.execute(
            "INSERT INTO nodes (address, status, first_block, updated_block) VALUES (?, 'active', 0, 0)",
            (address,),
        )
    return conn


def test_node_counts_equal_a_plain_count_of_the_hops() -> None:
    conn = index()
    hops = conn.execute("SELECT node, fraud FROM hops").fetchall()
    listed = {n["address"]: n for n in queries.list_nodes(conn)["items"]}
    for address in NODES:
        assert listed[address]["jobs_served"] == sum(1 for h in hops if h["node"] == address)
        assert listed[address]["frauds"] == sum(1 for h in hops if h["node"] == address and h["fraud"] == 1)


def test_jobs_of_a_node_equal_a_plain_filter_newest_first() -> None:
    conn = index()
    for address in NODES:
        expected = sorted(
            {r[0] for r in conn.execute("SELECT job_id, node FROM hops") if r[1] == address}, reverse=True
        )
        page = queries.list_jobs(conn, queries.JobFilter(node=address), limit=50, offset=10)
        assert page["total"] == len(expected)
        assert [j["job_id"] for j in page["items"]] == expected[10:60]
        assert all(address in j["route"] for j in page["items"])


def test_per_node_queries_read_only_the_covering_index() -> None:
    conn = index(jobs=20)
    plans = [
        " ".join(str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, (NODES[0],)))
        for sql in (
            "SELECT COUNT(*) FROM hops h WHERE h.node = ?",
            "SELECT COUNT(*) FROM hops h WHERE h.node = ? AND h.fraud = 1",
            "SELECT job_id FROM hops WHERE node = ?",
        )
    ]
    for plan in plans:
        assert "COVERING INDEX hops_by_node_job" in plan, plan

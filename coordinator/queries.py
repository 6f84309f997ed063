"""Queries over an index: jobs, one job in full, nodes, models, sync status.

Every function returns plain JSON-ready dicts; wei amounts are decimal strings (JavaScript numbers lose
precision above 2**53). The CLI, the HTTP API and the explorer all show these same dicts.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from eth_utils import is_address, to_checksum_address

from coordinator import schema
from coordinator.errors import BadQuery, NotFound
from splitmesh.jobmeta import JobMeta, epsilon_to_json
from splitmesh.leakage_table import lookup as lookup_leakage

JOB_STATUSES = ("open", "committed", "disputed", "finalized", "cancelled")
NODE_STATUSES = ("staked", "active", "inactive")
MAX_LIMIT = 500


@dataclass(frozen=True)
class JobFilter:
    client: str | None = None
    node: str | None = None
    status: str | None = None
    model: int | None = None

    def __post_init__(self) -> None:
        for name in ("client", "node"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _address(value, name))
        if self.status is not None and self.status not in JOB_STATUSES:
            raise BadQuery(f"unknown job status {self.status!r}; one of {', '.join(JOB_STATUSES)}")


@dataclass(frozen=True)
class NodeFilter:
    model: int | None = None
    shard: int | None = None
    status: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in NODE_STATUSES:
            raise BadQuery(f"unknown node status {self.status!r}; one of {', '.join(NODE_STATUSES)}")


def _address(value: str, what: str) -> str:
    if not is_address(value):
        raise BadQuery(f"--{what} {value!r} is not an address (0x followed by 40 hex digits)")
    return to_checksum_address(value)


def check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if offset < 0:
        raise BadQuery(f"offset must be >= 0, got {offset}")


def _page(items: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    nxt = offset + limit if offset + limit < total else None
    return {"items": items, "total": total, "limit": limit, "offset": offset, "next_offset": nxt}


def _declared(metadata_hex: str) -> dict[str, Any] | None:
    """Whatever JSON object the client declared, shown as is; None when the metadata is not one (opaque)."""
    try:
        value = json.loads(bytes.fromhex(metadata_hex[2:]).decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def job_meta(metadata_hex: str) -> JobMeta | None:
    """The job's declared setting when the metadata follows the SDK's format (`JobMeta`); None otherwise."""
    try:
        return JobMeta.from_json(bytes.fromhex(metadata_hex[2:]))
    except ValueError:  # not hex, or InvalidJobMeta
        return None


def job_leakage(conn: sqlite3.Connection, model_id: int, meta: JobMeta | None) -> dict[str, Any]:
    """The shipped leakage measurement for the job's declared (split, epsilon) on its model, or why not."""
    if meta is None:
        return {"source": "not measured", "why": "the client declared no split and epsilon"}
    model = conn.execute("SELECT weights_hash FROM models WHERE model_id = ?", (model_id,)).fetchone()
    if model is None:
        return {"source": "not measured", "why": "unknown model"}
    return lookup_leakage(model["weights_hash"], meta.split, meta.epsilon)


# ------------------------------------------------------------------ jobs


def _job_summary(row: sqlite3.Row, route: list[str]) -> dict[str, Any]:
    meta = job_meta(row["metadata"])
    return {
        "job_id": row["job_id"],
        "status": row["status"],
        "client": row["client"],
        "model_id": row["model_id"],
        "first_shard": row["first_shard"],
        "route": route,
        "max_tokens": row["max_tokens"],
        "billed_tokens": row["billed_tokens"],
        "escrow_wei": row["escrow"],
        "paid_wei": row["paid"],
        "refund_wei": row["refund"],
        "slashed_wei": row["slashed"],
        "dispute": row["dispute"],
        "fraud_mask": row["fraud_mask"],
        "epsilon": epsilon_to_json(meta.epsilon) if meta else None,
        "submitted_block": row["submitted_block"],
        "submitted_time": row["submitted_time"],
        "updated_block": row["updated_block"],
    }


def _routes(conn: sqlite3.Connection, job_ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {j: [] for j in job_ids}
    if not job_ids:
        return out
    marks = ",".join("?" * len(job_ids))
    for r in conn.execute(
        f"SELECT job_id, node FROM hops WHERE job_id IN ({marks}) ORDER BY job_id, position", job_ids
    ):
        out[r["job_id"]].append(r["node"])
    return out


def list_jobs(
    conn: sqlite3.Connection, filt: JobFilter | None = None, *, limit: int = 50, offset: int = 0
) -> dict[str, Any]:
    """Jobs, newest first, filtered and paginated."""
    check_page(limit, offset)
    filt = filt or JobFilter()
    where: list[str] = []
    params: list[object] = []
    if filt.client:
        where.append("client = ?")
        params.append(filt.client)
    if filt.status:
        where.append("status = ?")
        params.append(filt.status)
    if filt.model is not None:
        where.append("model_id = ?")
        params.append(filt.model)
    if filt.node:
        where.append("job_id IN (SELECT job_id FROM hops WHERE node = ?)")
        params.append(filt.node)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = conn.execute(f"SELECT COUNT(*) FROM jobs {clause}", params).fetchone()[0]
    rows = conn.execute(
        f"SELECT * FROM jobs {clause} ORDER BY job_id DESC LIMIT ? OFFSET ?", [*params, limit, offset]
    ).fetchall()
    routes = _routes(conn, [r["job_id"] for r in rows])
    return _page([_job_summary(r, routes[r["job_id"]]) for r in rows], total, limit, offset)


def get_job(conn: sqlite3.Connection, job_id: int) -> dict[str, Any]:
    """One job in full: route with commitments and payments, audit verdicts, privacy, transactions."""
    row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFound(f"job {job_id} is not in the index (not submitted, or not indexed yet)")
    hops = conn.execute("SELECT * FROM hops WHERE job_id = ? ORDER BY position", (job_id,)).fetchall()
    out = _job_summary(row, [h["node"] for h in hops])
    out["terms"] = row["terms"]
    out["declared"] = _declared(row["metadata"])
    out["leakage"] = job_leakage(conn, row["model_id"], job_meta(row["metadata"]))
    out["metadata"] = row["metadata"]
    out["committed_mask"] = row["committed_mask"]
    out["missing_mask"] = row["missing_mask"]
    out["released"] = bool(row["released"])
    out["timestamp"] = row["timestamp"]
    out["dispute_block"] = row["dispute_block"]
    out["audit_anchor"] = row["audit_anchor"]
    out["hops"] = [
        {
            "position": h["position"],
            "shard": h["shard"],
            "node": h["node"],
            "price_wei": h["price"],
            "committed": h["commit_block"] is not None,
            "input_commitment": h["input_commitment"],
            "output_commitment": h["output_commitment"],
            "commit_tx": h["commit_tx"],
            "paid_wei": h["paid"],
            "bonus_wei": h["bonus"],
            "slashed_wei": h["slashed"],
            "fraud": None if h["fraud"] is None else bool(h["fraud"]),
        }
        for h in hops
    ]
    # Adjacent hops link when one's output commitment is the next one's input commitment.
    out["links"] = [
        None
        if a["output_commitment"] is None or b["input_commitment"] is None
        else a["output_commitment"] == b["input_commitment"]
        for a, b in itertools.pairwise(hops)
    ]
    out["challenge"] = _challenge(conn, job_id)
    out["audit"] = _audit(conn, job_id)
    out["transactions"] = [
        {"event": e["event"], "contract": e["contract"], "block": e["block"], "time": e["block_time"],
         "tx_hash": e["tx_hash"], "args": json.loads(e["args"])}
        for e in conn.execute("SELECT * FROM logs WHERE job_id = ? ORDER BY block, log_index", (job_id,))
    ]  # fmt: skip
    return out


def _challenge(conn: sqlite3.Connection, job_id: int) -> dict[str, Any] | None:
    c = conn.execute("SELECT * FROM challenges WHERE job_id = ?", (job_id,)).fetchone()
    if c is None:
        return None
    return {
        "challenger": c["challenger"],
        "bond_wei": c["bond"],
        "status": c["status"],
        "to_challenger_wei": c["to_challenger"],
        "per_node_wei": c["per_node"],
        "to_auditor_wei": c["to_auditor"],
        "tx_hash": c["tx_hash"],
        "settled_tx": c["settled_tx"],
    }


def _audit(conn: sqlite3.Connection, job_id: int) -> dict[str, Any] | None:
    audit = conn.execute("SELECT * FROM audits WHERE job_id = ?", (job_id,)).fetchone()
    if audit is None:
        return None
    panels = []
    for p in conn.execute("SELECT * FROM panels WHERE job_id = ? ORDER BY position", (job_id,)):
        votes = conn.execute(
            "SELECT verifier, status, reward, penalty FROM votes WHERE job_id = ? AND position = ? "
            "ORDER BY verifier",
            (job_id, p["position"]),
        ).fetchall()
        panels.append(
            {
                "position": p["position"],
                "node": p["node"],
                "verdict": None if p["fraud"] is None else ("fraud" if p["fraud"] else "honest"),
                "honest_votes": p["honest_votes"],
                "fraud_votes": p["fraud_votes"],
                "forfeited_wei": p["forfeited"],
                "votes": [
                    {
                        "verifier": v["verifier"],
                        "vote": v["status"],
                        "reward_wei": v["reward"],
                        "penalty_wei": v["penalty"],
                    }
                    for v in votes
                ],
            }
        )
    return {
        "status": audit["status"],
        "fraud_mask": audit["fraud_mask"],
        "slashed_wei": audit["slashed"],
        "rewarded_wei": audit["rewarded"],
        "to_client_wei": audit["to_client"],
        "paid_to": audit["paid_to"],
        "settled_before_verdict": bool(audit["settled_before_verdict"]),
        "opened_tx": audit["opened_tx"],
        "resolved_tx": audit["resolved_tx"],
        "panels": panels,
    }


# ------------------------------------------------------------------ nodes and models

_NODE_STATS = """
SELECT n.*,
    (SELECT COUNT(*) FROM hops h WHERE h.node = n.address) AS jobs_served,
    (SELECT COUNT(*) FROM hops h WHERE h.node = n.address AND h.fraud = 1) AS frauds
FROM nodes n
"""


def _node_dict(row: sqlite3.Row) -> dict[str, Any]:
    earned, withdrawn = int(row["earned"]), int(row["withdrawn"])
    return {
        "address": row["address"],
        "status": row["status"],
        "pooled": bool(row["pooled"]),
        "model_id": row["model_id"],
        "shard": row["shard"],
        "endpoint": row["endpoint"],
        "price_wei": row["price"],
        "stake_wei": row["stake"],
        "unbonding_wei": row["unbonding"],
        "unlock_at": row["unlock_at"],
        "jobs_served": row["jobs_served"],
        "earned_wei": str(earned),
        "withdrawn_wei": str(withdrawn),
        "earnings_wei": str(earned - withdrawn),  # credited, not yet withdrawn (NodeRegistry earnings)
        "slashed_wei": row["slashed"],
        "slashes": row["slash_count"],
        "frauds": row["frauds"],
    }


def list_nodes(
    conn: sqlite3.Connection, filt: NodeFilter | None = None, *, limit: int = 100, offset: int = 0
) -> dict[str, Any]:
    """Nodes ordered by model, shard, price, then address."""
    check_page(limit, offset)
    filt = filt or NodeFilter()
    where: list[str] = []
    params: list[object] = []
    for column, value in (("model_id", filt.model), ("shard", filt.shard), ("status", filt.status)):
        if value is not None:
            where.append(f"n.{column} = ?")
            params.append(value)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = conn.execute(f"SELECT COUNT(*) FROM nodes n {clause}", params).fetchone()[0]
    rows = conn.execute(
        f"{_NODE_STATS} {clause} ORDER BY n.model_id, n.shard, CAST(n.price AS REAL), n.address "
        "LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    return _page([_node_dict(r) for r in rows], total, limit, offset)


def get_node(conn: sqlite3.Connection, address: str, *, jobs: int = 20) -> dict[str, Any]:
    address = _address(address, "node")
    row = conn.execute(f"{_NODE_STATS} WHERE n.address = ?", (address,)).fetchone()
    if row is None:
        raise NotFound(f"node {address} is not in the index (never staked or registered)")
    out = _node_dict(row)
    out["recent_jobs"] = list_jobs(conn, JobFilter(node=address), limit=jobs)["items"]
    return out


def list_models(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [
        {
            "model_id": r["model_id"],
            "name": r["name"],
            "weights_hash": r["weights_hash"],
            "num_layers": r["num_layers"],
            "boundaries": json.loads(r["boundaries"]),
        }
        for r in conn.execute("SELECT * FROM models ORDER BY model_id")
    ]


def status(conn: sqlite3.Connection) -> dict[str, Any]:
    """What the index covers: chain, contracts, last indexed block, counts."""
    synced = schema.get_meta(conn, "synced_block")
    count = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("logs", "jobs", "nodes")}
    return {
        "chain_id": int(schema.get_meta(conn, "chain_id") or 0),
        "market": schema.get_meta(conn, "market"),
        "registry": schema.get_meta(conn, "registry"),
        "court": schema.get_meta(conn, "court"),
        "synced_block": None if synced is None else int(synced),
        "events": count["logs"],
        "jobs": count["jobs"],
        "nodes": count["nodes"],
    }

"""The audit part of `splitmesh demo`: follow a disputed job through the AuditCourt to its verdict.

The nodes do the work by themselves (a route node opens the audit, the drawn verifiers fetch the
transcript, re-execute, commit and reveal their votes, a route node resolves); the demo only watches
the chain and, on a local dev chain, moves the clock past the reveal window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from splitmesh.chain import JobState, JobStatus, Marketplace
from splitmesh.chain.launcher import advance_time
from splitmesh.chain.records import AuditStatus
from splitmesh_cli.output import Output, eth, short
from splitmesh_cli.wait import wait_until


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(
        predicate,
        timeout=timeout,
        message=f"timed out after {timeout:g} s waiting for {what}; see the node logs",
    )


def await_sampling(market: Marketplace, job_id: int, out: Output, timeout: float = 60) -> JobState:
    """A completed job's audit draw is read from the hash of its completing block, after that block: if
    the deployment samples, wait until the draw is known and, when it selected the job, until a node
    called sampleAudit. Returns the job's state then (Committed, or Disputed)."""
    if market.audit_rate_bps() == 0:
        return market.get_job(job_id)

    def settled() -> JobState | None:
        state = market.get_job(job_id)
        if state.status != JobStatus.COMMITTED:
            return state
        available, sampled = market.audit_draw(job_id)
        if available and not sampled:
            out.info(f"    job {job_id} was not drawn for a sampled audit")
            return state
        return None

    return wait_until(
        settled,
        timeout=timeout,
        message=f"job {job_id} was drawn for an audit but no node called sampleAudit within {timeout:g} s; "
        "see the node logs (the verifier role samples its model's jobs)",
    )


def follow_audit(
    market: Marketplace, job_id: int, route: list[str], out: Output, dev_chain: bool
) -> dict[str, Any]:
    """Wait for the audit of a disputed job to be decided; return what the chain says about it."""
    mismatch = bool(market.events("CommitmentsMismatched", jobId=job_id))
    sampled = bool(market.events("AuditSampled", jobId=job_id))
    why = "the commitments of neighbouring hops disagree" if mismatch else "it was drawn for a sampled audit"
    out.info(f"    job {job_id} is held for audit: {why}")
    _wait(lambda: market.get_audit(job_id).status != AuditStatus.NONE, 60, "a node to open the audit")
    audit = market.get_audit(job_id)
    for panel in audit.panels:
        out.info(
            f"    position {panel.position} ({short(route[panel.position])}): verifiers "
            + ", ".join(short(v) for v in panel.verifiers)
        )
    _wait(
        lambda: all(p.committed == len(p.verifiers) for p in market.get_audit(job_id).panels),
        180,
        "every verifier to commit its vote",
    )
    out.info("    every verifier re-executed the shard and committed a sealed vote")
    _wait(
        lambda: all(
            p.honest_votes + p.fraud_votes == len(p.verifiers) for p in market.get_audit(job_id).panels
        ),
        120,
        "every verifier to reveal its vote",
    )
    audit = market.get_audit(job_id)
    if dev_chain:
        now = int(market.w3.eth.get_block("latest")["timestamp"])
        out.info("    votes revealed; advancing the local chain's clock past the reveal window")
        advance_time(market.w3, max(1, audit.reveal_deadline - now + 1))
    else:
        out.info("    votes revealed; waiting for the reveal window to close")
    _wait(lambda: market.get_audit(job_id).status == AuditStatus.RESOLVED, 900, "a node to resolve the audit")
    resolved = market.events("AuditResolved", jobId=job_id)[-1]
    args = resolved["args"]
    receipt = market.w3.eth.get_transaction_receipt(resolved["transactionHash"])
    final = market.get_audit(job_id)
    positions: list[dict[str, Any]] = []
    for panel in final.panels:
        fraud = bool(int(args["fraudMask"]) >> panel.position & 1)
        positions.append(
            {
                "position": panel.position,
                "node": route[panel.position],
                "verifiers": list(panel.verifiers),
                "honest_votes": panel.honest_votes,
                "fraud_votes": panel.fraud_votes,
                "verdict": "fraud" if fraud else "honest",
            }
        )
    out.table(
        ["pos", "node", "honest votes", "fraud votes", "verdict"],
        [
            [p["position"], short(p["node"]), p["honest_votes"], p["fraud_votes"], p["verdict"]]
            for p in positions
        ],
    )
    slashed = int(args["slashed"])
    if slashed:
        out.info(
            f"    slashed {eth(slashed)}: {eth(int(args['rewarded']))} to the verifiers who voted with the "
            f"majority, {eth(int(args['toClient']))} to the client"
        )
    else:
        out.info("    nothing slashed")
    assert market.get_job(job_id).status == JobStatus.FINALIZED
    return {
        "verdict": "fraud" if int(args["fraudMask"]) else "honest",
        "fraud_mask": int(args["fraudMask"]),
        "slashed_wei": slashed,
        "verifier_reward_wei": int(args["rewarded"]),
        "slash_to_client_wei": int(args["toClient"]),
        "reason": "mismatch" if mismatch else "sampled" if sampled else "held",
        "positions": positions,
        "resolve_gas": int(receipt["gasUsed"]),
    }

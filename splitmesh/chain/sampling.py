"""Sampled audits: the draw of a completed job is read from the hash of its completing block, so someone
must call `sampleAudit` after that block and within 256 blocks of it. Route nodes and keepers both do;
the first call wins and the others see the job already Disputed."""

from __future__ import annotations

import logging

from splitmesh.chain.marketplace import Marketplace
from splitmesh.chain.records import JobStatus
from splitmesh.chain.tx import Sender
from splitmesh.errors import ContractRevert

logger = logging.getLogger(__name__)

DRAW_HORIZON_BLOCKS = 256  # EVM blockhash reaches this far back: the draw is lost after it


def sample_if_drawn(market: Marketplace, sender: Sender, job_id: int, packed_terms: bytes) -> bool:
    """Call sampleAudit on a Committed job when its draw selected it. True if this call put the job in
    dispute; False if the draw is not readable yet (same block: call again next block), passed it over,
    is lost (over 256 blocks), or someone else sampled it first."""
    if market.audit_rate_bps() == 0:
        return False
    available, sampled = market.audit_draw(job_id)
    if not available or not sampled:
        return False
    try:
        market.sample_audit(sender, job_id, packed_terms)
    except ContractRevert as exc:
        # Raced by another keeper or node (WrongJobStatus), or the window just closed: nothing to do.
        if exc.name in ("WrongJobStatus", "ChallengeWindowClosed", "DrawUnavailable", "NotSampled"):
            logger.debug("job %d: sampleAudit not needed any more (%s)", job_id, exc.name)
            return False
        raise
    logger.info("job %d: drawn for a sampled audit; it is now Disputed", job_id)
    return True


def draw_pending(market: Marketplace, job_id: int) -> bool:
    """Whether a Committed job's draw is not readable yet but will be (it completed in the latest block):
    a caller should try `sample_if_drawn` again after the next block."""
    if market.get_job(job_id).status != JobStatus.COMMITTED:
        return False
    available, _ = market.audit_draw(job_id)
    return not available and int.from_bytes(market.links_of(job_id), "big") >= market.w3.eth.block_number


def open_audit_if_ready(market: Marketplace, sender: Sender, job_id: int, packed_terms: bytes) -> bool | None:
    """Open the audit of a Disputed job. True: opened now. None: not yet (the dispute block is the latest,
    or its hash was too old and this call only recorded an anchor): call again after the next block.
    False: nothing to do (already opened, not disputed, too late)."""
    try:
        tx = market.open_audit(sender, job_id, packed_terms)
    except ContractRevert as exc:
        if exc.name == "AuditTooEarly":
            return None
        if exc.name in ("AuditAlreadyOpened", "JobNotDisputed", "AuditTooLate"):
            logger.debug("job %d: no audit to open (%s)", job_id, exc.name)
            return False
        raise
    if not market.audit_opened(tx):
        logger.info("job %d: dispute block too old; anchored a new seed block, opening next block", job_id)
        return None
    logger.info("job %d: audit opened", job_id)
    return True

"""Learn from the chain every job this node is matched to, whether or not its client ever connects.

The JobMarket slashes a route node that has not committed by the commit deadline, and a client may
submit a job and never send a frame. So the node reads every `JobSubmitted` event, opens in its store
each job whose route names it (with the job's commit deadline), and the deadline rule (node.service
`end_due`, then the commit duty) commits it in time: with the chains of what was served, or with zero
chains and an empty receipt when nothing was.

The same request also reads the events that change a job this node may be waiting on (a commit, a
dispute, a settlement, a release): the store wakes those jobs (their duty hold ends), so the duty pass
re-reads only the jobs the chain moved, and otherwise holds each job until its next due time
(splitmesh.chain.due). A pass therefore costs one eth_getLogs however many jobs await settlement.

The scan cursor is the last block scanned, kept in the store: a restarted node resumes where it stopped
and catches up on the jobs submitted while it was down. A store without a cursor starts at the block
where this node first registered (so a node that lost its state still finds the jobs it was matched to),
or at the current block when the chain has no registration of it. Each pass reads one block range of
at most `max_blocks` blocks (one eth_getLogs); it re-reads the last `RESCAN_BLOCKS` blocks too, so a
shallow reorg that moves a job to another block does not hide it.
"""

from __future__ import annotations

import logging

from node.deadlines import JobDeadlines
from node.metrics import NodeMetrics
from node.store import NodeStore
from splitmesh.chain import JobStatus, JobTerms, Marketplace
from splitmesh.chain.terms import MalformedTerms
from splitmesh.errors import ChainError

logger = logging.getLogger(__name__)

CURSOR_KEY = "scan_cursor"  # store meta key: the last block whose JobSubmitted events were read
RESCAN_BLOCKS = 6  # blocks below the cursor read again each pass (shallow reorgs)
# JobMarket events after which a job's next duty may be due sooner than its hold (read with JobSubmitted).
WAKE_EVENTS = ("JobCommitted", "JobDisputed", "JobFinalized", "JobCancelled", "JobReleased")


class JobScanner:
    """Opens in the store every job whose route names this node. Blocking: runs in the duty thread."""

    def __init__(
        self,
        market: Marketplace,
        me: str,
        store: NodeStore,
        deadlines: JobDeadlines,
        metrics: NodeMetrics,
        *,
        max_blocks: int = 2000,
    ):
        self.market = market
        self.me = me
        self.store = store
        self.deadlines = deadlines
        self.metrics = metrics
        self.max_blocks = max_blocks
        self.cursor = self._initial_cursor()
        self.metrics.scanned_block.set(self.cursor)

    def _initial_cursor(self) -> int:
        stored = self.store.meta(CURSOR_KEY)
        if stored is not None:
            return int(stored)
        latest = int(self.market.w3.eth.block_number)
        try:
            registered = self.market.events("NodeRegistered", node=self.me)
        except (ChainError, OSError, ValueError) as exc:
            logger.warning(
                "cannot read this node's registrations (%s); scanning for jobs from block %d on", exc, latest
            )
            registered = []
        start = int(registered[0]["blockNumber"]) - 1 if registered else latest
        logger.info(
            "first start on this chain: scanning for jobs matched to this node from block %d", start + 1
        )
        self.store.set_meta(CURSOR_KEY, str(start))
        return start

    def scan(self, latest: int) -> list[int]:
        """Read the next block range (up to `latest`): open the jobs newly matched to this node (returned)
        and wake the held jobs the chain moved."""
        if latest <= self.cursor:
            return []
        first = max(self.cursor - RESCAN_BLOCKS, 0) + 1
        last = min(latest, self.cursor + self.max_blocks)
        logs = self.market.market_events(("JobSubmitted", *WAKE_EVENTS), first, last)
        opened = [job for log in logs if log["event"] == "JobSubmitted" and (job := self._adopt(log))]
        # Only new blocks wake jobs: the rescanned ones' events were seen (a reorg that moves one is caught
        # by the hold's bound, node.duties).
        moved = {
            int(log["args"]["jobId"])
            for log in logs
            if log["event"] != "JobSubmitted" and int(log["blockNumber"]) > self.cursor
        }
        if moved:
            self.store.wake(moved)
        self.store.set_meta(CURSOR_KEY, str(last))
        self.cursor = last
        self.metrics.scanned_block.set(last)
        return opened

    def _adopt(self, log: object) -> int | None:
        args = log["args"]  # type: ignore[index]
        job_id, packed = int(args["jobId"]), bytes(args["terms"])
        try:
            terms = JobTerms.decode(packed)
            position = terms.position_of(self.me)
        except MalformedTerms as exc:
            logger.warning("job %d: undecodable terms in its JobSubmitted event (%s); skipped", job_id, exc)
            return None
        except ValueError:
            return None  # not on this job's route
        if self.store.job(job_id) is not None:
            return None  # known already (its client connected first, or a rescanned block)
        state = self.market.get_job(job_id)
        deadline = self.deadlines.deadline(state.timestamp)
        if state.status != JobStatus.OPEN:
            return None  # settled long ago (a catch-up scan of old blocks)
        if self.deadlines.clock.now() > deadline:
            logger.warning(
                "job %d: matched to this node at position %d, but its commit deadline %d passed while the "
                "node was away; it cannot be committed any more",
                job_id,
                position,
                deadline,
            )
            return None
        self.store.open_job(job_id, position, terms.client, packed, deadline=deadline)
        self.metrics.jobs_matched_total.inc()
        logger.info(
            "job %d: matched to this node at position %d (seen on-chain); commits by chain time %d",
            job_id,
            position,
            self.deadlines.cutoff(deadline),
        )
        return job_id

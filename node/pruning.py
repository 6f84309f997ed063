"""Dropping the transcripts that no audit can ask for any more.

A node keeps every step's frames so that its verifiers can re-execute them. Once the chain shows the
job Finalized or Cancelled and its audit (if any) past its reveal deadline (splitmesh.chain.due's
`auditable`, over the windows read from the contracts), nobody can ask for them: the duty pass drops the
frames and keeps the digests. Only jobs the store has settled (paid, cancelled, failed) are candidates,
and the chain decides each one: a job that failed locally may still be disputed on-chain.
"""

from __future__ import annotations

import logging
import time

from node.metrics import NodeMetrics
from node.store import JobPhase, NodeStore
from splitmesh.chain import JobStatus, Marketplace
from splitmesh.chain.due import Windows, auditable

logger = logging.getLogger(__name__)

PRUNE_BATCH = 16  # settled jobs checked on-chain per pass (one or two calls each)
RECHECK_AFTER = 300  # chain seconds before a job found still auditable is checked again
_SETTLED = (JobPhase.PAID, JobPhase.CANCELLED, JobPhase.FAILED)


class TranscriptPruner:
    """Drops the frames of this node's jobs that can no longer be audited. Blocking (chain calls)."""

    def __init__(
        self,
        market: Marketplace,
        store: NodeStore,
        metrics: NodeMetrics,
        windows: Windows,
        *,
        every: float = 30.0,  # seconds between passes of `maybe_run` (each reads the settled jobs)
    ):
        self.market = market
        self.store = store
        self.metrics = metrics
        self.windows = windows
        self.every = every
        self._done: set[int] = set()  # jobs pruned in this run (their frames are gone)
        self._later: dict[int, int] = {}  # job -> chain second to check it again (it was still auditable)
        self._last_pass = float("-inf")  # monotonic seconds

    def maybe_run(self, now: int) -> int:
        """`run` at most every `every` seconds."""
        if time.monotonic() - self._last_pass < self.every:
            return 0
        self._last_pass = time.monotonic()
        return self.run(now)

    def run(self, now: int) -> int:
        """One pass at chain second `now`; returns the jobs whose transcripts were dropped."""
        due = [
            r.job_id
            for r in self.store.jobs(_SETTLED)
            if r.job_id not in self._done and self._later.get(r.job_id, 0) <= now
        ]
        pruned = 0
        for job_id in due[:PRUNE_BATCH]:
            state = self.market.get_job(job_id)
            audit = None
            if self.market.court is not None and state.status in (JobStatus.FINALIZED, JobStatus.CANCELLED):
                audit = self.market.get_audit(job_id)
            if auditable(state, self.windows, audit=audit, now=now):
                self._later[job_id] = now + RECHECK_AFTER
                continue
            steps = self.store.drop_transcript(job_id)
            self._done.add(job_id)
            self._later.pop(job_id, None)
            if steps:
                pruned += 1
                self.metrics.transcripts_pruned_total.inc()
                logger.info(
                    "job %d: dropped its transcript (%d steps): %s on-chain and past every audit window",
                    job_id,
                    steps,
                    state.status.name.lower(),
                )
        return pruned

"""Chain time and job commit deadlines as the node sees them.

A route node must commit by `submitted_at + commit_timeout` in CHAIN time, or `cancel` slashes it. So the
node stops serving a job `margin` seconds earlier and commits what it served. Chain time is not this
machine's time: a dev chain's clock jumps (evm_increaseTime) and a real chain's drifts. The clock here is
the latest block's timestamp plus the monotonic time elapsed since it was read; the duty pass re-reads
the latest block every pass.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from splitmesh.chain import Marketplace

logger = logging.getLogger(__name__)

MARGIN_SHARE = 0.1  # default margin: this share of the commit timeout ...
MIN_MARGIN = 30  # ... but at least this many seconds (a commit transaction must still get mined) ...
MAX_MARGIN = 600  # ... and at most this many (serving time is what the client pays for)


def default_margin(commit_timeout: int) -> int:
    """Seconds before the commit deadline to stop serving: 10% of the timeout within [30, 600] s, and
    never more than half the timeout."""
    margin = min(max(round(commit_timeout * MARGIN_SHARE), MIN_MARGIN), MAX_MARGIN)
    return min(margin, commit_timeout // 2)


class ChainClock:
    """Chain time: the latest block's timestamp seen, plus the monotonic seconds since. Thread-safe."""

    def __init__(self, block_timestamp: int):
        self._lock = threading.Lock()
        self._anchor = (block_timestamp, time.monotonic())

    def observe(self, block_timestamp: int) -> None:
        with self._lock:
            self._anchor = (block_timestamp, time.monotonic())

    def now(self) -> float:
        """Chain unix seconds now (estimated; a chain whose clock is moved is seen at the next observe)."""
        with self._lock:
            timestamp, seen = self._anchor
        return timestamp + (time.monotonic() - seen)


@dataclass(frozen=True)
class JobDeadlines:
    """When a job's commit deadline falls and when this node stops serving it."""

    market: Marketplace
    clock: ChainClock
    commit_timeout: int  # seconds after submission a route node may commit (JobMarket parameter)
    margin: int  # seconds before the commit deadline the node stops serving a job and commits

    def deadline(self, submitted_at: int) -> int:
        """The last chain second a commit of a job submitted at `submitted_at` is accepted."""
        return submitted_at + self.commit_timeout

    def fetch(self, job_id: int) -> int:
        """The deadline of an Open job, read from the chain. Blocking."""
        return self.deadline(self.market.get_job(job_id).timestamp)

    def cutoff(self, deadline: int) -> int:
        """The chain second from which the node takes no more steps of the job."""
        return deadline - self.margin

    def closed(self, deadline: int) -> bool:
        return self.clock.now() >= self.cutoff(deadline)

    def due_bound(self) -> int:
        """Jobs with a deadline at or before this are past their cutoff now."""
        return int(self.clock.now()) + self.margin

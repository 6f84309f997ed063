"""A node's open job sessions: opened by a job's first step, closed by its end, its deadline cutoff,
idleness or shutdown. A closed job's commit is queued in the store (node.duties sends it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from node.deadlines import JobDeadlines
from node.errors import StepRejected, busy, conflict, gone
from node.jobs import JobContext, JobDirectory
from node.metrics import NodeMetrics
from node.relay import Downstream
from node.store import JobPhase, JobRecord, NodeStore
from splitmesh.errors import ChainError
from splitmesh.protocol import ZERO_CHAIN, NodeCommitment, hex32

logger = logging.getLogger(__name__)

Receipt = tuple[int, int, bytes, bytes]  # (step, tokens, payload hash, client signature)
AT_DEADLINE = "its commit deadline is near"  # why a session ends at its cutoff (node.deadlines)


@dataclass
class JobSession:
    context: JobContext
    deadline: int  # chain unix seconds: the last second the JobMarket accepts this node's commit
    last_step: int | None = None
    steps: int = 0
    input_chain: bytes = ZERO_CHAIN
    output_chain: bytes = ZERO_CHAIN
    receipt: Receipt | None = None
    downstream: Downstream | None = None
    broken: str | None = None  # why the session can take no more steps
    # the code steps are refused with once broken: "state_lost" after a restart (the client fails over)
    broken_code: str = "session_broken"
    pending: Callable[[], None] | None = None  # the last step's bookkeeping, run after its reply
    mode: str | None = None  # "infer" or "train", fixed by the job's first step
    billed: int = 0  # tokens the client has signed for so far (the last answered step's count)
    # direct return (last hop only): sends a result frame on the client's return channel
    returns: Callable[[bytes], Awaitable[None]] | None = None
    returned_chain: bytes | None = None  # the swap-returned cheat's chain of what the client got (cheats)
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def commitment(self, me: str) -> NodeCommitment:
        return NodeCommitment(
            node=me,
            position=self.context.position,
            steps=self.steps,
            input_chain=hex32(self.input_chain),
            output_chain=hex32(self.output_chain),
        )

    def finish(self) -> None:
        """Run the last step's deferred bookkeeping, if any (before the next step or the end)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending()

    def answered(self, step: int, tokens: int, receipt: Receipt) -> None:
        """A step is answered (downstream, or this is the last hop): advance the replay guard and the
        bill, count the step and keep the receipt with the most tokens."""
        self.last_step = step
        self.steps += 1
        self.billed = tokens
        self.last_used = time.monotonic()
        if self.receipt is None or tokens > self.receipt[1]:
            self.receipt = receipt


@dataclass(frozen=True)
class SessionLimits:
    """How many job sessions the node holds at once (node.config documents the defaults)."""

    max_sessions: int = 64  # open sessions; a new job's first step past it gets 503 `busy`
    retry_after: float = 2.0  # seconds suggested to a client refused for capacity


class SessionTable:
    """The open sessions by job id. All methods run on the event loop."""

    def __init__(
        self,
        *,
        store: NodeStore,
        directory: JobDirectory,
        metrics: NodeMetrics,
        deadlines: JobDeadlines,
        release: Callable[[str], None],  # frees a job's caches (KV cache, kept training steps)
        limits: SessionLimits | None = None,
    ):
        self.limits = limits or SessionLimits()
        self.store = store
        self.directory = directory
        self.metrics = metrics
        self.deadlines = deadlines
        self.release = release
        self.open: dict[int, JobSession] = {}

    def get(self, job_id: int) -> JobSession | None:
        return self.open.get(job_id)

    async def for_step(self, context: JobContext) -> JobSession:
        """The job's session, opened by its first step; past the job's cutoff it ends, the step is refused."""
        session = self.open.get(context.job_id) or await self._open(context)
        if self.deadlines.closed(session.deadline):
            await self.end_at_deadline(session)
            raise self.deadline_passed(context.job_id, session.deadline)
        return session

    async def check_open(self, session: JobSession) -> None:
        """Under the session lock: past the job's cutoff, end the session and refuse the step."""
        if self.deadlines.closed(session.deadline):
            await self.close(session.context.job_id, AT_DEADLINE)
            raise self.deadline_passed(session.context.job_id, session.deadline)

    def fail(self, session: JobSession, why: str) -> None:
        """The session can take no more steps; its caches go now, what it served is still committed."""
        session.broken = why
        self.release(str(session.context.job_id))

    async def close(self, job_id: int, why: str) -> None:
        session = self.open.pop(job_id, None)
        if session is None:
            return
        session.broken = f"the job ended on this node: {why}"  # for a step still waiting for the lock
        session.finish()
        self.release(str(job_id))
        if session.downstream is not None:
            await session.downstream.close()
        await asyncio.to_thread(self._mark_ended, job_id)
        self.directory.forget(job_id)
        self.metrics.sessions_active.set(len(self.open))
        logger.info("job %d closed after %d steps (%s); commit queued", job_id, session.steps, why)

    async def close_all(self, why: str) -> None:
        for job_id in list(self.open):
            await self.close(job_id, why)

    async def expire(self, ttl: float) -> list[int]:
        """End sessions idle longer than ttl seconds; their commits are queued like any end."""
        now = time.monotonic()
        stale = [job for job, s in self.open.items() if now - s.last_used > ttl and not s.lock.locked()]
        for job_id in stale:
            await self.close(job_id, f"idle for more than {ttl:g} s")
        return stale

    async def end_due(self) -> list[int]:
        """End every job past its deadline cutoff (node.deadlines): open sessions, and jobs whose client
        never sent a step. Their commits are queued like any end."""
        due = await asyncio.to_thread(self.store.serving_due, self.deadlines.due_bound())
        for job_id in due:
            session = self.open.get(job_id)
            if session is not None:
                await self.end_at_deadline(session)
                continue
            record = await asyncio.to_thread(self._mark_ended, job_id)
            if record is not None and record.phase == JobPhase.SERVING:
                logger.info("job %d: ended before its commit deadline after %d steps", job_id, record.steps)
        return due

    async def refuse_after_cutoff(self, job_id: int) -> None:
        """Before any chain call: a job this node knows to be past its cutoff (from its session or its
        store) is ended here, and the step refused as `job_deadline` even once the job is settled."""
        session = self.open.get(job_id)
        # Off the loop, and without waiting for queued writes: the deadline is written and waited for.
        record = None if session is not None else await asyncio.to_thread(self.store.job, job_id, flush=False)
        deadline = session.deadline if session is not None else record.deadline if record else None
        if deadline is None or not self.deadlines.closed(deadline):
            return
        if session is not None:
            await self.end_at_deadline(session)
        elif record is not None and record.phase == JobPhase.SERVING:
            await asyncio.to_thread(self.store.mark_ended, job_id)
        raise self.deadline_passed(job_id, deadline)

    async def end_at_deadline(self, session: JobSession) -> None:
        async with session.lock:  # a step in flight finishes (and is recorded) first
            await self.close(session.context.job_id, AT_DEADLINE)

    def deadline_passed(self, job_id: int, deadline: int) -> StepRejected:
        return gone(
            "job_deadline",
            f"job {job_id} takes no more steps: its commit deadline is chain time {deadline} and this node "
            f"stops serving {self.deadlines.margin} s before it, to commit what it served; submit a new job",
        )

    def room(self) -> int:
        """Sessions a new job could still open (what /health advertises as capacity)."""
        return max(0, self.limits.max_sessions - len(self.open))

    def admit(self, job_id: int) -> None:
        """Refuse a new job's session when the node is full: a typed 503 `busy` with a retry hint, before
        anything is stored or looked up (the client releases the job and nobody is slashed)."""
        if self.room() == 0:
            self.metrics.sessions_refused_total.inc()
            raise busy(
                "busy",
                f"this node already serves {self.limits.max_sessions} jobs and takes no new one (job "
                f"{job_id}); retry in {self.limits.retry_after:g} s or on another route",
                self.limits.retry_after,
            )

    async def _open(self, context: JobContext) -> JobSession:
        job_id = context.job_id
        self.admit(job_id)
        record = await asyncio.to_thread(self.store.job, job_id)
        if record is None or record.deadline is None:
            deadline = await asyncio.to_thread(self._fetch_deadline, job_id)
            record = await asyncio.to_thread(self.store.job, job_id)
        else:
            deadline = record.deadline
        if (session := self.open.get(job_id)) is not None:
            return session  # a concurrent first step opened it meanwhile
        if self.deadlines.closed(deadline):
            if record is not None and record.phase == JobPhase.SERVING:
                await asyncio.to_thread(self.store.mark_ended, job_id)  # commits what was served
            raise self.deadline_passed(job_id, deadline)
        if record is None or record.deadline is None:
            record = await asyncio.to_thread(
                self.store.open_job, job_id, context.position, context.client, context.packed_terms, deadline
            )
            if (session := self.open.get(job_id)) is not None:
                return session
        if record.phase != JobPhase.SERVING:
            raise conflict("job_ended", f"job {job_id} already ended on this node ({record.phase.value})")
        session = JobSession(context, deadline)
        if record.steps:
            # Restarted mid-job: the KV cache is gone, so the job cannot continue here; end it with what
            # was served so the work done so far is still committed and paid.
            session.broken = (
                "the node restarted during this job and lost its KV cache; it commits what it served. "
                "Continue on a new job without this node (the client SDK fails over by itself)"
            )
            session.broken_code = "state_lost"
            session.last_step, session.steps = record.last_step, record.steps
            session.input_chain, session.output_chain = record.input_chain, record.output_chain
            session.receipt = record.receipt
        self.open[job_id] = session
        self.metrics.sessions_active.set(len(self.open))
        return session

    def _mark_ended(self, job_id: int) -> JobRecord | None:
        """End the job in the store if it is still serving (commits what it served). Blocking."""
        record = self.store.job(job_id)
        if record is not None and record.phase == JobPhase.SERVING:
            self.store.mark_ended(job_id)
        return record

    def _fetch_deadline(self, job_id: int) -> int:
        try:
            return self.deadlines.fetch(job_id)
        except ChainError as exc:
            raise StepRejected(
                503, "chain_unavailable", f"cannot read job {job_id} from the chain: {exc}"
            ) from exc

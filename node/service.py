"""The node's job service, independent of the transport: steps, ends of jobs and audit transcripts.

A step goes through the step gate (node.gate: decode, job, signatures, replay and token guards) and
then its kind's compute (node.infer_steps, node.train_steps); sessions open, end and expire in
node.sessions. The end of a job is relayed down the route and its commit queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import torch
from eth_utils import keccak, to_checksum_address

from node.admission import BoundedWork, ExpiringMap
from node.batcher import BatchLimits, StepBatcher
from node.cheats import Cheat
from node.deadlines import JobDeadlines
from node.errors import StepRejected, bad_request, conflict, forbidden, not_found, unauthorized
from node.gate import StepGate, StepKind
from node.infer_steps import InferenceStep
from node.jobs import JobDirectory
from node.metrics import NodeMetrics
from node.sessions import JobSession, SessionLimits, SessionTable
from node.store import JobPhase, NodeStore
from node.train_steps import TrainingStep
from splitmesh.audit.transcript import encode_transcript
from splitmesh.model.runner import ShardRunner
from splitmesh.model.training import ShardTrainer
from splitmesh.protocol import (
    END_PAYLOAD,
    END_STEP,
    MAX_REQUEST_VALIDITY,
    RETURN_PAYLOAD,
    RETURN_STEP,
    EndMeta,
    EndResult,
    NodeCommitment,
    ReturnHello,
    StepMeta,
    hex32,
    unhex,
)
from splitmesh.signing import RelaySigner, recover_transcript_requester
from splitmesh.wire import encode_frame

logger = logging.getLogger(__name__)


class NodeService:
    """Serves job sessions for one shard. All methods run on the event loop."""

    def __init__(
        self,
        *,
        address: str,
        chain_id: int,
        market_address: str,
        runner: ShardRunner,
        directory: JobDirectory,
        store: NodeStore,
        metrics: NodeMetrics,
        max_frame_bytes: int,
        relay_signer: RelaySigner,
        deadlines: JobDeadlines,
        relay_timeout: float = 60.0,
        lookups: BoundedWork | None = None,  # chain lookups of jobs not seen yet (node.admission)
        compute: BoundedWork | None = None,  # layer compute (node.admission)
        send_timeout: float = 30.0,  # seconds a relayed frame may wait for a next hop that stops reading
        session_limits: SessionLimits | None = None,  # how many jobs at once (node.sessions)
        batching: BatchLimits | None = None,  # steps of concurrent sessions run as one batch (node.batcher)
    ):
        self.address = address
        self.chain_id = chain_id
        self.market_address = market_address
        self.runner = runner
        self.store = store
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes
        self.relay_signer = relay_signer
        # Who besides the client may read a job's transcript: (job, position, requester) -> bool.
        self.transcript_policy: Callable[[int, int, str], bool] | None = None
        self.cheat: Cheat | None = None  # demo/test only: see node.cheats
        self.skip_runner: ShardRunner | None = None  # the half-shard runner of the skip-layers cheat
        self.trainer: ShardTrainer | None = None  # answers training steps (node.train_steps); None: refused
        self.accepting = True
        self.table = SessionTable(
            store=store,
            directory=directory,
            metrics=metrics,
            deadlines=deadlines,
            release=self._release,
            limits=session_limits,
        )
        self.gate = StepGate(
            address=address,
            chain_id=chain_id,
            market_address=market_address,
            hidden_size=runner.hidden_size,
            dtype_name=str(runner.dtype).removeprefix("torch."),
            max_frame_bytes=max_frame_bytes,
            directory=directory,
            sessions=self.table,
            store=store,
            metrics=metrics,
            relay_signer=relay_signer,
            relay_timeout=relay_timeout,
            lookups=lookups,
            compute=compute,
            send_timeout=send_timeout,
        )
        self._auditors = ExpiringMap(30.0)  # (job, requester) -> may read the transcript
        self.batcher = StepBatcher(runner, self.gate.compute, batching, metrics.batch_steps.observe)

    @property
    def sessions(self) -> dict[int, JobSession]:
        """The open sessions by job id."""
        return self.table.open

    def capacity(self) -> dict[str, float | int]:
        """What a client reads before it locks escrow (GET /health `capacity`): room for new jobs now, and
        the compute queue. `free_sessions` 0 means a new job's first step would get 503 `busy`."""
        compute = self.gate.compute
        return {
            "free_sessions": self.table.room() if self.accepting else 0,
            "max_sessions": self.table.limits.max_sessions,
            "sessions": len(self.table.open),
            "queued_steps": compute.waiting,
            "max_queued_steps": compute.pending,
            "retry_after": self.table.limits.retry_after,
        }

    # ------------------------------------------------------------------ steps

    async def handle_step(
        self, data: bytes, job_id: int, report: Callable[[StepRejected], Awaitable[None]] | None = None
    ) -> bytes | None:
        """One step frame in, the (relayed) result frame out (None: a direct-return step, answered on
        the client's return channel); StepRejected on anything wrong. `report` passes a later rejection
        upstream on the stream the step came in on (direct return only).

        Rejections are counted where they become replies (node.server), so every route counts them.
        """
        received = time.perf_counter()
        if not self.accepting:
            raise StepRejected(503, "shutting_down", f"node {self.address} is shutting down")
        meta, tensor = self.gate.decode(data, job_id)
        refused = self.gate.directory.refusal(job_id, unhex(meta.terms) if meta.terms else None)
        if refused is not None:  # the chain said no moments ago: no store read, no chain call
            raise refused
        await self.table.refuse_after_cutoff(job_id)
        return await self.gate.admit(self._kind(meta), meta, tensor, data, received, report)

    async def open_return(
        self, hello: ReturnHello, job_id: int, send: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """The client's return channel for a job this node is the last hop of: `send` carries its
        direct-return results from now on (a later channel of the same client replaces it)."""
        if hello.job != job_id:
            raise bad_request("job_mismatch", f"hello is for job {hello.job}, sent to job {job_id}'s path")
        context, session = await self.gate.open(
            job_id, hello.terms, RETURN_STEP, 0, RETURN_PAYLOAD, hello.signature
        )
        if not context.is_last:
            raise conflict(
                "not_last_hop", f"node {self.address} is not the last hop of job {job_id}; it returns nothing"
            )
        session.returns = send

    def close_return(self, job_id: int, send: Callable[[bytes], Awaitable[None]]) -> None:
        """The return channel `send` closed: forget it unless a newer one replaced it."""
        session = self.table.get(job_id)
        if session is not None and session.returns is send:
            session.returns = None

    def _kind(self, meta: StepMeta) -> StepKind:
        if meta.mode == "infer":
            if self.skip_runner is not None:  # the skip-layers cheat: its half runner, unbatched
                return InferenceStep(self.gate, self.skip_runner, self.cheat)
            return InferenceStep(self.gate, self.runner, self.cheat, self.batcher)
        if self.trainer is None:
            raise StepRejected(
                501, "training_unsupported", f"node {self.address} does not serve training steps"
            )
        return TrainingStep(self.gate, self.trainer, self.cheat)

    def _release(self, session_id: str) -> None:
        """Free a job's caches: its KV cache and its kept training steps."""
        self.runner.close(session_id)
        if self.trainer is not None:
            self.trainer.evict(session_id)

    # ------------------------------------------------------------------ end of job

    async def handle_end(self, meta: EndMeta, job_id: int) -> EndResult:
        """The client's signed end: relay it, close the session, queue the on-chain commit."""
        if meta.job != job_id:
            raise bad_request("job_mismatch", f"end is for job {meta.job}, sent to job {job_id}'s path")
        context, session = await self.gate.open(
            job_id, meta.terms, END_STEP, meta.tokens, END_PAYLOAD, meta.signature
        )
        async with session.lock:
            session.finish()
            downstream: list[NodeCommitment] = []
            if not context.is_last:
                relayed = meta.model_copy(update={"terms": hex32(context.packed_terms)})
                try:
                    downstream = (await self.gate.downstream(session).end(relayed)).commitments
                except StepRejected as exc:
                    logger.warning(
                        "job %d: end not acknowledged downstream (%s); committing anyway", job_id, exc
                    )
            if self.cheat == Cheat.SWAP_RETURNED and downstream and session.returned_chain is not None:
                last = downstream[-1].model_copy(update={"output_chain": hex32(session.returned_chain)})
                downstream = [*downstream[:-1], last]
            if self.cheat == Cheat.OVERBILL and session.steps:
                self._invent_step(session)
            if meta.tokens > 0 and (session.receipt is None or meta.tokens > session.receipt[1]):
                session.receipt = (END_STEP, meta.tokens, END_PAYLOAD, unhex(meta.signature))
                self.store.set_receipt(job_id, session.receipt)
            mine = session.commitment(self.address)
            await self.table.close(job_id, "ended by the client")
            return EndResult(job=job_id, commitments=[mine, *downstream])

    def _invent_step(self, session: JobSession) -> None:
        """The overbill cheat: fold a step the client never sent into the committed transcript."""
        assert session.last_step is not None and session.receipt is not None
        start = session.receipt[1]
        fake = torch.randn(1, 1, self.runner.hidden_size, dtype=self.runner.dtype)
        fake_frame = encode_frame(fake)
        digest = keccak(fake_frame)
        forged = self.relay_signer.sign(session.context.job_id, session.last_step + 1, 0, digest)
        meta = StepMeta(
            job=session.context.job_id,
            step=session.last_step + 1,
            tokens=start + 1,
            start=start,
            payload_hash=hex32(digest),
            signature=hex32(forged),
        )
        receipt = (meta.step, meta.tokens, digest, forged)
        session.last_step = meta.step
        session.steps += 1
        self.gate.fold(
            session, meta, receipt, encode_frame(fake, meta.model_dump()), digest, fake_frame, digest
        )
        self.metrics.tokens_total.inc(1)
        self.metrics.step_seconds.observe(0.0)

    # ------------------------------------------------------------------ session lifecycle

    async def expire(self, ttl: float) -> list[int]:
        """End sessions idle longer than ttl seconds; their commits are queued like any end."""
        return await self.table.expire(ttl)

    async def end_due(self) -> list[int]:
        """End every job past its deadline cutoff; their commits are queued like any end."""
        return await self.table.end_due()

    async def close_all(self, why: str) -> None:
        self.accepting = False
        await self.table.close_all(why)

    # ------------------------------------------------------------------ audit transcripts

    async def transcript(self, job_id: int, requester: str, deadline: int, signature: str) -> bytes:
        """The job's transcript (node.transcripts format) for its client or an auditor it names.

        A stranger's request is refused before it costs a store flush or a chain call: the deadline and
        the signature are checked first, the record is read without waiting for queued writes (a job
        that may be read is not serving, and its end was written and waited for) and auditor lookups
        go through the bounded chain-lookup pool, cached briefly.
        """
        now = time.time()
        if not now <= deadline <= now + MAX_REQUEST_VALIDITY:
            raise bad_request(
                "bad_deadline", f"request deadline must be within {MAX_REQUEST_VALIDITY} s from now"
            )
        record = await asyncio.to_thread(self.store.job, job_id, flush=False)
        if record is None:
            raise not_found(f"this node has no record of job {job_id}")
        self._check_requester(job_id, record.position, requester, deadline, signature)
        if not await self._may_read(job_id, record.position, requester, record.client):
            raise forbidden(
                "not_auditor", f"{requester} is neither job {job_id}'s client nor one of its auditors"
            )
        if self.cheat == Cheat.WITHHOLD:
            raise forbidden("withheld", f"node {self.address} does not hand over job {job_id}'s transcript")
        if record.phase == JobPhase.SERVING:
            raise conflict("job_running", f"job {job_id} is still being served")
        steps = await asyncio.to_thread(self.store.transcript, job_id)
        if any(not s.input_frame or not s.output_frame for s in steps):
            raise StepRejected(410, "transcript_pruned", f"job {job_id}'s transcript is no longer kept")
        return encode_transcript([(s.input_frame, s.output_frame) for s in steps])

    def _check_requester(
        self, job_id: int, position: int, requester: str, deadline: int, signature: str
    ) -> None:
        try:
            signer = recover_transcript_requester(
                self.chain_id, self.market_address, job_id, position, requester, deadline, unhex(signature)
            )
        except ValueError as exc:
            raise unauthorized(f"transcript request signature is malformed: {exc}") from exc
        if signer != bytes.fromhex(to_checksum_address(requester)[2:]):
            raise unauthorized("the transcript request is not signed by the requester it names")

    async def _may_read(self, job_id: int, position: int, requester: str, client: str) -> bool:
        """The job's client may; anyone else only if the transcript policy (a chain call) says so."""
        requester = to_checksum_address(requester)
        if requester == client:
            return True
        if self.transcript_policy is None:
            return False
        known = self._auditors.get((job_id, requester))
        if known is None:
            known = await self.gate.lookups.run(self.transcript_policy, job_id, position, requester)
            self._auditors.put((job_id, requester), known)
        return bool(known)


__all__ = ["NodeService"]

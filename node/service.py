"""The node's step logic, independent of the transport: verify, run the shard, relay, commit to chains.

Every step is checked before any layer runs: the frame decodes (dtype, shape, size, finite), the meta
parses, the job is open on-chain and routes through this node at the right shard, the envelope is
signed by the job's client, the step number is new, the token count matches the positions, and on
the first hop the payload hash matches the received tensor. Only then does the KV cache change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from eth_utils import keccak, to_checksum_address
from pydantic import ValidationError

from node.cheats import Cheat, garbage_like, tamper
from node.deadlines import JobDeadlines
from node.errors import StepRejected, bad_request, conflict, forbidden, gone, not_found, unauthorized
from node.jobs import JobContext, JobDirectory
from node.metrics import NodeMetrics
from node.relay import Downstream
from node.store import JobPhase, NodeStore
from node.training import training_step
from splitmesh.audit.transcript import encode_transcript
from splitmesh.errors import ChainError
from splitmesh.model.errors import BadHiddenStates, BadPositions, CacheFull, UnknownSession
from splitmesh.model.runner import ShardRunner
from splitmesh.model.training import ShardTrainer
from splitmesh.protocol import (
    END_PAYLOAD,
    END_STEP,
    MAX_REQUEST_VALIDITY,
    ZERO_CHAIN,
    EndMeta,
    EndResult,
    HopTiming,
    NodeCommitment,
    StepMeta,
    StepResult,
    extend_chain,
    hex32,
    unhex,
)
from splitmesh.signing import (
    RelaySigner,
    recover_envelope_address,
    recover_relay_address,
    recover_transcript_requester,
)
from splitmesh.wire import FrameError, FrameTooLarge, decode_frame, encode_frame

logger = logging.getLogger(__name__)

INLINE_TOKENS = 8  # steps this small run on the event loop: a thread handoff costs more than it saves
Receipt = tuple[int, int, bytes, bytes]
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
    pending: Callable[[], None] | None = None  # the last step's bookkeeping, run after its reply
    mode: str | None = None  # "infer" or "train", fixed by the job's first step
    billed: int = 0  # training: tokens processed so far (each train and backward step adds its length)
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


@dataclass(frozen=True)
class _Computed:
    """A step this node has run its layers on, not yet answered downstream."""

    meta: StepMeta
    data: bytes  # the step frame as received
    hidden: torch.Tensor  # [1, q, hidden] input
    input_digest: bytes
    output: torch.Tensor  # [1, q, hidden]
    receipt: Receipt
    compute_ms: float


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
    ):
        self.address = address
        self.chain_id = chain_id
        self.market_address = market_address
        self.runner = runner
        self.directory = directory
        self.store = store
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes
        self.relay_timeout = relay_timeout
        self.relay_signer = relay_signer
        self.deadlines = deadlines
        # Who besides the client may read a job's transcript: (job, position, requester) -> bool.
        self.transcript_policy: Callable[[int, int, str], bool] | None = None
        self.cheat: Cheat | None = None  # demo/test only: see node.cheats
        self.skip_runner: ShardRunner | None = None  # the half-shard runner of the skip-layers cheat
        self.trainer: ShardTrainer | None = None  # answers training steps (node.training); None: refused
        self.sessions: dict[int, JobSession] = {}
        self.accepting = True
        self._dtype_name = str(runner.dtype).removeprefix("torch.")

    # ------------------------------------------------------------------ steps

    async def handle_step(self, data: bytes, job_id: int) -> bytes:
        """One step frame in, the (relayed) result frame out; StepRejected on anything wrong.

        Rejections are counted where they become replies (node.server), so every route counts them.
        """
        return await self._step(data, job_id, time.perf_counter())

    async def _step(self, data: bytes, job_id: int, received: float) -> bytes:
        if not self.accepting:
            raise StepRejected(503, "shutting_down", f"node {self.address} is shutting down")
        try:
            frame = decode_frame(
                data,
                max_bytes=self.max_frame_bytes,
                allowed_dtypes={self._dtype_name},
                expect_shape=(1, None, self.runner.hidden_size),
            )
        except FrameTooLarge as exc:
            raise StepRejected(413, "frame_too_large", str(exc)) from exc
        except FrameError as exc:
            raise bad_request(_frame_code(exc), str(exc)) from exc
        try:
            meta = StepMeta.model_validate(frame.meta)
        except ValidationError as exc:
            raise bad_request("bad_meta", f"step meta rejected: {_first_error(exc)}") from exc
        if meta.job != job_id:
            raise bad_request("job_mismatch", f"frame is for job {meta.job}, sent to job {job_id}'s path")
        await self._refuse_after_cutoff(job_id)
        if meta.mode != "infer":
            return await training_step(self, frame, meta, data, job_id, received)
        context = await self._context(meta.job, meta.terms)
        self._check_signature(context, meta.step, meta.tokens, unhex(meta.payload_hash), meta.signature)
        session = await self._session(context)
        hidden = frame.tensor  # [1, q, hidden]
        q = int(hidden.shape[1])
        async with session.lock:
            self._finish(session)
            await self._gate(session)
            if session.broken is not None:
                raise conflict("session_broken", session.broken)
            if session.mode == "train":
                raise conflict("mode_mismatch", f"job {job_id} is a training job on this node")
            session.mode = "infer"
            if session.last_step is not None and meta.step <= session.last_step:
                raise conflict(
                    "replayed_step",
                    f"step {meta.step} of job {job_id} is not new (last step was {session.last_step})",
                )
            if meta.tokens != meta.start + q:
                raise bad_request(
                    "bad_tokens",
                    f"envelope counts {meta.tokens} tokens but the frame ends at {meta.start + q}",
                )
            if meta.tokens > context.terms.max_tokens:
                raise bad_request(
                    "over_max_tokens",
                    f"{meta.tokens} tokens exceed the job's max of {context.terms.max_tokens}",
                )
            payload_hash = unhex(meta.payload_hash)
            input_digest = keccak(encode_frame(hidden))
            if context.position == 0:
                if meta.relay is not None:
                    raise bad_request("unexpected_relay", "the first hop takes frames from the client only")
                if input_digest != payload_hash:
                    raise bad_request(
                        "payload_mismatch", "payload hash in the envelope does not match the frame"
                    )
            else:
                self._check_relay(context, meta, input_digest)
            positions = torch.arange(meta.start, meta.start + q)
            compute_started = time.perf_counter()
            output = await self._forward(str(job_id), hidden, positions)
            if self.cheat == Cheat.GARBAGE:
                output = garbage_like(output)
            compute_ms = (time.perf_counter() - compute_started) * 1e3
            # The step is valid: advance the replay guard now, hash and persist off the critical path.
            session.last_step = meta.step
            session.last_used = time.monotonic()
            receipt = (meta.step, meta.tokens, payload_hash, unhex(meta.signature))
            done = _Computed(meta, data, hidden, input_digest, output, receipt, compute_ms)
            if not context.is_last:
                return await self._relay(session, done, received)
            self._accept(session, receipt)
            sent = output[:, -1:] if meta.want == "last" else output
            handle_ms = (time.perf_counter() - received) * 1e3
            mine = HopTiming(
                node=self.address, position=context.position, compute_ms=compute_ms, handle_ms=handle_ms
            )
            reply = encode_frame(sent, StepResult(job=job_id, step=meta.step, hops=[mine]).model_dump())
            session.pending = partial(
                self._record, session, meta, data, hidden, input_digest, sent, receipt, compute_ms, handle_ms
            )
            # Runs once the reply is on the wire (the loop's next turn), before the next step.
            asyncio.get_running_loop().call_soon(self._finish, session)
            return reply

    @staticmethod
    def _accept(session: JobSession, receipt: Receipt) -> None:
        """The step is done (answered downstream, or this is the last hop): count it and keep its receipt."""
        session.steps += 1
        if session.receipt is None or receipt[1] > session.receipt[1]:
            session.receipt = receipt

    async def _relay(self, session: JobSession, done: _Computed, received: float) -> bytes:
        """Send a computed step on to the next hop and return the route's answer.

        The step enters this node's chains and bill only once the next hop has answered it: an output
        that never arrived must not be committed as sent, or this node's output chain would not link
        with the next hop's input chain although both were honest. (If the link breaks after the next
        hop took the step but before its answer came back, the next hop keeps a step this node drops;
        the two chains then differ by that one step, which nothing on this side can tell apart.)
        """
        context, meta, output = session.context, done.meta, done.output
        output_frame = encode_frame(output)
        output_digest = keccak(output_frame)
        forwarded = tamper(output) if self.cheat == Cheat.TAMPER_RELAY else output
        # The relay signature covers exactly the tensor sent on (a tampering node must sign its lie).
        relay_digest = output_digest if forwarded is output else keccak(encode_frame(forwarded))
        relay_signature = self.relay_signer.sign(context.job_id, meta.step, context.position, relay_digest)
        relayed = meta.model_copy(
            update={
                "terms": hex32(context.packed_terms) if session.steps == 0 else None,
                "relay": hex32(relay_signature),
            }
        )
        relay_started = time.perf_counter()
        try:
            await self._downstream(session).send(encode_frame(forwarded, relayed.model_dump()))
        except StepRejected as exc:
            self._route_failed(session, exc)
            raise
        sent, downstream_hops = await self._relay_result(session)
        relay_ms = (time.perf_counter() - relay_started) * 1e3
        self._accept(session, done.receipt)
        self._record(
            session,
            meta,
            done.data,
            done.hidden,
            done.input_digest,
            output,
            done.receipt,
            done.compute_ms,
            None,
            output_frame,
            output_digest,
        )
        handle_ms = (time.perf_counter() - received) * 1e3
        self.metrics.handle_seconds.observe(handle_ms / 1e3)
        mine = HopTiming(
            node=self.address,
            position=context.position,
            compute_ms=done.compute_ms,
            handle_ms=handle_ms,
            relay_ms=relay_ms,
        )
        result = StepResult(job=context.job_id, step=meta.step, hops=[mine, *downstream_hops])
        return encode_frame(sent, result.model_dump())

    def _record(
        self,
        session: JobSession,
        meta: StepMeta,
        data: bytes,
        hidden: torch.Tensor,
        input_digest: bytes,
        sent: torch.Tensor,
        receipt: Receipt,
        compute_ms: float,
        handle_ms: float | None,
        output_frame: bytes | None = None,
        output_digest: bytes | None = None,
    ) -> None:
        """Fold the step into the hash chains, queue it for SQLite, count it."""
        if output_frame is None:
            output_frame = encode_frame(sent)
        if output_digest is None:
            output_digest = keccak(output_frame)
        self.fold_step(session, meta, input_digest, output_digest, receipt, data, output_frame)
        self.metrics.tokens_total.inc(int(hidden.shape[1]))
        self.metrics.step_seconds.observe(compute_ms / 1e3)
        if handle_ms is not None:
            self.metrics.handle_seconds.observe(handle_ms / 1e3)

    def fold_step(
        self,
        session: JobSession,
        meta: StepMeta,
        input_digest: bytes,
        output_digest: bytes,
        receipt: Receipt,
        input_frame: bytes,
        output_frame: bytes,
    ) -> None:
        """Extend the session's hash chains by one step and queue the step for SQLite (inference and
        training steps alike)."""
        session.input_chain = extend_chain(session.input_chain, meta.step, input_digest)
        session.output_chain = extend_chain(session.output_chain, meta.step, output_digest)
        self.store.record_step(
            meta.job,
            meta.step,
            meta.start,
            meta.tokens,
            input_digest,
            output_digest,
            session.input_chain,
            session.output_chain,
            receipt,
            input_frame=input_frame,
            output_frame=output_frame,
        )
        self.metrics.steps_total.inc()

    @staticmethod
    def _finish(session: JobSession) -> None:
        pending, session.pending = session.pending, None
        if pending is not None:
            pending()

    async def _forward(self, session_id: str, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        runner = self.skip_runner if self.skip_runner is not None else self.runner
        try:
            if hidden.shape[1] <= INLINE_TOKENS:
                return runner.forward(session_id, hidden, positions)
            return await asyncio.to_thread(runner.forward, session_id, hidden, positions)
        except BadPositions as exc:
            raise conflict("bad_positions", str(exc)) from exc
        except BadHiddenStates as exc:
            raise bad_request("bad_shape", str(exc)) from exc
        except CacheFull as exc:
            raise StepRejected(503, "busy", str(exc)) from exc

    def _downstream(self, session: JobSession) -> Downstream:
        context = session.context
        assert context.next_endpoint is not None
        if session.downstream is None:
            session.downstream = Downstream(context.next_endpoint, context.job_id, timeout=self.relay_timeout)
        return session.downstream

    async def _relay_result(self, session: JobSession) -> tuple[torch.Tensor, list[HopTiming]]:
        context = session.context
        try:
            reply = await self._downstream(session).receive()
        except StepRejected as exc:
            self._route_failed(session, exc)
            raise
        try:
            result = decode_frame(reply, max_bytes=self.max_frame_bytes, allowed_dtypes={self._dtype_name})
            meta = StepResult.model_validate(result.meta)
        except (FrameError, ValidationError) as exc:
            session.broken = f"node {context.next_node} returned a malformed result: {exc}"
            raise StepRejected(502, "bad_downstream_reply", session.broken) from exc
        return result.tensor, meta.hops

    def _route_failed(self, session: JobSession, exc: StepRejected) -> None:
        # This node's cache advanced, the next one's may or may not have: the job cannot continue here.
        session.broken = f"the route failed downstream of node {self.address}: {exc.reason}"
        self.runner.close(str(session.context.job_id))

    # ------------------------------------------------------------------ end of job

    async def handle_end(self, meta: EndMeta, job_id: int) -> EndResult:
        """The client's signed end: relay it, close the session, queue the on-chain commit."""
        if meta.job != job_id:
            raise bad_request("job_mismatch", f"end is for job {meta.job}, sent to job {job_id}'s path")
        context = await self._context(job_id, meta.terms)
        self._check_signature(context, END_STEP, meta.tokens, END_PAYLOAD, meta.signature)
        session = await self._session(context)
        async with session.lock:
            self._finish(session)
            downstream: list[NodeCommitment] = []
            if not context.is_last:
                relayed = meta.model_copy(update={"terms": hex32(context.packed_terms)})
                try:
                    downstream = (await self._downstream(session).end(relayed)).commitments
                except StepRejected as exc:
                    logger.warning(
                        "job %d: end not acknowledged downstream (%s); committing anyway", job_id, exc
                    )
            if self.cheat == Cheat.OVERBILL and session.steps:
                self._invent_step(session)
            if meta.tokens > 0 and (session.receipt is None or meta.tokens > session.receipt[1]):
                session.receipt = (END_STEP, meta.tokens, END_PAYLOAD, unhex(meta.signature))
                self.store.set_receipt(job_id, session.receipt)
            mine = session.commitment(self.address)
            await self._close(job_id, "ended by the client")
            return EndResult(job=job_id, commitments=[mine, *downstream])

    def _invent_step(self, session: JobSession) -> None:
        """The overbill cheat: fold a step the client never sent into the committed transcript."""
        assert session.last_step is not None and session.receipt is not None
        start = session.receipt[1]
        fake = torch.randn(1, 1, self.runner.hidden_size, dtype=self.runner.dtype)
        digest = keccak(encode_frame(fake))
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
        self._record(
            session, meta, encode_frame(fake, meta.model_dump()), fake, digest, fake, receipt, 0.0, None
        )

    async def _close(self, job_id: int, why: str) -> None:
        session = self.sessions.pop(job_id, None)
        if session is None:
            return
        session.broken = f"the job ended on this node: {why}"  # for a step still waiting for the lock
        self._finish(session)
        self.runner.close(str(job_id))
        if self.trainer is not None:
            self.trainer.evict(str(job_id))
        if session.downstream is not None:
            await session.downstream.close()
        record = self.store.job(job_id)
        if record is not None and record.phase == JobPhase.SERVING:
            self.store.mark_ended(job_id)
        self.directory.forget(job_id)
        self.metrics.sessions_active.set(len(self.sessions))
        logger.info("job %d closed after %d steps (%s); commit queued", job_id, session.steps, why)

    async def expire(self, ttl: float) -> list[int]:
        """End sessions idle longer than ttl seconds; their commits are queued like any end."""
        now = time.monotonic()
        stale = [job for job, s in self.sessions.items() if now - s.last_used > ttl and not s.lock.locked()]
        for job_id in stale:
            await self._close(job_id, f"idle for more than {ttl:g} s")
        return stale

    async def end_due(self) -> list[int]:
        """End every job past its deadline cutoff (node.deadlines): open sessions, and jobs whose client
        never sent a step. Their commits are queued like any end."""
        due = await asyncio.to_thread(self.store.serving_due, self.deadlines.due_bound())
        for job_id in due:
            session = self.sessions.get(job_id)
            if session is not None:
                await self._end_at_deadline(session)
                continue
            record = self.store.job(job_id)
            if record is not None and record.phase == JobPhase.SERVING:
                self.store.mark_ended(job_id)
                logger.info("job %d: ended before its commit deadline after %d steps", job_id, record.steps)
        return due

    async def _refuse_after_cutoff(self, job_id: int) -> None:
        """Before any chain call: a job this node knows to be past its cutoff (from its session or its
        store) is ended here, and the step refused as `job_deadline` even once the job is settled."""
        session = self.sessions.get(job_id)
        record = self.store.job(job_id) if session is None else None
        deadline = session.deadline if session is not None else record.deadline if record else None
        if deadline is None or not self.deadlines.closed(deadline):
            return
        if session is not None:
            await self._end_at_deadline(session)
        elif record is not None and record.phase == JobPhase.SERVING:
            self.store.mark_ended(job_id)
        raise self._deadline_passed(job_id, deadline)

    async def _end_at_deadline(self, session: JobSession) -> None:
        async with session.lock:  # a step in flight finishes (and is recorded) first
            await self._close(session.context.job_id, AT_DEADLINE)

    async def _gate(self, session: JobSession) -> None:
        """Under the session lock: past the job's cutoff, end the session and refuse the step."""
        if self.deadlines.closed(session.deadline):
            await self._close(session.context.job_id, AT_DEADLINE)
            raise self._deadline_passed(session.context.job_id, session.deadline)

    def _deadline_passed(self, job_id: int, deadline: int) -> StepRejected:
        return gone(
            "job_deadline",
            f"job {job_id} takes no more steps: its commit deadline is chain time {deadline} and this node "
            f"stops serving {self.deadlines.margin} s before it, to commit what it served; submit a new job",
        )

    async def close_all(self, why: str) -> None:
        self.accepting = False
        for job_id in list(self.sessions):
            await self._close(job_id, why)

    # ------------------------------------------------------------------ audit transcripts

    async def transcript(self, job_id: int, requester: str, deadline: int, signature: str) -> bytes:
        """The job's transcript (node.transcripts format) for its client or an auditor it names."""
        record = await asyncio.to_thread(self.store.job, job_id)
        if record is None:
            raise not_found(f"this node has no record of job {job_id}")
        now = time.time()
        if not now <= deadline <= now + MAX_REQUEST_VALIDITY:
            raise bad_request(
                "bad_deadline", f"request deadline must be within {MAX_REQUEST_VALIDITY} s from now"
            )
        try:
            signer = recover_transcript_requester(
                self.chain_id,
                self.market_address,
                job_id,
                record.position,
                requester,
                deadline,
                unhex(signature),
            )
        except ValueError as exc:
            raise unauthorized(f"transcript request signature is malformed: {exc}") from exc
        if signer != bytes.fromhex(to_checksum_address(requester)[2:]):
            raise unauthorized("the transcript request is not signed by the requester it names")
        allowed = to_checksum_address(requester) == record.client
        if not allowed and self.transcript_policy is not None:
            allowed = await asyncio.to_thread(self.transcript_policy, job_id, record.position, requester)
        if not allowed:
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

    # ------------------------------------------------------------------ helpers

    async def _context(self, job_id: int, terms: str | None) -> JobContext:
        context = self.directory.cached(job_id)
        packed = unhex(terms) if terms else None
        if context is not None and (packed is None or packed == context.packed_terms):
            return context
        return await asyncio.to_thread(self.directory.resolve, job_id, packed)

    def _check_signature(
        self, context: JobContext, step: int, tokens: int, payload: bytes, signature: str
    ) -> None:
        try:
            signer = recover_envelope_address(
                self.chain_id, self.market_address, context.job_id, step, tokens, payload, unhex(signature)
            )
        except ValueError as exc:
            raise unauthorized(f"envelope signature is malformed: {exc}") from exc
        if signer != context.client_bytes:
            signer_text = to_checksum_address(signer)
            raise unauthorized(
                f"envelope for job {context.job_id} step {step} is signed by {signer_text}, "
                f"not the job's client {context.client}"
            )

    def _check_relay(self, context: JobContext, meta: StepMeta, input_digest: bytes) -> None:
        """A frame at position > 0 must carry the previous hop's signature over this tensor."""
        sender = context.terms.route[context.position - 1].node
        if meta.relay is None:
            raise unauthorized(
                f"frames at route position {context.position} must carry {sender}'s relay signature",
                "bad_relay_signature",
            )
        try:
            signer = recover_relay_address(
                self.chain_id,
                self.market_address,
                context.job_id,
                meta.step,
                context.position - 1,
                input_digest,
                unhex(meta.relay),
            )
        except ValueError as exc:
            raise unauthorized(f"relay signature is malformed: {exc}", "bad_relay_signature") from exc
        if signer != bytes.fromhex(sender[2:]):
            raise unauthorized(
                f"relay of job {context.job_id} step {meta.step} is signed by {to_checksum_address(signer)} "
                f"over this tensor, not by the previous hop {sender}",
                "bad_relay_signature",
            )

    async def _session(self, context: JobContext) -> JobSession:
        """The job's session, opened by its first step; past the job's cutoff it ends, the step is refused."""
        session = self.sessions.get(context.job_id) or await self._open_session(context)
        if self.deadlines.closed(session.deadline):
            await self._end_at_deadline(session)
            raise self._deadline_passed(context.job_id, session.deadline)
        return session

    async def _open_session(self, context: JobContext) -> JobSession:
        job_id = context.job_id
        record = self.store.job(job_id)
        if record is None or record.deadline is None:
            deadline = await asyncio.to_thread(self._fetch_deadline, job_id)
            if (session := self.sessions.get(job_id)) is not None:
                return session  # a concurrent first step opened it meanwhile
            record = self.store.job(job_id)
        else:
            deadline = record.deadline
        if self.deadlines.closed(deadline):
            if record is not None and record.phase == JobPhase.SERVING:
                self.store.mark_ended(job_id)  # commits what was served; nothing is lost
            raise self._deadline_passed(job_id, deadline)
        if record is None or record.deadline is None:
            record = self.store.open_job(
                job_id, context.position, context.client, context.packed_terms, deadline
            )
        if record.phase != JobPhase.SERVING:
            raise conflict("job_ended", f"job {job_id} already ended on this node ({record.phase.value})")
        session = JobSession(context, deadline)
        if record.steps:
            # Restarted mid-job: the KV cache is gone, so the job cannot continue here; end it with what
            # was served so the work done so far is still committed and paid.
            session.broken = "the node restarted during this job and lost its KV cache"
            session.last_step, session.steps = record.last_step, record.steps
            session.input_chain, session.output_chain = record.input_chain, record.output_chain
            session.receipt = record.receipt
        self.sessions[job_id] = session
        self.metrics.sessions_active.set(len(self.sessions))
        return session

    def _fetch_deadline(self, job_id: int) -> int:
        try:
            return self.deadlines.fetch(job_id)
        except ChainError as exc:
            raise StepRejected(
                503, "chain_unavailable", f"cannot read job {job_id} from the chain: {exc}"
            ) from exc


def _frame_code(exc: FrameError) -> str:
    name = type(exc).__name__
    return {"NonFiniteValues": "non_finite", "BadShape": "bad_shape", "UnsupportedDType": "bad_dtype"}.get(
        name, "bad_frame"
    )


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "meta"
    return f"{where}: {err.get('msg')}"


__all__ = ["JobSession", "NodeService", "UnknownSession"]

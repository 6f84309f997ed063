"""The step gate: what every step on a node goes through, whatever it computes.

Every step is checked before any layer runs: the frame decodes (dtype, shape, size, finite), the meta
parses, the job is open on-chain and routes through this node at the right shard, the envelope is
signed by the job's client, the job's mode matches, the step number is new, the token count matches,
and the tensor is the one the client signed (first hop) or carries the previous hop's relay signature.
Only then does a `StepKind` (node.infer_steps, node.train_steps) compute; it relays through
`StepGate.relay`, folds the answered step into the chains with `StepGate.record` and builds its reply
with `StepGate.reply`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from eth_utils import keccak, to_checksum_address
from pydantic import ValidationError

from node.admission import BoundedWork
from node.errors import StepRejected, bad_request, conflict, unauthorized
from node.jobs import JobContext, JobDirectory
from node.metrics import NodeMetrics
from node.relay import Downstream
from node.sessions import JobSession, Receipt, SessionTable
from node.store import NodeStore
from splitmesh.protocol import Answer, HopTiming, StepMeta, StepResult, extend_chain, hex32, unhex
from splitmesh.signing import RelaySigner, recover_envelope_address, recover_relay_address
from splitmesh.wire import FrameError, FrameTooLarge, decode_frame, encode_frame


@dataclass(frozen=True)
class Step:
    """A step that passed the gate; its session's lock is held until the step kind returns."""

    meta: StepMeta
    data: bytes  # the step frame as received
    tensor: torch.Tensor  # [1, q, hidden]: hidden states, or d(loss)/d(hidden) for a backward
    input_digest: bytes  # keccak of the tensor's frame
    session: JobSession
    received: float  # time.perf_counter() when the frame arrived
    # passes a rejection upstream on the stream the step came in on (direct return: a downstream node's
    # rejection arrives after this step returned); None on the one-shot HTTP route
    report: Callable[[StepRejected], Awaitable[None]] | None = None

    @property
    def context(self) -> JobContext:
        return self.session.context


@dataclass(frozen=True)
class Relayed:
    """The next hop's answer to a relayed step."""

    tensor: torch.Tensor
    hops: list[HopTiming]  # the next hop's timing and those of every hop after it
    answers: list[Answer]  # the next hop's signed answer and those of every hop after it
    ms: float  # from sending to the next hop until its answer arrived


class StepKind(Protocol):
    """What one kind of step (inference, training) adds to the gate: its own checks and its compute."""

    mode: ClassVar[str]  # the session mode it serves: "infer" or "train"

    def signed_payload(self, meta: StepMeta) -> bytes:
        """The payload the client's envelope signature covers; bad_request if the meta disagrees."""
        ...

    def check_tokens(self, session: JobSession, meta: StepMeta, q: int) -> None:
        """Refuse a step whose token count does not follow from the job so far and the frame's q tokens."""
        ...

    def signed_tensor(self, meta: StepMeta, position: int) -> bytes | None:
        """The digest the frame's tensor must have when the client signed it directly, else None."""
        ...

    async def compute(self, step: Step) -> bytes | None:
        """Run the step (relaying it on if this is not the last hop); the reply frame for upstream, or
        None when nothing goes upstream (a direct-return step)."""
        ...


class StepGate:
    """The checks, relay, chains and replies shared by every kind of step."""

    def __init__(
        self,
        *,
        address: str,
        chain_id: int,
        market_address: str,
        hidden_size: int,
        dtype_name: str,
        max_frame_bytes: int,
        directory: JobDirectory,
        sessions: SessionTable,
        store: NodeStore,
        metrics: NodeMetrics,
        relay_signer: RelaySigner,
        relay_timeout: float,
        lookups: BoundedWork | None = None,
        compute: BoundedWork | None = None,
        send_timeout: float = 30.0,
    ):
        self.address = address
        self.chain_id = chain_id
        self.market_address = market_address
        self.hidden_size = hidden_size
        self.dtype_name = dtype_name
        self.max_frame_bytes = max_frame_bytes
        self.directory = directory
        self.sessions = sessions
        self.store = store
        self.metrics = metrics
        self.relay_signer = relay_signer
        self.relay_timeout = relay_timeout  # seconds the next hop may take for one step
        self.send_timeout = send_timeout  # seconds a frame may wait for a next hop that stops reading
        # Chain lookups of jobs this node has not seen: a few threads and a short queue; beyond it, 503.
        self.lookups = lookups or BoundedWork("chain-lookup", threads=4, pending=32, retry_after=1.0)
        # Layer compute: one thread (torch parallelises inside), a bounded queue; beyond it, 503 busy.
        self.compute = compute or BoundedWork("compute", threads=1, pending=8, retry_after=2.0)
        self.forge_answers = False  # demo/test only: the forge-answers cheat (node.cheats)

    # ------------------------------------------------------------------ admission

    def decode(self, data: bytes, job_id: int) -> tuple[StepMeta, torch.Tensor]:
        """The step frame's meta and tensor ([1, q, hidden]); bad_request (or 413) if malformed."""
        try:
            frame = decode_frame(
                data,
                max_bytes=self.max_frame_bytes,
                allowed_dtypes={self.dtype_name},
                expect_shape=(1, None, self.hidden_size),
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
        return meta, frame.tensor

    async def open(
        self, job_id: int, terms: str | None, step: int, tokens: int, payload: bytes, signature: str
    ) -> tuple[JobContext, JobSession]:
        """The job's context and session for a message its client signed (a step or the end)."""
        context = await self._context(job_id, terms)
        self._check_signature(context, step, tokens, payload, signature)
        return context, await self.sessions.for_step(context)

    async def admit(
        self,
        kind: StepKind,
        meta: StepMeta,
        tensor: torch.Tensor,
        data: bytes,
        received: float,
        report: Callable[[StepRejected], Awaitable[None]] | None = None,
    ) -> bytes | None:
        """Check the step, then let its kind compute it under the session lock; the reply frame."""
        payload = kind.signed_payload(meta)
        context, session = await self.open(
            meta.job, meta.terms, meta.step, meta.tokens, payload, meta.signature
        )
        async with session.lock:
            session.finish()
            await self.sessions.check_open(session)
            _check_order(session, meta, kind.mode)
            kind.check_tokens(session, meta, int(tensor.shape[1]))
            if meta.tokens > context.terms.max_tokens:
                raise bad_request(
                    "over_max_tokens",
                    f"{meta.tokens} tokens exceed the job's max of {context.terms.max_tokens}",
                )
            input_digest = keccak(encode_frame(tensor))
            signed = kind.signed_tensor(meta, context.position)
            if signed is not None and input_digest != signed:
                raise bad_request(
                    "payload_mismatch", "the frame is not the tensor whose payload hash the client signed"
                )
            if context.position == 0:
                if meta.relay is not None:
                    raise bad_request("unexpected_relay", "the first hop takes frames from the client only")
            else:
                self._check_relay(context, meta, input_digest)
            _check_direct(context, session, meta, report is not None)
            session.mode = kind.mode
            return await kind.compute(Step(meta, data, tensor, input_digest, session, received, report))

    # ------------------------------------------------------------------ relay, chains, reply

    def downstream(self, session: JobSession) -> Downstream:
        """The session's link to the next hop, opened on first use."""
        context = session.context
        assert context.next_endpoint is not None
        if session.downstream is None:
            session.downstream = Downstream(
                context.next_endpoint,
                context.job_id,
                context.next_key,
                timeout=self.relay_timeout,
                send_timeout=self.send_timeout,
            )
        return session.downstream

    async def relay(
        self, step: Step, tensor: torch.Tensor, digest: bytes | None = None, *, same_shape: bool = False
    ) -> Relayed:
        """Sign `tensor` (whose frame digest is `digest`, computed if None) and send it to the next hop
        with the step's envelope; its answer, which must have the tensor's shape if `same_shape`.

        A failure on the route breaks the session: this node's state advanced, the next one's may or
        may not have.
        """
        session, context, meta = step.session, step.context, step.meta
        if digest is None:
            digest = keccak(encode_frame(tensor))
        relay_signature = self.relay_signer.sign(context.job_id, meta.step, context.position, digest)
        relayed = meta.model_copy(
            update={
                "terms": hex32(context.packed_terms) if session.steps == 0 else None,
                "relay": hex32(relay_signature),
            }
        )
        started = time.perf_counter()
        link = self.downstream(session)
        try:
            await link.send(encode_frame(tensor, relayed.model_dump()))
            answer = await link.receive()
        except StepRejected as exc:
            self.sessions.fail(session, f"the route failed downstream of node {self.address}: {exc.reason}")
            raise
        try:
            frame = decode_frame(answer, max_bytes=self.max_frame_bytes, allowed_dtypes={self.dtype_name})
            result = StepResult.model_validate(frame.meta)
        except (FrameError, ValidationError) as exc:
            session.broken = f"node {context.next_node} returned a malformed result: {exc}"
            raise StepRejected(502, "bad_downstream_reply", session.broken) from exc
        if same_shape and frame.tensor.shape != tensor.shape:
            expected = list(tensor.shape)
            session.broken = (
                f"node {context.next_node} returned {list(frame.tensor.shape)}, expected {expected}"
            )
            raise StepRejected(502, "bad_downstream_reply", session.broken)
        return Relayed(frame.tensor, result.hops, result.answers, (time.perf_counter() - started) * 1e3)

    async def relay_direct(
        self, step: Step, tensor: torch.Tensor, digest: bytes, compute_ms: float, upstream: bytes
    ) -> None:
        """Direct return: sign `tensor` (frame digest `digest`) and this hop's answer, and send both on
        to the next hop with the timings and answers of the hops before; no reply is awaited. A later
        rejection downstream breaks the session and goes upstream on the step's stream."""
        session, context, meta = step.session, step.context, step.meta
        relay_signature = self.relay_signer.sign(context.job_id, meta.step, context.position, digest)
        timing, answer = self._attest(step, compute_ms, 0.0, upstream, digest)
        relayed = meta.model_copy(
            update={
                "terms": hex32(context.packed_terms) if session.steps == 0 else None,
                "relay": hex32(relay_signature),
                "hops": [*meta.hops, timing],
                "answers": [*meta.answers, answer],
            }
        )
        report = step.report

        async def rejected(exc: StepRejected) -> None:
            self.sessions.fail(session, f"the route failed downstream of node {self.address}: {exc.reason}")
            if report is not None:
                await report(exc)

        link = self.downstream(session)
        try:
            await link.watch(rejected)
            await link.send(encode_frame(tensor, relayed.model_dump()))
        except StepRejected as exc:
            self.sessions.fail(session, f"the route failed downstream of node {self.address}: {exc.reason}")
            raise

    def record(
        self, step: Step, input_frame: bytes, input_digest: bytes, output_frame: bytes, output_digest: bytes
    ) -> None:
        """The step is answered: advance the session (node.sessions.JobSession.answered), fold the step
        into its hash chains and queue it for SQLite. A step enters the chains only once answered: an
        output that never reached the next hop must not be committed as sent, or this node's output
        chain would not link with the next hop's input chain although both were honest."""
        meta = step.meta
        receipt = (meta.step, meta.tokens, unhex(meta.payload_hash), unhex(meta.signature))
        step.session.answered(meta.step, meta.tokens, receipt)
        self.fold(step.session, meta, receipt, input_frame, input_digest, output_frame, output_digest)

    def fold(
        self,
        session: JobSession,
        meta: StepMeta,
        receipt: Receipt,
        input_frame: bytes,
        input_digest: bytes,
        output_frame: bytes,
        output_digest: bytes,
    ) -> None:
        """Extend the session's hash chains by one step and queue the step for SQLite."""
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

    def reply(
        self,
        step: Step,
        tensor: torch.Tensor,
        compute_ms: float,
        relayed: Relayed | None = None,
        *,
        upstream: bytes,
        downstream: bytes,
    ) -> bytes:
        """The reply frame for upstream: `tensor` with this hop's timing and signed answer over the
        digests it exchanged (`upstream`, `downstream`: those folded into its chains), then the timings
        and answers of the hops after it."""
        mine, answer = self._attest(
            step, compute_ms, relayed.ms if relayed is not None else 0.0, upstream, downstream
        )
        if relayed is not None:
            hops, answers = [mine, *relayed.hops], [answer, *relayed.answers]
        else:  # the last hop: on a direct-return step the hops before it sent theirs forward
            hops, answers = [*step.meta.hops, mine], [*step.meta.answers, answer]
            if self.forge_answers and len(answers) > 1:  # the forge-answers cheat (node.cheats)
                fake = keccak(b"forged" + upstream)
                signature = self.relay_signer.sign_answer(step.meta.job, step.meta.step, 0, fake, fake)
                forged = answers[0].model_copy(
                    update={"downstream": hex32(fake), "signature": hex32(signature)}
                )
                answers = [forged, *answers[1:]]
        result = StepResult(job=step.meta.job, step=step.meta.step, hops=hops, answers=answers)
        return encode_frame(tensor, result.model_dump())

    def _attest(
        self, step: Step, compute_ms: float, relay_ms: float, upstream: bytes, downstream: bytes
    ) -> tuple[HopTiming, Answer]:
        """This hop's timing and its signed answer over the digests it exchanged at the step."""
        handle_ms = (time.perf_counter() - step.received) * 1e3
        self.metrics.handle_seconds.observe(handle_ms / 1e3)
        position = step.context.position
        mine = HopTiming(
            node=self.address,
            position=position,
            compute_ms=compute_ms,
            handle_ms=handle_ms,
            relay_ms=relay_ms,
        )
        signature = self.relay_signer.sign_answer(
            step.meta.job, step.meta.step, position, upstream, downstream
        )
        answer = Answer(
            position=position,
            upstream=hex32(upstream),
            downstream=hex32(downstream),
            signature=hex32(signature),
        )
        return mine, answer

    # ------------------------------------------------------------------ checks

    async def _context(self, job_id: int, terms: str | None) -> JobContext:
        context = self.directory.cached(job_id)
        packed = unhex(terms) if terms else None
        if context is not None and (packed is None or packed == context.packed_terms):
            return context
        refused = self.directory.refusal(job_id, packed)  # known without a chain call
        if refused is not None:
            raise refused
        return await self.lookups.run(self.directory.resolve, job_id, packed)

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


def _check_order(session: JobSession, meta: StepMeta, mode: str) -> None:
    """The session can take this step: not broken, of the job's mode, a new step number."""
    job_id = session.context.job_id
    if session.broken is not None:
        raise conflict(session.broken_code, session.broken)
    if session.mode is not None and session.mode != mode:
        kind = "an inference" if session.mode == "infer" else "a training"
        raise conflict("mode_mismatch", f"job {job_id} is {kind} job on this node; start a new job")
    if session.last_step is not None and meta.step <= session.last_step:
        raise conflict(
            "replayed_step",
            f"step {meta.step} of job {job_id} is not new (last step was {session.last_step})",
        )


def _check_direct(context: JobContext, session: JobSession, meta: StepMeta, streamed: bool) -> None:
    """A direct-return step comes on a stream, with one timing and one answer per hop before this one,
    and reaches a last hop that holds the client's return channel."""
    if not meta.direct:
        return
    if not streamed:
        raise bad_request("direct_needs_stream", "direct-return steps are served on the job's WebSocket")
    if len(meta.hops) != context.position or len(meta.answers) != context.position:
        raise bad_request(
            "bad_direct_meta",
            f"a direct step at route position {context.position} must carry {context.position} hop "
            f"timings and answers, not {len(meta.hops)} and {len(meta.answers)}",
        )
    if context.is_last and session.returns is None:
        raise conflict(
            "no_return_channel",
            f"job {context.job_id}'s client has no return channel open to this last node; open one at "
            "RETURN_PATH before sending direct-return steps",
        )


def _frame_code(exc: FrameError) -> str:
    name = type(exc).__name__
    return {"NonFiniteValues": "non_finite", "BadShape": "bad_shape", "UnsupportedDType": "bad_dtype"}.get(
        name, "bad_frame"
    )


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "meta"
    return f"{where}: {err.get('msg')}"

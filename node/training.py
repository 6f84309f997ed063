"""Training steps on a node: a "train" forward keeps its input, a "backward" returns d(loss)/d(input).

The node's weights stay frozen (splitmesh.model.training.ShardTrainer); the client owns every trainable
parameter, the labels and the loss. Checks mirror inference steps (frame, meta, job, envelope, replay,
token count, relay signature) plus: the client's signature binds the mode and, for a backward, the
training step it answers (protocol.training_payload); a backward's gradient must match the shape of the
kept step; a job is either an inference job or a training job.

Wire flow of a backward: the client's d(loss)/d(last hidden) frame is relayed unchanged to the last node;
each node computes d(loss)/d(its input) from what comes back from downstream and returns it upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from eth_utils import keccak

from node.cheats import Cheat, garbage_like
from node.errors import StepRejected, bad_request, conflict, not_found
from splitmesh.model.errors import BadHiddenStates, BadPositions
from splitmesh.model.training import (
    BadGradient,
    DuplicateStep,
    StepConsumed,
    TrainingStoreFull,
    UnknownStep,
)
from splitmesh.protocol import HopTiming, StepMeta, StepResult, hex32, training_payload, unhex
from splitmesh.wire import Frame, encode_frame

if TYPE_CHECKING:
    from node.service import JobSession, NodeService


async def training_step(
    svc: NodeService, frame: Frame, meta: StepMeta, data: bytes, job_id: int, received: float
) -> bytes:
    """One train or backward step; the reply frame (output, or d loss / d input) for upstream."""
    trainer = svc.trainer
    if trainer is None:
        raise StepRejected(501, "training_unsupported", f"node {svc.address} does not serve training steps")
    context = await svc._context(meta.job, meta.terms)
    assert meta.tensor_hash is not None  # StepMeta's validator
    tensor_hash = unhex(meta.tensor_hash)
    payload = training_payload(meta.mode, meta.of_step, tensor_hash)
    if unhex(meta.payload_hash) != payload:
        raise bad_request("payload_mismatch", "payload hash is not the training payload of this mode/step")
    svc._check_signature(context, meta.step, meta.tokens, payload, meta.signature)
    session = await svc._session(context)
    hidden = frame.tensor  # train: [1, seq, hidden] activations; backward: d loss / d last hidden
    q = int(hidden.shape[1])
    async with session.lock:
        svc._finish(session)
        _check_order(session, meta, q, job_id, context.terms.max_tokens)
        input_digest = keccak(encode_frame(hidden))
        if (meta.mode == "backward" or context.position == 0) and input_digest != tensor_hash:
            raise bad_request("payload_mismatch", "the frame is not the tensor the client signed")
        if context.position == 0:
            if meta.relay is not None:
                raise bad_request("unexpected_relay", "the first hop takes frames from the client only")
        else:
            svc._check_relay(context, meta, input_digest)
        session.mode = "train"
        if meta.mode == "train":
            return await _forward(svc, session, meta, data, hidden, input_digest, received)
        return await _backward(svc, session, meta, data, hidden, input_digest, received)


def _check_order(session: JobSession, meta: StepMeta, q: int, job_id: int, max_tokens: int) -> None:
    if session.broken is not None:
        raise conflict("session_broken", session.broken)
    if session.mode == "infer":
        raise conflict("mode_mismatch", f"job {job_id} is an inference job on this node; start a new job")
    if session.last_step is not None and meta.step <= session.last_step:
        raise conflict(
            "replayed_step", f"step {meta.step} of job {job_id} is not new (last was {session.last_step})"
        )
    if meta.start != 0:
        raise bad_request("bad_start", "training steps carry whole sequences: start must be 0")
    if meta.tokens != session.billed + q:
        raise bad_request(
            "bad_tokens",
            f"envelope counts {meta.tokens} tokens; this job processed {session.billed} so far plus {q} now",
        )
    if meta.tokens > max_tokens:
        raise bad_request("over_max_tokens", f"{meta.tokens} tokens exceed the job's max of {max_tokens}")


async def _forward(
    svc: NodeService,
    session: JobSession,
    meta: StepMeta,
    data: bytes,
    hidden: torch.Tensor,
    input_digest: bytes,
    received: float,
) -> bytes:
    assert svc.trainer is not None
    job_id = meta.job
    positions = torch.arange(int(hidden.shape[1])).unsqueeze(0)
    started = time.perf_counter()
    try:
        output = await asyncio.to_thread(svc.trainer.forward, str(job_id), meta.step, hidden, positions)
    except DuplicateStep as exc:
        raise conflict("replayed_step", str(exc)) from exc
    except TrainingStoreFull as exc:
        raise StepRejected(503, "busy", str(exc)) from exc
    except (BadHiddenStates, BadPositions) as exc:
        raise bad_request("bad_shape", str(exc)) from exc
    compute_ms = (time.perf_counter() - started) * 1e3
    if svc.cheat == Cheat.GARBAGE:
        output = garbage_like(output)
    output_frame = encode_frame(output)
    if session.context.is_last:
        _advance(svc, session, meta, data, input_digest, keccak(output_frame), output_frame)
        return _reply(svc, session, meta, output, compute_ms, received, [])
    # The step enters the chains only once the next hop has answered it (as for inference steps): an
    # output that never arrived must not be committed as sent.
    reply, hops, relay_ms = await _relay(svc, session, meta, output, output_frame)
    _advance(svc, session, meta, data, input_digest, keccak(output_frame), output_frame)
    return _reply(svc, session, meta, reply, compute_ms, received, hops, relay_ms)


async def _backward(
    svc: NodeService,
    session: JobSession,
    meta: StepMeta,
    data: bytes,
    grad: torch.Tensor,
    input_digest: bytes,
    received: float,
) -> bytes:
    assert svc.trainer is not None and meta.of_step is not None
    job_id = meta.job
    hops: list[HopTiming] = []
    relay_ms = 0.0
    trainer = svc.trainer
    with _backward_errors():
        # Every layer's gradient has the shape of the step's hidden states: refuse here, before the
        # route spends anything (and before a downstream rejection breaks the session).
        trainer.check_backward(str(job_id), meta.of_step, grad)
    if session.context.is_last:
        grad_output = grad
    else:
        # Downstream first: its reply is d(loss)/d(this node's output).
        grad_output, hops, relay_ms = await _relay(svc, session, meta, grad, encode_frame(grad))
    started = time.perf_counter()
    with _backward_errors():
        grad_input = await asyncio.to_thread(trainer.backward, str(job_id), meta.of_step, grad_output)
    if svc.cheat == Cheat.GARBAGE:
        grad_input = garbage_like(grad_input)
    compute_ms = (time.perf_counter() - started) * 1e3
    # Chains: upstream boundary (the gradient sent up) in the input chain, downstream boundary (the
    # gradient received from downstream) in the output chain; the transcript keeps the request's meta.
    sent_up = encode_frame(grad_input, meta.model_dump())
    received_down = encode_frame(grad_output)
    up_digest = keccak(encode_frame(grad_input))
    _advance(svc, session, meta, sent_up, up_digest, keccak(received_down), received_down)
    return _reply(svc, session, meta, grad_input, compute_ms, received, hops, relay_ms)


@contextlib.contextmanager
def _backward_errors() -> Iterator[None]:
    try:
        yield
    except StepConsumed as exc:
        raise conflict("step_consumed", str(exc)) from exc
    except UnknownStep as exc:
        raise not_found(str(exc), "unknown_step") from exc
    except BadGradient as exc:
        raise bad_request("bad_gradient", str(exc)) from exc


def _advance(
    svc: NodeService,
    session: JobSession,
    meta: StepMeta,
    input_frame: bytes,
    input_digest: bytes,
    output_digest: bytes,
    output_frame: bytes,
) -> None:
    """The step is accepted: replay guard, billing, receipt, chains and the SQLite record."""
    session.last_step = meta.step
    session.steps += 1
    session.billed = meta.tokens
    session.last_used = time.monotonic()
    receipt = (meta.step, meta.tokens, unhex(meta.payload_hash), unhex(meta.signature))
    if session.receipt is None or meta.tokens > session.receipt[1]:
        session.receipt = receipt
    svc.fold_step(session, meta, input_digest, output_digest, receipt, input_frame, output_frame)


async def _relay(
    svc: NodeService, session: JobSession, meta: StepMeta, tensor: torch.Tensor, frame: bytes
) -> tuple[torch.Tensor, list[HopTiming], float]:
    context = session.context
    relay_signature = svc.relay_signer.sign(meta.job, meta.step, context.position, keccak(frame))
    relayed = meta.model_copy(
        update={
            "terms": hex32(context.packed_terms) if session.steps == 0 else None,
            "relay": hex32(relay_signature),
        }
    )
    started = time.perf_counter()
    await svc._downstream(session).send(encode_frame(tensor, relayed.model_dump()))
    reply, hops = await svc._relay_result(session)
    if reply.shape != tensor.shape:
        expected = list(tensor.shape)
        session.broken = f"node {context.next_node} returned {list(reply.shape)}, expected {expected}"
        raise StepRejected(502, "bad_downstream_reply", session.broken)
    return reply, hops, (time.perf_counter() - started) * 1e3


def _reply(
    svc: NodeService,
    session: JobSession,
    meta: StepMeta,
    tensor: torch.Tensor,
    compute_ms: float,
    received: float,
    downstream: list[HopTiming],
    relay_ms: float = 0.0,
) -> bytes:
    handle_ms = (time.perf_counter() - received) * 1e3
    mine = HopTiming(
        node=svc.address,
        position=session.context.position,
        compute_ms=compute_ms,
        handle_ms=handle_ms,
        relay_ms=relay_ms,
    )
    svc.metrics.handle_seconds.observe(handle_ms / 1e3)
    result = StepResult(job=meta.job, step=meta.step, hops=[mine, *downstream])
    return encode_frame(tensor, result.model_dump())

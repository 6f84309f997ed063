"""Training steps on a node: a "train" forward keeps its input, a "backward" returns d(loss)/d(input).

The node's weights stay frozen (splitmesh.model.training.ShardTrainer); the client owns every trainable
parameter, the labels and the loss. The gate (node.gate) checks these steps as it checks inference
steps; this adds: the client's signature binds the mode and, for a backward, the training step it
answers (protocol.training_payload); training steps carry whole sequences and are billed by their
length; a backward's frame is the client's gradient on every hop and must match the shape of the kept
step; a job is either an inference job or a training job.

Wire flow of a backward: the client's d(loss)/d(last hidden) frame is relayed unchanged to the last node;
each node computes d(loss)/d(its input) from what comes back from downstream and returns it upstream.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import ClassVar

import torch
from eth_utils import keccak

from node.cheats import Cheat, garbage_like, note_returned, swap_returned
from node.errors import StepRejected, bad_request, conflict, not_found
from node.gate import Relayed, Step, StepGate
from node.sessions import JobSession
from splitmesh.model.errors import BadHiddenStates, BadPositions
from splitmesh.model.training import (
    BadGradient,
    DuplicateStep,
    ShardTrainer,
    StepConsumed,
    TrainingStoreFull,
    UnknownStep,
)
from splitmesh.protocol import StepMeta, training_payload, unhex
from splitmesh.wire import encode_frame


class TrainingStep:
    """One train or backward step through a shard trainer."""

    mode: ClassVar[str] = "train"

    def __init__(self, gate: StepGate, trainer: ShardTrainer, cheat: Cheat | None):
        self.gate = gate
        self.trainer = trainer
        self.cheat = cheat

    def signed_payload(self, meta: StepMeta) -> bytes:
        assert meta.tensor_hash is not None  # StepMeta's validator
        payload = training_payload(meta.mode, meta.of_step, unhex(meta.tensor_hash))
        if unhex(meta.payload_hash) != payload:
            raise bad_request(
                "payload_mismatch", "payload hash is not the training payload of this mode/step"
            )
        return payload

    def check_tokens(self, session: JobSession, meta: StepMeta, q: int) -> None:
        if meta.start != 0:
            raise bad_request("bad_start", "training steps carry whole sequences: start must be 0")
        if meta.tokens != session.billed + q:
            raise bad_request(
                "bad_tokens",
                f"envelope counts {meta.tokens} tokens; "
                f"this job processed {session.billed} so far plus {q} now",
            )

    def signed_tensor(self, meta: StepMeta, position: int) -> bytes | None:
        # A backward's gradient travels unchanged, so every hop checks it against the client's digest.
        assert meta.tensor_hash is not None
        return unhex(meta.tensor_hash) if meta.mode == "backward" or position == 0 else None

    async def compute(self, step: Step) -> bytes:
        if step.meta.mode == "train":
            return await self._forward(step)
        return await self._backward(step)

    async def _forward(self, step: Step) -> bytes:
        meta, hidden = step.meta, step.tensor  # [1, seq, hidden] activations
        positions = torch.arange(int(hidden.shape[1])).unsqueeze(0)
        started = time.perf_counter()
        try:
            output = await self.gate.compute.run(
                self.trainer.forward, str(meta.job), meta.step, hidden, positions
            )
        except DuplicateStep as exc:
            raise conflict("replayed_step", str(exc)) from exc
        except TrainingStoreFull as exc:
            raise StepRejected(503, "busy", str(exc)) from exc
        except (BadHiddenStates, BadPositions) as exc:
            raise bad_request("bad_shape", str(exc)) from exc
        compute_ms = (time.perf_counter() - started) * 1e3
        if self.cheat == Cheat.GARBAGE:
            output = garbage_like(output)
        output_frame = encode_frame(output)
        output_digest = keccak(output_frame)
        relayed = None
        if not step.context.is_last:
            relayed = await self.gate.relay(step, output, output_digest, same_shape=True)
        self.gate.record(step, step.data, step.input_digest, output_frame, output_digest)
        returned = relayed.tensor if relayed else output
        if relayed is not None and self.cheat == Cheat.SWAP_RETURNED:
            returned = swap_returned(step.session, meta.step, returned)
        return self.gate.reply(
            step, returned, compute_ms, relayed, upstream=step.input_digest, downstream=output_digest
        )

    async def _backward(self, step: Step) -> bytes:
        meta, grad = step.meta, step.tensor  # d(loss)/d(last hidden), [1, seq, hidden]
        assert meta.of_step is not None
        job = str(meta.job)
        with _backward_errors():
            # Every layer's gradient has the shape of the step's hidden states: refuse here, before the
            # route spends anything (and before a downstream rejection breaks the session).
            self.trainer.check_backward(job, meta.of_step, grad)
        relayed: Relayed | None = None
        grad_output = grad
        if not step.context.is_last:
            # Downstream first: its reply is d(loss)/d(this node's output).
            relayed = await self.gate.relay(step, grad, step.input_digest, same_shape=True)
            grad_output = relayed.tensor
        started = time.perf_counter()
        with _backward_errors():
            grad_input = await self.gate.compute.run(self.trainer.backward, job, meta.of_step, grad_output)
        if self.cheat == Cheat.GARBAGE:
            grad_input = garbage_like(grad_input)
        compute_ms = (time.perf_counter() - started) * 1e3
        # Chains: upstream boundary (the gradient sent up) in the input chain, downstream boundary (the
        # gradient received from downstream) in the output chain; the transcript keeps the request's meta.
        sent_up = encode_frame(grad_input, meta.model_dump())
        received_down = encode_frame(grad_output)
        up_digest = keccak(encode_frame(grad_input))
        down_digest = keccak(received_down)
        if self.cheat == Cheat.SWAP_RETURNED:
            note_returned(step.session, meta.step, step.input_digest)  # the client's gradient, unchanged
        self.gate.record(step, sent_up, up_digest, received_down, down_digest)
        return self.gate.reply(
            step, grad_input, compute_ms, relayed, upstream=up_digest, downstream=down_digest
        )


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

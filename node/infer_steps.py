"""Inference steps on a node: run the shard's layers over new tokens with the job's KV cache.

The gate (node.gate) has checked the step; this adds the compute: the token count must end where the
frame's positions end, the first hop's frame must be the tensor the client signed, and the output goes
on to the next hop or, from the last hop, back to the client (all positions or the last): back along
the route, or on a direct-return step (splitmesh.protocol) straight to the client's return channel,
with nothing going upstream.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import ClassVar

import torch
from eth_utils import keccak

from node.batcher import StepBatcher
from node.cheats import Cheat, garbage_like, swap_returned, tamper
from node.errors import StepRejected, bad_request, conflict
from node.gate import Step, StepGate
from node.sessions import JobSession
from splitmesh.model.errors import BadHiddenStates, BadPositions, CacheFull
from splitmesh.model.runner import ShardRunner
from splitmesh.protocol import StepMeta, unhex
from splitmesh.wire import encode_frame


class InferenceStep:
    """One inference step through a shard runner (the skip-layers cheat's half runner, if set)."""

    mode: ClassVar[str] = "infer"

    def __init__(
        self, gate: StepGate, runner: ShardRunner, cheat: Cheat | None, batcher: StepBatcher | None = None
    ):
        self.gate = gate
        self.runner = runner
        self.cheat = cheat
        self.batcher = batcher  # batches steps of concurrent sessions; None: this step runs alone

    def signed_payload(self, meta: StepMeta) -> bytes:
        return unhex(meta.payload_hash)

    def check_tokens(self, session: JobSession, meta: StepMeta, q: int) -> None:
        if meta.tokens != meta.start + q:
            raise bad_request(
                "bad_tokens", f"envelope counts {meta.tokens} tokens but the frame ends at {meta.start + q}"
            )

    def signed_tensor(self, meta: StepMeta, position: int) -> bytes | None:
        return unhex(meta.payload_hash) if position == 0 else None

    async def compute(self, step: Step) -> bytes | None:
        meta, hidden = step.meta, step.tensor  # [1, q, hidden]
        q = int(hidden.shape[1])
        started = time.perf_counter()
        output = await self._forward(str(meta.job), hidden, torch.arange(meta.start, meta.start + q))
        if self.cheat == Cheat.GARBAGE:
            output = garbage_like(output)
        compute_ms = (time.perf_counter() - started) * 1e3
        if step.context.is_last:
            sent = output[:, -1:] if meta.want == "last" else output
            sent_frame = encode_frame(sent)
            sent_digest = keccak(sent_frame)  # signed in the answer: on the critical path, ~10 µs
            reply = self.gate.reply(
                step, sent, compute_ms, upstream=step.input_digest, downstream=sent_digest
            )
            if meta.direct:
                await self._return(step, reply)
            # Persist off the critical path: once the reply is on the wire (the loop's next turn), and
            # before the next step (which runs the session's pending bookkeeping first).
            step.session.pending = partial(self._record, step, sent_frame, sent_digest, compute_ms)
            asyncio.get_running_loop().call_soon(step.session.finish)
            return None if meta.direct else reply
        # (If the link breaks after the next hop took the step but before its answer came back, the
        # next hop keeps a step this node drops; the two chains then differ by that one step.)
        output_frame = encode_frame(output)
        output_digest = keccak(output_frame)
        forwarded, forwarded_digest = output, output_digest
        if self.cheat == Cheat.TAMPER_RELAY:
            forwarded = tamper(output)
            forwarded_digest = keccak(encode_frame(forwarded))
        # The relay signature and the answer cover exactly the tensor sent on (a tampering node must sign
        # its lie; its chains then keep the honest output, which no longer links with the next hop's).
        if meta.direct:  # answered as far as this hop can tell: a later rejection breaks the session
            await self.gate.relay_direct(step, forwarded, forwarded_digest, compute_ms, step.input_digest)
            self._record(step, output_frame, output_digest, compute_ms)
            return None
        relayed = await self.gate.relay(step, forwarded, forwarded_digest)
        self._record(step, output_frame, output_digest, compute_ms)
        returned = relayed.tensor
        if self.cheat == Cheat.SWAP_RETURNED:
            returned = swap_returned(step.session, meta.step, returned)
        return self.gate.reply(
            step, returned, compute_ms, relayed, upstream=step.input_digest, downstream=forwarded_digest
        )

    async def _return(self, step: Step, reply: bytes) -> None:
        """Send the last hop's result frame on the client's return channel."""
        returns = step.session.returns
        assert returns is not None  # node.gate checked it
        try:
            await returns(reply)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            step.session.returns = None
            self.gate.sessions.fail(step.session, f"the return channel to the client failed: {exc}")
            raise StepRejected(
                502, "client_unreachable", f"the client's return channel failed: {exc}"
            ) from exc

    def _record(self, step: Step, output_frame: bytes, output_digest: bytes, compute_ms: float) -> None:
        self.gate.record(step, step.data, step.input_digest, output_frame, output_digest)
        self.gate.metrics.tokens_total.inc(int(step.tensor.shape[1]))
        self.gate.metrics.step_seconds.observe(compute_ms / 1e3)

    async def _forward(self, session_id: str, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        try:
            if self.batcher is not None:
                return await self.batcher.forward(session_id, hidden, positions)
            # Always off the loop, even one token: the runner's lock may be held by a long prefill.
            return await self.gate.compute.run(self.runner.forward, session_id, hidden, positions)
        except BadPositions as exc:
            raise conflict("bad_positions", str(exc)) from exc
        except BadHiddenStates as exc:
            raise bad_request("bad_shape", str(exc)) from exc
        except CacheFull as exc:
            raise StepRejected(503, "busy", str(exc)) from exc

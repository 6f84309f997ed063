"""The off-chain step protocol between a client and the nodes of a route (shared by node/ and client_sdk/).

A job's hidden states travel as tensor frames (splitmesh.wire). Each step message is a frame whose
tensor is the hidden state [1, q, hidden] and whose meta (a `StepMeta`) carries the client's signed
envelope: job id, step number, cumulative tokens and the hash of the client's own payload. Every node
checks that envelope; the first node also checks the payload hash against the frame it received.
Node s relays the same meta with its output tensor to node s+1; the last node's output returns along
the path as a frame whose meta is a `StepResult`.

Relay: node s signs (job, step, s, digest of the tensor it forwards) and puts the signature in the
frame it sends to node s+1, which checks it against the route. That authenticates the relay, and node
s+1's transcript then proves what node s sent (the evidence against a tampered relay).

Answers: every node of the route signs, for every step it answers, an `Answer` over (job, step, its
route position, the digest of what crossed its upstream boundary, the digest of what crossed its
downstream boundary) -- the same two digests it folds into its hash chains below -- and puts it in the
`StepResult` that travels back, first node first. For "infer" and "train" steps the upstream tensor is
the hop's input and the downstream one its output; for a "backward" the upstream tensor is the gradient
it returns upstream and the downstream one the gradient it got from downstream (the client's own at the
last node). The client checks per step that the answers chain: node 0's upstream digest is what crosses
the client's boundary with node 0, node i's downstream digest is node i+1's upstream digest, the last
node's downstream digest is what crosses its boundary with the client, and each signature recovers to
the route's node at that position. No node (nor the link) can then replace a tensor on its way back
without the client noticing at that step.

Commitments: per job each node folds the digest of every input and every output tensor into two hash
chains, ``chain' = keccak(chain || uint32 step || digest)`` starting from 32 zero bytes. Node s's output
chain therefore equals node s+1's input chain when both saw the same tensors, the client can compute
the first node's input chain and the last node's output chain itself, and the chains are what a node
commits on-chain when the job ends.

Training (split fine-tuning) uses the same frames with `mode`: a "train" step is a full sequence through
each shard without a KV cache, and every node keeps the step's input; a "backward" step carries
d(loss)/d(last hidden state) of training step `of_step`, relayed unchanged to the last node; each node
returns d(loss)/d(its input) upstream, computed from the input it kept. For both modes the envelope's
payload hash is `training_payload(mode, of_step, tensor_hash)`, so the client's signature binds the mode
and the step a backward answers at every hop; `tensor_hash` is the digest of the client's tensor (the
first node checks it for "train", every node for "backward", whose tensor travels unchanged). Tokens
count what is processed: each train and each backward step adds its sequence length. In the hash
chains, a node's input chain covers what crosses its upstream boundary (its input; for a backward, the
gradient it returns upstream) and its output chain what crosses its downstream boundary (its output; for
a backward, the gradient it received from downstream, or the client's gradient at the last node), so
node s's output chain still equals node s+1's input chain.

Direct return (`StepMeta.direct`, inference only): the last node sends its result frame straight to the
client on the job's return channel (a WebSocket the client opened to the last node at `RETURN_PATH`,
TLS pinned like every link, opened by a `ReturnHello` carrying the client's envelope signature over
(job, `RETURN_STEP`, 0 tokens, `RETURN_PAYLOAD`)) instead of back through every hop, so a token crosses
the network m + 1 times. Each middle node then appends its own `HopTiming` and signed `Answer` to the
meta it forwards (`hops`, `answers`), and the last node's `StepResult` carries them all, first node
first: the client checks exactly what it checks on the old path. A node answers nothing upstream for a
direct step that went on; a rejection still travels upstream hop by hop to the client's first link.

The end of a job is an envelope with step `END_STEP` and payload hash `END_PAYLOAD`, signed by the
client like any step, so a node can tell an authentic end from a forged one on any transport.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from eth_utils import keccak
from pydantic import BaseModel, ConfigDict, Field, model_validator

from splitmesh.wire.frames import encode_frame

PROTOCOL_VERSION = 1
END_STEP = 2**32 - 1  # envelope step number that marks the end of a job
END_PAYLOAD = keccak(b"splitmesh/end-of-job")
RETURN_STEP = 2**32 - 2  # envelope step number of the client's return-channel hello
RETURN_PAYLOAD = keccak(b"splitmesh/return-channel")
ZERO_CHAIN = b"\0" * 32

STREAM_PATH = "/v1/jobs/{job}/stream"  # WebSocket: one session per job and hop
STEP_PATH = "/v1/jobs/{job}/steps"  # HTTP POST: one step per request
END_PATH = "/v1/jobs/{job}/end"  # HTTP POST: the client's signed end of the job
RETURN_PATH = "/v1/jobs/{job}/return"  # WebSocket: the last node's results straight to the client
TRANSCRIPT_PATH = "/v1/jobs/{job}/transcript"  # HTTP GET: the audit transcript (signed request)
MAX_REQUEST_VALIDITY = 900  # seconds a signed transcript request may stay valid

_HEX32 = re.compile(r"^0x[0-9a-fA-F]{64}$")
_HEX_SIG = re.compile(r"^0x[0-9a-fA-F]{130}$")
_HEX = re.compile(r"^0x(?:[0-9a-fA-F]{2})*$")

Hex32 = str
UINT32 = 2**32 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class StepMeta(_Strict):
    """Meta of a step frame: the client's envelope for this step plus where the tokens sit."""

    v: Literal[1] = 1  # PROTOCOL_VERSION
    kind: Literal["step"] = "step"
    job: int = Field(ge=0, lt=2**256)
    step: int = Field(ge=0, lt=END_STEP)
    tokens: int = Field(ge=1, le=UINT32)  # tokens processed in this job so far, this step included
    start: int = Field(ge=0, le=UINT32)  # position id of the first token in this frame
    payload_hash: str = Field(pattern=_HEX32.pattern)  # digest of the client's tensor for this step
    signature: str = Field(pattern=_HEX_SIG.pattern)  # client's EIP-712 envelope signature
    terms: str | None = Field(default=None, pattern=_HEX.pattern, max_length=2 + 2 * 512)  # packed terms
    want: Literal["all", "last"] = "all"  # which positions the last node returns
    # Set by a node relaying to the next one: its EIP-712 Relay signature over (job, step, its route
    # position, digest of the tensor in this frame). Absent on the client's frames to the first node.
    relay: str | None = Field(default=None, pattern=_HEX_SIG.pattern)
    # Training: "train" (a forward kept for its backward) or "backward" (d loss / d last hidden state of
    # training step `of_step`); see the module docstring. `tensor_hash` is the client's tensor digest.
    mode: Literal["infer", "train", "backward"] = "infer"
    of_step: int | None = Field(default=None, ge=0, lt=END_STEP)
    tensor_hash: str | None = Field(default=None, pattern=_HEX32.pattern)
    # Direct return (inference only): the last node answers on the client's return channel; the hops
    # before it carry their timings and signed answers forward here, first node first.
    direct: bool = False
    hops: list[HopTiming] = Field(default_factory=list, max_length=255)
    answers: list[Answer] = Field(default_factory=list, max_length=255)

    @model_validator(mode="after")
    def _training_fields(self) -> StepMeta:
        if self.mode == "infer" and (self.of_step is not None or self.tensor_hash is not None):
            raise ValueError("of_step and tensor_hash belong to training steps only")
        if self.mode != "infer" and self.tensor_hash is None:
            raise ValueError(f"a {self.mode} step needs tensor_hash")
        if (self.mode == "backward") != (self.of_step is not None):
            raise ValueError("of_step is required for backward steps and only for them")
        if self.mode == "backward" and self.of_step is not None and self.of_step >= self.step:
            raise ValueError("a backward answers an earlier training step (of_step < step)")
        if not self.direct and (self.hops or self.answers):
            raise ValueError("hops and answers travel forward on direct-return steps only")
        if self.direct and self.mode != "infer":
            raise ValueError("direct return serves inference steps only")
        return self


def training_payload(mode: str, of_step: int | None, tensor_hash: bytes) -> bytes:
    """The payload hash a client signs for a training step: binds the mode and the answered step."""
    return keccak(b"splitmesh/train/v1" + mode.encode() + (of_step or 0).to_bytes(4, "big") + tensor_hash)


class EndMeta(_Strict):
    """The client's signed end of a job: nodes close the session and commit."""

    v: Literal[1] = 1  # PROTOCOL_VERSION
    kind: Literal["end"] = "end"
    job: int = Field(ge=0, lt=2**256)
    tokens: int = Field(ge=0, le=UINT32)  # tokens the client signs for over the whole job
    signature: str = Field(pattern=_HEX_SIG.pattern)
    terms: str | None = Field(default=None, pattern=_HEX.pattern, max_length=2 + 2 * 512)


class ReturnHello(_Strict):
    """The client's first message on a job's return channel: its envelope signature over
    (job, RETURN_STEP, 0 tokens, RETURN_PAYLOAD). The last node answers `{"kind": "ready"}` or an error."""

    v: Literal[1] = 1  # PROTOCOL_VERSION
    kind: Literal["return"] = "return"
    job: int = Field(ge=0, lt=2**256)
    signature: str = Field(pattern=_HEX_SIG.pattern)
    terms: str | None = Field(default=None, pattern=_HEX.pattern, max_length=2 + 2 * 512)


RETURN_READY = '{"kind":"ready"}'  # the last node's answer to an accepted ReturnHello


class HopTiming(_Strict):
    node: str
    position: int
    compute_ms: float  # time in the shard's layers
    handle_ms: float  # time from receiving the frame to sending the reply, downstream included
    relay_ms: float = 0.0  # time from sending to the next node until its reply arrived (0 on the last)


class Answer(_Strict):
    """One node's signed statement of the digests it exchanged at a step (see the module docstring)."""

    position: int = Field(ge=0, lt=256)
    upstream: str = Field(pattern=_HEX32.pattern)  # digest across the boundary with the previous hop
    downstream: str = Field(pattern=_HEX32.pattern)  # digest across the boundary with the next hop
    signature: str = Field(pattern=_HEX_SIG.pattern)  # EIP-712 Answer signature (splitmesh.signing)


class StepResult(_Strict):
    """Meta of the frame that returns the last node's hidden state to the client."""

    v: Literal[1] = 1  # PROTOCOL_VERSION
    kind: Literal["result"] = "result"
    job: int
    step: int
    hops: list[HopTiming] = Field(max_length=255)  # first node first
    answers: list[Answer] = Field(max_length=255)  # first node first: each hop's signed answer


class EndResult(_Strict):
    """Reply to an end message: each node's final commitments, first node first."""

    v: Literal[1] = 1  # PROTOCOL_VERSION
    kind: Literal["ended"] = "ended"
    job: int
    commitments: list[NodeCommitment]


class NodeCommitment(_Strict):
    node: str
    position: int
    steps: int
    input_chain: str
    output_chain: str


EndResult.model_rebuild()
StepMeta.model_rebuild()


class ErrorReply(_Strict):
    """What a node answers instead of a result: an HTTP-like status, a stable code and a reason."""

    status: int
    code: str
    error: str
    node: str | None = None  # the node that rejected (may be downstream of the one answering)
    position: int | None = None
    retry_after: float | None = None  # seconds after which the same request may succeed (a full queue)


def tensor_digest(tensor: torch.Tensor) -> bytes:
    """keccak256 of a tensor's canonical frame (dtype, shape, little-endian bytes; no meta)."""
    return keccak(encode_frame(tensor))


def extend_chain(chain: bytes, step: int, digest: bytes) -> bytes:
    """One link of a commitment hash chain."""
    return keccak(chain + step.to_bytes(4, "big") + digest)


def hex32(value: bytes) -> str:
    return "0x" + value.hex()


def unhex(value: str) -> bytes:
    return bytes.fromhex(value[2:])

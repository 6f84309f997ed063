"""A job's audit transcript as served by a node, and every check a verifier makes before re-executing it.

Wire format (`SMT1`): magic, uint32 LE step count, then per step: uint32 LE length + the input frame
exactly as the node received it (its meta carries the client's envelope and, past the first hop, the
previous hop's relay signature), uint32 LE length + the output frame (the tensor the node sent on).

Checks, all from data the verifier does not have to trust the audited node for:
- the digests of the frames, folded like the node folds them, give the input and output chains the
  node committed on-chain (so the transcript is the one it committed to);
- every input frame carries a valid envelope signed by the job's client (no invented steps: the
  overbilling check), with strictly increasing steps and contiguous positions;
- past the first hop, every input frame carries the previous hop's relay signature over that tensor.
"""

from __future__ import annotations

import http.client
import struct
from dataclasses import dataclass

import torch
from eth_utils import keccak
from pydantic import ValidationError

from splitmesh.errors import SplitmeshError
from splitmesh.protocol import TRANSCRIPT_PATH, ZERO_CHAIN, StepMeta, extend_chain, training_payload, unhex
from splitmesh.signing import recover_envelope_address, recover_relay_address, sign_transcript_request
from splitmesh.wire import FrameError, decode_frame, encode_frame
from splitmesh.wire.tls import LinkSecurityError, pinned_get

MAGIC = b"SMT1"
_U32 = struct.Struct("<I")
MAX_TRANSCRIPT_BYTES = 512 * 1024 * 1024  # bytes of one transcript a verifier accepts


class TranscriptError(SplitmeshError, ValueError):
    """A transcript is malformed or does not match the node's commitments or the signatures it needs."""


@dataclass(frozen=True)
class TranscriptStep:
    step: int
    start: int  # position id of the first token
    meta: StepMeta  # what the node received: client envelope (+ relay signature past the first hop)
    input: torch.Tensor  # [1, q, hidden]
    output: torch.Tensor  # [1, q, hidden], or [1, 1, hidden] when a last hop returned only the last token
    input_digest: bytes
    output_digest: bytes


def encode_transcript(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """(input frame, output frame) per step, in step order."""
    parts = [MAGIC, _U32.pack(len(pairs))]
    for received, sent in pairs:
        parts += [_U32.pack(len(received)), received, _U32.pack(len(sent)), sent]
    return b"".join(parts)


def decode_transcript(data: bytes, max_bytes: int = MAX_TRANSCRIPT_BYTES) -> list[TranscriptStep]:
    if len(data) > max_bytes:
        raise TranscriptError(f"transcript is {len(data)} bytes; at most {max_bytes} accepted")
    if data[:4] != MAGIC or len(data) < 8:
        raise TranscriptError("not a splitmesh transcript (bad magic)")
    (count,) = _U32.unpack_from(data, 4)
    at = 8
    steps: list[TranscriptStep] = []
    for _ in range(count):
        received, at = _chunk(data, at)
        sent, at = _chunk(data, at)
        try:
            frame_in = decode_frame(received, max_bytes=max_bytes)
            frame_out = decode_frame(sent, max_bytes=max_bytes)
            meta = StepMeta.model_validate(frame_in.meta)
        except (FrameError, ValidationError) as exc:
            raise TranscriptError(f"transcript step {len(steps)} is malformed: {exc}") from exc
        steps.append(
            TranscriptStep(
                step=meta.step,
                start=meta.start,
                meta=meta,
                input=frame_in.tensor,
                output=frame_out.tensor,
                input_digest=keccak(encode_frame(frame_in.tensor)),
                output_digest=keccak(sent),
            )
        )
    if at != len(data):
        raise TranscriptError(f"{len(data) - at} trailing bytes after {count} steps")
    return steps


def _chunk(data: bytes, at: int) -> tuple[bytes, int]:
    if at + 4 > len(data):
        raise TranscriptError("transcript ends inside a length field")
    (n,) = _U32.unpack_from(data, at)
    end = at + 4 + n
    if end > len(data):
        raise TranscriptError("transcript ends inside a frame")
    return data[at + 4 : end], end


def chains_of(steps: list[TranscriptStep]) -> tuple[bytes, bytes]:
    """The input and output commitment chains these steps fold into."""
    input_chain = output_chain = ZERO_CHAIN
    for s in steps:
        input_chain = extend_chain(input_chain, s.step, s.input_digest)
        output_chain = extend_chain(output_chain, s.step, s.output_digest)
    return input_chain, output_chain


def check_transcript(
    steps: list[TranscriptStep],
    *,
    chain_id: int,
    market: str,
    job_id: int,
    position: int,
    client: str,
    previous_hop: str | None,
    input_commitment: bytes,
    output_commitment: bytes,
    is_last: bool = False,
) -> None:
    """Raise TranscriptError unless the transcript is the committed one and every step is authorized.

    Training jobs (train and backward steps): a backward step's record holds the gradient the node
    returned upstream as its input and the gradient it received from downstream as its output; the
    client's own gradient travelled unchanged along the route, so the relay signatures cover it, and at
    the last hop it is the recorded output.
    """
    if chains_of(steps) != (input_commitment, output_commitment):
        raise TranscriptError("the transcript does not hash to the commitments the node posted on-chain")
    training = bool(steps) and steps[0].meta.mode != "infer"
    client_bytes = bytes.fromhex(client[2:])
    last_step, position_id, billed = -1, 0, 0
    for s in steps:
        meta = s.meta
        q = int(s.input.shape[1])
        in_order = meta.job == job_id and s.step > last_step and (meta.mode != "infer") == training
        if not in_order or s.start != (0 if training else position_id):
            raise TranscriptError(f"step {s.step}: out of order, for another job or of another mode")
        # What the client signed, the tokens it counts, and the tensor the previous hop relayed.
        if training:
            assert meta.tensor_hash is not None  # StepMeta's validator
            signed_tensor = unhex(meta.tensor_hash)
            payload, tokens = training_payload(meta.mode, meta.of_step, signed_tensor), billed + q
            # A backward's tensor (the client's gradient) travelled unchanged: the relays cover it.
            relayed = s.input_digest if meta.mode == "train" else signed_tensor
        else:
            signed_tensor = payload = unhex(meta.payload_hash)
            tokens, relayed = s.start + q, s.input_digest
        try:
            signer = recover_envelope_address(
                chain_id, market, job_id, s.step, meta.tokens, payload, unhex(meta.signature)
            )
        except ValueError as exc:
            raise TranscriptError(f"step {s.step}: malformed client signature: {exc}") from exc
        if signer != client_bytes or unhex(meta.payload_hash) != payload or meta.tokens != tokens:
            raise TranscriptError(f"step {s.step} is not a step the client signed for")
        if position == 0 and meta.mode != "backward" and s.input_digest != signed_tensor:
            raise TranscriptError(f"step {s.step}: the input is not the tensor the client signed")
        if is_last and meta.mode == "backward" and s.output_digest != signed_tensor:
            raise TranscriptError(f"step {s.step}: the gradient is not the one the client signed")
        if previous_hop is not None:
            if meta.relay is None:
                raise TranscriptError(f"step {s.step}: no relay signature from the previous hop")
            relayed_by = recover_relay_address(
                chain_id, market, job_id, s.step, position - 1, relayed, unhex(meta.relay)
            )
            if relayed_by != bytes.fromhex(previous_hop[2:]):
                raise TranscriptError(f"step {s.step}: the input was not relayed by {previous_hop}")
        last_step, position_id, billed = s.step, s.start + q, meta.tokens


def relay_mismatch(committed: list[TranscriptStep], received: list[TranscriptStep]) -> int | None:
    """The first step at which the next hop holds a relay (signed by this node, checked by
    check_transcript on the next hop's transcript) of a tensor other than the output this node committed;
    None if there is none.

    Only steps the next hop received count: a step this node committed but the next hop never got (the link
    broke, the next hop's session had expired, the client failed over while this node was stalled) signs
    nothing, so it is no evidence of fraud. Such a job's commitment chains disagree and it is disputed
    automatically; the audit then finds both hops honest."""
    outputs = {s.step: s.output_digest for s in committed}
    for s in received:
        if outputs.get(s.step) != s.input_digest:
            return s.step
    return None


def transcript_request_headers(
    private_key: str, chain_id: int, market: str, job_id: int, position: int, *, validity: int = 300
) -> dict[str, str]:
    """The signed headers of a transcript request (the job's client or an auditor), valid `validity` s."""
    import time

    deadline = int(time.time()) + validity
    requester, signature = sign_transcript_request(private_key, chain_id, market, job_id, position, deadline)
    return {
        "X-Splitmesh-Requester": requester,
        "X-Splitmesh-Deadline": str(deadline),
        "X-Splitmesh-Signature": "0x" + signature.hex(),
    }


def transcript_url(endpoint: str, job_id: int) -> str:
    return endpoint.rstrip("/") + TRANSCRIPT_PATH.format(job=job_id)


def fetch_transcript(
    endpoint: str,
    job_id: int,
    position: int,
    private_key: str,
    chain_id: int,
    market: str,
    *,
    key: bytes,
    timeout: float = 60.0,
    validity: int = 300,
) -> bytes:
    """GET a node's transcript of a job with a signed request (the job's client or an auditor), over a
    link pinned to `key`, the node's on-chain TLS key (splitmesh.wire.tls; PeerKeyMismatch or
    NoRegisteredKey if it cannot be authenticated).

    No size cap and `timeout` is per socket operation, not in total: for a party that trusts the node
    (its own client, a test). A verifier reads with node.verifier's capped, deadlined fetch."""
    import json

    headers = transcript_request_headers(private_key, chain_id, market, job_id, position, validity=validity)
    try:
        status, body = pinned_get(transcript_url(endpoint, job_id), key, headers, timeout=timeout)
    except (http.client.HTTPException, OSError) as exc:
        if isinstance(exc, LinkSecurityError):
            raise
        raise TranscriptUnavailable(0, f"{endpoint} is unreachable: {exc}") from exc
    if status != 200:
        try:
            reason = json.loads(body).get("error", "")
        except (ValueError, AttributeError):
            reason = ""
        raise TranscriptUnavailable(status, f"{endpoint} refused job {job_id}'s transcript: {reason}")
    return body


class TranscriptUnavailable(TranscriptError):
    """The node did not hand over the transcript (refused, unreachable): a withheld transcript."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status

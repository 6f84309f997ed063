"""EIP-712 signing of the client's per-step envelope (also the on-chain usage receipt), of the relay
statement a node signs for every frame it forwards to the next node of a route, and of the answer
statement each node of a route signs for every step it answers (checked by the client).

The digest is computed directly (a few keccaks) instead of through eth_account's generic typed-data
encoder, which is ~50x slower; tests check it against the contract's `envelopeDigest`. Signing and
recovery call libsecp256k1 through coincurve (18 µs and 36 µs, against 63 µs and 84 µs through
eth_keys), since every node recovers the client's signature on every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import coincurve
from eth_utils import keccak, to_checksum_address

DOMAIN_NAME = "splitmesh"
DOMAIN_VERSION = "1"
_DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
ENVELOPE_TYPEHASH = keccak(text="Envelope(uint256 jobId,uint32 step,uint32 tokens,bytes32 payloadHash)")
# A node's statement "at this step of this job I (route position `position`) sent a tensor with this
# digest": it authenticates the relay to the next node and is the evidence against a tampered relay.
RELAY_TYPEHASH = keccak(text="Relay(uint256 jobId,uint32 step,uint8 position,bytes32 digest)")
# A node's statement "at this step of this job I (route position `position`) exchanged a tensor with
# digest `upstream` across my upstream boundary and one with digest `downstream` across my downstream
# boundary": exactly the two digests it folds into its commitment chains for the step. The client
# checks that these statements chain from what it sent to what it received (splitmesh.protocol).
ANSWER_TYPEHASH = keccak(
    text="Answer(uint256 jobId,uint32 step,uint8 position,bytes32 upstream,bytes32 downstream)"
)
# Who asks a node for a job's audit transcript, valid until a deadline (unix seconds).
TRANSCRIPT_REQUEST_TYPEHASH = keccak(
    text="TranscriptRequest(uint256 jobId,uint8 position,address requester,uint64 deadline)"
)


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


@lru_cache(maxsize=64)
def domain_separator(chain_id: int, verifying_contract: str) -> bytes:
    """EIP-712 domain separator bound to the chain and the JobMarket address."""
    address = bytes.fromhex(to_checksum_address(verifying_contract)[2:])
    return keccak(
        _DOMAIN_TYPEHASH
        + keccak(text=DOMAIN_NAME)
        + keccak(text=DOMAIN_VERSION)
        + _word(chain_id)
        + address.rjust(32, b"\0")
    )


def envelope_digest(
    chain_id: int, market: str, job_id: int, step: int, tokens: int, payload_hash: bytes
) -> bytes:
    if len(payload_hash) != 32:
        raise ValueError("payload_hash must be 32 bytes")
    struct_hash = keccak(ENVELOPE_TYPEHASH + _word(job_id) + _word(step) + _word(tokens) + payload_hash)
    return keccak(b"\x19\x01" + domain_separator(chain_id, market) + struct_hash)


@dataclass(frozen=True, slots=True)
class SignedEnvelope:
    job_id: int
    step: int
    tokens: int  # cumulative tokens of the job up to and including this step
    payload_hash: bytes  # keccak256 of the step's frame
    signature: bytes  # 65 bytes r || s || v (v in {27, 28})

    def as_receipt(self) -> tuple[int, int, bytes, bytes]:
        """The (step, tokens, payloadHash, signature) tuple JobMarket.commit takes."""
        return (self.step, self.tokens, self.payload_hash, self.signature)


EMPTY_RECEIPT: tuple[int, int, bytes, bytes] = (0, 0, b"\0" * 32, b"")


def relay_digest(chain_id: int, market: str, job_id: int, step: int, position: int, digest: bytes) -> bytes:
    if len(digest) != 32:
        raise ValueError("digest must be 32 bytes")
    struct_hash = keccak(RELAY_TYPEHASH + _word(job_id) + _word(step) + _word(position) + digest)
    return keccak(b"\x19\x01" + domain_separator(chain_id, market) + struct_hash)


def answer_digest(
    chain_id: int, market: str, job_id: int, step: int, position: int, upstream: bytes, downstream: bytes
) -> bytes:
    if len(upstream) != 32 or len(downstream) != 32:
        raise ValueError("upstream and downstream digests must be 32 bytes")
    struct_hash = keccak(
        ANSWER_TYPEHASH + _word(job_id) + _word(step) + _word(position) + upstream + downstream
    )
    return keccak(b"\x19\x01" + domain_separator(chain_id, market) + struct_hash)


def _sign_raw(key: coincurve.PrivateKey, digest: bytes) -> bytes:
    # libsecp256k1 always produces the low-s form that ECDSA.tryRecover requires.
    raw = key.sign_recoverable(digest, hasher=None)
    return raw[:64] + bytes([raw[64] + 27])


class _DomainSigner:
    """One key signing EIP-712 statements for one chain and JobMarket."""

    def __init__(self, private_key: str | bytes, chain_id: int, market: str):
        raw = bytes.fromhex(private_key.removeprefix("0x")) if isinstance(private_key, str) else private_key
        self._key = coincurve.PrivateKey(raw)
        self.address = _address_of(self._key.public_key)
        self.chain_id = chain_id
        self.market = to_checksum_address(market)


class RelaySigner(_DomainSigner):
    """Signs a node's relay and answer statements for one node key, chain and JobMarket."""

    def sign(self, job_id: int, step: int, position: int, digest: bytes) -> bytes:
        return _sign_raw(self._key, relay_digest(self.chain_id, self.market, job_id, step, position, digest))

    def sign_answer(self, job_id: int, step: int, position: int, upstream: bytes, downstream: bytes) -> bytes:
        digest = answer_digest(self.chain_id, self.market, job_id, step, position, upstream, downstream)
        return _sign_raw(self._key, digest)


def transcript_request_digest(
    chain_id: int, market: str, job_id: int, position: int, requester: str, deadline: int
) -> bytes:
    who = bytes.fromhex(to_checksum_address(requester)[2:]).rjust(32, b"\0")
    struct_hash = keccak(
        TRANSCRIPT_REQUEST_TYPEHASH + _word(job_id) + _word(position) + who + _word(deadline)
    )
    return keccak(b"\x19\x01" + domain_separator(chain_id, market) + struct_hash)


def sign_transcript_request(
    private_key: str, chain_id: int, market: str, job_id: int, position: int, deadline: int
) -> tuple[str, bytes]:
    """(requester address, signature) for a transcript request."""
    key = coincurve.PrivateKey(bytes.fromhex(private_key.removeprefix("0x")))
    requester = _address_of(key.public_key)
    digest = transcript_request_digest(chain_id, market, job_id, position, requester, deadline)
    return requester, _sign_raw(key, digest)


def recover_transcript_requester(
    chain_id: int, market: str, job_id: int, position: int, requester: str, deadline: int, signature: bytes
) -> bytes:
    return _recover(
        transcript_request_digest(chain_id, market, job_id, position, requester, deadline), signature
    )


def recover_relay_address(
    chain_id: int, market: str, job_id: int, step: int, position: int, digest: bytes, signature: bytes
) -> bytes:
    """Raw 20-byte address that signed a relay statement; ValueError on a malformed signature."""
    return _recover(relay_digest(chain_id, market, job_id, step, position, digest), signature)


def recover_answer_address(
    chain_id: int,
    market: str,
    job_id: int,
    step: int,
    position: int,
    upstream: bytes,
    downstream: bytes,
    signature: bytes,
) -> bytes:
    """Raw 20-byte address that signed an answer statement; ValueError on a malformed signature."""
    return _recover(answer_digest(chain_id, market, job_id, step, position, upstream, downstream), signature)


class EnvelopeSigner(_DomainSigner):
    """Signs envelopes for one client key, chain and JobMarket."""

    def sign(self, job_id: int, step: int, tokens: int, payload_hash: bytes) -> SignedEnvelope:
        digest = envelope_digest(self.chain_id, self.market, job_id, step, tokens, payload_hash)
        signature = _sign_raw(self._key, digest)
        return SignedEnvelope(job_id, step, tokens, payload_hash, signature)


def recover_envelope_signer(
    chain_id: int, market: str, job_id: int, step: int, tokens: int, payload_hash: bytes, signature: bytes
) -> str:
    """Address that signed an envelope; raises ValueError on a malformed signature.

    Accepts exactly what the contract accepts: 65 bytes, v in {27, 28}, s in the lower half order.
    """
    return to_checksum_address(
        recover_envelope_address(chain_id, market, job_id, step, tokens, payload_hash, signature)
    )


def recover_envelope_address(
    chain_id: int, market: str, job_id: int, step: int, tokens: int, payload_hash: bytes, signature: bytes
) -> bytes:
    """The signer's raw 20-byte address (no checksum encoding: nodes compare bytes on every step)."""
    return _recover(envelope_digest(chain_id, market, job_id, step, tokens, payload_hash), signature)


def _recover(digest: bytes, signature: bytes) -> bytes:
    if len(signature) != 65:
        raise ValueError(f"signature must be 65 bytes, got {len(signature)}")
    v = signature[64]
    if v not in (27, 28):
        raise ValueError(f"signature v must be 27 or 28, got {v}")
    if int.from_bytes(signature[32:64], "big") > _HALF_ORDER:
        raise ValueError("signature s is in the upper half of the curve order (malleable form)")
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), digest, hasher=None
        )
    except Exception as exc:  # libsecp256k1 rejects r/s out of range or no point
        raise ValueError(f"signature does not recover a public key: {exc}") from exc
    return keccak(public.format(compressed=False)[1:])[-20:]


_HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


def _address_of(public: coincurve.PublicKey) -> str:
    return to_checksum_address(keccak(public.format(compressed=False)[1:])[-20:])

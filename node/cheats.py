"""Misbehaviours a node can be told to commit (`splitmesh node run --cheat ...`), so that a demo or a test
can show the audit catching each one. A real operator never enables them; nothing does by default.

- garbage: return random hidden states (same per-token norms) instead of the shard's output;
- skip-layers: run only the first half of the shard's layers;
- tamper-relay: forward a perturbed tensor to the next hop (signed, or the next hop would refuse it)
  while recording and committing the honest output;
- overbill: try to commit a receipt for more tokens than the client signed (the contract refuses it),
  and append an invented step to the committed transcript;
- withhold: refuse to hand the transcript to auditors;
- swap-returned: a first or middle node replaces the hidden state coming back from downstream (on its way
  to the client) with one of its choosing, and at the end rewrites the last node's output chain in the
  relayed end-of-job result to the chain of what it really returned, so the relayed chains agree with
  what the client received. Its own transcript and commitments stay honest: audits find nothing, and
  only the client's check of the last node's signed answer (splitmesh.protocol) can catch it.
- forge-answers: the last node of a direct-return step (splitmesh.protocol), which carries the answers of
  the hops before it to the client, replaces the first hop's signed answer with one it signs itself
  over a tensor of its choosing; only the client's check of every answer can catch it.
- stall-transcript: accept an auditor's transcript request, then drip-feed the reply (one byte per
  STALL_INTERVAL seconds), so that a verifier without a deadline never gets to vote.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import torch

from splitmesh.protocol import ZERO_CHAIN, extend_chain, tensor_digest

if TYPE_CHECKING:
    from node.sessions import JobSession


class Cheat(enum.StrEnum):
    GARBAGE = "garbage"
    SKIP_LAYERS = "skip-layers"
    TAMPER_RELAY = "tamper-relay"
    OVERBILL = "overbill"
    WITHHOLD = "withhold"
    SWAP_RETURNED = "swap-returned"
    STALL_TRANSCRIPT = "stall-transcript"
    FORGE_ANSWERS = "forge-answers"


CHEATS = tuple(c.value for c in Cheat)
OVERBILL_EXTRA_TOKENS = 50  # tokens an overbilling node claims on top of what the client signed
STALL_INTERVAL = 1.0  # seconds between the bytes of a stalled transcript


def garbage_like(output: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random vectors with the same per-token L2 norms as `output` [1, q, hidden]."""
    noise = torch.randn(output.shape, generator=generator, dtype=torch.float32)
    norms = output.float().norm(dim=-1, keepdim=True)
    return (noise / noise.norm(dim=-1, keepdim=True) * norms).to(output.dtype)


def tamper(output: torch.Tensor, scale: float = 0.05) -> torch.Tensor:
    """`output` plus noise of `scale` times each token's norm: a subtly wrong relay."""
    noise = torch.randn(output.shape, dtype=torch.float32)
    norms = output.float().norm(dim=-1, keepdim=True)
    noise = noise / noise.norm(dim=-1, keepdim=True) * norms * scale
    return (output.float() + noise).to(output.dtype)


def swap_returned(session: JobSession, step: int, returned: torch.Tensor) -> torch.Tensor:
    """The swap-returned cheat: a state of the cheater's choosing (fixed per step) instead of `returned`
    [1, q, hidden], folded into the chain of what the client received (for the end-of-job rewrite)."""
    chosen = garbage_like(returned, torch.Generator().manual_seed(1_000_003 + step))
    note_returned(session, step, tensor_digest(chosen))
    return chosen


def note_returned(session: JobSession, step: int, digest: bytes) -> None:
    """Fold a step's digest into the swap-returned cheat's chain of what the client received."""
    chain = session.returned_chain if session.returned_chain is not None else ZERO_CHAIN
    session.returned_chain = extend_chain(chain, step, digest)

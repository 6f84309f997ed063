"""Misbehaviours a node can be told to commit (`splitmesh node run --cheat ...`), so that a demo or a test
can show the audit catching each one. A real operator never enables them; nothing does by default.

- garbage: return random hidden states (same per-token norms) instead of the shard's output;
- skip-layers: run only the first half of the shard's layers;
- tamper-relay: forward a perturbed tensor to the next hop (signed, or the next hop would refuse it)
  while recording and committing the honest output;
- overbill: try to commit a receipt for more tokens than the client signed (the contract refuses it),
  and append an invented step to the committed transcript;
- withhold: refuse to hand the transcript to auditors;
- stall-transcript: accept an auditor's transcript request, then drip-feed the reply (one byte per
  STALL_INTERVAL seconds), so that a verifier without a deadline never gets to vote.
"""

from __future__ import annotations

import enum

import torch


class Cheat(enum.StrEnum):
    GARBAGE = "garbage"
    SKIP_LAYERS = "skip-layers"
    TAMPER_RELAY = "tamper-relay"
    OVERBILL = "overbill"
    WITHHOLD = "withhold"
    STALL_TRANSCRIPT = "stall-transcript"


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

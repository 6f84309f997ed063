"""The client's release mechanism replayed with a seeded generator, for measurement only.

Same formulas as client_sdk.privacy.Privatizer (clip each vector to norm C, add N(0, s^2 I) with
s = noise_std(epsilon, delta, C), a public BOS at position 0 passes unchanged, epsilon inf releases Z as
is), but the noise comes from a torch.Generator seeded by the report's --seed so that a report can be
reproduced. Production noise never comes from here.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from client_sdk.privacy import noise_std


def seed_for(seed: int, *parts: object) -> int:
    """An independent stream per (seed, purpose, split, epsilon): a cell's numbers do not depend on which
    other cells the grid holds."""
    text = ":".join(map(str, (seed, *parts))).encode()
    return int.from_bytes(hashlib.sha256(b"splitmesh.leakage:" + text).digest()[:8], "little") >> 1


def generator(seed: int, *parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(seed, *parts))


@dataclass(frozen=True)
class Mechanism:
    epsilon: float  # per token vector; math.inf = no noise and no clipping
    delta: float
    clip: float  # L2 norm bound C

    @property
    def std(self) -> float:
        """Noise std per coordinate (0.0 for epsilon inf)."""
        return noise_std(self.epsilon, self.delta, self.clip)

    @property
    def noised(self) -> bool:
        return not math.isinf(self.epsilon)

    def clip_vectors(self, z: torch.Tensor) -> torch.Tensor:
        """What the mechanism does before the noise: z [..., hidden] scaled down to norm <= C (release()
        skips it at epsilon inf; an attacker may still apply it to what it sees)."""
        norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
        return z * (self.clip / norm.clamp(min=self.clip))

    def release(self, z: torch.Tensor, gen: torch.Generator, public_prefix: int = 1) -> torch.Tensor:
        """z [S, T, hidden] -> what a node receives; positions < public_prefix pass unchanged."""
        if not self.noised:
            return z
        private = z[:, public_prefix:]
        noise = torch.randn(private.shape, generator=gen, dtype=torch.float64).to(z.dtype) * self.std
        return torch.cat([z[:, :public_prefix], self.clip_vectors(private) + noise], dim=1)

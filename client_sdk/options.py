"""What a caller chooses for a job: the privacy setting, the route, and what generation or training adds.

`GenerateOptions` (client.generate/stream) and `TrainOptions` (client.train/train_step) share
`RouteSettings`, which extends the one `PrivacySettings` (client_sdk.privacy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from client_sdk.capacity import CapacityProbe
from client_sdk.failover import FailoverPolicy
from client_sdk.privacy import PrivacySettings


@dataclass(kw_only=True)
class RouteSettings(PrivacySettings):
    """Where a job runs and what it may pay, besides its privacy."""

    split: int | None = None  # layers the client runs; None = the smallest registered split
    chat: bool | None = None  # apply the chat template; None = when the tokenizer has one
    max_price_per_token: int | None = None  # wei per hop; None = the highest price in the needed pools
    # inference results come straight from the last node on a return channel (m + 1 network trips per
    # token instead of 2m); False = back along the route (training always goes back along the route)
    direct_return: bool = False
    # ask the candidate nodes for room before locking escrow, and avoid the full ones (client_sdk.capacity)
    capacity: CapacityProbe = field(default_factory=CapacityProbe)


@dataclass(kw_only=True)
class GenerateOptions(RouteSettings):
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # seeds sampling only (temperature > 0); the DP noise is never seeded
    # Generation ends at the first token whose text completes one of these strings; the Generation's
    # text is cut before it (its token ids keep every generated token).
    stop: tuple[str, ...] = ()
    # escrow sent with the job; None = (max tokens x max price + hop fee) x hops
    escrow_wei: int | None = None
    # timeouts, attempts and bans when a route node fails mid-generation (client_sdk.failover)
    failover: FailoverPolicy = field(default_factory=FailoverPolicy)


@dataclass(kw_only=True)
class TrainOptions(RouteSettings):
    lr: float = 2e-3  # AdamW learning rate of the client's adapters
    seed: int | None = None  # adapter init and data order (None = fresh); the DP noise is never seeded
    max_length: int = 256  # tokens per training sequence (the completion is cut beyond it)
    max_grad_norm: float | None = 1.0  # clip of the adapters' gradient norm; None = no clipping
    lora_rank: int = 8
    lora_alpha: int = 16
    soft_prompt_tokens: int = 0  # trainable prompt vectors (used in training only, not by generate)

"""Shard plans: where a model's decoder layers are cut between the client and the nodes."""

from __future__ import annotations

from itertools import pairwise

from splitmesh.errors import ConfigError

MAX_SHARDS = 8  # the contracts' limit on shards per model (and hops per route)


def validate_plan(boundaries: list[int] | tuple[int, ...], num_layers: int) -> None:
    """b_0 = 0 < b_1 < ... < b_m = num_layers with 1 <= m <= MAX_SHARDS."""
    b = list(boundaries)
    if not 2 <= len(b) <= MAX_SHARDS + 1:
        raise ConfigError(f"a plan has 1..{MAX_SHARDS} shards, got {len(b) - 1}")
    if b[0] != 0 or b[-1] != num_layers:
        raise ConfigError(f"a plan must start at 0 and end at {num_layers} layers, got {b}")
    if any(x >= y for x, y in pairwise(b)):
        raise ConfigError(f"plan boundaries must strictly increase, got {b}")


def client_split_plan(num_layers: int, client_layers: int, nodes: int) -> list[int]:
    """Shard 0 = the client's first `client_layers` layers; the rest split as evenly as possible
    over `nodes` shards (earlier shards take the remainder)."""
    if not 1 <= client_layers < num_layers:
        raise ConfigError(f"--split must be within 1..{num_layers - 1} layers, got {client_layers}")
    remaining = num_layers - client_layers
    if not 1 <= nodes <= min(remaining, MAX_SHARDS - 1):
        raise ConfigError(
            f"--nodes must be within 1..{min(remaining, MAX_SHARDS - 1)} for {remaining} remaining layers"
        )
    plan = [0, client_layers]
    base, extra = divmod(remaining, nodes)
    for i in range(nodes):
        plan.append(plan[-1] + base + (1 if i < extra else 0))
    validate_plan(plan, num_layers)
    return plan


def even_plan(num_layers: int, shards: int) -> list[int]:
    """`shards` contiguous ranges of nearly equal size."""
    if not 1 <= shards <= min(num_layers, MAX_SHARDS):
        raise ConfigError(f"shards must be within 1..{min(num_layers, MAX_SHARDS)}")
    base, extra = divmod(num_layers, shards)
    plan = [0]
    for i in range(shards):
        plan.append(plan[-1] + base + (1 if i < extra else 0))
    return plan

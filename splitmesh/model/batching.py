"""Steps of several sessions, each q tokens long, through one shard as ONE batch.

Each session keeps its own KV cache (a DynamicCache, as when it runs alone). For a batched step the
sessions' stored keys and values are gathered per layer into one left-padded tensor, the layers run once
on the stacked hidden states with each session's own positions, and only the new keys and values are
scattered back, each into its own session's cache through that cache's own `update` (so a sliding-window
layer crops exactly as it does alone). A padded slot is never attended to: the 4-D mask is built here per
session from absolute positions (causal, plus the sliding window where the layer has one), which is the
rule transformers' `create_causal_mask` / `create_sliding_window_causal_mask` apply to a single session.

Tolerance: the batched matmuls and attention kernels see other shapes than a lone step, so fp32 outputs
may differ from the lone run in the last bits (tests/unit/test_batching.py bounds it).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import CacheLayerMixin, DynamicCache

from splitmesh.model.stack import LayerStack

BATCHABLE_ATTENTION = ("sdpa", "eager")  # attention kernels that take the 4-D mask built here


def can_batch(stack: LayerStack) -> bool:
    """Whether this shard's attention takes an explicit 4-D mask (other kernels run sessions alone)."""
    return getattr(stack.config, "_attn_implementation", None) in BATCHABLE_ATTENTION


class GatherCache:
    """Stands in for the KV cache during one batched step: a layer's `update` returns the sessions'
    stored keys/values (left-padded to one length) followed by the new ones, and keeps the new ones."""

    def __init__(self, past: dict[int, tuple[torch.Tensor, torch.Tensor] | None]):
        self.past = past  # layer index -> (keys, values) [batch, kv_heads, stored, head_dim]; None = none
        self.new: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.new[layer_idx] = (key_states, value_states)
        past = self.past[layer_idx]
        if past is None:
            return key_states, value_states
        keys, values = past
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


def _stored(cache: DynamicCache, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A session's stored keys and values at a layer ([1, kv_heads, stored, head_dim]), None if empty."""
    entry = cache.layers[layer]
    if not isinstance(entry, CacheLayerMixin):  # a linear-attention layer has no keys: never batched
        raise TypeError(f"layer {layer} keeps no key/value cache; it cannot be batched")
    keys, values = entry.keys, entry.values
    if not entry.is_initialized or keys is None or values is None or keys.shape[-2] == 0:
        return None
    return keys, values


def _gather(caches: list[DynamicCache], layer: int, width: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stored keys and values of every session at `layer`, left-padded with zeros to `width` slots
    ([batch, kv_heads, width, head_dim]); None when no session has stored anything yet."""
    stored = [_stored(cache, layer) for cache in caches]
    template = next((s[0] for s in stored if s is not None), None)
    if template is None:
        return None
    empty = template.new_zeros((1, template.shape[1], 0, template.shape[3]))
    keys, values = [], []
    for entry in stored:
        k, v = (empty, empty) if entry is None else entry
        pad = width - int(k.shape[-2])
        keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
        values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
    return torch.cat(keys), torch.cat(values)


def _mask(
    lengths: list[int], stored: list[int], q: int, window: int | None, eager: bool, dtype: torch.dtype
) -> torch.Tensor:
    """[batch, 1, q, width + q]: session i's query t (position lengths[i] + t) may see key slot j, whose
    position is lengths[i] - width + j, when the slot holds a key (not left padding), the key is not in
    its future and, on a sliding layer, lies within the window (as transformers' masks rule)."""
    width = max(stored)
    past = torch.tensor(lengths).view(-1, 1, 1)  # [batch, 1, 1]
    slots = torch.arange(width + q).view(1, 1, -1)
    key_pos = past - width + slots  # [batch, 1, width + q]
    query_pos = past + torch.arange(q).view(1, -1, 1)  # [batch, q, 1]
    held = slots >= (width - torch.tensor(stored)).view(-1, 1, 1)
    allowed = held & (key_pos <= query_pos)
    if window is not None:
        allowed &= key_pos > query_pos - window
    allowed = allowed.unsqueeze(1)  # [batch, 1, q, width + q]
    if not eager:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def forward_batched(
    stack: LayerStack, caches: list[DynamicCache], lengths: list[int], hidden: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Run one step of q tokens for each session (hidden[i] [1, q, hidden] at positions lengths[i]..)
    as one batch; appends each session's new keys/values to its own cache; outputs [1, q, hidden] each."""
    q = int(hidden[0].shape[1])
    batch = torch.cat(hidden)  # [batch, q, hidden]
    positions = torch.stack([torch.arange(n, n + q) for n in lengths])  # [batch, q]
    eager = stack.config._attn_implementation == "eager"
    window = getattr(stack.config, "sliding_window", None)
    past: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}
    masks: dict[str, torch.Tensor | None] = {}
    for kind in set(stack.layer_types):
        kind_layers = [stack.start + i for i, t in enumerate(stack.layer_types) if t == kind]
        stored = [0 if (s := _stored(c, kind_layers[0])) is None else int(s[0].shape[-2]) for c in caches]
        width = max(stored)
        for layer in kind_layers:
            past[layer] = _gather(caches, layer, width)
        sliding = window if kind == "sliding_attention" else None
        masks[kind] = _mask(lengths, stored, q, sliding, eager, batch.dtype)
    gather = GatherCache(past)
    with torch.inference_mode():
        out = stack(batch, positions, gather, masks=masks)
    for layer, (keys, values) in gather.new.items():
        for i, cache in enumerate(caches):
            cache.update(keys[i : i + 1], values[i : i + 1], layer)
    return [out[i : i + 1] for i in range(len(caches))]

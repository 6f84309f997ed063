"""A contiguous range of decoder layers that runs on hidden states, with or without a KV cache."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from splitmesh.model.arch import Arch
from splitmesh.model.device import to_device


class LayerStack(nn.Module):
    """Layers [start, end) of a model. Layers keep their global index (their KV-cache slot)."""

    def __init__(
        self,
        config: PretrainedConfig,
        arch: Arch,
        start: int,
        layers: list[nn.Module],
        rotary: nn.Module | None,
    ):
        super().__init__()
        self.config = config
        self.arch = arch
        self.start = start
        self.end = start + len(layers)
        self.layers = nn.ModuleList(layers)
        self.rotary = rotary
        self._layer_types: list[str] = list(arch.layer_types[self.start : self.end])

    def _masks(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, cache: Cache | None
    ) -> dict[str, torch.Tensor | None]:
        """One mask per attention kind in this shard, as the unsplit model builds them."""
        masks: dict[str, torch.Tensor | None] = {}
        for kind, make in (
            ("full_attention", create_causal_mask),
            ("sliding_attention", create_sliding_window_causal_mask),
        ):
            if kind not in self._layer_types:
                continue
            # layer_idx: size the mask from the cache slot of this shard's first layer of this kind (as
            # the unsplit model does with the model's first). The default would read another kind's slot
            # or, on a node that does not serve layer 0, an empty one: a silently wrong mask.
            masks[kind] = make(
                config=self.config,
                inputs_embeds=hidden,
                attention_mask=None,
                cache=cache,
                position_ids=position_ids,
                layer_idx=self.start + self._layer_types.index(kind),
            )
        return masks

    def _rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> dict[str, Any]:
        """Rotary (cos, sin) per layer kind: shared, or per layer type (Gemma 3's local/global bases)."""
        assert self.rotary is not None
        if self.arch.traits.rotary_per_layer_type:
            return {k: self.rotary(hidden, position_ids, k) for k in set(self._layer_types)}
        shared = self.rotary(hidden, position_ids=position_ids)
        return dict.fromkeys(set(self._layer_types), shared)

    @property
    def layer_types(self) -> list[str]:
        """Each layer's attention kind ("full_attention" / "sliding_attention"), in order."""
        return list(self._layer_types)

    def forward(
        self,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Cache | Any | None = None,
        masks: dict[str, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """hidden [batch, q, hidden_size], position_ids [batch, q] -> hidden [batch, q, hidden_size], on the
        device of these layers (inputs from the wire arrive on the CPU: they are moved there first).

        `masks` (one per attention kind) replaces the masks built from `cache`: a batch of sessions
        (splitmesh.model.batching) passes its own, with a cache stand-in that transformers cannot size.
        """
        if not len(self.layers):
            return hidden
        device = self.device
        hidden, position_ids = to_device(hidden, device), to_device(position_ids, device)
        if masks is None:
            masks = self._masks(hidden, position_ids, cache)
        use_cache = cache is not None
        if self.arch.family == "llama":
            position_embeddings = self._rotary(hidden, position_ids)
            for layer, kind in zip(self.layers, self._layer_types, strict=True):
                hidden = layer(
                    hidden,
                    attention_mask=masks[kind],
                    position_ids=position_ids,
                    cache=cache,
                    use_cache=use_cache,
                    position_embeddings=position_embeddings[kind],
                )
        else:  # gpt2: absolute positions were added with the token embeddings
            for layer, kind in zip(self.layers, self._layer_types, strict=True):
                hidden = layer(hidden, cache, masks[kind], use_cache=use_cache, position_ids=position_ids)
        return hidden

    @property
    def device(self) -> torch.device:
        """Where the layers' weights are (module.to(device) moved them there); cpu for no layers."""
        first = next(self.parameters(), None)
        return torch.device("cpu") if first is None else first.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

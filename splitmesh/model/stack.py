"""A contiguous range of decoder layers that runs on hidden states, with or without a KV cache."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from splitmesh.model.arch import Arch


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
        layer_types = getattr(config, "layer_types", None)
        self._layer_types: list[str] = (
            [layer_types[i] for i in range(self.start, self.end)]
            if layer_types
            else ["full_attention"] * len(layers)
        )

    def _masks(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, cache: Cache | None
    ) -> dict[str, torch.Tensor | None]:
        # layer_idx: size the mask from this shard's first cache slot; the default (slot 0) is empty on a
        # node that does not serve layer 0, which silently yields a wrong mask.
        kwargs: dict[str, Any] = {
            "config": self.config,
            "inputs_embeds": hidden,
            "attention_mask": None,
            "cache": cache,
            "position_ids": position_ids,
            "layer_idx": self.start,
        }
        masks: dict[str, torch.Tensor | None] = {}
        if "full_attention" in self._layer_types:
            masks["full_attention"] = create_causal_mask(**kwargs)
        if "sliding_attention" in self._layer_types:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        return masks

    def forward(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, cache: Cache | None = None
    ) -> torch.Tensor:
        """hidden [batch, q, hidden_size], position_ids [batch, q] -> hidden [batch, q, hidden_size]."""
        if not len(self.layers):
            return hidden
        masks = self._masks(hidden, position_ids, cache)
        use_cache = cache is not None
        if self.arch.family == "llama":
            assert self.rotary is not None
            position_embeddings = self.rotary(hidden, position_ids=position_ids)
            for layer, kind in zip(self.layers, self._layer_types, strict=True):
                hidden = layer(
                    hidden,
                    attention_mask=masks[kind],
                    position_ids=position_ids,
                    cache=cache,
                    use_cache=use_cache,
                    position_embeddings=position_embeddings,
                )
        else:  # gpt2: absolute positions were added with the token embeddings
            for layer, kind in zip(self.layers, self._layer_types, strict=True):
                hidden = layer(hidden, cache, masks[kind], use_cache=use_cache, position_ids=position_ids)
        return hidden

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

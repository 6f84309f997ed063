"""The client's part of a split model: embeddings and the first layers ("head"), final norm and LM head
("tail"). Nodes never see token ids or logits: those exist only here."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.cache_utils import DynamicCache

from splitmesh.model.device import resolve_device, to_device
from splitmesh.model.loader import ModelSpec
from splitmesh.model.stack import LayerStack


class ClientModel(nn.Module):
    """Head = embeddings + layers [0, split); tail = final norm + LM head."""

    def __init__(self, spec: ModelSpec, split: int):
        super().__init__()
        spec.check_range(0, split)
        self.spec = spec
        self.config = spec.config
        self.split = split
        arch = spec.arch
        self.embeddings = nn.ModuleDict(
            {name: spec.build_module(name, f"{arch.base}.{name}.") for name in arch.embed}
        )
        self.stack: LayerStack = spec.build_stack(0, split)
        self.norm = spec.build_module(arch.norm, arch.norm_prefix())
        embed_weight: torch.Tensor = self.embeddings[arch.embed[0]].weight  # type: ignore[assignment]
        head = spec.lm_head_weight(embed_weight)
        # A tied head shares the embedding tensor (no copy), as the unsplit model does.
        self.lm_head_weight = head if head is embed_weight else nn.Parameter(head, requires_grad=False)
        traits = arch.traits
        # Scalars the family's base model and LM head apply, read from the config (None: not applied).
        self.embedding_multiplier = _config_float(self.config, traits.embedding_multiplier)
        self.logits_divisor = _config_float(self.config, traits.logits_divisor)
        self.logits_multiplier = _config_float(self.config, traits.logits_multiplier)
        self.logits_softcap = _config_float(self.config, traits.logits_softcap)
        self.eval().requires_grad_(False)

    @classmethod
    def load(
        cls,
        model: str | None,
        split: int,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device | None = None,  # None = cpu; see splitmesh.model.device
    ) -> ClientModel:
        return cls(ModelSpec.open(model, dtype), split).to(resolve_device(device))

    @property
    def dtype(self) -> torch.dtype:
        return self.spec.dtype

    @property
    def device(self) -> torch.device:
        """Where the client's layers run; token ids and replies from the wire are moved there."""
        return self.lm_head_weight.device

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [batch, q] -> the embedding module's vectors [batch, q, hidden] (the unsplit model's
        `inputs_embeds`; scaled embeddings such as Gemma's scale here)."""
        return self.embeddings[self.spec.arch.embed[0]](to_device(input_ids, self.device))

    def layer_input(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """What the base model does to `inputs_embeds` before layer 0 (a multiplier, GPT-2's positions)."""
        hidden = inputs_embeds
        if self.embedding_multiplier is not None:
            hidden = hidden * self.embedding_multiplier
        if self.spec.arch.family == "gpt2":
            hidden = hidden + self.embeddings["wpe"](to_device(position_ids, self.device))
        return hidden

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [batch, q], position_ids [batch, q] -> hidden [batch, q, hidden_size]."""
        return self.layer_input(self.token_embeddings(input_ids), position_ids)

    def head(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache | None = None
    ) -> torch.Tensor:
        """Token ids -> hidden states after layers [0, split): what the client noises and sends (Z)."""
        return self.stack(self.embed(input_ids, position_ids), position_ids, cache)

    def tail(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states of the last layer [batch, q, hidden] (a reply from the wire: on the CPU, in the wire
        dtype) -> logits [batch, q, vocab] on the client's device."""
        hidden = to_device(hidden, self.device, self.dtype)
        logits = nn.functional.linear(self.norm(hidden), self.lm_head_weight)
        if self.logits_divisor is not None:
            logits = logits / self.logits_divisor
        if self.logits_multiplier is not None:
            logits = logits * self.logits_multiplier
        if self.logits_softcap is not None:
            logits = torch.tanh(logits / self.logits_softcap) * self.logits_softcap
        return logits


def _config_float(config: PretrainedConfig, attribute: str | None) -> float | None:
    value = getattr(config, attribute, None) if attribute else None
    return None if value is None else float(value)

"""Build model pieces from a ModelSource, loading only the tensors each piece needs."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from splitmesh.model.arch import Arch, build_skeleton, detect, materialize, parse_dtype, rotary_for
from splitmesh.model.convert import convert_checkpoint
from splitmesh.model.errors import InvalidShard
from splitmesh.model.source import ModelSource
from splitmesh.model.stack import LayerStack


@dataclass
class ModelSpec:
    """What is known about a model without loading any weights."""

    source: ModelSource
    config: PretrainedConfig
    arch: Arch
    skeleton: nn.Module  # meta device: structure only
    dtype: torch.dtype

    @classmethod
    def open(cls, model: str | None, dtype: str | torch.dtype = "float32") -> ModelSpec:
        source = ModelSource.resolve(model)
        torch_dtype = parse_dtype(dtype)
        config = AutoConfig.from_pretrained(str(source.path))
        skeleton = build_skeleton(config, torch_dtype)
        model_config: PretrainedConfig = skeleton.config  # type: ignore[assignment]
        arch = detect(model_config, skeleton)
        return cls(source, model_config, arch, skeleton, torch_dtype)

    @property
    def num_layers(self) -> int:
        return self.arch.num_layers

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def check_range(self, start: int, end: int) -> None:
        if not 0 <= start <= end <= self.num_layers:
            raise InvalidShard(
                f"layer range [{start}, {end}) is outside the model's {self.num_layers} layers"
            )

    def base(self) -> nn.Module:
        return getattr(self.skeleton, self.arch.base)

    def build_stack(self, start: int, end: int) -> LayerStack:
        """Layers [start, end) with their weights; nothing else of the model is loaded."""
        self.check_range(start, end)
        names = list(self.source.tensor_files())
        prefixes = [self.arch.layer_prefix(i) for i in range(start, end)]
        tensors = self.load(n for n in names if n.startswith(tuple(prefixes)))
        skeleton_layers = getattr(self.base(), self.arch.layers)
        # deepcopy of a meta module is free and keeps every build independent of the skeleton.
        layers = [
            materialize(copy.deepcopy(skeleton_layers[i]), self.arch.layer_prefix(i), tensors, self.dtype)
            for i in range(start, end)
        ]
        rotary = rotary_for(self.config, self.skeleton, self.arch) if end > start else None
        return LayerStack(self.config, self.arch, start, layers, rotary)

    def build_module(self, attribute: str, key_prefix: str) -> nn.Module:
        """One named submodule of the base model (embeddings, final norm) with its weights."""
        module = copy.deepcopy(getattr(self.base(), attribute))
        names = [n for n in self.source.tensor_files() if n.startswith(key_prefix)]
        return materialize(module, key_prefix, self.load(names), self.dtype)

    def load(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Checkpoint tensors by name, converted to the module's layout as transformers loads them."""
        return convert_checkpoint(self.skeleton, self.source.load_tensors(names))

    def lm_head_weight(self, embed_weight: torch.Tensor | None) -> torch.Tensor:
        """The LM head matrix [vocab, hidden]; tied models reuse the input embeddings."""
        files = self.source.tensor_files()
        if "lm_head.weight" in files and not getattr(self.config, "tie_word_embeddings", False):
            return self.source.load_tensors(["lm_head.weight"])["lm_head.weight"].to(self.dtype)
        if embed_weight is None:
            key = f"{self.arch.base}.{self.arch.embed[0]}.weight"
            embed_weight = self.source.load_tensors([key])[key].to(self.dtype)
        return embed_weight

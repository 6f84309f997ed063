"""Architecture adapters: which tensors belong to the embeddings, each decoder layer, the final norm and
the LM head, and how to build just those modules.

Two families are supported. The Llama family (Llama, Mistral, Qwen2, SmolLM, ... : any model whose
`model` has `embed_tokens`, `layers`, `norm` and `rotary_emb` and whose layers take
(hidden, attention_mask, position_ids, cache, use_cache, position_embeddings)), and GPT-2 (`transformer`
with `wte`, `wpe`, `h`, `ln_f`; absolute position embeddings are added by the client with the tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

from splitmesh.model.errors import UnsupportedArchitecture

SUPPORTED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        if name in SUPPORTED_DTYPES.values():
            return name
        raise UnsupportedArchitecture(f"dtype {name} is not supported; use float32 or bfloat16")
    try:
        return SUPPORTED_DTYPES[name]
    except KeyError:
        raise UnsupportedArchitecture(f"dtype {name!r} is not supported; use float32 or bfloat16") from None


@dataclass(frozen=True)
class Arch:
    family: str  # "llama" or "gpt2"
    base: str  # attribute of the CausalLM holding the decoder ("model" / "transformer")
    layers: str  # attribute of the base holding the decoder layers
    embed: tuple[str, ...]  # attributes of the base run by the client before layer 0
    norm: str  # attribute of the base: final norm (client tail)
    num_layers: int

    def layer_prefix(self, index: int) -> str:
        return f"{self.base}.{self.layers}.{index}."

    def embed_prefixes(self) -> list[str]:
        return [f"{self.base}.{name}." for name in self.embed]

    def norm_prefix(self) -> str:
        return f"{self.base}.{self.norm}."


def build_skeleton(config: PretrainedConfig, dtype: torch.dtype) -> nn.Module:
    """The whole model on the meta device: structure only, no memory."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def detect(config: PretrainedConfig, skeleton: nn.Module) -> Arch:
    """The family of a model, or UnsupportedArchitecture with what is missing."""
    model_type = getattr(config, "model_type", "?")
    if model_type == "gpt2":
        return Arch("gpt2", "transformer", "h", ("wte", "wpe"), "ln_f", int(config.n_layer))
    base = getattr(skeleton, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if base is not None and all(hasattr(base, n) for n in needed) and hasattr(skeleton, "lm_head"):
        if getattr(config, "is_encoder_decoder", False):
            raise UnsupportedArchitecture(
                f"{model_type} is an encoder-decoder model; only decoder-only LMs split"
            )
        return Arch("llama", "model", "layers", ("embed_tokens",), "norm", int(config.num_hidden_layers))
    raise UnsupportedArchitecture(
        f"model type {model_type!r} is not supported: splitmesh splits the Llama family (Llama, Mistral, "
        "Qwen2, SmolLM, ...) and GPT-2"
    )


def materialize(
    module: nn.Module, prefix: str, tensors: dict[str, torch.Tensor], dtype: torch.dtype
) -> nn.Module:
    """Give a meta-device submodule real CPU storage and load its weights (keys under `prefix`).

    Every parameter and persistent buffer must be present; a submodule with non-persistent buffers would
    keep garbage after to_empty(), so it is refused rather than silently wrong.
    """
    persistent = set(module.state_dict().keys())
    for name, _ in module.named_buffers():
        if name not in persistent:
            raise UnsupportedArchitecture(
                f"{type(module).__name__} has a non-persistent buffer {name!r}; cannot rebuild from weights"
            )
    module = module.to_empty(device="cpu")
    state = {k[len(prefix) :]: v.to(dtype) for k, v in tensors.items() if k.startswith(prefix)}
    missing = persistent - state.keys()
    if missing:
        raise UnsupportedArchitecture(f"weights for {prefix}{sorted(missing)[0]} are missing")
    module.load_state_dict(state, strict=True)
    return module.eval().requires_grad_(False)


def layer_tensor_names(all_names: list[str], arch: Arch, index: int) -> list[str]:
    prefix = arch.layer_prefix(index)
    return [n for n in all_names if n.startswith(prefix)]


def rotary_for(config: PretrainedConfig, skeleton: nn.Module, arch: Arch) -> nn.Module | None:
    """A fresh CPU rotary-embedding module (its buffers are computed from the config, not loaded)."""
    if arch.family != "llama":
        return None
    rotary_cls: Any = type(skeleton.get_submodule("model.rotary_emb"))
    return rotary_cls(config=config).eval()

"""Architecture adapters: which tensors belong to the embeddings, each decoder layer, the final norm and
the LM head, and how to build just those modules.

Two layouts: rotary decoders (Llama, Mistral, Qwen, Gemma, ... : `model` has `embed_tokens`, `layers`,
`norm` and `rotary_emb`, and layers take (hidden, attention_mask, position_ids, cache, use_cache,
position_embeddings)), and GPT-2 (`transformer` with `wte`, `wpe`, `h`, `ln_f`; absolute position
embeddings are added by the client with the tokens). Which model types are split, and what each does
around its layers, is in families.py: a model type without a test there is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.cache_utils import DynamicCache

from splitmesh.model.errors import UnsupportedArchitecture
from splitmesh.model.families import Family, family_of

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
    family: str  # "llama" (rotary decoder) or "gpt2"
    base: str  # attribute of the CausalLM holding the decoder ("model" / "transformer")
    layers: str  # attribute of the base holding the decoder layers
    embed: tuple[str, ...]  # attributes of the base run by the client before layer 0
    norm: str  # attribute of the base: final norm (client tail)
    num_layers: int
    traits: Family  # what the base model does around the layers (masks, scalings, soft-capping)
    layer_types: tuple[str, ...]  # per layer: "full_attention" or "sliding_attention"

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
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedArchitecture(
            f"{model_type} is an encoder-decoder model; only decoder-only LMs split"
        )
    traits = family_of(config)
    if traits.kind == "gpt2":
        n = int(config.n_layer)
        return Arch("gpt2", "transformer", "h", ("wte", "wpe"), "ln_f", n, traits, ("full_attention",) * n)
    base = getattr(skeleton, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    missing = [n for n in needed if base is None or not hasattr(base, n)]
    if missing or not hasattr(skeleton, "lm_head"):
        raise UnsupportedArchitecture(
            f"{model_type}: the model lacks {missing or ['lm_head']}; this transformers version builds it "
            "differently from the tested layout"
        )
    n = int(config.num_hidden_layers)
    return Arch("llama", "model", "layers", ("embed_tokens",), "norm", n, traits, layer_types(config, traits))


def layer_types(config: PretrainedConfig, traits: Family) -> tuple[str, ...]:
    """Each layer's attention kind as the family's base model picks its mask; it must agree with the
    kind of KV-cache layer transformers gives that layer, or masks and caches would disagree."""
    n = int(config.num_hidden_layers)
    if traits.masks == "layer_types":
        kinds = tuple(str(t) for t in config.layer_types[:n])
    elif traits.masks == "sliding_window" and getattr(config, "sliding_window", None) is not None:
        kinds = ("sliding_attention",) * n
    else:
        kinds = ("full_attention",) * n
    unknown = set(kinds) - {"full_attention", "sliding_attention"}
    if unknown:
        raise UnsupportedArchitecture(f"{traits.model_type}: layer types {sorted(unknown)} are not supported")
    cache_sliding = tuple(DynamicCache(config=config).is_sliding)
    if cache_sliding != tuple(k == "sliding_attention" for k in kinds):
        raise UnsupportedArchitecture(
            f"{traits.model_type}: the KV cache's sliding layers differ from the layers' masks; "
            "this configuration is untested"
        )
    return kinds


def materialize(
    module: nn.Module, prefix: str, tensors: dict[str, torch.Tensor], dtype: torch.dtype
) -> nn.Module:
    """Give a meta-device submodule real CPU storage and load its weights (keys under `prefix`).

    Every parameter and persistent buffer must be present. Non-persistent buffers are not in the weights:
    a module that has some is rebuilt by its own constructor (see `rebuild`), or refused rather than left
    with garbage after to_empty().
    """
    persistent = set(module.state_dict().keys())
    transient = [name for name, _ in module.named_buffers() if name not in persistent]
    module = rebuild(module, transient) if transient else module.to_empty(device="cpu")
    state = {k[len(prefix) :]: v.to(dtype) for k, v in tensors.items() if k.startswith(prefix)}
    missing = persistent - state.keys()
    if missing:
        raise UnsupportedArchitecture(f"weights for {prefix}{sorted(missing)[0]} are missing")
    module.load_state_dict(state, strict=True)
    return module.eval().requires_grad_(False)


def rebuild(meta: nn.Module, transient: list[str]) -> nn.Module:
    """A CPU module like `meta` whose non-persistent buffers its constructor computed, in their dtypes.

    Known: scaled token embeddings (Gemma 1/2/3), whose scale the model's constructor passed as
    `scalar_embed_scale` (sqrt(hidden_size)) and the module keeps as a plain float.
    """
    if isinstance(meta, nn.Embedding) and isinstance(getattr(meta, "scalar_embed_scale", None), float):
        scaled: Any = type(meta)  # a subclass of nn.Embedding whose constructor takes embed_scale
        fresh: nn.Module = scaled(
            meta.num_embeddings, meta.embedding_dim, meta.padding_idx, embed_scale=meta.scalar_embed_scale
        )
    else:
        raise UnsupportedArchitecture(
            f"{type(meta).__name__} has a non-persistent buffer {transient[0]!r}; cannot rebuild from weights"
        )
    fresh = fresh.to(next(meta.parameters()).dtype)
    kinds = {name: buf.dtype for name, buf in meta.named_buffers()}
    for name, buf in list(fresh.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        target = fresh.get_submodule(owner) if owner else fresh
        setattr(target, leaf, buf.to(kinds.get(name, buf.dtype)))  # the dtype the unsplit model gives it
    return fresh


def layer_tensor_names(all_names: list[str], arch: Arch, index: int) -> list[str]:
    prefix = arch.layer_prefix(index)
    return [n for n in all_names if n.startswith(prefix)]


def rotary_for(config: PretrainedConfig, skeleton: nn.Module, arch: Arch) -> nn.Module | None:
    """A fresh CPU rotary-embedding module (its buffers are computed from the config, not loaded)."""
    if arch.family != "llama":
        return None
    rotary_cls: Any = type(skeleton.get_submodule("model.rotary_emb"))
    return rotary_cls(config=config).eval()

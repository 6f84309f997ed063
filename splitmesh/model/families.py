"""The decoder families splitmesh splits, each with what its base model does around the decoder layers.

A family is listed here only when tests/unit/test_model_families.py checks it against the unsplit
Hugging Face model (greedy tokens, fp32 logits, chunked prefill past every sliding window, gradients, an
honest audit). Everything a shard or the client's head and tail must reproduce is read from the
transformers model code of that family and named here, so nothing is inferred from a module's shape:

- how the base model picks each layer's attention mask: from `config.layer_types` (Qwen2, Gemma 2, ...),
  from `config.sliding_window` for every layer (Mistral, Phi-3, ...), or always causal (Llama, Gemma);
- whether the rotary embedding is called per layer type (Gemma 3: local and global layers differ);
- config attributes that scale the layer-0 input (Granite) or the logits (Granite, Cohere, Gemma 2/3
  soft-capping).

Scaled token embeddings (Gemma) live in the embedding module itself and are rebuilt by its constructor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from splitmesh.model.errors import UnsupportedArchitecture

MaskRule = Literal["causal", "sliding_window", "layer_types"]

_LLAMA_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ATTENTION_LORA = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Family:
    model_type: str  # config.model_type
    kind: Literal["llama", "gpt2"]  # "llama": rotary decoder under `model`; "gpt2": learned positions
    masks: MaskRule  # how the base model chooses each layer's attention mask
    rotary_per_layer_type: bool = False  # rotary_emb(hidden, positions, layer_type) (Gemma 3)
    embedding_multiplier: str | None = None  # config attribute: layer-0 input = embeddings x it
    logits_divisor: str | None = None  # config attribute: logits = lm_head(h) / it
    logits_multiplier: str | None = None  # config attribute: logits = lm_head(h) x it
    logits_softcap: str | None = None  # config attribute: logits = cap * tanh(logits / cap) when set
    lora_targets: tuple[str, ...] = _LLAMA_LORA  # linear modules of a layer LoRA adapts by default
    untested_flags: tuple[str, ...] = ()  # config attributes that change the forward; refused when truthy


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama", "llama", "causal"),
        Family("mistral", "llama", "sliding_window"),
        Family("mixtral", "llama", "sliding_window", lora_targets=_ATTENTION_LORA),
        Family("qwen2", "llama", "layer_types"),
        Family("qwen3", "llama", "layer_types"),
        Family("gemma", "llama", "causal"),
        Family("gemma2", "llama", "layer_types", logits_softcap="final_logit_softcapping"),
        Family(
            "gemma3_text",
            "llama",
            "layer_types",
            rotary_per_layer_type=True,
            logits_softcap="final_logit_softcapping",
            untested_flags=("use_bidirectional_attention",),
        ),
        Family(
            "phi3",
            "llama",
            "sliding_window",
            lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
        ),
        Family("olmo2", "llama", "causal"),
        Family(
            "granite",
            "llama",
            "causal",
            embedding_multiplier="embedding_multiplier",
            logits_divisor="logits_scaling",
        ),
        Family("stablelm", "llama", "causal"),
        Family("starcoder2", "llama", "sliding_window", lora_targets=(*_ATTENTION_LORA, "c_fc", "c_proj")),
        Family("cohere", "llama", "causal", logits_multiplier="logit_scale"),
        Family("qwen3_moe", "llama", "sliding_window", lora_targets=_ATTENTION_LORA),
        Family("smollm3", "llama", "layer_types"),
        Family("gpt2", "gpt2", "causal", lora_targets=("c_attn", "c_proj", "c_fc")),
    )
}


def family_of(config: object) -> Family:
    """The tested family of a model's config, or UnsupportedArchitecture naming what is missing."""
    model_type = str(getattr(config, "model_type", "?"))
    family = FAMILIES.get(model_type)
    if family is None:
        raise UnsupportedArchitecture(
            f"model type {model_type!r} is not supported: no test checks its split against the unsplit "
            f"model (tests/unit/test_model_families.py), so its shards could be silently wrong. "
            f"Supported: {', '.join(sorted(FAMILIES))}"
        )
    flags = [flag for flag in family.untested_flags if getattr(config, flag, None)]
    if flags:
        raise UnsupportedArchitecture(f"{model_type} with {flags[0]} set is untested and not supported")
    return family

"""Tiny configurations of every decoder family splitmesh splits (tests/unit/test_model_families.py).

Sliding windows are 4 tokens, shorter than the tests' prompts; alternating families mix both layer kinds
so that shards start on either kind.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import (
    CohereConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Olmo2Config,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
    SmolLM3Config,
    StableLmConfig,
    Starcoder2Config,
)

WINDOW = 4  # tokens in every sliding window
LAYERS = 4
_COMMON: dict[str, object] = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
_ALTERNATING = ["sliding_attention", "full_attention"] * (LAYERS // 2)


def _make(cls: type[PretrainedConfig], **overrides: object) -> Callable[[], PretrainedConfig]:
    return lambda: cls(**{**_COMMON, **overrides})


FAMILY_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "llama": _make(LlamaConfig, tie_word_embeddings=False),
    "mistral": _make(MistralConfig, sliding_window=None),
    "mistral-sliding": _make(MistralConfig, sliding_window=WINDOW),
    "mixtral": _make(MixtralConfig, sliding_window=WINDOW, num_local_experts=4, num_experts_per_tok=2),
    "qwen2-tied": _make(
        Qwen2Config,
        tie_word_embeddings=True,
        use_sliding_window=True,
        sliding_window=WINDOW,
        max_window_layers=1,
    ),
    "qwen3": _make(
        Qwen3Config, head_dim=16, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2
    ),
    "gemma": _make(GemmaConfig, head_dim=16),
    "gemma2": _make(
        Gemma2Config,
        head_dim=16,
        sliding_window=WINDOW,
        final_logit_softcapping=3.0,  # small caps: random logits really get capped
        attn_logit_softcapping=5.0,
        query_pre_attn_scalar=16,
    ),
    "gemma3_text": _make(
        Gemma3TextConfig,
        head_dim=16,
        sliding_window=WINDOW,
        layer_types=_ALTERNATING,
        final_logit_softcapping=3.0,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        },
    ),
    "phi3": _make(Phi3Config, sliding_window=WINDOW, partial_rotary_factor=0.5),
    "olmo2": _make(Olmo2Config),
    "granite": _make(
        GraniteConfig,
        embedding_multiplier=6.0,
        logits_scaling=4.0,
        residual_multiplier=0.5,
        attention_multiplier=0.1,
    ),
    "stablelm": _make(StableLmConfig, partial_rotary_factor=0.25, use_qkv_bias=True, qk_layernorm=True),
    "starcoder2": _make(Starcoder2Config, sliding_window=WINDOW, num_key_value_heads=2),
    "cohere": _make(CohereConfig, logit_scale=0.25, use_qk_norm=True),
    "qwen3_moe": _make(
        Qwen3MoeConfig,
        head_dim=16,
        sliding_window=WINDOW,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        decoder_sparse_step=2,  # layers 1 and 3 are sparse, 0 and 2 dense
        mlp_only_layers=[],
    ),
    "smollm3": _make(
        SmolLM3Config,
        use_sliding_window=True,
        sliding_window=WINDOW,
        no_rope_layers=[1, 0, 1, 0],
        layer_types=_ALTERNATING,
    ),
    "gpt2": lambda: GPT2Config(
        vocab_size=256, n_embd=64, n_layer=LAYERS, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
    ),
}

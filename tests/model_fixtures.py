"""Small random-weight models saved as real Hugging Face directories, and the converted SmolLM2."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig


def save_random_model(config: object, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(path))
    return path


def tiny_llama_config(**overrides: object) -> LlamaConfig:
    values: dict[str, object] = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_gpt2_config(**overrides: object) -> GPT2Config:
    values: dict[str, object] = dict(
        vocab_size=256, n_embd=64, n_layer=6, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
    )
    values.update(overrides)
    return GPT2Config(**values)

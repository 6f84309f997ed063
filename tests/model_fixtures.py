"""Small random-weight models saved as real Hugging Face directories, and the converted SmolLM2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def save_tiny_chat_model(path: Path, layers: int = 6) -> Path:
    """A tiny random Llama with SmolLM2's vocabulary and tokenizer files (prompts become real token ids)."""
    import shutil

    from splitmesh.paths import models_dir

    save_random_model(tiny_llama_config(vocab_size=49152, num_hidden_layers=layers), path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(models_dir() / "SmolLM2-135M-Instruct" / name, path / name)
    return path


def greedy_tokens(model: Any, prompt_ids: list[int], new_tokens: int, eos: set[int]) -> list[int]:
    """The unsplit model's greedy continuation of `prompt_ids` (up to and including an eos token)."""
    ids, out = list(prompt_ids), []
    with torch.inference_mode():
        for _ in range(new_tokens):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(token)
            if token in eos:
                break
            ids.append(token)
    return out

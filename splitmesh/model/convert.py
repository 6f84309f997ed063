"""Checkpoint tensors -> the tensors a transformers module holds, with transformers' own conversions.

transformers 5 stores some weights differently in memory than in checkpoints (Mixtral's experts are saved
one matrix per expert, `block_sparse_moe.experts.N.w1`, and held fused, `mlp.experts.gate_up_proj`), and
converts them while loading with the model's weight-conversion mapping. A shard loads only its own
tensors, so it applies the same mapping to them: the same rename rules and the same conversion operations
(transformers' classes, not a copy), in the loader's order. Quantization, tensor parallelism and offloading
are not involved here.
"""

from __future__ import annotations

from concurrent.futures import Future
from copy import deepcopy

import torch
from torch import nn
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    WeightConverter,
    WeightRenaming,
    dot_natural_key,
    rename_source_key,
)


def convert_checkpoint(skeleton: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint name -> tensor, converted to the skeleton's state-dict names (as from_pretrained does).

    Keys that no rule maps to a skeleton tensor keep their checkpoint name (a strict load then names them).
    """
    mapping = get_model_conversion_mapping(skeleton)  # type: ignore[arg-type]
    if not mapping:
        return tensors
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}
    meta = skeleton.state_dict()
    prefix = getattr(skeleton, "base_model_prefix", None)
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, WeightConverter] = {}
    for key, tensor in sorted(tensors.items(), key=lambda kv: dot_natural_key(kv[0])):
        renamed, pattern = rename_source_key(key, renamings, converters, prefix, meta)
        if renamed not in meta:
            out[key] = tensor  # unexpected: left for the strict load to report
        elif pattern is None:
            out[renamed] = tensor
        else:  # one converter instance per target, collecting e.g. one tensor per expert, in order
            loaded: Future[torch.Tensor] = Future()  # the form the loader hands over: a finished read
            loaded.set_result(tensor)
            converter = pending.setdefault(renamed, deepcopy(by_pattern[pattern]))
            converter.add_tensor(renamed, key, pattern, loaded)
    config = getattr(skeleton, "config", None)
    for name, converter in pending.items():
        for target, value in converter.convert(name, model=None, config=config).items():
            out[target] = value[0] if isinstance(value, list) else value
    return out

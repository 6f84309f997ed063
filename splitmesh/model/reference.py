"""The unsplit Hugging Face model as the yardstick: same tokens, and its decode rate on this machine."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from splitmesh.model.source import ModelSource


@dataclass(frozen=True)
class ReferenceRun:
    tokens: list[int]  # generated ids, eos included when it stopped there
    prefill_seconds: float  # generate(max_new_tokens=1)
    total_seconds: float  # generate(max_new_tokens=n)

    @property
    def tokens_per_s(self) -> float | None:
        """Decode rate: tokens after the first over the time they added."""
        extra = self.total_seconds - self.prefill_seconds
        return (len(self.tokens) - 1) / extra if len(self.tokens) > 1 and extra > 0 else None


def reference_generate(
    model: str | None, prompt_ids: list[int], max_new_tokens: int, repeats: int = 2
) -> ReferenceRun:
    """Greedy `model.generate` on the whole model, timed (best of `repeats` after a warm-up)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = ModelSource.resolve(model).path
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    mask = torch.ones_like(ids)

    def run(n: int) -> tuple[list[int], float]:
        started = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=hf.config.eos_token_id,
            )
        return [int(t) for t in out[0, ids.shape[1] :]], time.perf_counter() - started

    run(2)  # warm-up: first calls allocate and pick kernels
    tokens, total = min((run(max_new_tokens) for _ in range(repeats)), key=lambda r: r[1])
    prefill = min(run(1)[1] for _ in range(repeats))
    return ReferenceRun(tokens, prefill, total)

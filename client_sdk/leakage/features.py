"""Token sequences, the model pieces per split, and the noiseless features cached once per split.

Everything an epsilon changes is added later on copies of these tensors (mechanism.py), so a grid of
epsilons costs one pass of the client's layers per split, not one per cell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from client_sdk.privacy import calibrate_clip
from splitmesh.errors import ConfigError
from splitmesh.model.client import ClientModel
from splitmesh.model.loader import ModelSpec
from splitmesh.model.stack import LayerStack

logger = logging.getLogger(__name__)

Tokenizer = Callable[..., Any]  # a Hugging Face tokenizer, or ByteTokenizer for models without one
_HEAD_TOKENS = 4096  # tokens per forward pass of the client layers (few calls: per-call overhead dominates)
_TAIL_TOKENS = 512  # tokens per pass through the LM head: bounds the [rows, seq, vocab] logits in memory


class ByteTokenizer:
    """For test models shipped without a tokenizer: one id per UTF-8 byte, folded into the vocabulary."""

    def __init__(self, vocab_size: int, bos_token_id: int | None):
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id

    def __call__(self, text: str, return_tensors: str | None = None, **_: Any) -> dict[str, Any]:
        ids = [b % self.vocab_size for b in text.encode()]
        if self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}


def load_tokenizer(spec: ModelSpec) -> Tokenizer:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(spec.source.path))
    except (OSError, ValueError, TypeError):
        logger.warning("%s has no tokenizer; using bytes as tokens", spec.source.path)
        return ByteTokenizer(int(spec.config.vocab_size), getattr(spec.config, "bos_token_id", None))


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens (the caller places BOS)."""
    if isinstance(tokenizer, ByteTokenizer):
        return list(tokenizer(text)["input_ids"][1 if tokenizer.bos_token_id is not None else 0 :])
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def chunk_tokens(
    tokenizer: Tokenizer, texts: list[str], seq_len: int, max_tokens: int | None, bos: int
) -> torch.Tensor:
    """The texts as one token stream cut into rows [S, seq_len], each starting with `bos`.

    `max_tokens` bounds the non-BOS tokens (rounded down to whole rows); None keeps every full row.
    """
    per_row = seq_len - 1
    stream: list[int] = []
    for text in texts:
        stream.extend(encode(tokenizer, text.strip() + "\n"))
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    rows = len(stream) // per_row
    if max_tokens is not None:
        rows = min(rows, max_tokens // per_row)
    if rows == 0:
        raise ConfigError(f"the text gives fewer than {per_row} tokens (one row); pass a longer --text file")
    body = torch.tensor(stream[: rows * per_row]).view(rows, per_row)
    return torch.cat([torch.full((rows, 1), bos), body], dim=1)  # [S, seq_len]


def positions_like(ids: torch.Tensor) -> torch.Tensor:
    return torch.arange(ids.shape[1]).expand_as(ids)  # [S, T]


@dataclass
class SplitModel:
    """The client's layers [0, split) with its tail, and the nodes' layers [split, n) in one process."""

    client: ClientModel
    rest: LayerStack

    @classmethod
    def build(cls, spec: ModelSpec, split: int) -> SplitModel:
        return cls(
            ClientModel(spec, split), spec.build_stack(split, spec.num_layers).eval().requires_grad_(False)
        )

    @property
    def split(self) -> int:
        return self.client.split

    def head(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [S, T] -> Z [S, T, hidden], noiseless, in batches."""
        rows = max(1, _HEAD_TOKENS // ids.shape[1])
        with torch.inference_mode():
            parts = [
                self.client.head(ids[i : i + rows], positions_like(ids[i : i + rows]))
                for i in range(0, ids.shape[0], rows)
            ]
        return torch.cat(parts)

    def finish(self, z: torch.Tensor) -> torch.Tensor:
        """Released Z [S, T, hidden] -> logits [S, T, vocab]: the nodes' layers, then the tail."""
        rows = max(1, _TAIL_TOKENS // z.shape[1])
        with torch.inference_mode():
            parts = []
            for i in range(0, z.shape[0], rows):
                piece = z[i : i + rows]
                positions = torch.arange(piece.shape[1]).expand(piece.shape[0], -1)
                parts.append(self.client.tail(self.rest(piece, positions)))
        return torch.cat(parts)

    def step(
        self, ids: torch.Tensor, start: int, caches: tuple[DynamicCache, DynamicCache]
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """One incremental decode step for generation: ids [B, q] at positions start.. -> (Z [B, q, hidden],
        a function that runs the nodes' layers on the released Z and returns their output)."""
        positions = torch.arange(start, start + ids.shape[1]).expand(ids.shape[0], -1)
        z = self.client.head(ids, positions, caches[0])

        def nodes(released: torch.Tensor) -> torch.Tensor:
            return self.rest(released, positions, caches[1])  # [B, q, hidden]

        return z, nodes


@dataclass
class SplitFeatures:
    """Noiseless client features of one split on the attacker's text and on the eval text."""

    model: SplitModel
    clip: float  # L2 clip C: the median per-token norm on public text, as the client calibrates it
    train_ids: torch.Tensor  # [S_train, T]
    train_z: torch.Tensor  # [S_train, T, hidden]
    eval_ids: torch.Tensor  # [S_eval, T]
    eval_z: torch.Tensor  # [S_eval, T, hidden]

    @classmethod
    def compute(
        cls,
        spec: ModelSpec,
        split: int,
        tokenizer: Tokenizer,
        train_ids: torch.Tensor,
        eval_ids: torch.Tensor,
        clip: float | None = None,
    ) -> SplitFeatures:
        model = SplitModel.build(spec, split)
        if clip is None:
            clip = calibrate_clip(model.client, tokenizer)
        return cls(model, clip, train_ids, model.head(train_ids), eval_ids, model.head(eval_ids))


def reference_logits(spec: ModelSpec, eval_ids: torch.Tensor) -> torch.Tensor:
    """The noiseless model's logits on the eval rows [S, T, vocab] (the split does not change them)."""
    whole = SplitModel.build(spec, 0)
    return whole.finish(whole.head(eval_ids))

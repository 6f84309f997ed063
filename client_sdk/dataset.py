"""Training data for split fine-tuning: {"prompt", "completion"} examples, tokenized into batches whose
loss covers the completion only.

Batches are right-padded rows with plain causal attention, which is exact for every real token: a token
only attends to earlier positions of its own row, and padding only ever comes after the real tokens.
Nodes need no attention mask, and pad positions get zero gradient because they carry no labels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from client_sdk.errors import TrainingError

IGNORE_INDEX = -100  # label of positions without loss (prompt, padding, soft prompt)
SHIPPED_INSTRUCTIONS = "instructions.jsonl"  # splitmesh/data: every completion opens with "Ahoy!"
SHIPPED_HELDOUT = "instructions_heldout.jsonl"  # prompts absent from the training file, same format


@dataclass(frozen=True)
class TrainingBatch:
    input_ids: torch.Tensor  # [batch, seq] right-padded
    labels: torch.Tensor  # [batch, seq] IGNORE_INDEX on prompt and padding tokens
    attention_mask: torch.Tensor  # [batch, seq] 1 = real token, 0 = padding (informational: see module doc)

    @property
    def label_tokens(self) -> int:
        """Tokens the loss is computed on (after the causal shift)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def shipped_dataset(name: str = SHIPPED_INSTRUCTIONS) -> Path:
    """Path of a dataset shipped in splitmesh/data."""
    return Path(str(resources.files("splitmesh") / "data" / name))


def load_examples(path: str | Path | None = None) -> list[dict[str, str]]:
    """{"prompt", "completion"} objects, one JSON per line (None = the shipped instruction set)."""
    source = Path(path) if path is not None else shipped_dataset()
    examples: list[dict[str, str]] = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{source}:{number} is not JSON: {exc}") from exc
        if not (
            isinstance(row, dict)
            and isinstance(row.get("prompt"), str)
            and isinstance(row.get("completion"), str)
        ):
            raise TrainingError(f'{source}:{number} needs string fields "prompt" and "completion"')
        examples.append({"prompt": row["prompt"], "completion": row["completion"]})
    return examples


def encode_example(
    tokenizer: Any, prompt: str, completion: str, chat: bool | None = None
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids). With a chat template the prompt ends with the assistant header and
    the completion carries the end-of-turn tokens, tokenized exactly as `Client.encode_prompt` does."""
    use_chat = getattr(tokenizer, "chat_template", None) is not None if chat is None else chat
    if use_chat:
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": completion}], tokenize=False
        )
        if not full.startswith(head):
            raise TrainingError(
                "the chat template renders the prompt differently with an answer; pass chat=False"
            )
        prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(full[len(head) :], add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion_ids = [*completion_ids, int(tokenizer.eos_token_id)]  # learn to stop
    return [int(t) for t in prompt_ids], [int(t) for t in completion_ids]


def make_batch(
    examples: Iterable[Mapping[str, str]], tokenizer: Any, *, max_length: int = 512, chat: bool | None = None
) -> TrainingBatch:
    """Tokenize {"prompt", "completion"} pairs into one right-padded batch; loss on completions only.

    A sequence longer than `max_length` loses the end of its completion; one whose prompt alone fills
    `max_length` is refused.
    """
    rows: list[tuple[list[int], list[int]]] = []
    for index, example in enumerate(examples):
        prompt_ids, completion_ids = encode_example(tokenizer, example["prompt"], example["completion"], chat)
        if len(prompt_ids) >= max_length:
            raise TrainingError(
                f"example {index}: the prompt is {len(prompt_ids)} tokens, max_length {max_length}"
            )
        rows.append((prompt_ids, completion_ids[: max_length - len(prompt_ids)]))
    if not rows:
        raise TrainingError("no examples to batch")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = int(pad or 0)  # any id: padded positions are never attended to by real tokens nor labelled
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (prompt_ids, completion_ids) in enumerate(rows):
        ids = prompt_ids + completion_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(prompt_ids) : len(ids)] = torch.tensor(completion_ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return TrainingBatch(input_ids, labels, mask)

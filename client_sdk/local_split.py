"""The client's own side of a split: its layers, the adapters trained on them, and a job's noise.

`LocalSplit` is what `Client.prepare(split)` loads once per split. `JobPrivacy.open` is the one place a job
(generation or training) turns the caller's `PrivacySettings` into a Privatizer: it calibrates the clip
on public text when none is given (once per split) and later writes the privacy part of the receipt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from client_sdk.adapters import AdapterConfig, ClientTrainer
from client_sdk.errors import TrainingError
from client_sdk.options import TrainOptions
from client_sdk.privacy import PrivacySettings, Privatizer, calibrate_clip, compose
from splitmesh.chain import ModelInfo
from splitmesh.model.client import ClientModel


@dataclass
class LocalSplit:
    """The client's layers for one split of a registered plan."""

    model: ClientModel  # embeddings, layers [0, split), final norm, LM head
    info: ModelInfo  # the plan whose shard `first_shard` starts after the client's layers
    first_shard: int
    clip: float | None = None  # calibrated clip for this split, computed on first use
    trainer: ClientTrainer | None = None  # the adapters trained on this split (LoRA lives in `model`)

    @property
    def split(self) -> int:
        return self.model.split

    @property
    def private_layers(self) -> bool:
        """Whether the client's layers carry a private adapter (then even a public BOS is noised)."""
        return self.trainer is not None

    def adapters_for(self, opts: TrainOptions) -> ClientTrainer:
        """The adapters this split trains: created on first use, then the same ones (LoRA lives in
        `model`, so one split carries one adapter configuration)."""
        config = AdapterConfig(
            lora_rank=opts.lora_rank, lora_alpha=opts.lora_alpha, soft_prompt_tokens=opts.soft_prompt_tokens
        )
        if self.trainer is None:
            self.trainer = ClientTrainer(self.model, config, seed=opts.seed)
        elif self.trainer.config != config:
            raise TrainingError(
                f"split {self.split} already trains {self.trainer.config}; use a new Client "
                "for another adapter configuration"
            )
        return self.trainer


@dataclass
class JobPrivacy:
    """A job's noise: the settings, the clip actually used, and the Privatizer that counts releases."""

    settings: PrivacySettings
    clip: float | None  # the clip the noise is calibrated with (None when nothing is clipped)
    privatizer: Privatizer

    @classmethod
    def open(
        cls, local: LocalSplit, settings: PrivacySettings, tokenizer: Any, *, public_prefix: int = 0
    ) -> JobPrivacy:
        clip = settings.clip
        if math.isfinite(settings.epsilon) and clip is None:
            if local.clip is None:
                local.clip = calibrate_clip(local.model, tokenizer)
            clip = local.clip
        privatizer = Privatizer(settings.epsilon, settings.delta, clip or 1.0, public_prefix=public_prefix)
        return cls(settings, clip, privatizer)

    def receipt(self) -> dict[str, Any]:
        """The composed budget over every vector released so far, and the clip (None without noise)."""
        out = compose(self.settings.epsilon, self.settings.delta, self.privatizer.released).to_json()
        out["clip"] = self.clip if math.isfinite(self.settings.epsilon) else None
        return out

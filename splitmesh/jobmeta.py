"""What a client declares about a job on-chain: the `metadata` bytes of `submitJob`, written by client_sdk
and read back by the coordinator.

The bytes are compact JSON, e.g.
``{"epsilon":"inf","delta":1e-05,"clip":null,"split":4,"sdk":"splitmesh/1"}``; a training job adds
``"kind":"train"`` and ``"adapter":{"lora_rank":8,"soft_prompt_tokens":0}``. An infinite epsilon (no
noise) is the string "inf", here and in every other JSON this project writes (`epsilon_to_json` /
`epsilon_from_json`). The chain stores the bytes as they are: anyone may declare anything, so a reader
parses them with `JobMeta.from_json` and treats what does not parse as opaque.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from splitmesh.errors import SplitmeshError

SDK_TAG = "splitmesh/1"  # names the writer of the metadata format below


class InvalidJobMeta(SplitmeshError, ValueError):
    """A job's metadata is not the JSON object `JobMeta` describes (another writer, or malformed)."""


def epsilon_to_json(value: float) -> float | str:
    """A float for JSON: infinity becomes the string "inf" (JSON has no infinity)."""
    return "inf" if math.isinf(value) else value


def epsilon_from_json(value: Any) -> float:
    """The inverse of `epsilon_to_json`; ValueError/TypeError for anything else."""
    return math.inf if value == "inf" else float(value)


class AdapterMeta(BaseModel):
    """The shape of what a training job trains on the client (declared, not verified)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    lora_rank: int  # LoRA rank on the client's layers; 0 = none
    soft_prompt_tokens: int  # trainable virtual tokens; 0 = none


class JobMeta(BaseModel):
    """A job's declared privacy setting and kind, as the SDK writes it."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    epsilon: float  # per released token vector; inf = no noise
    delta: float  # per released token vector
    clip: float | None  # L2 bound per token vector; None when nothing is clipped
    split: int  # layers the client runs
    sdk: str = SDK_TAG
    kind: Literal["infer", "train"] = "infer"
    adapter: AdapterMeta | None = None  # training jobs only

    @field_validator("epsilon", mode="before")
    @classmethod
    def _epsilon(cls, value: Any) -> Any:
        return math.inf if value == "inf" else value

    @field_validator("epsilon")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"epsilon must be > 0, got {value}")
        return value

    @field_validator("delta")
    @classmethod
    def _probability(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"delta must be in (0, 1), got {value}")
        return value

    @field_validator("split")
    @classmethod
    def _split(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"split must be >= 0, got {value}")
        return value

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in the order the SDK has always written them; "kind" only for training."""
        out: dict[str, Any] = {
            "epsilon": epsilon_to_json(self.epsilon),
            "delta": self.delta,
            "clip": self.clip,
            "split": self.split,
            "sdk": self.sdk,
        }
        if self.kind != "infer":
            out["kind"] = self.kind
        if self.adapter is not None:
            out["adapter"] = self.adapter.model_dump()
        return out

    def to_json(self) -> bytes:
        """The compact bytes that go on-chain."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> JobMeta:
        """Parse metadata bytes; InvalidJobMeta when they are not this format."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidJobMeta(f"job metadata is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidJobMeta("job metadata is not a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidJobMeta(f"job metadata does not follow {SDK_TAG}: {exc}") from exc

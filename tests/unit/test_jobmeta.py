"""Job metadata: the bytes the SDK puts on-chain, and what a reader accepts back."""

from __future__ import annotations

import json
import math

import pytest

from splitmesh.jobmeta import AdapterMeta, InvalidJobMeta, JobMeta, epsilon_from_json, epsilon_to_json


def test_generation_metadata_keeps_its_bytes() -> None:
    meta = JobMeta(epsilon=math.inf, delta=1e-5, clip=None, split=4)
    assert meta.to_json() == b'{"epsilon":"inf","delta":1e-05,"clip":null,"split":4,"sdk":"splitmesh/1"}'
    assert JobMeta.from_json(meta.to_json()) == meta


def test_training_metadata_declares_kind_and_adapter() -> None:
    adapter = AdapterMeta(lora_rank=8, soft_prompt_tokens=0)
    meta = JobMeta(epsilon=30.0, delta=1e-5, clip=2.5, split=4, kind="train", adapter=adapter)
    assert json.loads(meta.to_json()) == {
        "epsilon": 30.0,
        "delta": 1e-5,
        "clip": 2.5,
        "split": 4,
        "sdk": "splitmesh/1",
        "kind": "train",
        "adapter": {"lora_rank": 8, "soft_prompt_tokens": 0},
    }
    assert JobMeta.from_json(meta.to_json()) == meta


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        b"[1, 2]",
        b'{"epsilon":8}',  # another writer: no split, no delta
        b'{"epsilon":"lots","delta":1e-05,"clip":null,"split":4,"sdk":"splitmesh/1"}',
        b'{"epsilon":0,"delta":1e-05,"clip":null,"split":4,"sdk":"splitmesh/1"}',
        b'{"epsilon":8,"delta":1e-05,"clip":null,"split":true,"sdk":"splitmesh/1"}',
        b'{"epsilon":8,"delta":1e-05,"clip":null,"split":4,"sdk":"splitmesh/1","extra":1}',
    ],
)
def test_anything_else_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidJobMeta):
        JobMeta.from_json(raw)


def test_infinity_is_the_string_inf() -> None:
    assert epsilon_to_json(math.inf) == "inf" and epsilon_to_json(8.0) == 8.0
    assert epsilon_from_json("inf") == math.inf and epsilon_from_json(8) == 8.0

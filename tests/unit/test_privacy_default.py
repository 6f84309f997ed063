"""The SDK's default privacy setting is the one the shipped measurements recommend, and the rule that picks
it does what it says on hand-made tables."""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest

from client_sdk.options import GenerateOptions, TrainOptions
from client_sdk.privacy import DEFAULT_EPSILON, PrivacySettings
from splitmesh.leakage_table import USABLE_AGREEMENT, LeakageTable

DEMO_SPLIT = 4  # `splitmesh demo --split` default: the client runs 4 layers


def _raw_table() -> dict:
    return json.loads(resources.files("splitmesh").joinpath("data/leakage_table.json").read_text())


def _epsilon(value: float | str) -> float:
    return math.inf if value == "inf" else float(value)


def test_every_entry_point_defaults_to_the_same_epsilon() -> None:
    assert GenerateOptions().epsilon == DEFAULT_EPSILON
    assert TrainOptions().epsilon == DEFAULT_EPSILON
    assert PrivacySettings().epsilon == DEFAULT_EPSILON


def test_the_default_is_the_best_usable_point_of_the_shipped_table() -> None:
    raw = _raw_table()
    usable = [
        e
        for e in raw["entries"]
        if e["split"] == DEMO_SPLIT and e["mechanism"] == "plain" and e["next_token_agreement"] >= 0.7
    ]
    assert usable, "the shipped table has no usable point at the demo's split"
    # Independent of LeakageTable: the least-leaking usable point, within two standard errors, most useful.
    least = min(e["prompt_recovery"]["best"] for e in usable)
    band = 2 * math.sqrt(least * (1 - least) / raw["eval_tokens"])
    tied = [e for e in usable if e["prompt_recovery"]["best"] <= least + band]
    best = max(tied, key=lambda e: (e["next_token_agreement"], _epsilon(e["epsilon"])))
    assert _epsilon(best["epsilon"]) == DEFAULT_EPSILON
    picked = LeakageTable.from_json(raw).recommended(DEMO_SPLIT)
    assert picked is not None and picked.epsilon == DEFAULT_EPSILON


def _entry(epsilon: float | str, agreement: float, recovery: float) -> dict:
    return {
        "split": 2,
        "mechanism": "plain",
        "epsilon": epsilon,
        "next_token_agreement": agreement,
        "perplexity_ratio": 1.0,
        "prompt_recovery": {"best": recovery, "best_attack": "learned"},
        "output_recovery_greedy": 1.0,
        "output_recovery_sampled": 0.5,
    }


def _table(*entries: dict, eval_tokens: int = 1000) -> LeakageTable:
    return LeakageTable.from_json(
        {
            "format": 1,
            "weights_hash": "0x00",
            "model": "t",
            "eval_tokens": eval_tokens,
            "entries": list(entries),
        }
    )


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        # A usable setting that clearly leaks less wins over the exact one.
        ([_entry("inf", 1.0, 0.8), _entry(300.0, 0.75, 0.3), _entry(30.0, 0.1, 0.05)], 300.0),
        # Leakage within the measurement's noise: the more useful one.
        ([_entry("inf", 1.0, 0.76), _entry(1000.0, 0.74, 0.75), _entry(30.0, 0.05, 0.1)], math.inf),
        # A setting below the usable bar is never recommended, however little it leaks.
        ([_entry(1000.0, USABLE_AGREEMENT - 0.01, 0.0), _entry("inf", 1.0, 0.9)], math.inf),
    ],
)
def test_recommended_rule(entries: list[dict], expected: float) -> None:
    picked = _table(*entries).recommended(2)
    assert picked is not None and picked.epsilon == expected


def test_no_usable_point_recommends_nothing() -> None:
    assert _table(_entry(30.0, 0.1, 0.05)).recommended(2) is None
    assert _table(_entry("inf", 1.0, 0.8)).recommended(4) is None

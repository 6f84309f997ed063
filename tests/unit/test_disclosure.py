"""Receipts' leakage field: the shipped-table lookup and the words for what each party sees."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from client_sdk.disclosure import exposure, load_table, lookup, sentence

HASH = "0x" + "ab" * 32


def entry(split: int, epsilon: float | str, recovery: float, agreement: float) -> dict[str, object]:
    return {
        "split": split,
        "mechanism": "plain",
        "epsilon": epsilon,
        "clip": 1.0,
        "next_token_agreement": agreement,
        "perplexity_ratio": 1.0 / max(agreement, 1e-3),
        "greedy_prefix_kept": agreement,
        "prompt_recovery": {
            "nearest": recovery / 2,
            "learned": recovery,
            "optimization": 0.0,
            "best": recovery,
            "best_attack": "learned",
        },
        "output_recovery_greedy": 1.0,
        "output_recovery_sampled": 0.7,
    }


@pytest.fixture
def table(tmp_path: Path) -> str:
    data = {
        "format": 1,
        "generated_by": "test",
        "generated_at": "2026-12-04",
        "model": "tiny",
        "weights_hash": HASH,
        "delta": 1e-5,
        "seed": 0,
        "eval_tokens": 100,
        "entries": [
            entry(4, "inf", 0.99, 1.0),
            entry(4, 100.0, 0.8, 0.2),
            entry(4, 30.0, 0.3, 0.03),
            entry(2, 30.0, 0.5, 0.1),
        ],
    }
    path = tmp_path / "table.json"
    path.write_text(json.dumps(data))
    load_table.cache_clear()
    return str(path)


def test_an_exact_epsilon_reports_its_entry(table: str) -> None:
    got = lookup(HASH, 4, 30.0, table_path=table)
    assert got["source"] == "measured"
    assert got["prompt_recovery"] == 0.3 and got["next_token_agreement"] == 0.03
    assert got["measured_at_epsilon"] == 30.0 and got["split"] == 4


def test_between_grid_points_the_leakier_neighbour_is_reported(table: str) -> None:
    got = lookup(HASH, 4, 50.0, table_path=table)  # between 30 and 100: report 100, an upper bound
    assert got["measured_at_epsilon"] == 100.0 and got["requested_epsilon"] == 50.0
    assert got["prompt_recovery"] == 0.8
    assert lookup(HASH, 4, 1e6, table_path=table)["measured_at_epsilon"] == "inf"
    assert lookup(HASH, 4, math.inf, table_path=table)["prompt_recovery"] == 0.99


def test_unmeasured_settings_say_so_instead_of_guessing(table: str) -> None:
    assert lookup("0x" + "cd" * 32, 4, 30.0, table_path=table)["source"] == "not measured"  # other model
    assert lookup(HASH, 3, 30.0, table_path=table)["source"] == "not measured"  # other split
    assert lookup(HASH, 2, 100.0, table_path=table)["source"] == "not measured"  # above the largest
    assert lookup(bytes.fromhex(HASH[2:]), 2, 10.0, table_path=table)["prompt_recovery"] == 0.5


def test_the_sentence_carries_the_numbers(table: str) -> None:
    text = sentence(lookup(HASH, 4, 30.0, table_path=table))
    assert "30%" in text and "3%" in text and "learned" in text
    assert "not measured" in sentence(lookup(HASH, 3, 30.0, table_path=table))


def test_exposure_names_the_bos_and_the_output() -> None:
    public = exposure(epsilon=30.0, public_bos=True, greedy=True, split=4)
    assert "BOS" in public["every_route_node"] and "epsilon 30.0" in public["every_route_node"]
    assert "every generated token" in public["last_node"]
    private = exposure(epsilon=math.inf, public_bos=False, greedy=False, split=4)
    assert "BOS" not in private["every_route_node"] and "no noise" in private["every_route_node"]
    assert "argmax" in private["last_node"]

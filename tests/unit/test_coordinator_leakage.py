"""The coordinator's job page carries the shipped leakage measurement for the job's declared setting."""

from __future__ import annotations

import json
import math

from coordinator import schema
from coordinator.queries import job_leakage, job_meta
from splitmesh.jobmeta import JobMeta
from splitmesh.leakage_table import load_table


def index_with_model(weights_hash: str):  # type: ignore[no-untyped-def]
    conn = schema.connect(":memory:")
    conn.execute(
        "INSERT INTO models (model_id, name, weights_hash, num_layers, boundaries, block, tx_hash) "
        "VALUES (1, 'm', ?, 30, '[0, 4, 30]', 1, '0x')",
        (weights_hash,),
    )
    return conn


def declared(epsilon: float | str, split: int) -> JobMeta | None:
    """What the coordinator reads back from metadata declaring this epsilon and split."""
    raw = json.dumps({"epsilon": epsilon, "delta": 1e-5, "clip": None, "split": split, "sdk": "splitmesh/1"})
    return job_meta("0x" + raw.encode().hex())


def test_a_job_on_the_shipped_model_shows_the_measured_point() -> None:
    table = load_table()
    assert table is not None, "the package ships a leakage table"
    entry = next(e for e in table.entries if e.mechanism == "plain" and math.isfinite(e.epsilon))
    conn = index_with_model(table.weights_hash)
    got = job_leakage(conn, 1, declared(entry.epsilon, entry.split))
    assert got["source"] == "measured"
    assert got["prompt_recovery"] == entry.prompt_recovery
    assert got["next_token_agreement"] == entry.next_token_agreement
    inf = job_leakage(conn, 1, declared("inf", entry.split))
    assert inf["measured_at_epsilon"] == "inf"


def test_unknown_models_and_missing_declarations_are_not_guessed() -> None:
    conn = index_with_model("0x" + "00" * 32)
    assert job_leakage(conn, 1, declared(30.0, 4))["source"] == "not measured"
    assert job_leakage(conn, 1, None)["source"] == "not measured"
    assert declared("lots", 4) is None  # not a number: the metadata is opaque
    assert job_leakage(conn, 1, declared("lots", 4))["source"] == "not measured"
    assert job_leakage(conn, 2, declared(30.0, 4))["source"] == "not measured"  # no such model

"""The indexer decodes raw logs with eth_abi (coordinator/logcodec.py) instead of web3's process_log, for
speed (bench/bench_coordinator_growth.py). The stored events must be exactly what process_log gives:
compared here on every log of random marketplace activity on a real chain, every event kind it reaches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from eth_utils import to_checksum_address
from web3 import Web3

from coordinator import schema
from coordinator.indexer import Indexer, IndexerConfig
from splitmesh.chain import LocalChain, Marketplace, Verdict
from splitmesh.chain.launcher import advance_time
from tests.integration.chain_activity import PARAMS, Activity, deploy_court_market

STEPS = 90


@pytest.fixture(scope="module")
def market() -> Iterator[Marketplace]:
    with LocalChain() as chain:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 60}))
        market, model_id = deploy_court_market(w3)
        activity = Activity(market, model_id, seed=5)
        activity.register_nodes()
        for _ in range(STEPS):
            activity.step()
        activity.anchored_audit()
        for vote in (0, Verdict.HONEST, Verdict.FRAUD):
            activity.challenged_audit(vote)
        advance_time(w3, PARAMS.audit_commit_window + PARAMS.audit_reveal_window)
        activity.settle()
        activity.cash_out()
        yield market


def reference_json(value: Any) -> Any:
    """How the indexer stored process_log's values before the codec (bytes as 0x-hex, lists, checksums)."""
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [reference_json(v) for v in value]
    if isinstance(value, str) and len(value) == 42 and value.startswith("0x"):
        return to_checksum_address(value)
    return value


def reference_events(market: Marketplace) -> list[tuple[int, int, str, str, str, dict[str, Any]]]:
    """Every log of the deployment decoded by web3 (get_logs + process_log), as (block, index, tx hash,
    contract, event, args)."""
    contracts = {"NodeRegistry": market.registry, "JobMarket": market.job_market, "AuditCourt": market.court}
    out = []
    for name, contract in contracts.items():
        assert contract is not None
        logs = market.w3.eth.get_logs(
            {"fromBlock": market.deployment.block, "toBlock": "latest", "address": contract.address}
        )
        events = {item["name"]: getattr(contract.events, item["name"])() for item in contract.abi
                  if item.get("type") == "event"}  # fmt: skip
        for log in logs:
            decoded = next(d for e in events.values() if (d := _try(e, log)) is not None)
            args = {k: reference_json(v) for k, v in dict(decoded["args"]).items()}
            tx = "0x" + bytes(log["transactionHash"]).hex()
            out.append((int(log["blockNumber"]), int(log["logIndex"]), tx, name, str(decoded["event"]), args))
    return sorted(out, key=lambda e: (e[0], e[1]))


def _try(event: Any, log: Any) -> Any:
    try:
        return event.process_log(log)
    except Exception:  # another event's topic
        return None


def test_stored_events_equal_web3_process_log_on_every_log(market: Marketplace) -> None:
    # Small ranges: the codec sees logs split over many eth_getLogs answers.
    indexer = Indexer(market, schema.connect(":memory:"), IndexerConfig(batch_blocks=50))
    indexer.sync()
    stored = [
        (r["block"], r["log_index"], r["tx_hash"], r["contract"], r["event"], json.loads(r["args"]))
        for r in indexer.conn.execute("SELECT * FROM logs ORDER BY block, log_index")
    ]
    reference = reference_events(market)
    assert len(stored) == len(reference) > 200
    for mine, theirs in zip(stored, reference, strict=True):
        assert mine == theirs
    kinds = {(e[3], e[4]) for e in reference}
    # The activity reaches every kind of value the ABIs carry: addresses, bytes, strings, arrays, bools.
    for needed in ("ModelRegistered", "NodeRegistered", "JobSubmitted", "JobCommitted", "AuditOpened",
                   "PositionJudged", "VoteRevealed", "PoolMembershipChanged", "JobFinalized"):  # fmt: skip
        assert any(event == needed for _, event in kinds), needed
    assert len(kinds) >= 20, sorted(kinds)

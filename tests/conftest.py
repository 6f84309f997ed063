"""Shared fixtures: a real hardhat node for the whole session, a deployment, snapshot/revert per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from eth_account import Account
from web3 import Web3

from splitmesh.chain import (
    HARDHAT_DEV_KEYS,
    Deployment,
    DeployParams,
    LocalChain,
    Marketplace,
    Sender,
    deploy,
)

# Short protocol windows keep time-travel small; the relations between them are the production ones.
TEST_PARAMS = DeployParams(
    min_stake=10**18,
    unbonding_delay=3 * 3600,
    commit_timeout=3600,
    challenge_window=600,
    dispute_timeout=3600,
    miss_slash_bps=1000,
    fraud_slash_bps=5000,
    auditor=Account.from_key(HARDHAT_DEV_KEYS[9]).address,  # an EOA stands in for the audit contract
    hop_fee=7 * 10**9,  # 7 gwei: non-zero and unlike any test price, so a missed fee shows in the sums
    challenge_bond=10**18 // 20,
)
AUDITOR_KEY = HARDHAT_DEV_KEYS[9]


@pytest.fixture(scope="session", autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Remembered deployments and caches of the test run must not leak into the user's state dir.
    os.environ["SPLITMESH_HOME"] = str(tmp_path_factory.mktemp("splitmesh-home"))


@pytest.fixture(scope="session")
def chain() -> Iterator[LocalChain]:
    with LocalChain() as local:
        yield local


@pytest.fixture(scope="session")
def w3(chain: LocalChain) -> Web3:
    return Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 60}))


@pytest.fixture(scope="session")
def deployment(w3: Web3) -> Deployment:
    return deploy(w3, Sender(w3, HARDHAT_DEV_KEYS[0]), TEST_PARAMS)


@pytest.fixture()
def snapshot(w3: Web3) -> Iterator[None]:
    """Revert the chain to where it was before the test."""
    snap = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    yield
    assert w3.provider.make_request("evm_revert", [snap])["result"] is True  # type: ignore[arg-type]


@dataclass
class Actors:
    """Fresh Senders (nonce caches start empty after a revert)."""

    deployer: Sender
    nodes: list[Sender]  # dev accounts 1..6
    clients: list[Sender]  # dev accounts 7, 8
    auditor: Sender  # dev account 9


@pytest.fixture()
def market(w3: Web3, deployment: Deployment, snapshot: None) -> Marketplace:
    return Marketplace(w3, deployment)


@pytest.fixture()
def actors(w3: Web3, market: Marketplace) -> Actors:
    def s(i: int) -> Sender:
        return Sender(w3, HARDHAT_DEV_KEYS[i], market.chain_id)

    return Actors(deployer=s(0), nodes=[s(i) for i in range(1, 7)], clients=[s(7), s(8)], auditor=s(9))


def increase_time(w3: Web3, seconds: int) -> None:
    w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def tx_cost(w3: Web3, receipt: object) -> int:
    """Wei the sender paid for gas."""
    return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])  # type: ignore[index]

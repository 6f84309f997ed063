"""Connecting to a marketplace: a Web3 handle on an RPC URL and the deployment it serves."""

from __future__ import annotations

from web3 import Web3

from splitmesh.chain.deploy import Deployment, deployment_from_market, find_deployment
from splitmesh.chain.marketplace import Marketplace
from splitmesh.errors import DeploymentNotFound


def open_web3(rpc_url: str, timeout: float = 120.0) -> Web3:
    """An HTTP Web3 handle; `timeout` is the seconds one RPC request may take."""
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))


def locate_deployment(
    w3: Web3, rpc_url: str, market: str | None, *, remembered: bool = True
) -> Deployment | None:
    """The deployment of an explicit JobMarket address, else the one remembered for `rpc_url`."""
    if market:
        return deployment_from_market(w3, market)
    return find_deployment(w3, rpc_url) if remembered else None


def deployment_not_found(rpc_url: str) -> DeploymentNotFound:
    return DeploymentNotFound(
        f"no splitmesh deployment known for {rpc_url}; pass the JobMarket address (--market, "
        f"SPLITMESH_MARKET or Client(market=...)) or run `splitmesh chain deploy --rpc-url {rpc_url}`"
    )


def connect(rpc_url: str, market: str | None = None, *, timeout: float = 120.0) -> Marketplace:
    """The marketplace at `market` (a JobMarket address), or the one remembered for this RPC URL."""
    w3 = open_web3(rpc_url, timeout)
    deployment = locate_deployment(w3, rpc_url, market)
    if deployment is None:
        raise deployment_not_found(rpc_url)
    return Marketplace(w3, deployment)

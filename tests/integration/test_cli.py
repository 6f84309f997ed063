"""The `splitmesh` command line, run as a real subprocess against real chains."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from web3 import Web3

from splitmesh.chain import LocalChain, Marketplace, NodeStatus, free_port, rpc_chain_id
from splitmesh.chain.deploy import deployment_from_market
from splitmesh.errors import ChainUnavailable, ConfigError


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitmesh.cli.main", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_explains_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for word in ("chain", "demo"):
        assert word in result.stdout
    assert "--rpc-url" in run_cli("demo", "--help").stdout


def test_chain_deploy_then_status(chain: LocalChain, w3: Web3) -> None:
    deployed = run_cli("chain", "deploy", "--rpc-url", chain.rpc_url, "--json")
    assert deployed.returncode == 0, deployed.stderr
    info = json.loads(deployed.stdout)
    assert w3.eth.get_code(info["market"]) and w3.eth.get_code(info["registry"])
    status = run_cli("chain", "status", "--rpc-url", chain.rpc_url, "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert (data["market"], data["registry"], data["chain_id"]) == (info["market"], info["registry"], 31337)
    assert data["parameters"]["challenge_window"] == info["params"]["challenge_window"]


def test_demo_against_a_running_chain_leaves_it_running(chain: LocalChain, w3: Web3) -> None:
    result = run_cli("demo", "--rpc-url", chain.rpc_url, "--json", "--nodes", "3", "--split", "4")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "open"
    assert [hop["shard"] for hop in data["route"]] == [1, 2, 3]
    assert data["model"]["plan"] == [0, 4, 13, 22, 30]
    # What the demo printed is what the chain holds.
    market = Marketplace(w3, deployment_from_market(w3, data["chain"]["market"]))
    submitted = market.job_submitted(data["job_id"])
    assert [h.node for h in submitted.terms.route] == [hop["node"] for hop in data["route"]]
    for hop in data["route"]:
        node = market.get_node(hop["node"])
        assert (node.status, node.shard, node.pooled) == (NodeStatus.ACTIVE, hop["shard"], True)
    assert rpc_chain_id(chain.rpc_url) == 31337
    # A second run reuses the deployment, the model and the nodes (idempotent) and submits a new job.
    again = run_cli("demo", "--rpc-url", chain.rpc_url, "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["chain"]["market"] == data["chain"]["market"]
    assert second["model"]["model_id"] == data["model"]["model_id"]
    assert second["job_id"] == data["job_id"] + 1
    assert "registerModel" not in second["gas_used"]


def test_demo_on_its_own_chain_stops_it() -> None:
    result = run_cli("demo", "--json", "--nodes", "2", "--split", "10")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["chain"]["local"] is True
    assert len(data["route"]) == 2
    assert data["gas_used"]["submitJob"] > 0
    with pytest.raises(ChainUnavailable):
        rpc_chain_id(data["chain"]["rpc_url"], timeout=1.0)


def test_unreachable_rpc_is_a_clear_error() -> None:
    result = run_cli("chain", "status", "--rpc-url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "no EVM JSON-RPC answer" in result.stderr


def test_launcher_refuses_a_busy_port_and_frees_its_port_on_stop() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ConfigError, match="in use"):
            LocalChain(port=busy.getsockname()[1]).start()
    chain = LocalChain().start()
    url = chain.rpc_url
    assert rpc_chain_id(url) == 31337
    chain.stop()
    assert not chain.running
    with pytest.raises(ChainUnavailable):
        rpc_chain_id(url, timeout=1.0)

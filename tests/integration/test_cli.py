"""The `splitmesh` command line, run as a real subprocess against real chains."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from web3 import Web3

from splitmesh.chain import DeployParams, LocalChain, Marketplace, NodeStatus, free_port, rpc_chain_id
from splitmesh.chain.deploy import deployment_from_market
from splitmesh.errors import ChainUnavailable, ConfigError
from splitmesh.paths import models_dir
from tests.model_fixtures import save_random_model, tiny_llama_config


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitmesh_cli.main", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_explains_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for word in ("chain", "demo", "node"):
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
    fast = ("--max-new-tokens", "6", "--no-reference")
    result = run_cli("demo", "--rpc-url", chain.rpc_url, "--json", "--nodes", "3", "--split", "4", *fast)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "finalized"
    assert data["text"] and data["tokens"] == len(data["token_ids"]) > 0
    # Every node was paid price x billed tokens plus the hop fee, withdrew it, and the rest went back to
    # the client.
    fee = Marketplace(w3, deployment_from_market(w3, data["chain"]["market"])).hop_fee()
    assert fee == DeployParams().hop_fee
    assert sum(p["paid_wei"] for p in data["payments"]) + data["refund_wei"] == data["escrow_wei"]
    for p in data["payments"]:
        assert p["paid_wei"] == p["withdrawn_wei"] == p["price_per_token"] * data["billed_tokens"] + fee
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
    # The demo ends with the job as its coordinator indexed it: the same route, commitments and payments.
    indexed = data["indexed_job"]
    assert (indexed["job_id"], indexed["status"]) == (data["job_id"], "finalized")
    assert indexed["route"] == [hop["node"] for hop in data["route"]]
    assert [int(h["paid_wei"]) for h in indexed["hops"]] == [p["paid_wei"] for p in data["payments"]]
    assert int(indexed["refund_wei"]) == data["refund_wei"] and all(indexed["links"])
    assert indexed["declared"]["epsilon"] == "inf" and indexed["declared"]["split"] == 4
    # A second run reuses the deployment, the model and the nodes (idempotent) and submits a new job.
    again = run_cli("demo", "--rpc-url", chain.rpc_url, "--json", *fast)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["chain"]["market"] == data["chain"]["market"]
    assert second["model"]["model_id"] == data["model"]["model_id"]
    assert second["job_id"] == data["job_id"] + 1
    assert "registerModel" not in second["gas_used"]


def test_demo_on_its_own_chain_with_another_model_stops_it(tmp_path: Path) -> None:
    # Any supported local HF directory: a random Llama with SmolLM2's tokenizer (so prompts work).
    model = save_random_model(tiny_llama_config(vocab_size=49152, num_hidden_layers=6), tmp_path / "tiny")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(models_dir() / "SmolLM2-135M-Instruct" / name, model / name)
    args = ("--model", str(model), "--nodes", "2", "--split", "2", "--max-new-tokens", "8")
    result = run_cli("demo", "--json", *args)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["chain"]["local"] is True
    assert data["model"]["num_layers"] == 6 and data["model"]["plan"] == [0, 2, 4, 6]
    assert [hop["layers"] for hop in data["route"]] == [[2, 4], [4, 6]]
    assert data["status"] == "finalized"
    # At epsilon = inf the split pipeline reproduces model.generate token for token.
    assert data["reference_match"] is True
    assert data["tokens_per_s"] > 0
    # A decode rate from wall-clock differences: None when a loaded machine made the 1-token run of a
    # tiny model slower than the n-token run (no rate to report), never zero or negative.
    assert data["reference_tokens_per_s"] is None or data["reference_tokens_per_s"] > 0
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


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = save_random_model(
        tiny_llama_config(vocab_size=49152, num_hidden_layers=6), tmp_path_factory.mktemp("tiny")
    )
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(models_dir() / "SmolLM2-135M-Instruct" / name, model / name)
    return model


@pytest.mark.parametrize(("cheat", "verdict"), [(None, "honest"), ("garbage", "fraud")])
def test_demo_with_audits_shows_the_verdict_the_slash_and_the_refund(
    tiny_model: Path, cheat: str | None, verdict: str
) -> None:
    args = ["--model", str(tiny_model), "--nodes", "2", "--split", "2", "--max-new-tokens", "4"]
    args += ["--no-reference", "--audit-rate", "1.0"] + (["--cheat", cheat] if cheat else [])
    result = run_cli("demo", "--json", *args)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "finalized"
    assert data["verdict"] == verdict
    audit = data["audit"]
    assert [p["verdict"] for p in audit["positions"]] == ["fraud" if cheat else "honest", "honest"]
    for position in audit["positions"]:
        assert position["honest_votes"] + position["fraud_votes"] == len(position["verifiers"]) == 3
        assert position["node"] not in position["verifiers"]
    paid = sum(p["paid_wei"] for p in data["payments"])
    indexed = data["indexed_job"]["audit"]
    assert indexed["status"] == "resolved"
    assert [p["verdict"] for p in indexed["panels"]] == [p["verdict"] for p in audit["positions"]]
    assert int(indexed["slashed_wei"]) == data["slashed_wei"]
    if cheat:
        stake = 2 * 10**18  # --stake default; fraudSlashBps default 5000
        assert data["slashed_wei"] == stake // 2
        assert data["payments"][0]["paid_wei"] == 0  # the cheater is not paid
        # The client gets back the cheater's share of the escrow plus its part of the slash; every
        # verifier revealed the majority verdict, so nothing was forfeited or penalized: the winners'
        # reward and the client's part make up the slash.
        assert data["refund_wei"] == data["escrow_wei"] - paid + audit["slash_to_client_wei"]
        assert audit["verifier_reward_wei"] + audit["slash_to_client_wei"] == data["slashed_wei"]
        assert audit["reason"] == "sampled"
    else:
        assert data["slashed_wei"] == 0
        assert data["refund_wei"] == data["escrow_wei"] - paid


def test_train_on_its_own_marketplace_prints_the_losses_the_job_and_the_payments(tiny_model: Path) -> None:
    args = ["--model", str(tiny_model), "--nodes", "2", "--split", "2", "--limit", "6", "--epochs", "2"]
    result = run_cli("train", "--json", "--no-eval", "--lr", "5e-3", "--epsilon", "1000", *args)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["steps"] == 12 == len(data["losses"]) and data["job_ids"] == [data["job_id"]]
    assert data["loss_first"] == data["losses"][0] and data["loss_last"] == data["losses"][-1]
    # The same six examples twice: the second pass fits them better.
    assert sum(data["losses"][6:]) < sum(data["losses"][:6])
    # DP on Z: every released vector counted, twice per example over two epochs.
    assert data["epsilon"] == 1000.0 and data["tokens"] > 0
    assert data["privacy"]["tokens"] == data["tokens"] // 2
    assert 0 < data["privacy"]["composed_epsilon"] < math.inf and data["privacy"]["clip"] > 0
    settlement = data["settlement"]
    assert settlement["status"] == "finalized" and settlement["billed_tokens"] == data["tokens"]
    assert len(settlement["paid_wei"]) == 2
    assert settlement["total_paid_wei"] + settlement["refund_wei"] == settlement["escrow_wei"]
    assert "training" in result.stderr  # the progress bar


def test_demo_serve_keeps_the_explorer_and_the_gateway_up_until_ctrl_c_then_stops_everything(
    tiny_model: Path,
) -> None:
    import re
    import signal
    import time
    import urllib.request

    import openai

    port, gateway_port = free_port(), free_port()
    args = ["--model", str(tiny_model), "--nodes", "2", "--split", "2", "--max-new-tokens", "3"]
    cmd = [sys.executable, "-m", "splitmesh_cli.main", "demo", "--serve", "--no-reference", *args]
    cmd += ["--explorer-port", str(port), "--gateway-port", str(gateway_port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "keep running" in line:
                break
        out = "".join(lines)
        explorer = re.search(r"explorer: (http://\S+)/#/jobs/(\d+)", out)
        assert explorer is not None, out
        base, job_id = explorer.group(1), int(explorer.group(2))
        with urllib.request.urlopen(f"{base}/api/jobs/{job_id}", timeout=30) as response:
            job = json.loads(response.read())
        assert job["status"] == "finalized" and len(job["route"]) == 2
        # The printed snippet is the one to use: its base_url, api key and model name.
        snippet = re.search(r"OpenAI\(base_url='(\S+)', api_key='(\S+)'\)", out)
        model = re.search(r"create\(model='([^']+)'", out)
        assert snippet is not None and model is not None, out
        assert snippet.group(1) == f"http://127.0.0.1:{gateway_port}/v1"
        url, key = snippet.group(1), snippet.group(2)
        gateway = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
        assert [m.id for m in gateway.models.list().data] == [model.group(1)]
        messages = [{"role": "user", "content": "Hi"}]
        reply = gateway.chat.completions.create(
            model=model.group(1),
            messages=messages,  # type: ignore[arg-type]
            max_tokens=3,
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 3
        assert (reply.model_extra or {})["splitmesh"]["job_id"] > job_id  # a new paid job on the demo chain
        chain = re.search(r"chain (http://\S+) \(id", out)
        endpoints = set(re.findall(r"(https?://127\.0\.0\.1:\d+)\s*$", out, flags=re.MULTILINE))  # 2 tables
        assert chain is not None and len(endpoints) == 2, out
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(90) == 0, out + proc.stdout.read()
        time.sleep(0.5)
        for url in (base + "/api/status", snippet.group(1) + "/models", *(e + "/health" for e in endpoints)):
            with pytest.raises(OSError):  # the coordinator, the gateway and the nodes are gone with the demo
                urllib.request.urlopen(url, timeout=5)
        with pytest.raises(ChainUnavailable):  # and so is the demo's own chain
            rpc_chain_id(chain.group(1), timeout=1.0)
    finally:
        if proc.poll() is None:
            proc.kill()

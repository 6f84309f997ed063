"""Separate hosts: the chain, the client and every node on its own network address, and a partition.

Each party runs in its own Linux network namespace (tests.integration.netns: veth pairs on a bridge in
the root namespace, a random free /24 of 10.77.0.0/16). These private addresses are the deliberate
exception to the rule that tests talk on 127.0.0.1 only: what this test checks is what crosses a
network between hosts. Nodes listen on their namespace's address and announce it on-chain; the client
process (tests.integration.netns_client) runs in its own namespace and reaches the chain and the route
over the bridge.

A tiny random Llama (SmolLM2's tokenizer) split [0,2,4,6], the client on [0,2), two nodes per node
shard. The client generates greedily with failover; when it has PAUSE_AT tokens the test takes the
bridge port of one of its route nodes down (the node keeps running, cut off as if its cable were
pulled). No error comes back from a partitioned host: the client's step stalls past the policy's step
timeout, a probe finds the node not answering, the client bans it, opens a new job avoiding it and
replays the prefix there. The generation must end with the unsplit model's tokens. Then the link comes
back, every node of every job used commits what it served, and once settled each job's escrow is paid
and refunded to the wei; the partitioned node is paid for what the client signed and never slashed.

Skipped, with the reason, where namespaces cannot be made (not Linux, not root, no iproute2).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import torch
from eth_account import Account
from transformers import AutoModelForCausalLM

from client_sdk import Client
from splitmesh.chain import HARDHAT_DEV_KEYS, LocalChain, Marketplace, Sender, deploy
from splitmesh.model.identity import describe_model
from splitmesh.paths import project_root
from splitmesh_cli.localnet import PARAMS, RunningMarket, open_market, stop_market
from splitmesh_cli.procs import NodeSpec
from tests.integration.netns import Host, Network, unavailable_reason
from tests.integration.settling import assert_nobody_slashed, settle_exactly
from tests.model_fixtures import greedy_tokens, save_tiny_chat_model

NEW_TOKENS = 12
PAUSE_AT = 5  # tokens the client has when the test partitions a route node
SPLIT = 2
PRICE = 10**12  # wei per token
NODE_KEYS = {1: HARDHAT_DEV_KEYS[1:3], 2: HARDHAT_DEV_KEYS[3:5]}
CHAIN_PORT = 8545  # the chain's namespace is fresh: any port is free there
PROMPT = "Tell me about the network."
SESSION_TTL = 5  # seconds: abandoned sessions end and commit this long after their last step
# The stall shows after STEP_TIMEOUT s (a tiny model's step takes milliseconds even under load). A node
# waits RELAY_TIMEOUT s for its next hop, longer than that, so it is the client's own timeout that
# notices a partitioned second node, not the first node's report.
STEP_TIMEOUT = 5.0
RELAY_TIMEOUT = 20.0
FAILOVER = {"step_timeout": STEP_TIMEOUT, "probe_timeout": 1.0, "max_failovers": 2}


@dataclass
class HostsMarket:
    network: Network
    chain_host: Host
    client_host: Host
    running: RunningMarket
    model: Path
    hosts: dict[str, Host]  # node address (lowercase) -> its host
    reader: Client  # reads settlements from the root namespace
    reference: Any  # the unsplit Hugging Face model


@pytest.fixture(scope="module")
def hosts_market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostsMarket]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"separate hosts need network namespaces: {reason}")
    tmp = tmp_path_factory.mktemp("hosts")
    model = save_tiny_chat_model(tmp / "tiny")
    with Network() as network:
        chain_host, client_host = network.add("chain"), network.add("client")
        chain = LocalChain(
            host=chain_host.address,
            port=CHAIN_PORT,
            prefix=tuple(chain_host.prefix),
            log_path=tmp / "chain.log",
        )
        running: RunningMarket | None = None
        try:
            running = _open(chain.start(), model, tmp)
            hosts = _start_nodes(network, running)
            reader = Client(chain.rpc_url, HARDHAT_DEV_KEYS[8], str(model), market=running.deployment.market)
            reference = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).eval()
            yield HostsMarket(network, chain_host, client_host, running, model, hosts, reader, reference)
        finally:
            if running is not None:
                for host in network.hosts:  # a failed test may have left one cut off
                    network.heal(host)
                stop_market(running)
            chain.stop()


def _open(chain: LocalChain, model: Path, tmp: Path) -> RunningMarket:
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 60}))
    deployer = Sender(w3, HARDHAT_DEV_KEYS[0])
    return open_market(
        Marketplace(w3, deploy(w3, deployer, PARAMS)),
        deployer,
        describe_model(str(model)),
        [0, 2, 4, 6],
        rpc_url=chain.rpc_url,
        home=tmp / "nodes",
        log_dir=tmp / "logs",
        model=str(model),
        chain=chain,
    )


def _start_nodes(network: Network, running: RunningMarket) -> dict[str, Host]:
    """One namespace per node; each listens on its own address (and announces it: the default public
    URL is https://HOST:PORT)."""
    specs: list[NodeSpec] = []
    hosts: list[Host] = []
    for shard, keys in NODE_KEYS.items():
        for key in keys:
            host = network.add(f"n{len(hosts) + 1}")
            spec = running.spec(
                shard, key, PRICE, 1.0, "--host", host.address, "--session-ttl", str(SESSION_TTL)
            )
            spec.prefix = host.prefix
            spec.env = {"SPLITMESH_NODE_RELAY_TIMEOUT": str(RELAY_TIMEOUT)}
            specs.append(spec)
            hosts.append(host)
    nodes = running.start_nodes(specs)
    return {node.address.lower(): host for node, host in zip(nodes, hosts, strict=True)}


class ClientProcess:
    """tests.integration.netns_client on the client's host; its JSON lines read by a thread."""

    def __init__(self, hm: HostsMarket, key: str, log_path: Path):
        config = {
            "rpc_url": hm.running.rpc_url,
            "model": str(hm.model),
            "market": hm.running.deployment.market,
            "prompt": PROMPT,
            "new_tokens": NEW_TOKENS,
            "split": SPLIT,
            "pause_at": PAUSE_AT,
            "failover": FAILOVER,
        }
        command = [*hm.client_host.prefix, sys.executable, "-m", "tests.integration.netns_client"]
        log: IO[str] = open(log_path, "w")  # noqa: SIM115 - the child's stderr for its lifetime
        self.proc = subprocess.Popen(
            [*command, json.dumps(config)],
            cwd=project_root(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "SPLITMESH_PRIVATE_KEY": key},
        )
        log.close()
        self.log_path = log_path
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put(None)

    def next(self, wanted: str, timeout: float) -> dict[str, Any]:
        """The next event of kind `wanted` (others skipped); fails on an error, an exit or the timeout."""
        while True:
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {wanted!r} from the client within {timeout} s") from None
            if event is None or event["event"] == "error":
                raise AssertionError(f"client failed: {event}; log:\n{self.log_path.read_text()[-3000:]}")
            if event["event"] == wanted:
                return event

    def go_on(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.mark.parametrize("position", [0, 1], ids=["first-node", "last-node"])
def test_a_partitioned_route_node_is_failed_over(
    hosts_market: HostsMarket, position: int, tmp_path: Path
) -> None:
    hm = hosts_market
    market = hm.running.market
    for node in hm.running.nodes:  # every node serves on its own host's address and announces it
        host = hm.hosts[node.address.lower()]
        assert market.get_node(node.address).endpoint.startswith(f"https://{host.address}:"), node.address
    key = Account.create().key.hex()
    Sender(hm.running.w3, HARDHAT_DEV_KEYS[0]).send_value(Account.from_key(key).address, 10**20)
    first_job = market.job_count() + 1
    client = ClientProcess(hm, key, tmp_path / "client.log")
    try:
        client.next("paused", timeout=180)
        assert market.job_count() == first_job
        victim = market.job_submitted(first_job).terms.route[position].node
        stakes = {n.address: market.get_node(n.address).stake for n in hm.running.nodes}
        host = hm.hosts[victim.lower()]
        hm.network.partition(host)
        try:
            client.go_on()
            done = client.next("done", timeout=120)
        finally:
            hm.network.heal(host)
    finally:
        client.close()
    _check_generation(hm, done, first_job, victim)
    _settle(hm, done["failover"]["jobs"], done["prompt_tokens"] + len(done["token_ids"]) - 1)
    assert_nobody_slashed(market, stakes)  # not the partitioned node for what it served, nor the others
    report = done["failover"]
    print(
        f"partition of route position {position} at token {PAUSE_AT}: {report['failovers']} failover, "
        f"{report['replayed_tokens']} replayed tokens, {report['seconds_lost']:.2f} s lost "
        f"(step timeout {STEP_TIMEOUT} s); causes {report['causes']}"
    )


def _check_generation(hm: HostsMarket, done: dict[str, Any], first_job: int, victim: str) -> None:
    """The unsplit model's tokens; one failover away from the victim, noticed by the step timeout."""
    eos = {int(hm.reader.tokenizer.eos_token_id), 2}
    assert done["token_ids"] == greedy_tokens(hm.reference, done["prompt_ids"], NEW_TOKENS, eos)
    assert len(done["token_ids"]) > PAUSE_AT, "the generation ended before the partition"
    report = done["failover"]
    assert report["failovers"] == report["replays"] == 1, report
    assert [b.lower() for b in report["banned"]] == [victim.lower()], report
    assert "stalled past its timeout" in report["causes"][0], report  # no error came back: a stall
    assert report["abandoned"] == [first_job] and report["jobs"] == [first_job, done["job_id"]], report
    assert report["replayed_tokens"] == done["prompt_tokens"] + PAUSE_AT, report
    assert report["seconds_lost"] > 0
    new_route = hm.running.market.job_submitted(done["job_id"]).terms.route
    assert victim.lower() not in {hop.node.lower() for hop in new_route}


def _settle(hm: HostsMarket, jobs: list[int], last_billed: int) -> None:
    """Every job settles exactly once the partitioned node is back and has committed what it served."""
    settlements = settle_exactly(hm.running.market, hm.reader, jobs, timeout=RELAY_TIMEOUT + SESSION_TTL + 90)
    assert settlements[-1].billed_tokens == last_billed
    # The abandoned job: what the client signed before the stall (with or without the stalled step).
    signed = settlements[0].billed_tokens
    assert last_billed - NEW_TOKENS + PAUSE_AT <= signed <= last_billed - NEW_TOKENS + PAUSE_AT + 1, signed

"""A route node that is draining to stop mid-generation says so with a typed error (503 `shutting_down`)
and the client fails over on it instead of ending the user's generation.

At token PAUSE_AT of a greedy generation on a tiny random Llama split [0,2,4,6] (client on [0,2), two
real node processes per node shard, loopback), the first node of the route gets SIGTERM and the client
steps while it drains. The generation must end with the unsplit model's tokens after exactly one
failover that bans that node, and every job used must settle exactly with nobody slashed.

A crash + restart, or a graceful restart, of a route node were tried here too and are handled by
failover, but the code the client sees varies with timing (409 `job_ended` from the restarted node,
which commits its left-open job at start; 410 `job_closed`; 502 `next_node_unreachable`; the first
node's idle timeout), so they are not asserted yet; see the report of the netns branch.
"""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account import Account
from transformers import AutoModelForCausalLM

from client_sdk import Client, FailoverPolicy, Generation, TokenEvent
from splitmesh.chain import HARDHAT_DEV_KEYS, LocalChain, Marketplace, Sender, deploy
from splitmesh.model.identity import describe_model
from splitmesh.wire.tls import pinned_get
from splitmesh_cli.localnet import PARAMS, RunningMarket, open_market, stop_market
from splitmesh_cli.procs import NodeProcess
from splitmesh_cli.wait import wait_until
from tests.integration.settling import assert_nobody_slashed, settle_exactly
from tests.model_fixtures import greedy_tokens, save_tiny_chat_model

NEW_TOKENS = 10
PAUSE_AT = 4  # tokens generated when the node leaves
SPLIT = 2
PRICE = 10**12  # wei per token
NODE_KEYS = {1: HARDHAT_DEV_KEYS[1:3], 2: HARDHAT_DEV_KEYS[3:5]}
PROMPT = "Tell me about restarts."
# Seconds an idle session lives: longer than a restart takes on a loaded 2-core machine (20 s was seen
# too short), so the other node of the route keeps the paused job open. A first node that idled the job
# out closes the client's stream without a reason, and the client blames (bans) it: not this test's case.
SESSION_TTL = 45
# Seconds between a node's WebSocket pings. The client's blocking link answers pings only while it waits
# for a reply, so a stream paused longer than a ping and half (the restart here, a slow consumer of
# `Client.stream` anywhere) loses its first node, which the client then blames: a known gap, kept out
# of this test by a ping interval longer than the pause.
HEARTBEAT = 120
DRAIN_TIMEOUT = 5  # seconds a SIGTERM'd node waits for open sessions before it closes them
POLICY = FailoverPolicy(step_timeout=8.0, probe_timeout=1.0, max_failovers=2)


@dataclass
class RestartMarket:
    running: RunningMarket
    model: Path
    reader: Client  # reads settlements
    reference: Any  # the unsplit Hugging Face model

    def node(self, address: str) -> NodeProcess:
        return next(n for n in self.running.nodes if n.address.lower() == address.lower())

    def restart(self, node: NodeProcess) -> None:
        """Start a stopped node again with the same key, state and flags."""
        node.stop()
        index = self.running.nodes.index(node)
        self.running.nodes[index] = NodeProcess(node.spec, node.log_path).start()


@pytest.fixture(scope="module")
def restart_market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartMarket]:
    from web3 import Web3

    tmp = tmp_path_factory.mktemp("restart")
    model = save_tiny_chat_model(tmp / "tiny")
    chain = LocalChain(log_path=tmp / "hardhat.log").start()
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 60}))
    deployer = Sender(w3, HARDHAT_DEV_KEYS[0])
    running = open_market(
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
    try:
        specs = []
        for shard, keys in NODE_KEYS.items():
            for key in keys:
                spec = running.spec(shard, key, PRICE, 1.0, "--session-ttl", str(SESSION_TTL))
                spec.env = {
                    "SPLITMESH_NODE_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
                    "SPLITMESH_NODE_HEARTBEAT": str(HEARTBEAT),
                }
                specs.append(spec)
        running.start_nodes(specs)
        reader = Client(chain.rpc_url, HARDHAT_DEV_KEYS[8], str(model), market=running.deployment.market)
        reference = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).eval()
        yield RestartMarket(running, model, reader, reference)
    finally:
        stop_market(running)


def _start_draining(rm: RestartMarket, node: NodeProcess) -> None:
    """SIGTERM, and wait until the node says it is draining (the client's open session holds it up)."""
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    url, key = node.endpoint.rstrip("/") + "/health", node.tls_key
    wait_until(
        lambda: json.loads(pinned_get(url, key, {}, timeout=2.0)[1])["status"] == "draining",
        timeout=DRAIN_TIMEOUT,
        interval=0.05,
        message="the node did not start draining",
        error=AssertionError,
    )


Fault = Callable[[RestartMarket, NodeProcess], None]
FAULTS: dict[str, tuple[Fault, int, str, bool]] = {
    # fault, route position of the node that leaves, what the failover's cause says, is it banned
    "draining": (_start_draining, 0, "shutting_down", True),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_route_node_leaving_mid_generation_is_failed_over(
    restart_market: RestartMarket, fault: str
) -> None:
    rm = restart_market
    market = rm.running.market
    act, position, cause, banned = FAULTS[fault]
    key = Account.create().key.hex()
    Sender(rm.running.w3, HARDHAT_DEV_KEYS[0]).send_value(Account.from_key(key).address, 10**20)
    client = Client(rm.running.rpc_url, key, str(rm.model), market=rm.running.deployment.market)
    first_job = market.job_count() + 1
    stakes = {n.address: market.get_node(n.address).stake for n in rm.running.nodes}
    generation, victim = None, ""
    stream = client.stream(PROMPT, NEW_TOKENS, split=SPLIT, epsilon=math.inf, failover=POLICY)
    for event in stream:
        if isinstance(event, TokenEvent) and event.index + 1 == PAUSE_AT:
            victim = market.job_submitted(first_job).terms.route[position].node
            act(rm, rm.node(victim))
        elif isinstance(event, Generation):
            generation = event
    assert generation is not None and victim
    if fault == "draining":
        rm.restart(rm.node(victim))  # it exits once it closed the abandoned session: back for the next test
    eos = {int(client.tokenizer.eos_token_id), 2}
    assert generation.token_ids == greedy_tokens(rm.reference, generation.prompt_ids, NEW_TOKENS, eos)
    report = generation.receipt.failover
    print(f"{fault}: {report.causes}, {report.seconds_lost:.2f} s lost")
    assert report.failovers == report.replays == 1, report
    assert [b.lower() for b in report.banned] == ([victim.lower()] if banned else []), report
    assert cause in report.causes[0], report
    assert report.jobs == [first_job, generation.receipt.job_id] and report.abandoned == [first_job]
    settle_exactly(market, rm.reader, report.jobs, timeout=DRAIN_TIMEOUT + SESSION_TTL + 60)
    assert_nobody_slashed(market, stakes)

"""A whole marketplace on this machine for tests and benchmarks: its own hardhat node, a deployment,
a model registered with a client split plan, and one real `splitmesh node run` process per shard."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from web3 import Web3

from splitmesh.chain import (
    HARDHAT_DEV_KEYS,
    Deployment,
    DeployParams,
    JobStatus,
    LocalChain,
    Marketplace,
    Sender,
    deploy,
)
from splitmesh.cli.procs import NodeProcess, NodeSpec, start_nodes, stop_nodes
from splitmesh.model.identity import describe_model
from splitmesh.plan import client_split_plan

SPLIT = 4
NODE_KEYS = list(HARDHAT_DEV_KEYS[1:7])
CLIENT_KEY = HARDHAT_DEV_KEYS[7]
OTHER_KEY = HARDHAT_DEV_KEYS[8]  # a stranger: not the client of any job
PRICE = 10**12  # wei per token
# The production relations between windows, made short.
PARAMS = DeployParams(
    min_stake=10**18,
    unbonding_delay=3 * 3600,
    commit_timeout=1800,
    challenge_window=300,
    dispute_timeout=1800,
)


@dataclass
class RunningMarket:
    chain: LocalChain
    w3: Web3
    deployment: Deployment
    market: Marketplace
    model_id: int
    plan: list[int]
    state_dir: Path
    log_dir: Path
    model: str | None = None  # local model directory; None = SmolLM2
    nodes: list[NodeProcess] = field(default_factory=list)
    threads: int = 1  # torch threads per node process

    @property
    def rpc_url(self) -> str:
        return self.chain.rpc_url

    def spec(self, shard: int) -> NodeSpec:
        return NodeSpec(
            shard=shard,
            key=NODE_KEYS[shard - 1],
            model=self.model,
            rpc_url=self.rpc_url,
            market=self.deployment.market,
            model_id=self.model_id,
            price_wei=PRICE,
            state_dir=self.state_dir,
            duty_interval=0.2,
            threads=self.threads,
        )

    def restart(self, shard: int) -> NodeProcess:
        """Stop (SIGTERM) and start the node of a shard again with the same key and state."""
        old = self.nodes[shard - 1]
        old.stop()
        new = NodeProcess(self.spec(shard), old.log_path).start()
        self.nodes[shard - 1] = new
        return new

    def wait_status(self, job_id: int, wanted: JobStatus, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.market.get_job(job_id).status != wanted:
            if time.monotonic() > deadline:
                state = self.market.get_job(job_id)
                raise AssertionError(
                    f"job {job_id} is {state.status.name}, waited {timeout} s for {wanted.name}"
                )
            time.sleep(0.1)


def start_market(
    tmp: Path, model: str | None = None, split: int = SPLIT, nodes: int = 3, threads: int = 1
) -> RunningMarket:
    """Start chain, deploy, register `model` (default SmolLM2) and start `nodes` node processes, each with
    `threads` torch threads."""
    chain = LocalChain(log_path=tmp / "hardhat.log").start()
    try:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 60}))
        deployer = Sender(w3, HARDHAT_DEV_KEYS[0])
        deployment = deploy(w3, deployer, PARAMS)
        market = Marketplace(w3, deployment)
        described = describe_model(model)
        plan = client_split_plan(described.num_layers, split, nodes)
        model_id, _ = market.register_model(
            deployer, described.name, described.weights_hash, described.num_layers, plan
        )
        running = RunningMarket(
            chain,
            w3,
            deployment,
            market,
            model_id,
            plan,
            tmp / "nodes",
            tmp / "logs",
            model=model,
            threads=threads,
        )
        running.nodes = start_nodes([running.spec(s) for s in range(1, nodes + 1)], running.log_dir)
        return running
    except BaseException:
        chain.stop()
        raise


def stop_market(running: RunningMarket) -> None:
    # In parallel, and longer than a node's drain timeout, so each one can commit what it served.
    stop_nodes(running.nodes, timeout=40)
    running.chain.stop()

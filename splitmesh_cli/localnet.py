"""A whole marketplace on this machine for tests and benchmarks: its own hardhat node, a deployment,
a model registered with a client split plan, and one real `splitmesh node run` process per shard."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from eth_account import Account
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
from splitmesh.plan import client_split_plan
from splitmesh_cli.procs import NodeProcess, NodeSpec, start_nodes, stop_nodes
from splitmesh_cli.wait import wait_until

if TYPE_CHECKING:
    from splitmesh.model.identity import ModelDescription  # loads torch: typing only

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
    """A deployed marketplace with a model's shard plan on-chain, and the node processes serving it."""

    w3: Web3
    rpc_url: str
    market: Marketplace
    model_id: int
    plan: list[int]
    state_dir: Path  # where the nodes keep their state
    log_dir: Path
    chain: LocalChain | None = None  # the local chain started for it, stopped with it
    model: str | None = None  # local model directory; None = SmolLM2
    nodes: list[NodeProcess] = field(default_factory=list)
    threads: int = 1  # torch threads per node process
    duty_interval: float = 0.2  # seconds between a node's duty rounds
    registration_gas: int | None = None  # gas of registerModel, if opening the market registered the plan

    @property
    def deployment(self) -> Deployment:
        return self.market.deployment

    def spec(
        self, shard: int, key: str | None = None, price: int = PRICE, stake_eth: float = 1.0, *extra: str
    ) -> NodeSpec:
        """A node for `shard` (by default the harness's key for it), `extra` its further CLI flags."""
        return NodeSpec(
            shard=shard,
            key=key or NODE_KEYS[shard - 1],
            model=self.model,
            rpc_url=self.rpc_url,
            market=self.deployment.market,
            model_id=self.model_id,
            stake_eth=stake_eth,
            price_wei=price,
            state_dir=self.state_dir,
            duty_interval=self.duty_interval,
            threads=self.threads,
            extra_args=list(extra),
        )

    def start_nodes(self, specs: list[NodeSpec]) -> list[NodeProcess]:
        """Start the node processes (in parallel; each stakes and registers itself) and keep them."""
        self.nodes = start_nodes(specs, self.log_dir)
        return self.nodes

    def restart(self, shard: int) -> NodeProcess:
        """Stop (SIGTERM) and start the node of a shard again with the same key and state."""
        old = self.nodes[shard - 1]
        old.stop()
        new = NodeProcess(self.spec(shard), old.log_path).start()
        self.nodes[shard - 1] = new
        return new

    def funded_keys(self, count: int, eth: float = 10.0) -> list[str]:
        """`count` fresh client keys (CSPRNG), each funded with `eth` by the deployer's dev account: for
        runs with more separate clients than the dev accounts have to spare."""
        funder = Sender(self.w3, HARDHAT_DEV_KEYS[0])
        keys = ["0x" + secrets.token_hex(32) for _ in range(count)]
        for key in keys:
            funder.send_value(Account.from_key(key).address, int(eth * 10**18))
        return keys

    def wait_status(self, job_id: int, wanted: JobStatus, timeout: float = 60.0) -> None:
        wait_until(
            lambda: self.market.get_job(job_id).status == wanted,
            timeout=timeout,
            interval=0.1,
            message=lambda: (
                f"job {job_id} is {self.market.get_job(job_id).status.name}, "
                f"waited {timeout} s for {wanted.name}"
            ),
            error=AssertionError,  # the tests' fixtures wait with it: a plain test failure
        )


def open_market(
    market: Marketplace,
    deployer: Sender,
    described: ModelDescription,
    plan: list[int],
    *,
    rpc_url: str,
    home: Path,
    log_dir: Path,
    model: str | None = None,
    chain: LocalChain | None = None,
    threads: int = 1,
) -> RunningMarket:
    """The marketplace with `described`'s shard plan registered (found, or registered now); no nodes yet."""
    model_id = market.find_model(described.weights_hash, plan)
    gas = None
    if model_id is None:
        model_id, tx = market.register_model(
            deployer, described.name, described.weights_hash, described.num_layers, plan
        )
        gas = tx.gas_used
    return RunningMarket(
        market.w3,
        rpc_url,
        market,
        model_id,
        plan,
        home,
        log_dir,
        chain=chain,
        model=model,
        threads=threads,
        registration_gas=gas,
    )


def start_market(
    tmp: Path,
    model: str | None = None,
    split: int = SPLIT,
    nodes: int = 3,
    threads: int = 1,
    customize: Callable[[NodeSpec], NodeSpec] | None = None,  # e.g. a port and a --public-url per node
    node_env: dict[str, str] | None = None,  # SPLITMESH_NODE_* settings of every node process
) -> RunningMarket:
    """Start chain, deploy, register `model` (default SmolLM2) and start `nodes` node processes, each with
    `threads` torch threads."""
    chain = LocalChain(log_path=tmp / "hardhat.log").start()
    try:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 60}))
        deployer = Sender(w3, HARDHAT_DEV_KEYS[0])
        market = Marketplace(w3, deploy(w3, deployer, PARAMS))
        from splitmesh.model.identity import describe_model

        described = describe_model(model)
        plan = client_split_plan(described.num_layers, split, nodes)
        running = open_market(
            market,
            deployer,
            described,
            plan,
            rpc_url=chain.rpc_url,
            home=tmp / "nodes",
            log_dir=tmp / "logs",
            model=model,
            chain=chain,
            threads=threads,
        )
        specs = [running.spec(s) for s in range(1, nodes + 1)]
        specs = [replace(spec, env={**spec.env, **(node_env or {})}) for spec in specs]
        running.start_nodes([customize(s) for s in specs] if customize else specs)
        return running
    except BaseException:
        chain.stop()
        raise


def stop_market(running: RunningMarket) -> None:
    # In parallel, and longer than a node's drain timeout, so each one can commit what it served.
    stop_nodes(running.nodes, timeout=40)
    if running.chain is not None:
        running.chain.stop()

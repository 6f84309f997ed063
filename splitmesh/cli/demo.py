"""`splitmesh demo`: the marketplace end to end on a local chain (or --rpc-url).

What runs today: start a chain, deploy, register the model and its shard plan, stake and register one
node per shard, submit a job with escrow and show the route the contract matched. Private generation,
commitments and payment arrive with the node daemon and the client SDK.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from splitmesh.chain import HARDHAT_DEV_KEYS, Marketplace, NodeStatus, Sender
from splitmesh.chain.launcher import free_port
from splitmesh.cli.common import (
    add_chain_args,
    add_deploy_args,
    attach_deployment,
    deploy_params,
    open_session,
    settings_from,
)
from splitmesh.cli.output import Output, eth, short
from splitmesh.errors import ConfigError
from splitmesh.model_files import describe_model
from splitmesh.plan import client_split_plan

NOT_YET = [
    "private generation over the route (node daemon + client SDK)",
    "node commitments and payment after the challenge window",
    "sampled audits and slashing of cheating nodes",
    "coordinator index and explorer page",
]
GWEI = 10**9


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the marketplace end to end on a local chain", description=__doc__)
    add_chain_args(p)
    add_deploy_args(p)
    p.add_argument("--model", help="local Hugging Face model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--nodes", type=int, default=3, help="number of node shards (default 3)")
    p.add_argument("--split", type=int, default=4, help="decoder layers the client runs itself (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    p.add_argument("--prompt", default="What is the capital of France?", help="instruction for the model")
    p.add_argument(
        "--epsilon", type=float, default=float("inf"), help="DP epsilon per token (inf = no noise)"
    )
    p.add_argument("--delta", type=float, default=1e-5, help="DP delta per token")
    p.add_argument("--price-gwei", type=float, default=1.0, help="each node's price per token in gwei")
    p.add_argument("--stake", type=float, default=2.0, help="ETH each node stakes")
    p.set_defaults(func=cmd_demo)


def _node_keys(count: int) -> list[str]:
    # Dev keys 1..count are the nodes, the next one is the client; key 0 deploys.
    if count + 2 > len(HARDHAT_DEV_KEYS):
        raise ConfigError(f"the demo has {len(HARDHAT_DEV_KEYS) - 2} dev node accounts at most")
    return list(HARDHAT_DEV_KEYS[1 : count + 1])


def cmd_demo(args: argparse.Namespace) -> int:
    out = Output(args.json)
    settings = settings_from(args)
    started = time.monotonic()
    gas: dict[str, int] = {}
    out.step("describing the model")
    model = describe_model(args.model)
    plan = client_split_plan(model.num_layers, args.split, args.nodes)
    out.info(f"    {model.name}: {model.num_layers} layers, weights hash 0x{model.weights_hash.hex()[:16]}..")
    out.info(f"    shard plan {plan}: the client runs layers 0-{args.split - 1}, {args.nodes} node shards")

    out.step(
        "starting a local hardhat node" if settings.rpc_url is None else f"connecting to {settings.rpc_url}"
    )
    with open_session(settings) as session:
        market = attach_deployment(session, settings, deploy_if_missing=True, params=deploy_params(args))
        d = market.deployment
        out.info(f"    chain {session.rpc_url} (id {session.chain_id})")
        verb = "deployed" if session.deployed_now else "using"
        out.info(f"    {verb} NodeRegistry {d.registry}, JobMarket {d.market}")
        gas.update({f"deploy {k}": v for k, v in d.gas_used.items()} if session.deployed_now else {})
        deployer = Sender(session.w3, session.deployer_key)

        out.step("registering the model and its shard plan")
        model_id = market.find_model(model.weights_hash, plan)
        if model_id is None:
            model_id, tx = market.register_model(
                deployer, model.name, model.weights_hash, model.num_layers, plan
            )
            gas["registerModel"] = tx.gas_used
            out.info(f"    model id {model_id} registered (gas {tx.gas_used})")
        else:
            out.info(f"    model id {model_id} already registered")

        out.step(f"{args.nodes} nodes stake {args.stake:g} ETH each and register for a shard")
        price = round(args.price_gwei * GWEI)
        nodes = _register_nodes(market, session.w3, model_id, plan, args, price, gas)
        out.table(
            ["shard", "layers", "node", "stake", "price/token", "endpoint"],
            [
                [
                    n.shard,
                    f"{plan[n.shard]}-{plan[n.shard + 1] - 1}",
                    short(n.address),
                    eth(n.stake),
                    f"{n.price_per_token / GWEI:g} gwei",
                    n.endpoint,
                ]
                for n in nodes
            ],
        )

        out.step("the client submits a job with escrow; the contract matches a route")
        client = Sender(session.w3, HARDHAT_DEV_KEYS[args.nodes + 1])
        max_tokens = _max_tokens(args)
        escrow = max_tokens * price * args.nodes
        metadata = json.dumps(
            {
                "epsilon": args.epsilon if args.epsilon != float("inf") else "inf",
                "delta": args.delta,
                "split": args.split,
            },
            separators=(",", ":"),
        ).encode()
        job = market.submit_job(client, model_id, 1, max_tokens, price, escrow, metadata)
        assert job.tx is not None
        gas["submitJob"] = job.tx.gas_used
        state = market.get_job(job.job_id)
        out.info(
            f"    job {job.job_id}: escrow {eth(escrow)} for up to {max_tokens} tokens, gas {job.tx.gas_used}"
        )
        out.info(f"    on-chain status: {state.status.name.lower()}")
        route_rows = []
        route_json = []
        for position, hop in enumerate(job.terms.route):
            shard = job.terms.first_shard + position
            info = market.get_node(hop.node)
            layers = f"{plan[shard]}-{plan[shard + 1] - 1}"
            route_rows.append(
                [
                    position,
                    shard,
                    layers,
                    short(hop.node),
                    f"{hop.price_per_token / GWEI:g} gwei",
                    info.endpoint,
                ]
            )
            route_json.append(
                {
                    "position": position,
                    "shard": shard,
                    "layers": [plan[shard], plan[shard + 1]],
                    "node": hop.node,
                    "price_per_token": hop.price_per_token,
                    "endpoint": info.endpoint,
                }
            )
        out.info(f"    route: client (layers 0-{args.split - 1}) -> nodes -> client (norm + LM head)")
        out.table(["pos", "shard", "layers", "node", "price/token", "endpoint"], route_rows)

        out.step("not yet in this build:")
        for item in NOT_YET:
            out.info(f"    - {item}")
        if session.local is not None:
            out.step("stopping the local chain")
        result: dict[str, Any] = {
            "job_id": job.job_id,
            "status": state.status.name.lower(),
            "model": {
                "name": model.name,
                "model_id": model_id,
                "num_layers": model.num_layers,
                "weights_hash": "0x" + model.weights_hash.hex(),
                "plan": plan,
            },
            "chain": {
                "rpc_url": session.rpc_url,
                "chain_id": session.chain_id,
                "registry": d.registry,
                "market": d.market,
                "local": session.local is not None,
            },
            "client": client.address,
            "escrow_wei": escrow,
            "max_tokens": max_tokens,
            "route": route_json,
            "gas_used": gas,
            "not_yet": NOT_YET,
            "seconds": round(time.monotonic() - started, 2),
        }
    out.result(result)
    return 0


def _max_tokens(args: argparse.Namespace) -> int:
    # Prompt tokens are billed too; until the tokenizer is in the loop, budget generously for them.
    return args.max_new_tokens + 256


def _register_nodes(
    market: Marketplace,
    w3: Any,
    model_id: int,
    plan: list[int],
    args: argparse.Namespace,
    price: int,
    gas: dict[str, int],
) -> list[Any]:
    stake = round(args.stake * 10**18)
    nodes = []
    for shard, key in enumerate(_node_keys(args.nodes), start=1):
        sender = Sender(w3, key)
        info = market.get_node(sender.address)
        if not (info.status == NodeStatus.ACTIVE and info.model_id == model_id and info.shard == shard):
            if info.status == NodeStatus.ACTIVE:
                market.deactivate(sender)
            # The node daemon will serve here; nothing listens on it in this build.
            endpoint = f"http://127.0.0.1:{free_port()}"
            top_up = max(0, stake - info.stake)
            tx = market.register_node(sender, model_id, shard, endpoint, price, b"\0" * 32, stake=top_up)
            gas[f"registerNode shard {shard}"] = tx.gas_used
        elif info.stake < stake:
            market.stake(sender, stake - info.stake)
        nodes.append(market.get_node(sender.address))
    return nodes

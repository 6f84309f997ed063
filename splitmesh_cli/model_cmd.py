"""`splitmesh model register | list`: put a model's shard plan on-chain, see the plans there."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from splitmesh.chain import Marketplace, ModelInfo
from splitmesh.errors import ConfigError
from splitmesh.plan import even_plan, validate_plan
from splitmesh_cli.common import add_chain_args, attach_deployment, open_session, settings_from
from splitmesh_cli.output import Output

REGISTER_HELP = """\
Compute the model's weights hash locally (tensor by tensor, the same hash nodes and audits check) and
register its shard plan in the NodeRegistry. Shard 0 is the client's own layers; nodes serve shards
1..m-1. The plan is either --shards N (N nearly equal ranges) or explicit boundaries with --plan
(0,4,13,22,30: starts at 0, strictly increasing, ends at the layer count). A plan already registered
for the same weights is refused, with its id.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    model = sub.add_parser("model", help="register a model's shard plan on-chain; list registered models")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    reg = msub.add_parser(
        "register",
        help="register a shard plan for a local model's weights",
        description=REGISTER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reg.add_argument("--model", type=Path, help="local Hugging Face model directory (default: SmolLM2)")
    how = reg.add_mutually_exclusive_group(required=True)
    how.add_argument("--shards", type=int, help="number of shards, nearly equal in layers")
    how.add_argument("--plan", help="comma-separated layer boundaries, e.g. 0,4,13,22,30")
    reg.add_argument("--name", help="name shown on-chain (default: the model folder's name)")
    add_chain_args(reg, rpc_required=True)
    reg.set_defaults(func=cmd_register)
    ls = msub.add_parser("list", help="models registered on a chain: id, name, weights hash, plan, pools")
    add_chain_args(ls, rpc_required=True)
    ls.set_defaults(func=cmd_list)


def parse_plan(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--plan must be comma-separated integers like 0,4,13,22,30; got {text!r}"
        ) from None


def model_row(market: Marketplace, info: ModelInfo) -> dict[str, Any]:
    return {
        "model_id": info.model_id,
        "name": info.name,
        "weights_hash": "0x" + info.weights_hash.hex(),
        "num_layers": info.num_layers,
        "plan": list(info.boundaries),
        "registrant": info.registrant,
        "pool_sizes": [len(market.pool(info.model_id, s)) for s in range(1, info.num_shards)],
    }


def cmd_register(args: argparse.Namespace) -> int:
    from splitmesh.model.identity import describe_model

    out = Output(args.json)
    out.step(f"hashing the weights of {args.model or 'SmolLM2-135M-Instruct'}")
    described = describe_model(str(args.model) if args.model else None)
    plan = parse_plan(args.plan) if args.plan else even_plan(described.num_layers, args.shards)
    validate_plan(plan, described.num_layers)
    name = args.name or described.name
    settings = settings_from(args)
    with open_session(settings) as session:
        market = attach_deployment(session, settings, deploy_if_missing=False)
        existing = market.find_model(described.weights_hash, plan)
        if existing is not None:
            raise ConfigError(f"this plan {plan} is already registered for these weights as model {existing}")
        out.info(
            f"registering {name!r}: {described.num_layers} layers, plan {plan}, "
            f"weights 0x{described.weights_hash.hex()}"
        )
        model_id, tx = market.register_model(
            market.sender(session.deployer_key), name, described.weights_hash, described.num_layers, plan
        )
        row = model_row(market, market.get_model(model_id))
        out.info(f"registered model {model_id} (tx {tx.tx_hash}, gas {tx.gas_used})")
        out.result({**row, "tx": tx.tx_hash, "gas_used": tx.gas_used})
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    out = Output(args.json)
    settings = settings_from(args)
    with open_session(settings) as session:
        market = attach_deployment(session, settings, deploy_if_missing=False)
        rows = [model_row(market, info) for info in market.models()]
    if not rows:
        out.info("no models registered; add one with `splitmesh model register`")
    out.table(
        ["id", "name", "layers", "plan", "nodes per shard", "weights"],
        [
            [
                r["model_id"],
                r["name"],
                r["num_layers"],
                r["plan"],
                r["pool_sizes"],
                r["weights_hash"][:18] + "..",
            ]
            for r in rows
        ],
    )
    out.result({"models": rows})
    return 0

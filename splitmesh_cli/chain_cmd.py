"""`splitmesh chain ...`: start a local chain, deploy, show status."""

from __future__ import annotations

import argparse
import signal
import threading

from splitmesh.chain import HARDHAT_DEV_KEYS, Deployment, Sender, deploy, save_deployment
from splitmesh_cli.common import (
    add_chain_args,
    add_deploy_args,
    attach_deployment,
    deploy_params,
    open_session,
    settings_from,
)
from splitmesh_cli.output import Output, eth


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    chain = sub.add_parser("chain", help="local chain and contract deployment", description=__doc__)
    csub = chain.add_subparsers(dest="chain_command", required=True, metavar="COMMAND")

    up = csub.add_parser(
        "up",
        help="start a local hardhat node, deploy, print addresses, run until Ctrl-C",
        description="Start `hardhat node` on 127.0.0.1, deploy NodeRegistry and JobMarket, print the "
        "addresses and the funded dev accounts, and keep the chain running until Ctrl-C or SIGTERM.",
    )
    up.add_argument("--port", type=int, default=8545, help="port to listen on (0 = any free port)")
    up.add_argument("--json", action="store_true", help="print the addresses as one JSON object")
    add_deploy_args(up)
    up.set_defaults(func=cmd_up)

    dep = csub.add_parser(
        "deploy",
        help="deploy the contracts to an EVM chain",
        description="Deploy NodeRegistry and JobMarket to --rpc-url and remember the addresses for it.",
    )
    add_chain_args(dep, rpc_required=True)
    add_deploy_args(dep)
    dep.set_defaults(func=cmd_deploy)

    status = csub.add_parser("status", help="show the deployment, parameters and counts on a chain")
    add_chain_args(status, rpc_required=True)
    status.set_defaults(func=cmd_status)


def _deployment_summary(deployment: Deployment, rpc_url: str) -> dict[str, object]:
    return {
        "rpc_url": rpc_url,
        "chain_id": deployment.chain_id,
        "registry": deployment.registry,
        "market": deployment.market,
        "deployer": deployment.deployer,
        "block": deployment.block,
        "params": deployment.to_json()["params"],
        "gas_used": deployment.gas_used,
    }


def cmd_up(args: argparse.Namespace) -> int:
    from splitmesh.chain import LocalChain
    from splitmesh.paths import state_dir

    out = Output(args.json)
    chain = LocalChain(port=args.port, log_path=state_dir() / "logs" / "hardhat-node.log")
    out.step(f"starting hardhat node on 127.0.0.1:{args.port or '(free port)'}")
    with chain:
        from web3 import Web3

        w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
        deployment = deploy(w3, Sender(w3, HARDHAT_DEV_KEYS[0]), deploy_params(args))
        save_deployment(deployment, chain.rpc_url)
        summary = _deployment_summary(deployment, chain.rpc_url)
        summary["dev_accounts"] = [Sender(w3, k).address for k in HARDHAT_DEV_KEYS[:5]]
        if args.json:
            out.result(summary)
        else:
            out.info(f"rpc url      {chain.rpc_url}  (chain id {deployment.chain_id})")
            out.info(f"NodeRegistry {deployment.registry}")
            out.info(f"JobMarket    {deployment.market}")
            out.info("dev accounts (public hardhat keys, 10000 ETH each):")
            for key in HARDHAT_DEV_KEYS[:5]:
                address = Sender(w3, key).address
                out.info(f"  {address}  {eth(w3.eth.get_balance(address))}")
            out.info(f"\nuse it with: splitmesh chain status --rpc-url {chain.rpc_url}")
            out.info("chain running; Ctrl-C to stop")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            if not chain.running:
                out.info("hardhat node exited")
                return 1
    out.info("chain stopped")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    out = Output(args.json)
    settings = settings_from(args)
    with open_session(settings) as session:
        out.step(f"deploying to {session.rpc_url} (chain id {session.chain_id})")
        deployment = deploy(session.w3, Sender(session.w3, session.deployer_key), deploy_params(args))
        save_deployment(deployment, session.rpc_url)
        out.info(f"NodeRegistry {deployment.registry}  (gas {deployment.gas_used['NodeRegistry']})")
        out.info(f"JobMarket    {deployment.market}  (gas {deployment.gas_used['JobMarket']})")
        out.result(_deployment_summary(deployment, session.rpc_url))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    out = Output(args.json)
    settings = settings_from(args)
    with open_session(settings) as session:
        market = attach_deployment(session, settings, deploy_if_missing=False)
        summary = _deployment_summary(market.deployment, session.rpc_url)
        summary.update(
            block_number=int(session.w3.eth.block_number),
            models=market.model_count(),
            jobs=market.job_count(),
            min_stake_wei=market.min_stake(),
            parameters=market.parameters(),
        )
        if not args.json:
            for key in ("rpc_url", "chain_id", "block_number", "registry", "market", "models", "jobs"):
                out.info(f"{key:13} {summary[key]}")
            out.info(f"{'min stake':13} {eth(market.min_stake())}")
            out.info(f"{'parameters':13} {market.parameters()}")
        out.result(summary)
    return 0

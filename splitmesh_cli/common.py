"""What several subcommands share: connecting to a chain and finding (or making) the deployment."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3

from splitmesh.chain import (
    HARDHAT_DEV_KEYS,
    DeployParams,
    LocalChain,
    Marketplace,
    Sender,
    deploy,
    rpc_chain_id,
    save_deployment,
)
from splitmesh.chain.connect import deployment_not_found, locate_deployment, open_web3
from splitmesh.chain.launcher import dev_key
from splitmesh.errors import ConfigError
from splitmesh.paths import state_dir
from splitmesh.settings import ChainSettings
from splitmesh_cli.keys import DEV_CHAIN_IDS, add_key_args, choose_key, warn_if_exposed

logger = logging.getLogger(__name__)

# The coordinator's keeper on a dev chain: the last funded hardhat account, which nothing else uses.
KEEPER_DEV_KEY = dev_key(19)


def add_chain_args(parser: argparse.ArgumentParser, *, rpc_required: bool = False) -> None:
    parser.add_argument(
        "--rpc-url",
        required=rpc_required,
        help="EVM JSON-RPC endpoint (env SPLITMESH_RPC_URL)"
        + ("" if rpc_required else "; omitted: start a local hardhat node for this command"),
    )
    add_key_args(parser)
    parser.add_argument(
        "--market", help="JobMarket address (env SPLITMESH_MARKET); default: remembered deployment"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout at the end")


def add_device_args(parser: argparse.ArgumentParser, *, client: bool) -> None:
    """--device and --dtype (and the client's --wire-dtype); see splitmesh.model.device."""
    who = "the client's own layers" if client else "this node's layers and KV caches"
    parser.add_argument(
        "--device",
        help=f"where {who} run: cpu (default), cuda, cuda:N or mps; an absent device is an error, "
        "never a silent CPU fall-back" + ("" if client else " (env SPLITMESH_NODE_DEVICE)"),
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        help="compute dtype; auto (default) = bfloat16 on cuda/mps, float32 on cpu"
        + (
            ""
            if client
            else ". It is also the dtype of the frames this node accepts and sends: its clients send it "
            "(env SPLITMESH_NODE_DTYPE)"
        ),
    )
    if client:
        parser.add_argument(
            "--wire-dtype",
            choices=["float32", "bfloat16"],
            help="dtype of the frames sent to the route: its nodes' --dtype (default: --dtype's; a bf16 "
            "client on a GPU talking to float32 CPU nodes needs --wire-dtype float32)",
        )


def device_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Client keyword arguments of add_device_args' flags that were given."""
    names = ("device", "dtype", "wire_dtype")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def add_deploy_args(parser: argparse.ArgumentParser) -> None:
    d = DeployParams()
    g = parser.add_argument_group("protocol parameters (used when deploying)")
    g.add_argument("--min-stake", type=float, default=d.min_stake / 10**18, help="minimum node stake in ETH")
    g.add_argument("--unbonding-delay", type=int, default=d.unbonding_delay, help="seconds")
    g.add_argument("--commit-timeout", type=int, default=d.commit_timeout, help="seconds")
    g.add_argument("--challenge-window", type=int, default=d.challenge_window, help="seconds")
    g.add_argument("--dispute-timeout", type=int, default=d.dispute_timeout, help="seconds")
    g.add_argument("--miss-slash-bps", type=int, default=d.miss_slash_bps, help="basis points of bond")
    g.add_argument("--fraud-slash-bps", type=int, default=d.fraud_slash_bps, help="basis points of bond")
    g.add_argument(
        "--hop-fee",
        type=int,
        default=d.hop_fee,
        help="wei each committed hop earns per job (pays its commit)",
    )
    g.add_argument(
        "--challenge-bond",
        type=float,
        default=d.challenge_bond / 10**18,
        help="ETH a challenger posts to dispute a committed job (0 disables challenges)",
    )


def deploy_params(args: argparse.Namespace) -> DeployParams:
    return DeployParams(
        min_stake=round(args.min_stake * 10**18),
        unbonding_delay=args.unbonding_delay,
        commit_timeout=args.commit_timeout,
        challenge_window=args.challenge_window,
        dispute_timeout=args.dispute_timeout,
        miss_slash_bps=args.miss_slash_bps,
        fraud_slash_bps=args.fraud_slash_bps,
        hop_fee=args.hop_fee,
        challenge_bond=round(args.challenge_bond * 10**18),
        audit_rate_bps=round(getattr(args, "audit_rate", 0.0) * 10_000),
        verifiers_per_position=getattr(args, "verifiers", DeployParams().verifiers_per_position),
    )


def settings_from(args: argparse.Namespace) -> ChainSettings:
    """The chain settings of a command: flags over SPLITMESH_* variables; the key from --keystore (the
    password prompted for if needed), --key or the environment, with a warning for --key on a chain that
    is not a dev chain."""
    choice = choose_key(args)
    rpc_url = getattr(args, "rpc_url", None) or ChainSettings.from_env().rpc_url
    if choice.source == "--key" and rpc_url:
        warn_if_exposed(choice, rpc_chain_id(rpc_url))
    return ChainSettings.from_env().override(
        rpc_url=getattr(args, "rpc_url", None),
        private_key=choice.key,
        market=getattr(args, "market", None),
    )


@dataclass
class Session:
    """A connected chain: the Web3 handle, the local chain if this process started one, the deployment."""

    w3: Web3
    rpc_url: str
    local: LocalChain | None
    deployer_key: str
    marketplace: Marketplace | None = None
    deployed_now: bool = False

    @property
    def chain_id(self) -> int:
        return int(self.w3.eth.chain_id)

    @property
    def is_dev_chain(self) -> bool:
        return self.local is not None or self.chain_id in DEV_CHAIN_IDS


def signing_key(settings: ChainSettings, chain_id: int, local: bool) -> str:
    if settings.private_key:
        return settings.private_key
    if local or chain_id in DEV_CHAIN_IDS:
        return HARDHAT_DEV_KEYS[0]
    raise ConfigError(
        f"chain {chain_id} is not a local dev chain: pass --keystore FILE (see `splitmesh account new`), "
        "or set SPLITMESH_PRIVATE_KEY"
    )


@contextmanager
def open_session(settings: ChainSettings, *, chain_log: Path | None = None) -> Iterator[Session]:
    """Connect to settings.rpc_url, or start a local hardhat node (stopped on exit)."""
    local: LocalChain | None = None
    if settings.rpc_url is None:
        local = LocalChain(log_path=chain_log or state_dir() / "logs" / "hardhat-node.log").start()
        rpc_url = local.rpc_url
    else:
        rpc_url = settings.rpc_url
        rpc_chain_id(rpc_url)  # fail fast with a clear message if nothing answers
    try:
        w3 = open_web3(rpc_url, settings.tx_timeout)
        key = signing_key(settings, int(w3.eth.chain_id), local is not None)
        yield Session(w3=w3, rpc_url=rpc_url, local=local, deployer_key=key)
    finally:
        if local is not None:
            local.stop()


def attach_deployment(
    session: Session, settings: ChainSettings, *, deploy_if_missing: bool, params: DeployParams | None = None
) -> Marketplace:
    """Find the deployment (explicit --market, remembered for this RPC URL) or deploy one."""
    # A chain this process just started holds no deployment yet: deploy rather than look one up.
    deployment = locate_deployment(
        session.w3, session.rpc_url, settings.market, remembered=session.local is None
    )
    if deployment is None:
        if not deploy_if_missing:
            raise deployment_not_found(session.rpc_url)
        deployment = deploy(session.w3, Sender(session.w3, session.deployer_key), params)
        save_deployment(deployment, session.rpc_url)
        session.deployed_now = True
    session.marketplace = Marketplace(session.w3, deployment)
    return session.marketplace

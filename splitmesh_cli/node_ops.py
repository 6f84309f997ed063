"""`splitmesh node status | stake | unbond | withdraw | set-price | deactivate | activate | earnings`.

A node operator's chores without the daemon: each write says what it will do, sends one transaction,
waits for it and prints the node's state after it. Refusals are the contract's named errors (for
example `UnbondingLocked` for a withdrawal before the unlock time), decoded by the chain layer.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from splitmesh.chain import Marketplace, NodeInfo, NodeStatus, Sender, TxResult
from splitmesh.errors import ConfigError
from splitmesh_cli.common import add_chain_args, attach_deployment, open_session, settings_from
from splitmesh_cli.output import ETHER, Output, eth

Action = Callable[[Marketplace, Sender, NodeInfo, argparse.Namespace], "tuple[str, TxResult | None]"]


def register_ops(node_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the chores to `splitmesh node` (beside `run`)."""
    status = node_sub.add_parser("status", help="stake, unbonding, pool membership (and why not), earnings")
    status.add_argument("--address", help="any node's address (default: the address of the key given)")
    add_chain_args(status, rpc_required=True)
    status.set_defaults(func=cmd_status)
    for name, help_text, action, extra in (
        ("stake", "add ETH to the node's stake", _stake, ("amount", float, "ETH to add")),
        ("unbond", "start unbonding ETH of the stake (locked for the unbonding delay)", _unbond,
         ("amount", float, "ETH to unbond")),
        ("withdraw", "withdraw the unbonded stake once its unlock time has passed", _withdraw, None),
        ("set-price", "change the node's price per token (wei)", _set_price, ("price", int, "wei per token")),
        ("deactivate", "leave the matching pool (no new jobs; stake stays)", _deactivate, None),
        ("activate", "join the matching pool again with the registered model, shard and endpoint", _activate,
         None),
        ("earnings", "show earnings (and withdraw them with --withdraw)", _earnings, None),
    ):  # fmt: skip
        p = node_sub.add_parser(name, help=help_text, description=help_text)
        if extra is not None:
            p.add_argument(extra[0], type=extra[1], help=extra[2])
        if name == "earnings":
            p.add_argument("--withdraw", action="store_true", help="withdraw the credited earnings")
        p.add_argument("--dry-run", action="store_true", help="say what would be sent; send nothing")
        add_chain_args(p, rpc_required=True)
        p.set_defaults(func=_runner(action))


def _when(unix: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix)) if unix else "-"


def describe(market: Marketplace, info: NodeInfo) -> dict[str, Any]:
    """The node's registry entry, its pool membership in words, and what it earned and lost."""
    from node.pool import pool_status  # the daemon's own words for it; imported only when needed

    membership = pool_status(info, market.min_stake())
    now = int(market.w3.eth.get_block("latest")["timestamp"])
    slashes = market.events("Slashed", node=info.address)
    withdrawn = market.events("EarningsWithdrawn", node=info.address)
    return {
        "address": info.address,
        "status": info.status.name.lower(),
        "model_id": info.model_id,
        "shard": info.shard,
        "endpoint": info.endpoint,
        "price_per_token_wei": info.price_per_token,
        "stake_wei": info.stake,
        "unbonding_wei": info.unbonding,
        "unlock_at": info.unlock_at,
        "unlocked": bool(info.unbonding) and now > info.unlock_at,
        "pooled": membership.pooled,
        "pool_reason": membership.reason,
        "min_stake_wei": market.min_stake(),
        "earnings_wei": info.earnings,
        "withdrawn_wei": sum(int(e["args"]["amount"]) for e in withdrawn),
        "slashes": len(slashes),
        "slashed_wei": sum(int(e["args"]["amount"]) for e in slashes),
    }


def show(out: Output, row: dict[str, Any]) -> None:
    out.info(f"node        {row['address']} ({row['status']})")
    if row["status"] != "none":
        out.info(f"serves      model {row['model_id']} shard {row['shard']} at {row['endpoint']}")
        out.info(f"price       {row['price_per_token_wei']} wei per token")
    out.info(f"stake       {eth(row['stake_wei'])} (minimum {eth(row['min_stake_wei'])})")
    if row["unbonding_wei"]:
        state = "withdrawable now" if row["unlocked"] else f"unlocks after {_when(row['unlock_at'])}"
        out.info(f"unbonding   {eth(row['unbonding_wei'])}, {state}")
    pool = "in the matching pool" if row["pooled"] else f"OUT of the matching pool: {row['pool_reason']}"
    out.info(f"pool        {pool}")
    out.info(f"earnings    {eth(row['earnings_wei'])} to withdraw, {eth(row['withdrawn_wei'])} withdrawn")
    out.info(f"slashes     {row['slashes']} ({eth(row['slashed_wei'])})")


def cmd_status(args: argparse.Namespace) -> int:
    out = Output(args.json)
    settings = settings_from(args)
    with open_session(settings) as session:
        market = attach_deployment(session, settings, deploy_if_missing=False)
        address = args.address or (
            Sender(session.w3, settings.private_key).address if settings.private_key else None
        )
        if address is None:
            raise ConfigError("say which node: --address ADDRESS, or the node's --keystore")
        row = describe(market, market.get_node(address))
    show(out, row)
    out.result(row)
    return 0


def _runner(action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        out = Output(args.json)
        settings = settings_from(args)
        if not settings.private_key:
            raise ConfigError("a node chore signs with the node's key: pass --keystore FILE")
        with open_session(settings) as session:
            market = attach_deployment(session, settings, deploy_if_missing=False)
            sender = market.sender(settings.private_key)
            info = market.get_node(sender.address)
            plan, tx = action(market, sender, info, args)
            out.info(("would: " if args.dry_run else "") + plan)
            row = describe(market, market.get_node(sender.address))
        if tx is not None:
            out.info(f"sent: tx {tx.tx_hash} in block {tx.block_number}, gas {tx.gas_used}")
        show(out, row)
        out.result({"action": plan, "dry_run": args.dry_run, "tx": tx.tx_hash if tx else None,
                    "gas_used": tx.gas_used if tx else None, "node": row})  # fmt: skip
        return 0

    return run


def _dry(args: argparse.Namespace) -> bool:
    return bool(args.dry_run)


def _wei(amount_eth: float) -> int:
    wei = round(amount_eth * ETHER)
    if wei <= 0:
        raise ConfigError(f"the amount must be positive, got {amount_eth} ETH")
    return wei


def _stake(
    market: Marketplace, sender: Sender, info: NodeInfo, args: argparse.Namespace
) -> tuple[str, TxResult | None]:
    wei = _wei(args.amount)
    plan = f"stake {eth(wei)} more: {eth(info.stake)} -> {eth(info.stake + wei)}"
    return plan, None if _dry(args) else market.stake(sender, wei)


def _unbond(
    market: Marketplace, sender: Sender, info: NodeInfo, args: argparse.Namespace
) -> tuple[str, TxResult | None]:
    wei = _wei(args.amount)
    delay = market.unbonding_delay()
    plan = (
        f"unbond {eth(wei)} of {eth(info.stake)} staked; withdrawable {delay} s after this block "
        "(a new unbonding restarts the delay for everything unbonding)"
    )
    return plan, None if _dry(args) else market.unbond(sender, wei)


def _withdraw(
    market: Marketplace, sender: Sender, info: NodeInfo, args: argparse.Namespace
) -> tuple[str, TxResult | None]:
    plan = f"withdraw {eth(info.unbonding)} unbonded (unlock time {_when(info.unlock_at)})"
    return plan, None if _dry(args) else market.withdraw_unbonded(sender)


def _set_price(
    market: Marketplace, sender: Sender, info: NodeInfo, args: argparse.Namespace
) -> tuple[str, TxResult | None]:
    if args.price < 0:
        raise ConfigError("a price is a non-negative number of wei per token")
    plan = f"set the price per token: {info.price_per_token} -> {args.price} wei"
    return plan, None if _dry(args) else market.update_node(sender, info.endpoint or "-", args.price)


def _deactivate(
    market: Marketplace, sender: Sender, info: NodeInfo, args: argparse.Namespace
) -> tuple[str, TxResult | None]:
    plan = "deactivate: leave the matching pool; open jobs still have to be served and committed"
    return plan, None if _dry(args) else market.deactivate(sender)


def _activate(
    market: Marketplace, sender: Sender, info: NodeInfo, args: argparse.Namespace
) -> tuple[str, TxResult | None]:
    if info.status == NodeStatus.NONE:
        raise ConfigError(f"{sender.address} was never registered: `splitmesh node run` registers a node")
    plan = (
        f"activate: model {info.model_id} shard {info.shard} at {info.endpoint}, "
        f"{info.price_per_token} wei per token"
    )
    if _dry(args):
        return plan, None
    tx = market.register_node(
        sender, info.model_id, info.shard, info.endpoint, info.price_per_token, info.encryption_key
    )
    return plan, tx


def _earnings(
    market: Marketplace, sender: Sender, info: NodeInfo, args: argparse.Namespace
) -> tuple[str, TxResult | None]:
    if not args.withdraw:
        return f"{eth(info.earnings)} credited and withdrawable (add --withdraw to withdraw it)", None
    plan = f"withdraw {eth(info.earnings)} of earnings to {sender.address}"
    return plan, None if _dry(args) else market.withdraw_earnings(sender)

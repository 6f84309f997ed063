"""`splitmesh coordinator run`: index the chain, keep jobs moving, serve the API and the explorer."""

from __future__ import annotations

import argparse
from pathlib import Path

from splitmesh_cli.keys import add_key_args

DESCRIPTION = """\
Run a coordinator: an untrusted helper anyone may run. It follows the contracts' events into a SQLite
index (resumable; reorgs up to --reorg-depth blocks are healed), serves the JSON API and the explorer page
over HTTP, and, unless --no-keeper, finalizes jobs whose challenge window has passed, cancels jobs past
their commit deadline, and opens and resolves audits, paying the gas from its own key. It holds no user
data and no one else's keys or funds.

API: /api/status, /api/jobs?client=&node=&status=&model=&limit=&offset=, /api/jobs/ID,
/api/nodes?model=&shard=&status=&limit=&offset=, /api/nodes/ADDRESS, /api/models; explorer at /.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    coord = sub.add_parser("coordinator", help="chain indexer, JSON API, explorer page and keeper")
    csub = coord.add_subparsers(dest="coordinator_command", required=True, metavar="COMMAND")
    run = csub.add_parser(
        "run",
        help="follow the chain, serve the API and explorer, run keeper duties",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--rpc-url", required=True, help="EVM JSON-RPC endpoint (env SPLITMESH_RPC_URL)")
    run.add_argument("--market", help="JobMarket address (env SPLITMESH_MARKET); default: remembered one")
    add_key_args(
        run,
        key_help="the keeper's key (env SPLITMESH_PRIVATE_KEY); it pays the gas of keeper transactions. On a "
        "local dev chain a well-known dev account is the default",
    )
    run.add_argument("--no-keeper", action="store_true", help="only index and serve; send no transactions")
    run.add_argument("--db", type=Path, help="index file (default: in <state dir>/coordinator/)")
    run.add_argument("--host", default="127.0.0.1", help="address the API listens on (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8700, help="API port (default 8700; 0 = any free port)")
    run.add_argument("--poll", type=float, default=1.0, help="seconds between two syncs (default 1)")
    run.add_argument(
        "--reorg-depth", type=int, default=12, help="blocks re-checked for reorgs on every sync (default 12)"
    )
    run.add_argument(
        "--batch-blocks",
        type=int,
        default=2000,
        help="blocks per eth_getLogs and commit (default 2000)",
    )
    run.add_argument("--from-block", type=int, help="first block to index (default: the deployment's block)")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from coordinator.daemon import CoordinatorConfig, default_db_path, serve
    from coordinator.indexer import IndexerConfig
    from splitmesh.errors import ConfigError
    from splitmesh_cli.common import KEEPER_DEV_KEY, attach_deployment, open_session, settings_from

    if args.reorg_depth < 1 or args.batch_blocks < 1 or args.poll <= 0:
        raise ConfigError("--reorg-depth and --batch-blocks must be >= 1 and --poll > 0")
    settings = settings_from(args)
    with open_session(settings) as session:
        market = attach_deployment(session, settings, deploy_if_missing=False)
        keeper = None
        if not args.no_keeper:
            key = settings.private_key or (KEEPER_DEV_KEY if session.is_dev_chain else None)
            if key is None:
                raise ConfigError(
                    f"chain {session.chain_id} is not a local dev chain: pass --keystore FILE for the keeper "
                    "(it pays gas) or --no-keeper"
                )
            keeper = market.sender(key)
        config = CoordinatorConfig(
            db_path=args.db or default_db_path(market.chain_id, market.deployment.market),
            host=args.host,
            port=args.port,
            poll=args.poll,
            indexer=IndexerConfig(
                reorg_depth=args.reorg_depth, batch_blocks=args.batch_blocks, start_block=args.from_block
            ),
        )
        return serve(market, config, keeper)

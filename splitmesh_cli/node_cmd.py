"""`splitmesh node run`: serve one shard of a registered model as a staked node."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from splitmesh.errors import ConfigError
from splitmesh_cli.common import add_device_args, settings_from
from splitmesh_cli.keys import add_key_args

ETHER = 10**18

RUN_HELP = """\
Load only the layers of one shard, make sure the chain shows this node registered and staked for it
(idempotent: nothing is sent when it already is), serve job steps on a local port announced as the
node's endpoint, commit each job's hash chains on-chain when it ends and claim payment after the
challenge window. State (pending commits and claims, transcripts) lives in SQLite and survives
restarts. SIGTERM drains open sessions, commits them and exits.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from splitmesh_cli.node_ops import register_ops

    node = sub.add_parser("node", help="run a staked node serving one shard; stake, unbond, earnings, ...")
    node_sub = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    p = node_sub.add_parser(
        "run",
        help="serve one shard (registers and stakes if needed)",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="local Hugging Face model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--shard", type=int, required=True, help="shard index of the registered plan to serve")
    p.add_argument(
        "--model-id", type=int, help="on-chain model id (default: the plan registered for these weights)"
    )
    p.add_argument("--rpc-url", required=True, help="EVM JSON-RPC endpoint of the chain to serve")
    add_key_args(p, key_help="0x-hex node key (env SPLITMESH_PRIVATE_KEY); dev chains only, else --keystore")
    p.add_argument("--market", help="JobMarket address (default: the deployment remembered for --rpc-url)")
    p.add_argument(
        "--stake", type=float, default=1.0, help="ETH to hold staked; topped up if lower (default 1)"
    )
    p.add_argument("--price", type=int, default=10**9, help="price per token in wei (default 1 gwei)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    p.add_argument("--public-url", help="endpoint announced on-chain (default https://HOST:PORT)")
    add_device_args(p, client=False)
    p.add_argument(
        "--state-dir", type=Path, help="folder of the node's SQLite state (default $SPLITMESH_HOME/nodes)"
    )
    p.add_argument(
        "--tls-dir",
        type=Path,
        help="folder of the node's TLS key (mode 0600) and certificate, made on first start; the "
        "certificate's SHA-256 is announced on-chain (default STATE_DIR/tls-ADDRESS)",
    )
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="DEVELOPMENT ONLY: serve http:// and register no TLS key; clients and nodes refuse such a "
        "node unless they run with SPLITMESH_ALLOW_PLAINTEXT=1",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--session-ttl", type=float, help="seconds an idle job session lives (default 120)")
    p.add_argument("--duty-interval", type=float, help="seconds between commit/claim passes (default 1)")
    p.add_argument(
        "--commit-margin",
        type=float,
        help="seconds before a job's commit deadline to stop serving it and commit "
        "(default: 10%% of the chain's commit timeout, within 30-600 s)",
    )
    p.add_argument(
        "--auto-topup-wei",
        type=int,
        help="wei the node may re-stake on its own, in total, to get back to --stake after a slash "
        "(default 0: off; the node only warns that it left the matching pool)",
    )
    p.add_argument("--no-transcripts", action="store_true", help="do not keep step frames for audits")
    p.add_argument("--ready-file", type=Path, help="write the ready JSON line here too (for supervisors)")
    p.add_argument("--no-verify", action="store_true", help="do not answer the AuditCourt as a verifier")
    p.add_argument(
        "--cheat",
        choices=[
            "garbage",
            "skip-layers",
            "tamper-relay",
            "overbill",
            "withhold",
            "swap-returned",
            "stall-transcript",
            "forge-answers",
        ],
        help="DEMO/TEST ONLY: misbehave on purpose so the audits can be seen catching it (node.cheats)",
    )
    p.set_defaults(func=cmd_run)
    register_ops(node_sub)


def cmd_run(args: argparse.Namespace) -> int:
    from node.config import NodeConfig
    from node.daemon import serve

    if args.verbose == 0 and logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    settings = settings_from(args)
    if not settings.private_key:
        raise ConfigError(
            "a node needs its key: pass --keystore FILE (see `splitmesh account new`) "
            "or set SPLITMESH_PRIVATE_KEY"
        )
    config = NodeConfig.from_env(
        model=args.model,
        shard=args.shard,
        model_id=args.model_id,
        device=args.device,
        dtype=args.dtype,
        host=args.host,
        port=args.port,
        public_url=args.public_url,
        stake_wei=round(args.stake * ETHER),
        price_wei=args.price,
        state_dir=args.state_dir,
        tls_dir=args.tls_dir,
        plaintext=True if args.plaintext else None,
        threads=args.threads,
        session_ttl=args.session_ttl,
        duty_interval=args.duty_interval,
        commit_margin=args.commit_margin,
        auto_topup_wei=args.auto_topup_wei,
        keep_transcripts=False if args.no_transcripts else None,
        verify=False if args.no_verify else None,
        cheat=args.cheat,
    )

    from splitmesh.model.device import resolve_device

    resolve_device(config.device)  # an absent GPU: refused before anything is staked or loaded

    def ready(info: dict[str, Any]) -> None:
        line = json.dumps(info)
        print(line, flush=True)
        if args.ready_file:
            args.ready_file.write_text(line + "\n")

    asyncio.run(serve(config, settings, settings.private_key, on_ready=ready))
    print(json.dumps({"event": "stopped"}), file=sys.stdout, flush=True)
    return 0

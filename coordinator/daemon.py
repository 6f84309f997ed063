"""`splitmesh coordinator run`: index, keeper and HTTP API/explorer in one process until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from coordinator import schema
from coordinator.api import create_app
from coordinator.follower import Follower
from coordinator.indexer import Indexer, IndexerConfig, SyncReport
from coordinator.keeper import Keeper
from splitmesh.chain import Marketplace, Sender
from splitmesh.paths import state_dir

logger = logging.getLogger(__name__)


@dataclass
class CoordinatorConfig:
    db_path: Path  # the SQLite index
    host: str = "127.0.0.1"  # where the API and explorer listen
    port: int = 8700  # 0 = any free port
    poll: float = 1.0  # seconds between two syncs (and keeper passes)
    indexer: IndexerConfig = field(default_factory=IndexerConfig)


def default_db_path(chain_id: int, market: str) -> Path:
    folder = state_dir() / "coordinator"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"index-{chain_id}-{market[:10].lower()}.sqlite"


def _progress(print_line: Callable[[str], None]) -> Callable[[SyncReport], None]:
    last = [0.0]

    def report(r: SyncReport) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or r.to_block == r.head:
            last[0] = now
            print_line(f"indexed to block {r.to_block} of {r.head} ({r.logs} new events)")

    return report


def serve(
    market: Marketplace,
    config: CoordinatorConfig,
    keeper_sender: Sender | None,
    *,
    print_line: Callable[[str], None] = lambda s: print(s, flush=True),
) -> int:
    """Catch up, then follow the chain and serve until a signal; returns the exit code."""
    indexer = Indexer(market, schema.connect(config.db_path), config.indexer)
    indexer.on_batch = _progress(print_line)
    print_line(
        f"index {config.db_path}: block {indexer.synced_block}; catching up with chain "
        f"{market.chain_id} (JobMarket {market.deployment.market})"
    )
    indexer.sync()
    indexer.on_batch = None
    keeper = None if keeper_sender is None else Keeper(market, keeper_sender, indexer.conn)
    follower = Follower(indexer, keeper, config.poll)
    info = {
        "market_address": market.deployment.market,
        "keeper": None if keeper_sender is None else keeper_sender.address,
        "reorg_depth": config.indexer.reorg_depth,
    }
    app = create_app(schema.connect(config.db_path), follower.state, info)
    return asyncio.run(_serve_app(app, follower, config, keeper_sender, print_line))


async def _serve_app(
    app: web.Application,
    follower: Follower,
    config: CoordinatorConfig,
    keeper_sender: Sender | None,
    print_line: Callable[[str], None],
) -> int:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else config.port
    follower.start()
    keeper_text = f"keeper {keeper_sender.address}" if keeper_sender else "keeper off"
    print_line(f"coordinator listening on http://{config.host}:{port}/ ({keeper_text}); Ctrl-C stops it")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print_line("stopping coordinator")
        follower.stop()
        await runner.cleanup()
    sys.stdout.flush()
    return 0

"""`splitmesh node run`: load a shard, register on-chain, serve steps, commit and claim, stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from aiohttp import web

from node.admission import BoundedWork, ConnectionCaps, StreamLimits
from node.batcher import BatchLimits
from node.cheats import Cheat
from node.config import NodeConfig
from node.deadlines import ChainClock, JobDeadlines, default_margin
from node.duties import ChainDuties, ensure_registered
from node.errors import NodeSetupError
from node.jobs import JobDirectory
from node.metrics import NodeMetrics
from node.pool import PoolStatus, StakeKeeper
from node.scanner import JobScanner
from node.server import create_app
from node.service import NodeService
from node.sessions import SessionLimits
from node.store import NodeStore
from node.verifier import AuditLimits, Verifier, VoteBook
from splitmesh.chain import Marketplace, ModelInfo, Sender, connect
from splitmesh.errors import ChainError
from splitmesh.model.device import resolve_device, resolve_dtype
from splitmesh.model.identity import describe_model
from splitmesh.model.runner import RunnerLimits, ShardRunner
from splitmesh.model.training import ShardTrainer, TrainerLimits
from splitmesh.paths import state_dir
from splitmesh.settings import ChainSettings
from splitmesh.signing import RelaySigner
from splitmesh.wire.tls import (
    PLAINTEXT_ENV,
    ZERO_KEY,
    LinkSecurityError,
    TlsIdentity,
    load_or_create_identity,
)

logger = logging.getLogger(__name__)


def find_model(market: Marketplace, weights_hash: bytes, shard: int, model_id: int | None) -> ModelInfo:
    """The registered model these weights serve: --model-id, or the only plan with this weights hash."""
    if model_id is not None:
        info = market.get_model(model_id)
        if info.weights_hash != weights_hash:
            raise NodeSetupError(
                f"model {model_id} on-chain has weights hash 0x{info.weights_hash.hex()}, the local weights "
                f"hash to 0x{weights_hash.hex()}: wrong --model directory or --model-id"
            )
    else:
        matches = market.models(weights_hash)
        if not matches:
            raise NodeSetupError(
                f"no model with weights hash 0x{weights_hash.hex()} is registered; register it with "
                "`splitmesh model register` (or let `splitmesh demo` do it)"
            )
        if len(matches) > 1:
            ids = ", ".join(f"{m.model_id} (plan {list(m.boundaries)})" for m in matches)
            raise NodeSetupError(
                f"several shard plans are registered for these weights: {ids}; pass --model-id"
            )
        info = matches[0]
    if not 1 <= shard < info.num_shards:
        raise NodeSetupError(
            f"model {info.model_id} has shards 1..{info.num_shards - 1} for nodes (shard 0 is the client's "
            f"first layers at the smallest split); got --shard {shard}"
        )
    return info


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise NodeSetupError(f"cannot listen on {host}:{port}: {exc}; pick another --port") from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


@dataclass
class _Shard:
    """The layers this node serves, loaded: what the registered plan says and the runners over them."""

    name: str  # the model's name
    model: ModelInfo
    layers: range
    runner: ShardRunner
    cheat: Cheat | None
    skip_runner: ShardRunner | None  # the half-shard a skip-layers cheat runs instead


async def serve(
    config: NodeConfig,
    settings: ChainSettings,
    private_key: str,
    *,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a node until `stop` is set (or SIGTERM/SIGINT arrives)."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if settings.rpc_url is None:
        raise NodeSetupError("a node needs --rpc-url (or SPLITMESH_RPC_URL): the chain it serves")
    market = await asyncio.to_thread(connect, settings.rpc_url, settings.market, timeout=settings.tx_timeout)
    sender = Sender(market.w3, private_key, market.chain_id)
    shard = await _load_shard(config, market)
    sock = _bind(config.host, config.port)
    home = Path(config.state_dir) if config.state_dir else state_dir() / "nodes"
    tls = _tls_identity(config, home, sender.address)
    scheme = "http" if tls is None else "https"
    endpoint = config.public_url or f"{scheme}://{config.host}:{sock.getsockname()[1]}"
    if not endpoint.startswith(f"{scheme}://"):
        sock.close()
        raise NodeSetupError(
            f"--public-url {endpoint} must start with {scheme}:// (this node serves "
            f"{'plaintext' if tls is None else 'TLS'}); peers refuse a mismatched endpoint"
        )
    tls_key = ZERO_KEY if tls is None else tls.fingerprint
    registration = await asyncio.to_thread(
        ensure_registered,
        market,
        sender,
        shard.model.model_id,
        config.shard,
        endpoint,
        config.price_wei,
        config.stake_wei,
        tls_key,
    )
    for action in registration.actions:
        logger.info("on-chain: %s", action)

    # One file per (node, chain, market): job ids restart at 0 on every new deployment.
    name = f"{sender.address.lower()}-{market.chain_id}-{market.deployment.market.lower()[:10]}.sqlite"
    store = _open_store(home / name, config.keep_transcripts)
    metrics = NodeMetrics()
    deadlines = await asyncio.to_thread(job_deadlines, market, config)
    service = _node_service(config, market, sender, private_key, shard, store, metrics, deadlines)
    info = {
        "model": shard.name,
        "model_id": shard.model.model_id,
        "shard": config.shard,
        "layers": [shard.layers.start, shard.layers.stop],
        "dtype": str(shard.runner.dtype).removeprefix("torch."),
        "device": str(shard.runner.device),
        "endpoint": endpoint,
        "tls_key": "0x" + tls_key.hex(),
        "chain_id": market.chain_id,
        "market": market.deployment.market,
        "price_wei": registration.price_wei,
        "stake_wei": registration.stake_wei,
        "commit_margin_s": deadlines.margin,
        "pooled": None,  # set by every duty pass (node.pool); None until the first one
        "pool_reason": None,
    }
    app = create_app(service, info, stream_limits(config))
    app_runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await app_runner.setup()
    await web.SockSite(app_runner, sock, ssl_context=None if tls is None else tls.server_context()).start()
    overbill_key = private_key if shard.cheat == Cheat.OVERBILL else None
    duties = await asyncio.to_thread(
        chain_duties, config, market, sender, store, metrics, deadlines, info, overbill_key
    )
    verifier = None
    if config.verify and market.court is not None:
        votes = VoteBook(home / f"votes-{name}")
        verifier = Verifier(
            market,
            sender,
            private_key,
            shard.runner,
            shard.model.model_id,
            config.shard,
            votes,
            limits=AuditLimits(config.transcript_timeout, config.max_transcript_bytes, config.max_audits),
            lie=config.verifier_lies,
        )
    tasks = _start_passes(config, service, shard.runner, duties, verifier)
    logger.info("node %s serving shard %d at %s", sender.address, config.shard, endpoint)
    if on_ready is not None:
        on_ready({"event": "ready", "address": sender.address, **info})
    try:
        await _until_stopped(stop)
    finally:
        await _shut_down(config, service, tasks, duties, app_runner)
        store.close()
        logger.info("node %s stopped", sender.address)


def _tls_identity(config: NodeConfig, home: Path, address: str) -> TlsIdentity | None:
    """The node's TLS key and certificate (made on first start), or None when told to serve plaintext."""
    if config.plaintext:
        logger.warning(
            "serving PLAINTEXT http:// with no TLS key on-chain (development only): anyone on the path "
            "reads and can rewrite every frame, and peers refuse this node unless they set %s=1",
            PLAINTEXT_ENV,
        )
        return None
    directory = Path(config.tls_dir) if config.tls_dir else home / f"tls-{address.lower()}"
    try:
        identity = load_or_create_identity(directory)
    except (OSError, ValueError, LinkSecurityError) as exc:
        raise NodeSetupError(f"cannot load or create the TLS key in {directory}: {exc}") from exc
    logger.info("TLS key %s, certificate SHA-256 0x%s", identity.key_path, identity.fingerprint.hex())
    return identity


def _open_store(path: Path, keep_transcripts: bool) -> NodeStore:
    store = NodeStore(path, keep_transcripts=keep_transcripts)
    # Jobs a crash left serving cannot continue (their KV caches are gone): commit what they served.
    orphans = store.end_orphans()
    if orphans:
        logger.warning("%d jobs were left serving by the last run; committing what they served", len(orphans))
    return store


async def _load_shard(config: NodeConfig, market: Marketplace) -> _Shard:
    """Check the local weights against the registered plan and load this node's layers."""
    description = await asyncio.to_thread(describe_model, config.model)
    model = await asyncio.to_thread(
        find_model, market, description.weights_hash, config.shard, config.model_id
    )
    layers = model.layers_of(config.shard)
    started = time.monotonic()
    limits = RunnerLimits(
        max_sessions=config.max_sessions,
        max_cache_bytes=config.max_cache_bytes,
        session_ttl=config.session_ttl,
    )
    device = resolve_device(config.device)  # before the weights load: an absent GPU fails at once
    dtype = resolve_dtype(config.dtype, device)
    runner = await asyncio.to_thread(
        ShardRunner.load, config.model, layers.start, layers.stop, dtype, limits, device
    )
    cheat = Cheat(config.cheat) if config.cheat else None
    skip_runner = None
    if cheat == Cheat.SKIP_LAYERS:
        half = layers.start + max(1, len(layers) // 2)
        skip_runner = await asyncio.to_thread(
            ShardRunner.load, config.model, layers.start, half, dtype, limits, device
        )
        logger.warning("CHEAT skip-layers: running only layers %d-%d", layers.start, half - 1)
    elif cheat is not None:
        logger.warning("CHEAT %s enabled: this node misbehaves on purpose (demo/test only)", cheat.value)
    logger.info(
        "loaded layers %d-%d of %s (%d parameters, %s on %s) in %.1f s",
        layers.start,
        layers.stop - 1,
        description.name,
        runner.num_parameters(),
        dtype,
        device,
        time.monotonic() - started,
    )
    return _Shard(description.name, model, layers, runner, cheat, skip_runner)


def _node_service(
    config: NodeConfig,
    market: Marketplace,
    sender: Sender,
    private_key: str,
    shard: _Shard,
    store: NodeStore,
    metrics: NodeMetrics,
    deadlines: JobDeadlines,
) -> NodeService:
    """The step service over the loaded shard, with training and the auditors' transcript access."""
    service = NodeService(
        address=sender.address,
        chain_id=market.chain_id,
        market_address=market.deployment.market,
        runner=shard.runner,
        directory=JobDirectory(
            market,
            sender.address,
            shard.model.model_id,
            config.shard,
            refusal_ttl=config.refusal_ttl,
            on_lookup=metrics.chain_lookups_total.inc,
        ),
        store=store,
        metrics=metrics,
        max_frame_bytes=config.max_frame_bytes,
        relay_signer=RelaySigner(private_key, market.chain_id, market.deployment.market),
        deadlines=deadlines,
        relay_timeout=config.relay_timeout,
        lookups=BoundedWork(
            "chain-lookup",
            threads=config.lookup_threads,
            pending=config.lookup_queue,
            retry_after=config.retry_after,
        ),
        compute=BoundedWork(
            "compute", threads=1, pending=config.compute_queue, retry_after=config.retry_after
        ),
        send_timeout=config.send_timeout,
        session_limits=SessionLimits(max_sessions=config.max_sessions, retry_after=config.retry_after),
        batching=BatchLimits(
            max_sessions=config.batch_sessions,
            max_tokens=config.batch_tokens,
            queue=config.batch_queue,
            retry_after=config.retry_after,
        ),
    )
    service.cheat = shard.cheat
    service.gate.forge_answers = shard.cheat == Cheat.FORGE_ANSWERS
    service.skip_runner = shard.skip_runner
    # Training steps share the runner's frozen layers (no second copy of the weights).
    service.trainer = ShardTrainer.from_runner(shard.runner, TrainerLimits(step_ttl=config.session_ttl))
    if market.court is not None:
        service.transcript_policy = lambda job, _position, requester: _is_auditor(market, job, requester)
    return service


def stream_limits(config: NodeConfig) -> StreamLimits:
    """The WebSocket admission limits of node.config."""
    caps = ConnectionCaps(
        total=config.max_connections, per_ip=config.max_connections_per_ip, retry_after=config.retry_after
    )
    return StreamLimits(
        caps,
        heartbeat=config.heartbeat,
        idle_timeout=config.stream_idle_timeout,
        send_timeout=config.send_timeout,
    )


def _start_passes(
    config: NodeConfig,
    service: NodeService,
    runner: ShardRunner,
    duties: ChainDuties,
    verifier: Verifier | None,
) -> list[asyncio.Task[None]]:
    """The periodic passes: chain duties, session expiry, job deadlines and, if enabled, verification."""
    passes: list[tuple[float, Callable[[], Any], str]] = [
        (config.duty_interval, lambda: asyncio.to_thread(duties.run_once), "duties"),
        (5.0, lambda: _expire(service, runner, config.session_ttl), "expiry"),
        (config.duty_interval, service.end_due, "deadlines"),
    ]
    if verifier is not None:
        passes.append((config.duty_interval, lambda: asyncio.to_thread(verifier.run_once), "verifier"))
    return [asyncio.create_task(_every(interval, action, name)) for interval, action, name in passes]


async def _until_stopped(stop: asyncio.Event | None) -> None:
    """Wait for `stop`, or for SIGTERM/SIGINT where this loop can take signals."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _shut_down(
    config: NodeConfig,
    service: NodeService,
    tasks: list[asyncio.Task[None]],
    duties: ChainDuties,
    app_runner: web.AppRunner,
) -> None:
    """Drain open sessions, stop the passes, commit what ended and close the server."""
    logger.info("stopping: draining %d open sessions", len(service.sessions))
    service.accepting = False
    deadline = time.monotonic() + config.drain_timeout
    while service.sessions and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await service.close_all("node shutting down")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # Commit what ended; claims that must wait for the window resume at the next start.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.to_thread(duties.run_once), timeout=30.0)
    await app_runner.cleanup()


def job_deadlines(market: Marketplace, config: NodeConfig) -> JobDeadlines:
    """The chain clock and this node's commit margin. Blocking."""
    commit_timeout = int(market.parameters()["commit_timeout"])
    margin = round(config.commit_margin) if config.commit_margin > 0 else default_margin(commit_timeout)
    if not 0 < margin < commit_timeout:
        raise NodeSetupError(
            f"--commit-margin {margin} s leaves no time to serve: the chain's commit timeout is "
            f"{commit_timeout} s; pick a margin below it (0 = the default, 10% of the timeout)"
        )
    clock = ChainClock(int(market.w3.eth.get_block("latest")["timestamp"]))
    logger.info(
        "jobs stop taking steps %d s before their commit deadline (timeout %d s)", margin, commit_timeout
    )
    return JobDeadlines(market, clock, commit_timeout, margin)


def chain_duties(
    config: NodeConfig,
    market: Marketplace,
    sender: Sender,
    store: NodeStore,
    metrics: NodeMetrics,
    deadlines: JobDeadlines,
    info: dict[str, Any],
    overbill_key: str | None,
) -> ChainDuties:
    """The duty pass with its job scanner and stake keeper; pool status goes to /health (`info`). Blocking."""

    def show(status: PoolStatus) -> None:
        # Only existing keys change: /health may be reading the dict on the event loop meanwhile.
        info.update(pooled=status.pooled, pool_reason=status.reason, stake_wei=status.stake)

    scanner = JobScanner(market, sender.address, store, deadlines, metrics, max_blocks=config.scan_blocks)
    keeper = StakeKeeper(
        market,
        sender,
        store,
        metrics,
        target_stake=config.stake_wei,
        allowance=config.auto_topup_wei,
        on_status=show,
    )
    return ChainDuties(
        market,
        sender,
        store,
        metrics,
        deadlines=deadlines,
        scanner=scanner,
        keeper=keeper,
        overbill_key=overbill_key,
        prune_every=config.prune_interval if config.keep_transcripts else 0.0,
    )


def _is_auditor(market: Marketplace, job_id: int, requester: str) -> bool:
    """Verifiers drawn for any position of the job's audit may read its transcripts."""
    try:
        audit = market.get_audit(job_id)
    except ChainError:
        return False
    return any(requester in panel.verifiers for panel in audit.panels)


async def _expire(service: NodeService, runner: ShardRunner, ttl: float) -> None:
    await service.expire(ttl)
    runner.expire()
    if service.trainer is not None:
        service.trainer.expire()


async def _every(interval: float, action: Callable[[], Any], name: str) -> None:
    while True:
        try:
            await action()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s pass failed; retrying in %.1f s", name, interval)
        await asyncio.sleep(interval)

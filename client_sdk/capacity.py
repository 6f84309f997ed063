"""Room on a route before escrow is locked: probe the pools' nodes, avoid the full ones.

A node advertises its room for new jobs in GET /health (`capacity.free_sessions`, node.service), over the
same TLS link pinned to its on-chain key as every other link. Before submitting, the client reads it from
each candidate node of every shard it needs (those within its price and not banned), in parallel, and
passes the full ones to `submitJobAvoiding`; when every candidate of a shard is full it raises RouteBusy
with the shortest retry hint, and nothing is submitted.

A probe is advice, not a reservation: a node may fill up between the probe and the job's first step. It
then answers that step with a typed 503 `busy` (NodeBusy) and the SDK releases the job on-chain
(JobMarket.releaseJob), so its cancel refunds the escrow and slashes nobody.

A node that does not answer the probe (down, slow, an older version without `capacity`) is not avoided:
failing over from dead nodes is client_sdk.failover's job, and a probe must never refuse a route the
pools could serve.
"""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from client_sdk.errors import RouteBusy
from client_sdk.failover import MAX_AVOID
from splitmesh.chain import Marketplace, RouteHop
from splitmesh.wire.tls import pinned_get

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CapacityProbe:
    """How the client asks a route's candidate nodes for room before it submits."""

    enabled: bool = True  # False: submit without asking (the first step may then get 503 busy)
    timeout: float = 2.0  # seconds one node gets to answer GET /health
    per_shard: int = (
        MAX_AVOID + 1
    )  # candidates probed per shard (the cheapest first); the rest are assumed free
    threads: int = 8  # probes in flight at once


@dataclass(frozen=True)
class Room:
    """One node's answer: free sessions (None: no answer) and its retry hint in seconds."""

    node: str
    free: int | None
    retry_after: float


def probe_route(
    market: Marketplace,
    pools: Sequence[tuple[int, Sequence[RouteHop]]],  # (shard, its pool) for every shard the job needs
    max_price: int,  # wei per token: nodes above it cannot be matched and are not probed
    avoid: Sequence[str],  # nodes already avoided (failover bans)
    probe: CapacityProbe,
) -> list[str]:
    """The nodes to avoid: `avoid` plus the full candidates (at most MAX_AVOID in all, bans first).
    Raises RouteBusy when some shard has candidates and every one of them is full. Blocking."""
    banned = {a.lower() for a in avoid}
    eligible = {
        shard: sorted(
            (h for h in pool if h.price_per_token <= max_price and h.node.lower() not in banned),
            key=lambda h: h.price_per_token,
        )
        for shard, pool in pools
    }
    candidates = {shard: hops[: probe.per_shard] for shard, hops in eligible.items()}
    nodes = [h.node for hops in candidates.values() for h in hops]
    with ThreadPoolExecutor(max_workers=max(1, min(probe.threads, len(nodes)))) as pool:
        rooms = {r.node: r for r in pool.map(lambda n: _room(market, n, probe.timeout), nodes)}
    full: list[str] = []
    for shard, hops in candidates.items():
        shard_full = [h.node for h in hops if rooms[h.node].free == 0]
        full += shard_full
        unprobed = len(eligible[shard]) > len(hops)  # assumed to have room
        if hops and len(shard_full) == len(hops) and not unprobed:
            wait = min(rooms[n].retry_after for n in shard_full)
            raise RouteBusy(
                f"every node of shard {shard} within {max_price} wei/token is full ({len(shard_full)} "
                f"probed); nothing was submitted and no escrow locked. Retry in {wait:g} s, or raise "
                "max_price_per_token to reach other nodes",
                shard=shard,
                full=shard_full,
                retry_after=wait,
            )
    if full:
        logger.info("capacity probe: avoiding %d full nodes: %s", len(full), ", ".join(full))
    return [*avoid, *full][:MAX_AVOID]


def _room(market: Marketplace, node: str, timeout: float) -> Room:
    """GET /health of a node, pinned to its on-chain TLS key; free sessions None when it does not say."""
    try:
        info = market.get_node(node)
        url = info.endpoint.rstrip("/") + "/health"
        status, body = pinned_get(url, info.encryption_key, {}, timeout=timeout)
        if status != 200:
            return Room(node, None, 0.0)
        capacity = json.loads(body).get("capacity") or {}
        free = capacity.get("free_sessions")
        retry = capacity.get("retry_after", 1.0)
        if not isinstance(free, int) or not isinstance(retry, int | float):
            return Room(node, None, 0.0)
        return Room(node, max(0, free), min(max(float(retry), 0.0), 600.0))
    except (http.client.HTTPException, OSError, TimeoutError, ValueError) as exc:
        logger.debug("capacity probe of %s failed: %s", node, exc)
        return Room(node, None, 0.0)

"""Admission control: what a stranger can make a node spend before any signature is checked.

- `ConnectionCaps`: open WebSockets per peer IP and in total; over a cap the handshake gets a 429 or
  a 503 with Retry-After instead of a socket that stays open.
- `BoundedWork`: a small thread pool with a cap on work waiting for it (chain lookups, compute); when
  the cap is reached the caller gets a 503 `busy` with a retry hint at once instead of queueing.
- `ExpiringSet`: a short, size-bounded memory of job ids the chain said no about, so a flood of frames
  for the same unknown job costs one chain call, not one per frame.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from node.errors import StepRejected, busy

T = TypeVar("T")


class ConnectionCaps:
    """Counts open WebSockets by peer IP. Runs on the event loop only (no locking)."""

    def __init__(self, *, total: int, per_ip: int, retry_after: float):
        self.total = total  # open WebSockets in all
        self.per_ip = per_ip  # open WebSockets from one IP address
        self.retry_after = retry_after  # seconds suggested to a refused peer
        self.by_ip: dict[str, int] = {}
        self.open = 0

    def acquire(self, ip: str) -> None:
        """Count one more socket from `ip`, or raise 429 (this IP's cap) / 503 (the node's cap)."""
        if self.by_ip.get(ip, 0) >= self.per_ip:
            raise StepRejected(
                429,
                "too_many_connections",
                f"{ip} already has {self.per_ip} open streams to this node; close one or retry later",
                retry_after=self.retry_after,
            )
        if self.open >= self.total:
            raise busy(
                "too_many_connections",
                f"this node already serves {self.total} streams; retry later or pick another node",
                self.retry_after,
            )
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1
        self.open += 1

    def release(self, ip: str) -> None:
        left = self.by_ip.get(ip, 0) - 1
        if left > 0:
            self.by_ip[ip] = left
        else:
            self.by_ip.pop(ip, None)
        self.open = max(0, self.open - 1)


@dataclass
class StreamLimits:
    """How the node's WebSocket streams are admitted and kept (node.config documents each default)."""

    caps: ConnectionCaps = field(
        default_factory=lambda: ConnectionCaps(total=256, per_ip=64, retry_after=2.0)
    )
    heartbeat: float = 20.0  # seconds between pings; a peer missing the pong for half of it is dropped
    idle_timeout: float = 120.0  # seconds a stream may go without a message
    send_timeout: float = 30.0  # seconds one reply may wait for a peer that stops reading


class BoundedWork:
    """A thread pool of `threads` workers that takes at most `pending` jobs at a time (running ones
    included); one more is refused with a 503 `busy` carrying `retry_after`. Call `run` on the loop."""

    def __init__(self, name: str, *, threads: int, pending: int, retry_after: float):
        self.name = name
        self.pending = max(pending, threads)
        self.retry_after = retry_after  # seconds
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self.waiting = 0  # jobs taken and not finished

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.waiting >= self.pending:
            raise busy(
                "busy",
                f"this node's {self.name} queue is full ({self.pending} waiting); retry in "
                f"{self.retry_after:g} s",
                self.retry_after,
            )
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.waiting -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class ExpiringMap:
    """key -> value for `ttl` seconds, at most `size` keys (the oldest go first). Thread-safe."""

    def __init__(self, ttl: float, size: int = 4096):
        self.ttl = ttl  # seconds; 0 = remember nothing
        self.size = size
        self._items: OrderedDict[object, tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: object) -> object | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            if time.monotonic() >= hit[0]:
                del self._items[key]
                return None
            return hit[1]

    def put(self, key: object, value: object) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._items[key] = (time.monotonic() + self.ttl, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

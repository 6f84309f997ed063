"""A TCP proxy that adds a fixed one-way delay in each direction and counts what crosses it.

It forwards bytes untouched (TLS passes through: the node's certificate still reaches whoever connects),
so a node that announces the proxy's URL with `--public-url` keeps its pinned on-chain key. Each chunk
read is written `delay` seconds later, in order, so a message costs one delay per crossing whatever its
size (a fixed propagation delay, not a bandwidth limit). bench/bench_wan.py and
tests/integration/test_direct_return.py use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field, replace

from splitmesh.chain.launcher import free_port
from splitmesh_cli.procs import NodeSpec


@dataclass
class Crossings:
    """What crossed one direction of the proxy: bytes, and bursts (chunks arriving after a quiet gap:
    roughly one per message crossing the link)."""

    bytes: int = 0
    bursts: int = 0
    last: float = field(default=0.0, repr=False)  # time.monotonic() of the last chunk


class LatencyProxy:
    """Listens on 127.0.0.1:`port` and forwards every connection to 127.0.0.1:`upstream`, each direction
    held back `delay` seconds. Runs its own event loop in a daemon thread."""

    QUIET = 0.0005  # seconds between chunks that start a new burst

    def __init__(self, port: int, upstream: int, delay: float = 0.0):
        self.port = port
        self.upstream = upstream
        self.delay = delay  # seconds added to each direction (one way)
        self.down = Crossings()  # towards the node (requests, step frames)
        self.up = Crossings()  # from the node back to whoever connected
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="latency-proxy", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", port), self._loop
        ).result(10)

    def reset(self, delay: float | None = None) -> None:
        """Zero the counters (and change the delay for data read from now on)."""
        with self._lock:
            self.down, self.up = Crossings(), Crossings()
            if delay is not None:
                self.delay = delay

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "down_bytes": self.down.bytes,
                "down_bursts": self.down.bursts,
                "up_bytes": self.up.bytes,
                "up_bursts": self.up.bursts,
            }

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            node_reader, node_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        for w in (writer, node_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            self._pipe(reader, node_writer, downward=True),
            self._pipe(node_reader, writer, downward=False),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, downward: bool
    ) -> None:
        """Copy reader to writer, each chunk `delay` seconds after it was read, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        delivery = asyncio.get_running_loop().create_task(deliver())
        try:
            while data := await reader.read(1 << 16):
                now = time.monotonic()
                with self._lock:
                    seen = self.down if downward else self.up
                    seen.bytes += len(data)
                    if now - seen.last > self.QUIET:
                        seen.bursts += 1
                    seen.last = now
                    delay = self.delay
                queue.put_nowait((now + delay, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait((0.0, b""))
            with contextlib.suppress(Exception):
                await delivery
            with contextlib.suppress(Exception):
                writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class ProxyFront:
    """A `start_market(customize=...)` hook: puts a LatencyProxy in front of every node (the node listens
    on a port of its own and announces the proxy's URL), so every link to it crosses the proxy."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay  # seconds, one way, per proxy
        self.proxies: dict[int, LatencyProxy] = {}  # by shard

    def __call__(self, spec: NodeSpec) -> NodeSpec:
        proxy = LatencyProxy(free_port(), 0, self.delay)
        proxy.upstream = free_port()
        self.proxies[spec.shard] = proxy
        public = f"https://127.0.0.1:{proxy.port}"
        return replace(spec, port=proxy.upstream, extra_args=[*spec.extra_args, "--public-url", public])

    def set_delay(self, delay: float) -> None:
        for proxy in self.proxies.values():
            proxy.reset(delay)

    def reset_counts(self) -> None:
        for proxy in self.proxies.values():
            proxy.reset()

    def crossings(self) -> int:
        """Messages (bursts) that crossed any proxy, either way, since the last reset."""
        return sum(c["down_bursts"] + c["up_bursts"] for c in (p.counts() for p in self.proxies.values()))

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()

"""The protocol's WebSocket client for synchronous callers, on aiohttp (as the node serves and relays).

A `BlockingWebSocket` owns one connection and a private event loop in a daemon thread; each call runs
one coroutine there and waits for it. Proxies from *_PROXY variables are ignored (trust_env=False) and
messages are never compressed: step frames are dense float tensors. `ssl` is what
splitmesh.wire.tls.link_ssl returns for the node: its pinned on-chain key (or False on a dev network
that allows plaintext); a peer with another certificate raises PeerKeyMismatch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from splitmesh.errors import SplitmeshError
from splitmesh.wire.frames import DEFAULT_MAX_FRAME_BYTES
from splitmesh.wire.tls import mismatch_from

T = TypeVar("T")


class WebSocketClosed(SplitmeshError, ConnectionError):
    """The WebSocket could not be opened, or the peer closed it; open a new one to go on."""


class BlockingWebSocket:
    """One client WebSocket driven from synchronous code: `send`, then `receive` the peer's answer."""

    def __init__(
        self,
        url: str,
        *,
        ssl: aiohttp.Fingerprint | bool,  # splitmesh.wire.tls.link_ssl(url, the node's on-chain key)
        max_msg_size: int = DEFAULT_MAX_FRAME_BYTES,  # bytes of one received message; 0 = no limit
        open_timeout: float = 10.0,  # seconds the handshake may take
        close_timeout: float = 2.0,  # seconds to wait for the peer's close frame
    ):
        self.url = url
        self._ssl = ssl
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="websocket", daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None
        try:
            self._ws = self._run(self._open(max_msg_size, open_timeout, close_timeout))
        except BaseException:
            self.close()
            raise

    async def _open(
        self, max_msg_size: int, open_timeout: float, close_timeout: float
    ) -> aiohttp.ClientWebSocketResponse:
        self._session = aiohttp.ClientSession(trust_env=False)
        handshake = self._session.ws_connect(
            self.url,
            max_msg_size=max_msg_size,
            compress=0,
            ssl=self._ssl,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=close_timeout),
        )
        try:
            return await asyncio.wait_for(handshake, open_timeout)
        except aiohttp.ServerFingerprintMismatch as exc:
            raise mismatch_from(self.url, exc) from None
        except aiohttp.ClientError as exc:
            raise WebSocketClosed(f"cannot open a WebSocket to {self.url}: {exc}") from exc

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def send(self, message: bytes | str) -> None:
        """Send one binary (bytes) or text (str) message."""
        self._run(self._send(message))

    async def _send(self, message: bytes | str) -> None:
        try:
            if isinstance(message, str):
                await self._ws.send_str(message)
            else:
                await self._ws.send_bytes(message)
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise WebSocketClosed(f"lost the WebSocket to {self.url}: {exc}") from exc

    def receive(self, timeout: float | None = None) -> bytes | str:
        """The next binary (bytes) or text (str) message; TimeoutError after `timeout` seconds."""
        return self._run(self._receive(timeout))

    def receive_later(self) -> concurrent.futures.Future[bytes | str]:
        """The next message, as a future (to wait on several sockets at once); at most one pending."""
        return asyncio.run_coroutine_threadsafe(self._receive(None), self._loop)

    async def _receive(self, timeout: float | None) -> bytes | str:
        message = await self._ws.receive(timeout)
        if message.type == aiohttp.WSMsgType.BINARY:
            return bytes(message.data)
        if message.type == aiohttp.WSMsgType.TEXT:
            return str(message.data)
        cause = self._ws.exception()
        detail = f": {cause}" if cause else f" ({message.type.name}, code {self._ws.close_code})"
        raise WebSocketClosed(f"the WebSocket to {self.url} closed{detail}")

    def close(self) -> None:
        """Close the connection and stop the loop thread; safe to call more than once."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _close(self) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            await ws.close()
        if self._session is not None:
            await self._session.close()

    def __enter__(self) -> BlockingWebSocket:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

"""A verifier's transcript read (node.transcript_fetch) against a real aiohttp server on 127.0.0.1 that
misbehaves the ways an accused node can: drip-feeding, announcing or streaming too many bytes, refusing.
Each one must end as TranscriptUnavailable (withheld evidence), the stalled one at its deadline. The
server speaks TLS with a node identity and the reader pins its key, as on a real route."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from node.transcript_fetch import read_transcript
from node.verifier import AuditLimits
from splitmesh.audit.transcript import TranscriptUnavailable
from splitmesh.wire.tls import PeerKeyMismatch
from tests.unit.tls_identity import server_identity as identity

BODY = b"SMT1" + bytes(range(256)) * 4  # 1028 bytes
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    """One handler at /t, and what the handler saw."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.sent = 0  # bytes the handler managed to write
        self.client_left = asyncio.Event()  # the reader hung up before the body was complete
        self.headers: dict[str, str] = {}

    async def serve(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_get("/t", self._wrapped)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=identity().server_context())
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield f"https://127.0.0.1:{port}/t"
        finally:
            await runner.cleanup()

    async def _wrapped(self, request: web.Request) -> web.StreamResponse:
        self.headers = dict(request.headers)
        try:
            return await self.handler(request)
        except (ConnectionError, asyncio.CancelledError):
            self.client_left.set()
            raise


def run(
    server: Server, *, max_bytes: int = 1 << 20, timeout: float = 30.0, key: bytes | None = None
) -> bytes:
    async def go() -> bytes:
        async for url in server.serve():
            try:
                return await read_transcript(
                    url,
                    identity().fingerprint if key is None else key,
                    {"X-Splitmesh-Requester": "0xabc"},
                    max_bytes=max_bytes,
                    timeout=timeout,
                )
            finally:
                if not server.client_left.is_set():
                    await asyncio.sleep(0.3)  # let the handler notice a hang-up
        raise AssertionError("unreachable")

    return asyncio.run(go())


def test_an_honest_transcript_is_read_whole() -> None:
    server = Server(lambda _r: _plain(BODY))
    assert run(server) == BODY
    assert server.headers["X-Splitmesh-Requester"] == "0xabc"
    assert server.headers["Accept-Encoding"] == "identity"  # the cap counts bytes on the wire


async def _plain(body: bytes) -> web.Response:
    return web.Response(body=body)


def test_a_drip_fed_transcript_is_abandoned_at_its_deadline() -> None:
    # 1028 bytes at a byte per 50 ms would take ~50 s; the reader gives up at its 1 s deadline.
    server = Server(lambda r: _drip(server, r, 0.05))
    with pytest.raises(TranscriptUnavailable, match="did not deliver the transcript within 1 s") as err:
        run(server, timeout=1.0)
    assert err.value.status == 0
    assert 0 < server.sent < len(BODY)
    assert server.client_left.is_set()  # the connection was closed, not left hanging


async def _drip(server: Server, request: web.Request, interval: float) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = len(BODY)
    await response.prepare(request)
    for at in range(len(BODY)):
        await response.write(BODY[at : at + 1])
        server.sent += 1
        await asyncio.sleep(interval)
    return response


def test_an_announced_oversized_transcript_is_refused_unread() -> None:
    server = Server(lambda _r: _plain(BODY))
    with pytest.raises(TranscriptUnavailable, match="announced 1028 bytes; at most 1000") as err:
        run(server, max_bytes=1000)
    assert err.value.status == 413


def test_a_streamed_oversized_transcript_is_refused_at_the_cap() -> None:
    # No Content-Length (chunked), and far more than the cap: the reader stops once past it.
    server = Server(lambda r: _endless(server, r))
    with pytest.raises(TranscriptUnavailable, match="sent over 100000 bytes") as err:
        run(server, max_bytes=100_000)
    assert err.value.status == 413
    assert server.client_left.is_set()


async def _endless(server: Server, request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(10_000):  # 640 MB if nobody stopped reading
        await response.write(b"x" * 65536)
        server.sent += 65536
    return response


def test_a_refusal_carries_the_nodes_reason() -> None:
    server = Server(lambda _r: _refuse())
    with pytest.raises(TranscriptUnavailable, match="refused: does not hand over") as err:
        run(server)
    assert err.value.status == 403


def test_a_server_with_another_key_is_refused() -> None:
    server = Server(lambda _r: _plain(BODY))
    with pytest.raises(PeerKeyMismatch):
        run(server, key=b"\2" * 32)
    assert server.sent == 0


async def _refuse() -> web.Response:
    return web.json_response({"error": "does not hand over"}, status=403)


def test_an_unreachable_node_is_withholding() -> None:
    async def go() -> bytes:
        return await read_transcript("https://127.0.0.1:9/t", b"\1" * 32, {}, max_bytes=10, timeout=5.0)

    with pytest.raises(TranscriptUnavailable, match="unreachable"):
        asyncio.run(go())


@pytest.mark.parametrize(
    ("configured", "window", "left", "expected"),
    [
        (0.0, 120, 120, 30.0),  # default: a quarter of the commit window
        (0.0, 120, 40, 10.0),  # drawn late: a quarter of what is left
        (10.0, 120, 120, 10.0),  # configured below the default
        (100.0, 120, 120, 30.0),  # configured above what the window allows
        (0.0, 120, 0, 1.0),  # at the deadline: still one try
    ],
)
def test_fetch_timeout_fits_the_commit_window(
    configured: float, window: int, left: int, expected: float
) -> None:
    assert AuditLimits(transcript_timeout=configured).fetch_timeout(window, left) == expected

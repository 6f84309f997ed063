"""splitmesh.wire.tls: node TLS identities, the plaintext policy, and pinning against a real local
HTTPS/WSS server (aiohttp in a thread)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from splitmesh.wire.tls import (
    PLAINTEXT_ENV,
    ZERO_KEY,
    LinkSecurityError,
    NoRegisteredKey,
    PeerKeyMismatch,
    TlsIdentity,
    link_ssl,
    load_or_create_identity,
    pinned_request,
    ws_url,
)
from splitmesh.wire.websocket import BlockingWebSocket


def test_an_identity_is_made_once_with_a_private_key_file(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path / "tls")
    assert first.key_path.stat().st_mode & 0o777 == 0o600
    again = load_or_create_identity(tmp_path / "tls")
    assert again.fingerprint == first.fingerprint
    # The fingerprint is the SHA-256 of the certificate's DER bytes, computed here another way.
    cert = x509.load_pem_x509_certificate(first.cert_path.read_bytes())
    assert first.fingerprint == cert.fingerprint(hashes.SHA256())
    assert load_or_create_identity(tmp_path / "other").fingerprint != first.fingerprint


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path)
    os.chmod(identity.key_path, 0o644)
    with pytest.raises(LinkSecurityError, match="chmod 600"):
        load_or_create_identity(tmp_path)


def test_nodes_without_a_key_are_refused_unless_plaintext_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PLAINTEXT_ENV, raising=False)
    with pytest.raises(NoRegisteredKey, match=PLAINTEXT_ENV):
        link_ssl("ws://127.0.0.1:1/x", ZERO_KEY)
    with pytest.raises(NoRegisteredKey, match="plaintext endpoint"):
        link_ssl("ws://127.0.0.1:1/x", b"\1" * 32)  # aiohttp would skip the pin on a plain socket
    assert isinstance(link_ssl("wss://127.0.0.1:1/x", b"\1" * 32), aiohttp.Fingerprint)
    monkeypatch.setenv(PLAINTEXT_ENV, "1")
    assert link_ssl("ws://127.0.0.1:1/x", ZERO_KEY) is False
    with pytest.raises(NoRegisteredKey):
        link_ssl("wss://127.0.0.1:1/x", ZERO_KEY)  # a keyless node announcing TLS is still refused
    assert ws_url("https://h:1/", "/p") == "wss://h:1/p" and ws_url("http://h:1", "/p") == "ws://h:1/p"


@dataclass
class Server:
    url: str
    identity: TlsIdentity
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """An HTTPS + WSS echo server with its own identity, counting the requests that reached it."""
    identity = load_or_create_identity(tmp_path / "server")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    seen: list[str] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for message in ws:
                await ws.send_bytes(message.data)
            return ws
        return web.Response(body=b"hello")

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_get("/{tail:.*}", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=identity.server_context())
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    server = Server(f"https://127.0.0.1:{port}", identity)
    server.requests = seen
    yield server
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_a_pinned_request_reaches_the_registered_key_only(server: Server, tmp_path: Path) -> None:
    status, _, body = pinned_request("GET", server.url + "/health", server.identity.fingerprint, timeout=5)
    assert (status, body, server.requests) == (200, b"hello", ["/health"])
    other = load_or_create_identity(tmp_path / "impostor").fingerprint
    with pytest.raises(PeerKeyMismatch) as refused:
        pinned_request("GET", server.url + "/secret", other, timeout=5)
    assert (refused.value.expected, refused.value.got) == (other, server.identity.fingerprint)
    assert server.requests == ["/health"]  # refused before the request was sent


def test_a_websocket_is_pinned_too(server: Server, tmp_path: Path) -> None:
    url = ws_url(server.url, "/ws")
    with BlockingWebSocket(url, ssl=link_ssl(url, server.identity.fingerprint)) as ws:
        ws.send(b"frame")
        assert ws.receive(5) == b"frame"
    other = load_or_create_identity(tmp_path / "impostor").fingerprint
    with pytest.raises(PeerKeyMismatch):
        BlockingWebSocket(url, ssl=link_ssl(url, other))
    assert server.requests == ["/ws"]

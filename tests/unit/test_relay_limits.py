"""The relay link against a hostile next hop (a real aiohttp server on 127.0.0.1): one that stops reading
must not block `send` forever, and one that answers made-up error codes and statuses must not have them
passed upstream (they would become Prometheus labels and this node's own HTTP status)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from node.errors import ERROR_CODES, ERROR_STATUSES, StepRejected
from node.relay import Downstream
from splitmesh.protocol import STREAM_PATH
from tests.unit.tls_identity import server_identity

WsHandler = Callable[[web.WebSocketResponse], Awaitable[None]]
RELEASE = web.AppKey("release", asyncio.Event)  # set when the test ends: the hostile handlers return


@asynccontextmanager
async def next_hop(behaviour: WsHandler) -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        done = asyncio.ensure_future(behaviour(ws))
        await asyncio.wait(
            [done, asyncio.ensure_future(request.app[RELEASE].wait())], return_when="FIRST_COMPLETED"
        )
        done.cancel()
        return ws

    app = web.Application()
    app[RELEASE] = release = asyncio.Event()
    app.router.add_get(STREAM_PATH.replace("{job}", "{job:[0-9]+}"), handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_identity().server_context())
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        release.set()
        await runner.cleanup()


async def never_reads(ws: web.WebSocketResponse) -> None:
    await asyncio.sleep(3600)


def test_send_to_a_next_hop_that_stops_reading_times_out() -> None:
    async def scenario() -> StepRejected:
        async with next_hop(never_reads) as endpoint:
            link = Downstream(endpoint, 1, server_identity().fingerprint, timeout=5.0, send_timeout=0.5)
            frame = bytes(4 << 20)
            try:
                for _ in range(64):  # 256 MiB: far more than socket buffers hold
                    await link.send(frame)
            except StepRejected as exc:
                return exc
            finally:
                await link.close()
            raise AssertionError("256 MiB went to a peer that reads nothing")

    # The outer bound only turns a hang (the bug) into a failure; the link's own timeout is 0.5 s.
    exc = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert (exc.status, exc.code) == (504, "next_node_timeout")


def answers(reply: dict[str, object]) -> WsHandler:
    async def behaviour(ws: web.WebSocketResponse) -> None:
        async for _ in ws:
            await ws.send_str(json.dumps(reply))

    return behaviour


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            {"status": 404, "code": "unknown_job", "error": "no such job", "node": "0xabc"},
            (404, "unknown_job"),
        ),
        (
            {"status": 200, "code": "x" * 500, "error": "e" * 100_000, "node": "n" * 1000},
            (502, "downstream_error"),
        ),
        ({"status": 999, "code": "busy", "error": "?"}, (502, "busy")),
        ({"status": 302, "code": "internal", "error": "?"}, (502, "internal")),
        ({"status": 418, "code": "teapot_{i}", "error": "?"}, (502, "downstream_error")),
    ],
)
def test_next_hop_error_codes_and_statuses_come_from_fixed_sets(
    reply: dict[str, object], expected: tuple[int, str]
) -> None:
    async def scenario() -> StepRejected:
        async with next_hop(answers(reply)) as endpoint:
            link = Downstream(endpoint, 1, server_identity().fingerprint, timeout=5.0)
            try:
                await link.send(b"frame")
                await link.receive()
            except StepRejected as exc:
                return exc
            finally:
                await link.close()
            raise AssertionError("an error reply was taken as a result")

    exc = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert (exc.status, exc.code) == expected
    assert exc.code in ERROR_CODES and exc.status in ERROR_STATUSES
    assert len(exc.reason) <= 1100 and (exc.node is None or len(exc.node) <= 42)


def test_every_code_the_node_raises_is_in_the_fixed_set() -> None:
    """A new rejection code must be added to node.errors.ERROR_CODES, or relays would rename it."""
    source = "\n".join(p.read_text() for p in Path("node").glob("*.py"))
    calls = r"(?:StepRejected\(\s*\d+,|bad_request\(|forbidden\(|conflict\(|gone\(|busy\()\s*\"([a-z_]+)\""
    second = r"(?:unauthorized|not_found)\([^()]*?,\s*\"([a-z_]+)\"\)"
    found = set(re.findall(calls, source)) | set(re.findall(second, source))
    found |= set(re.findall(r"code=\"([a-z_]+)\"", source))
    assert len(found) > 20, found
    assert found <= ERROR_CODES, found - ERROR_CODES

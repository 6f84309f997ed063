"""The relay link on direct-return steps (a real aiohttp next hop on 127.0.0.1): nothing comes back for a
step that went on; a rejection the next hop sends later, or its death, reaches the `watch` callback with
the next hop's code; an idle close between steps does not; and the end's reply still comes back. Plus
the protocol's rules for direct-return metas."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from pydantic import ValidationError

from node.errors import StepRejected
from node.relay import IDLE_CLOSE, Downstream
from splitmesh.protocol import EndMeta, EndResult, StepMeta
from tests.unit.test_relay_limits import next_hop
from tests.unit.tls_identity import server_identity

SIG = "0x" + "11" * 65
HASH = "0x" + "22" * 32
REJECTION = {"status": 409, "code": "replayed_step", "error": "step 3 is not new", "node": "0x" + "ab" * 20}


async def _drive(behaviour, steps: int, then_end: bool = False) -> tuple[list[StepRejected], object]:  # type: ignore[no-untyped-def]
    seen: list[StepRejected] = []

    async def rejected(exc: StepRejected) -> None:
        seen.append(exc)

    async with next_hop(behaviour) as endpoint:
        link = Downstream(endpoint, 1, server_identity().fingerprint, timeout=5.0)
        try:
            await link.watch(rejected)
            for _ in range(steps):
                await link.send(b"step")
            ended = None
            if then_end:
                meta = EndMeta(job=1, tokens=3, signature=SIG)
                ended = await link.end(meta)
            await asyncio.sleep(0.3)  # let a late message arrive
            return seen, ended
        finally:
            await link.close()


def test_a_late_rejection_reaches_the_callback_with_the_next_hops_code() -> None:
    async def rejects_the_second(ws: web.WebSocketResponse) -> None:
        count = 0
        async for _ in ws:
            count += 1
            if count == 2:
                await ws.send_str(json.dumps(REJECTION))

    seen, _ = asyncio.run(asyncio.wait_for(_drive(rejects_the_second, 3), 30))
    assert [(e.status, e.code, e.node) for e in seen] == [(409, "replayed_step", REJECTION["node"])]


def test_the_next_hops_death_is_next_node_closed_and_an_idle_close_is_nothing() -> None:
    async def dies(ws: web.WebSocketResponse) -> None:
        await ws.receive()
        await ws.close(code=1011)

    async def idles(ws: web.WebSocketResponse) -> None:
        await ws.receive()
        await ws.close(code=IDLE_CLOSE, message=b"idle")

    seen, _ = asyncio.run(asyncio.wait_for(_drive(dies, 1), 30))
    assert [(e.status, e.code) for e in seen] == [(502, "next_node_closed")]
    seen, _ = asyncio.run(asyncio.wait_for(_drive(idles, 1), 30))
    assert seen == []


def test_steps_get_no_reply_and_the_end_gets_its_own() -> None:
    ended = EndResult(job=1, commitments=[])

    async def answers_the_end_only(ws: web.WebSocketResponse) -> None:
        async for message in ws:
            if message.type.name == "TEXT":
                await ws.send_str(ended.model_dump_json())

    seen, reply = asyncio.run(asyncio.wait_for(_drive(answers_the_end_only, 3, then_end=True), 30))
    assert seen == [] and reply == ended


def test_direct_metas_are_inference_only_and_carry_answers_only_when_direct() -> None:
    base = {"job": 1, "step": 1, "tokens": 2, "start": 1, "payload_hash": HASH, "signature": SIG}
    assert StepMeta(**base, direct=True).direct
    with pytest.raises(ValidationError, match="direct return serves inference steps only"):
        StepMeta(**{**base, "mode": "train", "tensor_hash": HASH}, direct=True)
    timing = {"node": "0x" + "ab" * 20, "position": 0, "compute_ms": 1.0, "handle_ms": 2.0}
    with pytest.raises(ValidationError, match="direct-return steps only"):
        StepMeta(**base, hops=[timing])

"""What an app developer sees when the marketplace cannot serve: clear, typed errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from aiohttp import web

from client_sdk import (
    ChallengeRefused,
    Client,
    EscrowTooSmall,
    MalformedReply,
    NodeUnavailable,
    NoRoute,
    StepFailed,
)
from client_sdk.link import RouteLink
from splitmesh.chain import HARDHAT_DEV_KEYS, JobStatus, Sender
from splitmesh.chain.launcher import advance_time, free_port
from splitmesh.model.identity import describe_model
from splitmesh.wire import encode_frame
from splitmesh.wire.tls import load_or_create_identity
from splitmesh_cli.localnet import CLIENT_KEY, PARAMS, SPLIT, RunningMarket

PROMPT = "Say hello."


@pytest.fixture(scope="module")
def client(running_market: RunningMarket) -> Client:
    return Client(running_market.rpc_url, CLIENT_KEY, market=running_market.deployment.market)


def test_a_split_no_plan_offers_is_no_route(client: Client) -> None:
    with pytest.raises(NoRoute, match="available splits: \\[4, 13, 22\\]"):
        client.generate(PROMPT, 2, split=7)


def test_a_plan_without_nodes_is_no_route(running_market: RunningMarket, client: Client) -> None:
    model = describe_model(None)
    deployer = Sender(running_market.w3, HARDHAT_DEV_KEYS[0])
    plan = [0, 10, 20, 30]
    if running_market.market.find_model(model.weights_hash, plan) is None:
        running_market.market.register_model(deployer, model.name, model.weights_hash, 30, plan)
    with pytest.raises(NoRoute, match="no active node"):
        client.generate(PROMPT, 2, split=10)


def test_escrow_below_the_route_price_is_refused_on_chain(client: Client) -> None:
    jobs_before = client.market.job_count()
    with pytest.raises(EscrowTooSmall, match=r"does not cover .* plus the hop fee of 10+ wei per hop"):
        client.generate(PROMPT, 2, split=SPLIT, escrow_wei=1)
    assert client.market.job_count() == jobs_before  # the reverted submission left nothing behind


def test_a_challenge_after_the_window_is_refused(running_market: RunningMarket, client: Client) -> None:
    job_id = client.generate(PROMPT, 1, split=SPLIT).receipt.job_id
    running_market.wait_status(job_id, JobStatus.COMMITTED)
    advance_time(running_market.w3, PARAMS.challenge_window)
    balance = client.market.balance(client.address)
    with pytest.raises(ChallengeRefused, match="only a committed job, inside its challenge window"):
        client.challenge(job_id)
    assert client.market.balance(client.address) == balance  # refused at the estimate: no bond, no gas


def test_first_node_down_is_node_unavailable(running_market: RunningMarket, client: Client) -> None:
    running_market.nodes[0].stop()
    try:
        with pytest.raises(NodeUnavailable, match="unreachable"):
            client.generate(PROMPT, 2, split=SPLIT)
    finally:
        running_market.restart(1)
    assert len(client.generate(PROMPT, 2, split=SPLIT).token_ids) == 2


def test_middle_node_down_names_the_node_and_the_failure(
    running_market: RunningMarket, client: Client
) -> None:
    down = running_market.nodes[1]
    down.stop()
    try:
        with pytest.raises(StepFailed) as failure:
            client.generate(PROMPT, 2, split=SPLIT)
        assert failure.value.status == 502
        assert failure.value.code == "next_node_unreachable"
        assert failure.value.node == running_market.nodes[0].address  # the hop that could not relay
    finally:
        running_market.restart(2)
    assert len(client.generate(PROMPT, 2, split=SPLIT).token_ids) == 2


@pytest.fixture()
def garbage_node(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """A WebSocket server that answers every step with bytes that are not a frame, then a bad frame:
    (its https endpoint, its TLS key)."""
    identity = load_or_create_identity(tmp_path / "tls")
    replies = [b"not a frame at all", encode_frame(torch.zeros(1, 1, 8), {"kind": "result"})]

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            await ws.send_bytes(replies.pop(0) if replies else b"")
        return ws

    port = free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/v1/jobs/{job}/stream", stream)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(
        web.TCPSite(runner, "127.0.0.1", port, ssl_context=identity.server_context()).start()
    )
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{port}", identity.fingerprint
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_a_malformed_result_frame_is_malformed_reply(garbage_node: tuple[str, bytes]) -> None:
    endpoint, key = garbage_node
    link = RouteLink(endpoint, 1, "0xgarbage", key, timeout=5)
    try:
        with pytest.raises(MalformedReply, match="malformed result frame"):
            link.step(b"anything", "float32")
        with pytest.raises(MalformedReply, match="malformed result frame"):
            link.step(b"anything", "float32")  # a valid frame whose meta is not a result
    finally:
        link.close()

"""Direct return end to end: a real chain, three real node processes (a small random Llama), each behind
a counting TCP proxy it announces with --public-url (bench/latency_proxy.py, no added delay). The last
node's results come straight to the client on a return channel: the middle node sends nothing upstream
per decode step, tokens match the old return path and the unsplit model, a forged answer on the return
channel is refused, and nobody but the job's client can open its return channel.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator

import pytest
import torch

from bench.latency_proxy import ProxyFront
from client_sdk import Client, ForgedReply, NodeUnavailable
from client_sdk.failover import FailoverPolicy, blame
from client_sdk.options import GenerateOptions
from client_sdk.route_job import RouteJob
from splitmesh.jobmeta import JobMeta
from splitmesh.model.reference import reference_generate
from splitmesh.paths import models_dir
from splitmesh.protocol import RETURN_PATH, RETURN_PAYLOAD, RETURN_READY, RETURN_STEP, ReturnHello, hex32
from splitmesh.signing import EnvelopeSigner
from splitmesh.wire.tls import link_ssl, ws_url
from splitmesh.wire.websocket import BlockingWebSocket
from splitmesh_cli.localnet import CLIENT_KEY, OTHER_KEY, PRICE, RunningMarket, start_market, stop_market
from splitmesh_cli.procs import NodeProcess
from tests.model_fixtures import save_random_model, tiny_llama_config

SPLIT = 2  # client layers; the three nodes serve layers [2, 4), [4, 5), [5, 6)
PROMPT = "Tell me about the sea."
TOKENS = 6
NO_FAILOVER = FailoverPolicy(max_failovers=0)


@pytest.fixture(scope="module")
def front() -> Iterator[ProxyFront]:
    proxies = ProxyFront(delay=0.0)
    yield proxies
    proxies.close()


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, front: ProxyFront) -> Iterator[RunningMarket]:
    tmp = tmp_path_factory.mktemp("direct")
    model = save_random_model(tiny_llama_config(vocab_size=49152, num_hidden_layers=6), tmp / "tiny")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(models_dir() / "SmolLM2-135M-Instruct" / name, model / name)
    running = start_market(tmp, model=str(model), split=SPLIT, nodes=3, customize=front)
    yield running
    stop_market(running)


@pytest.fixture(scope="module")
def client(market: RunningMarket) -> Client:
    return Client(market.rpc_url, CLIENT_KEY, market.model, market=market.deployment.market)


def _generate(client: Client, direct: bool, tokens: int = TOKENS) -> list[int]:
    out = client.generate(
        PROMPT,
        tokens,
        split=SPLIT,
        epsilon=math.inf,
        max_price_per_token=PRICE,
        direct_return=direct,
        failover=NO_FAILOVER,
    )
    assert out.receipt.commitment_problem is None
    assert out.receipt.uncommitted == []
    return out.token_ids


def test_the_route_endpoints_are_the_proxies(market: RunningMarket, front: ProxyFront) -> None:
    for node in market.nodes:
        assert node.endpoint == f"https://127.0.0.1:{front.proxies[node.spec.shard].port}"


def test_direct_tokens_equal_the_old_path_and_the_unsplit_model(
    market: RunningMarket, client: Client
) -> None:
    direct, old = _generate(client, True), _generate(client, False)
    reference = reference_generate(market.model, client.encode_prompt(PROMPT), TOKENS, repeats=1)
    assert direct == old == reference.tokens


def test_a_middle_node_sends_nothing_upstream_per_decode_step(
    market: RunningMarket, client: Client, front: ProxyFront
) -> None:
    hidden = tiny_llama_config(vocab_size=49152, num_hidden_layers=6).hidden_size
    state_bytes = hidden * 4  # one fp32 hidden state
    steps = 12  # one prefill and 11 decode steps
    middle, last = front.proxies[2], front.proxies[3]
    counts = {}
    for direct in (False, True):
        middle.reset()
        last.reset()
        _generate(client, direct, tokens=steps)
        counts[direct] = (middle.counts(), last.counts())
    (old_middle, _), (new_middle, new_last) = counts[False], counts[True]
    # Old path: every step's result (a hidden state, timings, answers) comes back up the middle link.
    assert old_middle["up_bursts"] >= steps
    # Direct: only the TLS and WebSocket handshakes, pongs and the end's reply leave the middle node
    # upstream: fewer writes than steps (how many TCP reads the handshakes take varies).
    assert new_middle["up_bursts"] < steps
    assert old_middle["up_bytes"] - new_middle["up_bytes"] > steps * state_bytes
    # The last node's results still cross its own link (on the client's return channel now).
    assert new_last["up_bursts"] >= steps and new_last["up_bytes"] > steps * state_bytes


def _submit(client: Client, direct: bool = True) -> RouteJob:
    local = client.prepare(SPLIT)
    opts = GenerateOptions(split=SPLIT, epsilon=math.inf, max_price_per_token=PRICE, direct_return=direct)
    meta = JobMeta(epsilon=math.inf, delta=1e-5, clip=None, split=SPLIT)
    return RouteJob.submit(client, local, opts, meta, 64)


def _open_return(client: Client, route: RouteJob, key: str) -> str | bytes:
    """Open the job's return channel at its last node with a hello signed by `key`; the node's answer."""
    last = route.hops[-1]
    signer = EnvelopeSigner(key, client.signer.chain_id, client.signer.market)
    signature = signer.sign(route.job_id, RETURN_STEP, 0, RETURN_PAYLOAD).signature
    hello = ReturnHello(job=route.job_id, signature=hex32(signature), terms=hex32(route.job.packed_terms))
    url = ws_url(last.endpoint, RETURN_PATH.format(job=route.job_id))
    with BlockingWebSocket(url, ssl=link_ssl(url, bytes.fromhex(last.tls_key[2:]))) as ws:
        ws.send(hello.model_dump_json())
        return ws.receive(10.0)


def _step(client: Client, route: RouteJob) -> torch.Tensor:
    local = client.prepare(SPLIT)
    ids = client.encode_prompt(PROMPT)
    with torch.inference_mode():
        z = local.model.head(
            torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0), local.model.new_cache()
        )
    reply, _ = route.send(route.prepare(z, tokens=len(ids)))
    return reply


def test_a_stranger_cannot_open_a_return_channel_for_someone_elses_job(client: Client) -> None:
    route = _submit(client)
    try:
        answer = _open_return(client, route, OTHER_KEY)
        assert isinstance(answer, str) and '"code":"bad_signature"' in answer.replace(" ", "")
        assert '"status":401' in answer.replace(" ", "")
        # The client's own channel was not taken over: its step still comes back to it.
        assert _step(client, route).shape[1] == 1
    finally:
        route.close()


def test_the_client_may_reopen_its_return_channel(client: Client) -> None:
    route = _submit(client, direct=False)  # no channel opened by the SDK
    try:
        assert _open_return(client, route, CLIENT_KEY) == RETURN_READY
    finally:
        route.close()


def _serve_cheating(market: RunningMarket, shard: int, cheat: str) -> NodeProcess:
    """Restart the node of `shard` (same key, port and public URL, so the same route) with `cheat`."""
    old = market.nodes[shard - 1]
    old.stop()
    spec = old.spec
    cheating = type(spec)(**{**spec.__dict__, "extra_args": [*spec.extra_args, "--cheat", cheat]})
    market.nodes[shard - 1] = NodeProcess(cheating, old.log_path).start()
    return market.nodes[shard - 1]


def _restart_honest(market: RunningMarket, shard: int, spec: object) -> None:
    market.nodes[shard - 1].stop()
    market.nodes[shard - 1] = NodeProcess(spec, market.nodes[shard - 1].log_path).start()  # type: ignore[arg-type]


def test_a_forged_answer_on_the_return_channel_is_refused(market: RunningMarket, client: Client) -> None:
    honest = market.nodes[2].spec
    _serve_cheating(market, 3, "forge-answers")
    try:
        with pytest.raises(ForgedReply) as info:
            _generate(client, True)
        assert _generate(client, False)  # the old path carries no answers through the last node
    finally:
        _restart_honest(market, 3, honest)
    error = info.value
    assert (error.step, error.position) == (0, 0)
    assert "not by the route's node" in error.reason


def test_a_dead_last_node_is_blamed_when_its_return_channel_fails(
    market: RunningMarket, client: Client
) -> None:
    honest = market.nodes[2].spec
    market.nodes[2].stop()
    try:
        with pytest.raises(NodeUnavailable) as info:
            _submit(client)
        route = [hop.node for hop in client.market.job_submitted(info.value.job_id).terms.route]
        blamed = blame(info.value, route)
        assert blamed is not None and blamed[0] == [route[2]]
    finally:
        market.nodes[2] = NodeProcess(honest, market.nodes[2].log_path).start()

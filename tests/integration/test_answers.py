"""Authenticated answers end to end: a real chain, three real node processes (a small random Llama), the
client SDK. A first or middle node that replaces the hidden state coming back from downstream (the
`swap-returned` cheat) steers what the client generates; the client must refuse it at once.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_sdk import Client
from splitmesh.model.identity import describe_model
from splitmesh.paths import models_dir
from splitmesh_cli.localnet import CLIENT_KEY, PRICE, RunningMarket, start_market, stop_market
from splitmesh_cli.procs import NodeProcess
from tests.model_fixtures import save_random_model, tiny_llama_config

SPLIT = 2  # client layers; the three nodes serve layers [2, 4), [4, 5), [5, 6)
PROMPT = "Tell me about the sea."
TOKENS = 4


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMarket]:
    tmp = tmp_path_factory.mktemp("answers")
    model = save_random_model(tiny_llama_config(vocab_size=49152, num_hidden_layers=6), tmp / "tiny")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(models_dir() / "SmolLM2-135M-Instruct" / name, model / name)
    describe_model(str(model))
    running = start_market(tmp, model=str(model), split=SPLIT, nodes=3)
    yield running
    stop_market(running)


@pytest.fixture(scope="module")
def client(market: RunningMarket) -> Client:
    return Client(market.rpc_url, CLIENT_KEY, market.model, market=market.deployment.market)


def _generate(client: Client) -> list[int]:
    out = client.generate(PROMPT, TOKENS, split=SPLIT, epsilon=math.inf, max_price_per_token=PRICE)
    return out.token_ids


def _serve_cheating(market: RunningMarket, shard: int, cheat: str) -> NodeProcess:
    """Restart the node of `shard` (same key, so the same route) with `--cheat cheat`."""
    old = market.nodes[shard - 1]
    old.stop()
    spec = market.spec(shard, None, PRICE, 1.0, "--cheat", cheat)
    market.nodes[shard - 1] = NodeProcess(spec, old.log_path).start()
    return market.nodes[shard - 1]


def test_a_middle_node_swapping_the_returned_state_steers_the_output(
    market: RunningMarket, client: Client
) -> None:
    honest = _generate(client)
    _serve_cheating(market, 2, "swap-returned")
    try:
        out = client.generate(PROMPT, TOKENS, split=SPLIT, epsilon=math.inf, max_price_per_token=PRICE)
    finally:
        market.restart(2)
    assert out.token_ids != honest
    assert out.receipt.commitment_problem is None  # the rewritten end-of-job chains fooled the check
    assert Path(market.nodes[1].log_path).exists()

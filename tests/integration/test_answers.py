"""Authenticated answers end to end: a real chain, three real node processes (a small random Llama), the
client SDK. A first or middle node that replaces the hidden state coming back from downstream (the
`swap-returned` cheat) steers what the client generates; the client must refuse it at once.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator

import pytest
import torch

from client_sdk import Client, CommitmentMismatch, ForgedReply, Generation
from client_sdk.options import GenerateOptions
from client_sdk.route_job import RouteJob
from splitmesh.jobmeta import JobMeta
from splitmesh.paths import models_dir
from splitmesh.protocol import hex32, tensor_digest
from splitmesh_cli.localnet import CLIENT_KEY, PRICE, RunningMarket, start_market, stop_market
from splitmesh_cli.procs import NodeProcess
from tests.model_fixtures import save_random_model, tiny_llama_config

SPLIT = 2  # client layers; the three nodes serve layers [2, 4), [4, 5), [5, 6)
PROMPT = "Tell me about the sea."
TOKENS = 4
EXAMPLE = {"prompt": "Name a colour.", "completion": "Blue."}


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMarket]:
    tmp = tmp_path_factory.mktemp("answers")
    model = save_random_model(tiny_llama_config(vocab_size=49152, num_hidden_layers=6), tmp / "tiny")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(models_dir() / "SmolLM2-135M-Instruct" / name, model / name)
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


def _first_step_unchecked(client: Client) -> tuple[int, bool, ForgedReply | None]:
    """The generation's first step driven by hand, reading the reply WITHOUT the client's answer check
    (what the SDK did before answers were signed): the token the client would have produced, whether the
    last node's signed answer covers the tensor received, and what the check says of the same reply."""
    local = client.prepare(SPLIT)
    ids = client.encode_prompt(PROMPT)
    opts = GenerateOptions(  # the old return path: the swap-returned cheat's (direct return skips it)
        max_new_tokens=1, split=SPLIT, epsilon=math.inf, max_price_per_token=PRICE, direct_return=False
    )
    meta = JobMeta(epsilon=math.inf, delta=1e-5, clip=None, split=SPLIT)
    route = RouteJob.submit(client, local, opts, meta, len(ids))
    try:
        with torch.inference_mode():
            z = local.model.head(
                torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0), local.model.new_cache()
            )
        out = route.prepare(z, tokens=len(ids))
        raw, result = route.link.step(out.frame, out.dtype)  # the bare link: no answer check
        with torch.inference_mode():
            token = int(local.model.tail(raw[:, -1:])[0, -1].argmax())
        covered = result.answers[-1].downstream == hex32(tensor_digest(raw))
        try:
            route.answers.verify(result, out.step, out.digest, tensor_digest(raw))
            refusal = None
        except ForgedReply as exc:
            refusal = exc
        return token, covered, refusal
    finally:
        route.close()


def test_honest_answers_verify_and_the_chains_match_the_chain(market: RunningMarket, client: Client) -> None:
    out = client.generate(PROMPT, TOKENS, split=SPLIT, epsilon=math.inf, max_price_per_token=PRICE)
    assert len(out.token_ids) == TOKENS
    assert out.receipt.commitment_problem is None
    assert out.receipt.uncommitted == []  # every position committed in time and matched what we saw
    committed = client.market.commitments_of(out.receipt.job_id)
    assert sorted(committed) == [0, 1, 2]


def test_without_the_check_a_swapping_middle_node_steers_the_token(
    market: RunningMarket, client: Client
) -> None:
    honest = _generate(client)
    honest_token, covered, refusal = _first_step_unchecked(client)
    assert honest_token == honest[0] and covered and refusal is None  # the control: an honest route
    _serve_cheating(market, 2, "swap-returned")
    try:
        swapped_token, covered, refusal = _first_step_unchecked(client)
    finally:
        market.restart(2)
    assert swapped_token != honest[0]  # an unchecked client would have produced a token the cheat chose
    assert not covered  # ... but the last node's signature does not cover what came back
    assert refusal is not None and refusal.position == 2


@pytest.mark.parametrize("shard", [1, 2], ids=["first-node", "middle-node"])
def test_a_swapped_returned_state_is_refused_at_the_first_step(
    market: RunningMarket, client: Client, shard: int
) -> None:
    _serve_cheating(market, shard, "swap-returned")
    try:
        with pytest.raises(ForgedReply) as info:  # on the old return path, which passes through the cheat
            client.generate(
                PROMPT, TOKENS, split=SPLIT, epsilon=math.inf, max_price_per_token=PRICE, direct_return=False
            )
    finally:
        market.restart(shard)
    error = info.value
    assert (error.step, error.position) == (0, 2)  # the last node's answer does not cover the reply
    route = client.market.job_submitted(error.job_id).terms.route
    assert error.node == route[2].node


def test_a_swapped_training_forward_is_refused(market: RunningMarket, client: Client) -> None:
    _serve_cheating(market, 2, "swap-returned")
    try:
        with pytest.raises(ForgedReply) as info:
            client.train_step(EXAMPLE, split=SPLIT, max_price_per_token=PRICE, seed=1)
    finally:
        client.end_training()
        market.restart(2)
    assert (info.value.step, info.value.position) == (0, 2)


def test_honest_training_steps_verify_forward_and_backward(market: RunningMarket, client: Client) -> None:
    first = client.train_step(EXAMPLE, split=SPLIT, max_price_per_token=PRICE, seed=1)
    client.train_step(EXAMPLE)
    report = client.end_training()
    assert report is not None and report.steps == 2 and first.loss > 0
    assert report.commitment_problem is None and report.uncommitted == []


def test_a_commitment_that_differs_on_chain_is_an_error_with_the_way_to_dispute(
    market: RunningMarket, client: Client
) -> None:
    """The last node serves honestly (its answers verify) but commits a transcript with an invented step
    (`overbill`): its on-chain output chain is not what the client received."""
    _serve_cheating(market, 3, "overbill")
    try:
        with pytest.raises(CommitmentMismatch) as info:
            client.generate(PROMPT, TOKENS, split=SPLIT, epsilon=math.inf, max_price_per_token=PRICE)
    finally:
        market.restart(3)
    error = info.value
    assert error.position == 2 and error.job_id is not None
    assert "committed an output chain on-chain" in str(error)
    assert "audit" in str(error) or f"Client.challenge({error.job_id})" in str(error)
    assert isinstance(error.result, Generation) and len(error.result.token_ids) == TOKENS

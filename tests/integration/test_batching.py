"""Batching across sessions on a real 3-node SmolLM2 route (node.batcher, issue 17): several clients,
each with its own key and job, generate at once; every one gets exactly the tokens it gets when served
alone (greedy, epsilon inf), the nodes really ran steps of different jobs in one batch, and each job's
hash chains link from hop to hop as they do for a lone job."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from client_sdk import Client, Generation
from splitmesh.wire.tls import pinned_request
from splitmesh_cli.localnet import SPLIT, RunningMarket, start_market, stop_market
from splitmesh_cli.procs import NodeProcess

PROMPTS = [  # different lengths: the batch mixes positions
    "Name three colors of the rainbow.",
    "Write a short poem about the sea.",
    "Give me three tips for learning a new language, with an example for each.",
    "Explain in three sentences why the sky is blue.",
]
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def route(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMarket]:
    running = start_market(tmp_path_factory.mktemp("batching"))
    yield running
    stop_market(running)


def _generate(route: RunningMarket, key: str, prompt: str) -> Generation:
    client = Client(route.rpc_url, key, market=route.deployment.market)
    return client.generate(prompt, NEW_TOKENS, epsilon=math.inf, split=SPLIT)


def _histogram(node: NodeProcess, name: str) -> tuple[float, float]:
    """(count, sum) of one of a node's histograms."""
    status, _, body = pinned_request("GET", node.endpoint + "/metrics", node.tls_key, timeout=30)
    assert status == 200
    values = {}
    for line in body.decode().splitlines():
        for part in ("_count", "_sum"):
            if line.startswith(name + part + " "):
                values[part] = float(line.split()[1])
    return values["_count"], values["_sum"]


def test_concurrent_sessions_get_the_tokens_each_gets_alone(route: RunningMarket) -> None:
    keys = route.funded_keys(len(PROMPTS))  # one client (and key) per session
    alone = [_generate(route, key, prompt) for key, prompt in zip(keys, PROMPTS, strict=True)]
    before = [_histogram(node, "splitmesh_node_batch_steps") for node in route.nodes]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda kp: _generate(route, *kp), zip(keys, PROMPTS, strict=True)))
    after = [_histogram(node, "splitmesh_node_batch_steps") for node in route.nodes]
    for one, many in zip(alone, together, strict=True):
        assert many.token_ids == one.token_ids
        assert many.receipt.job_id != one.receipt.job_id
        chains = many.receipt.commitments
        assert [c["steps"] for c in chains] == [len(many.token_ids)] * 3  # an EOS may end it early
        for left, right in itertools.pairwise(chains):
            assert left["output_chain"] == right["input_chain"]
    # Batching really happened: some node ran more steps than batches while the sessions overlapped.
    steps = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    batches = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    assert steps == [sum(len(g.token_ids) for g in together)] * 3, steps
    assert any(b < s for b, s in zip(batches, steps, strict=True)), (batches, steps)

"""Audits that cannot be stalled (issue 15, deliverable 5), with real node processes on a real chain.

The attack: an accused node accepts its verifiers' transcript requests and then drip-feeds the reply,
one byte a second (`--cheat stall-transcript`). A verifier that reads without a total deadline, and
judges its audits one after another, never votes on that audit nor on any audit drawn after it; the
court counts a position without votes as honest, so the cheater escapes and the other audit's accused
is left unjudged too.

The cast (shard 1 of a 3-shard tiny Llama, shard 2 served by one node, so its positions draw nobody):
- H, honest, serves job B; S, the staller, serves job A (prices route each job to its node);
- V, a verifier only (too expensive to be routed);
- two verifiers per position: job A's panel is {V, H}, job B's is {V, S}.
Job A's audit opens first, so a verifier working one audit at a time is stuck on it before job B's opens.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from web3 import Web3

from client_sdk import Client
from splitmesh.chain import HARDHAT_DEV_KEYS, JobStatus, LocalChain, Marketplace, Sender, Verdict, deploy
from splitmesh.chain.launcher import advance_time
from splitmesh.chain.records import AuditStatus, VoteStatus
from splitmesh.model.identity import describe_model
from splitmesh.paths import models_dir
from splitmesh_cli.localnet import PARAMS as LOCAL_PARAMS
from splitmesh_cli.procs import NodeProcess, NodeSpec, start_nodes, stop_nodes
from tests.model_fixtures import save_random_model, tiny_llama_config

PRICE = 10**12
COMMIT_WINDOW = 90  # seconds; a verifier's default transcript deadline is a quarter of it
PARAMS = dataclasses.replace(
    LOCAL_PARAMS,
    fraud_slash_bps=5000,
    audit_rate_bps=0,  # audits come from the client's challenges, opened when the test says
    verifiers_per_position=2,
    verifier_bond=10**16,
    audit_commit_window=COMMIT_WINDOW,
    audit_reveal_window=60,
    audit_reward_bps=5000,
)
N2_KEY, V_KEY, H_KEY, S_KEY = HARDHAT_DEV_KEYS[1:5]
CLIENT_KEY = HARDHAT_DEV_KEYS[9]


@dataclass
class StallMarket:
    chain: LocalChain
    w3: Web3
    market: Marketplace
    model: Path
    model_id: int
    tmp: Path

    def spec(self, shard: int, key: str, price: int, *extra: str) -> NodeSpec:
        return NodeSpec(
            shard=shard,
            key=key,
            rpc_url=self.chain.rpc_url,
            market=self.market.deployment.market,
            model=str(self.model),
            model_id=self.model_id,
            price_wei=price,
            state_dir=self.tmp / "nodes",
            duty_interval=0.2,
            threads=1,
            extra_args=list(extra),
            env={"SPLITMESH_NODE_PRUNE_INTERVAL": "1"},  # prune settled jobs' transcripts at once
        )

    def client(self) -> Client:
        return Client(self.chain.rpc_url, CLIENT_KEY, str(self.model), market=self.market.deployment.market)


@pytest.fixture(scope="module")
def stall_market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StallMarket]:
    tmp = tmp_path_factory.mktemp("stall")
    model = save_random_model(tiny_llama_config(vocab_size=49152, num_hidden_layers=6), tmp / "tiny")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(models_dir() / "SmolLM2-135M-Instruct" / name, model / name)
    chain = LocalChain(log_path=tmp / "hardhat.log").start()
    try:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 60}))
        deployer = Sender(w3, HARDHAT_DEV_KEYS[0])
        market = Marketplace(w3, deploy(w3, deployer, PARAMS))
        described = describe_model(str(model))
        model_id, _ = market.register_model(deployer, described.name, described.weights_hash, 6, [0, 2, 4, 6])
        yield StallMarket(chain, w3, market, model, model_id, tmp)
    finally:
        chain.stop()


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _generate(m: StallMarket, max_price: int) -> tuple[int, list[str]]:
    out = m.client().generate("Tell me about the sea.", 4, split=2, max_price_per_token=max_price)
    return out.receipt.job_id, [h.node for h in out.receipt.route]


def _challenge_and_open(m: StallMarket, job_id: int) -> None:
    """The client challenges; the route nodes' duty loops open the audit."""
    m.client().challenge(job_id)
    _wait(lambda: m.market.get_audit(job_id).status == AuditStatus.OPEN, 60, f"job {job_id}'s audit to open")


def _vote_of(m: StallMarket, job_id: int, verifier: str) -> VoteStatus:
    panel = m.market.get_audit(job_id).panels[0]
    return panel.votes[panel.verifiers.index(verifier)]


def test_a_stalled_transcript_is_voted_withheld_without_delaying_the_other_audit(
    stall_market: StallMarket,
) -> None:
    m, market = stall_market, stall_market.market
    v, h, s = (Sender(m.w3, k).address for k in (V_KEY, H_KEY, S_KEY))
    logs = m.tmp / "logs"
    nodes: list[NodeProcess] = []
    try:
        nodes += start_nodes(
            [m.spec(2, N2_KEY, PRICE // 4), m.spec(1, V_KEY, 4 * PRICE), m.spec(1, H_KEY, PRICE)], logs
        )
        job_b, route_b = _generate(m, PRICE)  # only H is cheap enough on shard 1
        nodes += start_nodes([m.spec(1, S_KEY, PRICE // 2, "--cheat", "stall-transcript")], logs)
        job_a, route_a = _generate(m, PRICE // 2)  # only S is cheap enough now
        assert (route_a[0], route_b[0]) == (s, h)
        for job in (job_a, job_b):
            _wait(lambda j=job: market.get_job(j).status == JobStatus.COMMITTED, 60, f"job {job} committed")

        _challenge_and_open(m, job_a)
        _challenge_and_open(m, job_b)
        audit_a, audit_b = market.get_audit(job_a), market.get_audit(job_b)
        assert set(audit_a.panels[0].verifiers) == {v, h} and set(audit_b.panels[0].verifiers) == {v, s}
        assert audit_a.panels[1].verifiers == () == audit_b.panels[1].verifiers  # shard 2: nobody to draw

        # Every verifier commits within the commit phase: the stalled audit too, once its deadline is hit.
        _wait(
            lambda: all(
                p.committed == len(p.verifiers) for j in (job_a, job_b) for p in market.get_audit(j).panels
            ),
            COMMIT_WINDOW + 30,
            "every drawn verifier to commit (a stalled transcript must not keep a verifier from voting)",
        )
        # V's honest audit was not held up behind the stalled one: its vote came first.
        commits = [
            (e["blockNumber"], e["logIndex"], int(e["args"]["jobId"]))
            for e in market.events("VoteCommitted", from_block=0)
            if e["args"]["verifier"] == v
        ]
        assert [job for *_, job in sorted(commits)] == [job_b, job_a]

        # Reveals open early (everyone committed); then resolve past the reveal window.
        _wait(
            lambda: all(
                _vote_of(m, j, x) in (VoteStatus.HONEST, VoteStatus.FRAUD)
                for j, x in [(job_a, v), (job_a, h), (job_b, v)]
            ),
            60,
            "the reveals",
        )
        revealed = {
            (int(e["args"]["jobId"]), e["args"]["verifier"]): Verdict(int(e["args"]["verdict"]))
            for e in market.events("VoteRevealed", from_block=0)
        }
        assert revealed[(job_a, v)] == revealed[(job_a, h)] == Verdict.FRAUD  # withheld evidence is fraud
        assert revealed[(job_b, v)] == Verdict.HONEST
        deadline = max(market.get_audit(j).reveal_deadline for j in (job_a, job_b))
        advance_time(m.w3, deadline - int(m.w3.eth.get_block("latest")["timestamp"]) + 1)
        _wait(
            lambda: all(market.get_audit(j).status == AuditStatus.RESOLVED for j in (job_a, job_b)),
            60,
            "both audits to be resolved",
        )
        resolved = {j: market.events("AuditResolved", jobId=j)[-1]["args"] for j in (job_a, job_b)}
        assert resolved[job_a]["fraudMask"] == 1 and resolved[job_a]["slashed"] > 0  # the staller pays
        assert resolved[job_b]["fraudMask"] == 0 and resolved[job_b]["slashed"] == 0
        v_log = next(n for n in nodes if n.spec.key == V_KEY).log_path.read_text()
        assert f"audit of job {job_a} position 0" in v_log and "transcript withheld" in v_log
        # Both jobs are settled now. The route nodes look at them again once the hold of their claim ends
        # (the challenge window after their commit), record them paid, and drop their transcripts.
        advance_time(m.w3, PARAMS.challenge_window)
        for job, key in [(job_a, S_KEY), (job_b, H_KEY), (job_a, N2_KEY), (job_b, N2_KEY)]:
            node = next(n for n in nodes if n.spec.key == key)
            _wait(
                lambda n=node, j=job: f"job {j}: dropped its transcript" in n.log_path.read_text(),
                60,
                f"node {key[-6:]} to prune job {job}'s transcript",
            )
    finally:
        stop_nodes(nodes, timeout=40)

"""Audits end to end: real node processes (a small random Llama), a real chain with the AuditCourt,
every job audited. Each cheat is caught and slashed; honest nodes are not; verifiers vote by themselves.

Serving nodes ask PRICE per token and the client pays at most that, so the route is always the two
serving nodes; the verifiers (three per shard) ask twice as much and are only ever drawn for audits.
One verifier of shard 1 always votes the opposite of what it finds: the honest majority must win.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from web3 import Web3

from client_sdk import Client, CommitmentMismatch, Generation
from splitmesh.chain import HARDHAT_DEV_KEYS, DeployParams, JobStatus, LocalChain, Marketplace, Sender, deploy
from splitmesh.chain.launcher import advance_time
from splitmesh.chain.records import AuditStatus
from splitmesh.model.identity import describe_model
from splitmesh.paths import models_dir
from splitmesh_cli.localnet import PARAMS as LOCAL_PARAMS
from splitmesh_cli.procs import NodeProcess, NodeSpec, start_nodes, stop_nodes
from splitmesh_cli.wait import wait_until
from tests.model_fixtures import save_random_model, tiny_llama_config

PRICE = 10**12
# The local marketplace's windows, with every job audited by a court of three per position.
PARAMS = dataclasses.replace(
    LOCAL_PARAMS,
    fraud_slash_bps=5000,
    audit_rate_bps=10_000,  # every job
    verifiers_per_position=3,
    verifier_bond=10**16,
    audit_commit_window=120,
    audit_reveal_window=120,
    audit_reward_bps=5000,
)
SERVING_KEYS = [HARDHAT_DEV_KEYS[1], HARDHAT_DEV_KEYS[2]]  # shard 1, shard 2
VERIFIER_KEYS = {1: list(HARDHAT_DEV_KEYS[3:6]), 2: list(HARDHAT_DEV_KEYS[6:9])}
CLIENT_KEY = HARDHAT_DEV_KEYS[9]
LIAR_KEY = VERIFIER_KEYS[1][0]
TRAIN_EXAMPLES = [
    {"prompt": "Name a colour.", "completion": "Ahoy! Blue."},
    {"prompt": "Name a fruit.", "completion": "Ahoy! A pear."},
    {"prompt": "Name an animal.", "completion": "Ahoy! An owl."},
]


@dataclass
class AuditMarket:
    chain: LocalChain
    w3: Web3
    market: Marketplace
    model: Path
    model_id: int
    tmp: Path
    verifiers: list[NodeProcess]

    def spec(
        self, shard: int, key: str, price: int, *extra: str, env: dict[str, str] | None = None
    ) -> NodeSpec:
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
            env=env or {},
        )


def _start_market(
    tmp: Path, params: DeployParams, verifier_keys: dict[int, list[str]], liar: str | None
) -> Iterator[AuditMarket]:
    """A chain, a deployment with a court, the tiny model registered, verifier nodes started."""
    model = save_random_model(tiny_llama_config(vocab_size=49152, num_hidden_layers=6), tmp / "tiny")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(models_dir() / "SmolLM2-135M-Instruct" / name, model / name)
    chain = LocalChain(log_path=tmp / "hardhat.log").start()
    try:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 60}))
        deployer = Sender(w3, HARDHAT_DEV_KEYS[0])
        market = Marketplace(w3, deploy(w3, deployer, params))
        described = describe_model(str(model))
        model_id, _ = market.register_model(deployer, described.name, described.weights_hash, 6, [0, 2, 4, 6])
        running = AuditMarket(chain, w3, market, model, model_id, tmp, [])
        lies = {"SPLITMESH_NODE_VERIFIER_LIES": "1"}
        specs = [
            running.spec(s, k, 2 * PRICE, env=lies if k == liar else None)
            for s, keys in verifier_keys.items()
            for k in keys
        ]
        running.verifiers = start_nodes(specs, tmp / "logs")
        yield running
        stop_nodes(running.verifiers, timeout=40)
    finally:
        chain.stop()


@pytest.fixture(scope="module")
def audit_market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditMarket]:
    yield from _start_market(tmp_path_factory.mktemp("audits"), PARAMS, VERIFIER_KEYS, LIAR_KEY)


@pytest.fixture(scope="module")
def challenge_market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditMarket]:
    """No sampling: a job is audited only when someone challenges it. One verifier per shard."""
    keys = {shard: keys[:1] for shard, keys in VERIFIER_KEYS.items()}
    params = replace(PARAMS, audit_rate_bps=0)
    yield from _start_market(tmp_path_factory.mktemp("challenges"), params, keys, None)


def _serve(audit_market: AuditMarket, cheats: dict[int, str]) -> list[NodeProcess]:
    specs = []
    for shard in (1, 2):
        extra = ("--cheat", cheats[shard]) if shard in cheats else ()
        specs.append(audit_market.spec(shard, SERVING_KEYS[shard - 1], PRICE, *extra))
    return start_nodes(specs, audit_market.tmp / "logs")


def _run_audited_job(
    audit_market: AuditMarket, cheats: dict[int, str], *, train: bool = False
) -> dict[str, object]:
    """Serve one job (a generation, or a few training steps) with the given cheats, let the court judge
    it, return what the chain says."""
    market = audit_market.market
    serving = _serve(audit_market, cheats)
    try:
        client = Client(
            audit_market.chain.rpc_url, CLIENT_KEY, str(audit_market.model), market=market.deployment.market
        )
        if train:
            report = client.train(TRAIN_EXAMPLES, lr=1e-3, split=2, max_price_per_token=PRICE, progress=False)
            job_id, route = report.job_id, [h["node"] for h in report.route]
        else:
            try:
                out = client.generate("Tell me about the sea.", 6, split=2, max_price_per_token=PRICE)
            except CommitmentMismatch as exc:  # an overbilling node commits a chain the client never got
                assert cheats and isinstance(exc.result, Generation), exc
                out = exc.result
            job_id, route = out.receipt.job_id, [h.node for h in out.receipt.route]
        wait_until(
            lambda: market.get_job(job_id).status == JobStatus.DISPUTED,
            timeout=60,
            message="timed out waiting for the job to be held for audit",
        )
        # The serving nodes' duty loops open the audit; the verifiers vote by themselves.
        wait_until(
            lambda: market.get_audit(job_id).status == AuditStatus.OPEN,
            timeout=60,
            message="timed out waiting for the audit to open",
        )
        audit = market.get_audit(job_id)
        wait_until(
            lambda: all(p.committed == len(p.verifiers) for p in market.get_audit(job_id).panels),
            timeout=120,
            message="timed out waiting for every verifier to commit its vote",
        )
        # Everyone committed: reveals may start at once. Then let the reveal window pass and resolve.
        wait_until(
            lambda: all(
                p.honest_votes + p.fraud_votes == len(p.verifiers) for p in market.get_audit(job_id).panels
            ),
            timeout=60,
            message="timed out waiting for every verifier to reveal",
        )
        advance_time(
            audit_market.w3,
            audit.reveal_deadline - int(audit_market.w3.eth.get_block("latest")["timestamp"]) + 1,
        )
        wait_until(
            lambda: market.get_audit(job_id).status == AuditStatus.RESOLVED,
            timeout=60,
            message="timed out waiting for the audit to be resolved",
        )
        resolved = market.events("AuditResolved", jobId=job_id)[-1]["args"]
        final = market.get_audit(job_id)
        return {
            "job_id": job_id,
            "fraud_mask": int(resolved["fraudMask"]),
            "slashed": int(resolved["slashed"]),
            "to_client": int(resolved["toClient"]),
            "status": market.get_job(job_id).status,
            "panels": final.panels,
            "route": route,
        }
    finally:
        stop_nodes(serving, timeout=40)


def test_an_honest_job_is_audited_and_nobody_is_slashed(audit_market: AuditMarket) -> None:
    result = _run_audited_job(audit_market, {})
    assert result["fraud_mask"] == 0 and result["slashed"] == 0
    assert result["status"] == JobStatus.FINALIZED
    market = audit_market.market
    liar = Sender(audit_market.w3, LIAR_KEY).address
    winners = []
    for panel in result["panels"]:  # type: ignore[attr-defined]
        assert len(panel.verifiers) == 3
        lies = int(liar in panel.verifiers)
        assert (panel.honest_votes, panel.fraud_votes) == (3 - lies, lies)
        winners += [v for v in panel.verifiers if v != liar]
    # The liar's bond (the minority) is shared by the honest winners, who get their own bonds back with
    # it; each verifier node withdraws its credit by itself once the audit resolved.
    job_id = result["job_id"]
    rewarded = {
        e["args"]["verifier"]: e["args"]["amount"] for e in market.events("VerifierRewarded", jobId=job_id)
    }
    bond = PARAMS.verifier_bond
    forfeited = bond if any(liar in p.verifiers for p in result["panels"]) else 0  # type: ignore[attr-defined]
    assert rewarded == dict.fromkeys(winners, bond + forfeited // len(winners))
    wait_until(
        lambda: all(market.court_credit_of(v) == 0 for v in winners),
        timeout=30,
        message="timed out waiting for the verifiers to withdraw",
    )


@pytest.mark.parametrize(
    ("cheats", "fraud_mask"),
    [
        ({1: "garbage"}, 0b01),
        ({2: "skip-layers"}, 0b10),
        ({1: "tamper-relay"}, 0b01),
        ({2: "overbill"}, 0b10),
        ({1: "withhold"}, 0b01),
    ],
    ids=["garbage", "skip-layers", "tamper-relay", "overbill", "withhold"],
)
def test_each_cheat_is_caught_and_slashed(
    audit_market: AuditMarket, cheats: dict[int, str], fraud_mask: int
) -> None:
    market = audit_market.market
    cheater = Sender(audit_market.w3, SERVING_KEYS[next(iter(cheats)) - 1]).address
    stake_before = market.get_node(cheater).stake
    result = _run_audited_job(audit_market, cheats)
    assert result["fraud_mask"] == fraud_mask
    assert result["slashed"] > 0
    liar = Sender(audit_market.w3, LIAR_KEY).address
    for panel in result["panels"]:  # type: ignore[attr-defined]
        lies = int(liar in panel.verifiers)
        fraud = fraud_mask >> panel.position & 1
        # The liar votes against what it found; the other two carry the majority either way.
        expected_fraud = 3 - lies if fraud else lies
        assert panel.fraud_votes == expected_fraud
    assert market.get_node(cheater).stake == stake_before - result["slashed"]
    assert result["to_client"] > 0


@pytest.mark.parametrize(
    ("cheats", "fraud_mask"), [({}, 0), ({1: "garbage"}, 0b01)], ids=["honest", "garbage"]
)
def test_training_jobs_are_audited_forward_and_backward(
    audit_market: AuditMarket, cheats: dict[int, str], fraud_mask: int
) -> None:
    """Verifiers replay a training transcript: each train step's output and each backward's gradient."""
    result = _run_audited_job(audit_market, cheats, train=True)
    assert result["fraud_mask"] == fraud_mask
    assert (result["slashed"] > 0) == bool(fraud_mask)
    assert result["status"] == JobStatus.FINALIZED
    liar = Sender(audit_market.w3, LIAR_KEY).address
    for position, panel in enumerate(result["panels"]):  # type: ignore[arg-type]
        fraud = bool(fraud_mask >> position & 1)
        lies = int(liar in panel.verifiers)
        honest = 3 - lies if not fraud else lies
        assert (panel.honest_votes, panel.fraud_votes) == (honest, 3 - honest), (position, panel)


def _challenged_job(challenge_market: AuditMarket, cheats: dict[int, str]) -> dict[str, object]:
    """Serve one generation, have its client challenge it once committed, follow the audit to the end.
    Returns the settlement events and the client's balance change from the challenge to the verdict."""
    market = challenge_market.market
    serving = _serve(challenge_market, cheats)
    try:
        client = Client(
            challenge_market.chain.rpc_url,
            CLIENT_KEY,
            str(challenge_market.model),
            market=market.deployment.market,
        )
        out = client.generate("Tell me about the sea.", 6, split=2, max_price_per_token=PRICE)
        job_id = out.receipt.job_id
        wait_until(
            lambda: market.get_job(job_id).status == JobStatus.COMMITTED,
            timeout=60,
            message="timed out waiting for the job to be committed",
        )
        client.challenge(job_id)
        after_challenge = market.balance(client.address)
        assert market.get_job(job_id).status == JobStatus.DISPUTED
        # Nobody is told: the verifier nodes see the dispute on-chain, open the audit and vote.
        wait_until(
            lambda: market.get_audit(job_id).status == AuditStatus.OPEN,
            timeout=60,
            message="timed out waiting for the audit to open",
        )
        audit = market.get_audit(job_id)
        wait_until(
            lambda: all(
                p.honest_votes + p.fraud_votes == len(p.verifiers) for p in market.get_audit(job_id).panels
            ),
            timeout=120,
            message="timed out waiting for every verifier to reveal",
        )
        advance_time(
            challenge_market.w3,
            audit.reveal_deadline - int(challenge_market.w3.eth.get_block("latest")["timestamp"]) + 1,
        )
        wait_until(
            lambda: market.get_audit(job_id).status == AuditStatus.RESOLVED,
            timeout=60,
            message="timed out waiting for the audit to be resolved",
        )
        settled = market.events("ChallengeSettled", jobId=job_id)[-1]["args"]
        resolved = market.events("AuditResolved", jobId=job_id)[-1]["args"]
        finalized = market.events("JobFinalized", jobId=job_id)[-1]["args"]
        return {
            "job_id": job_id,
            "route": [h.node for h in out.receipt.route],
            "prices": [h.price_per_token for h in out.receipt.route],
            "billed": out.receipt.billed_tokens,
            "settled": settled,
            "resolved": resolved,
            "refund": int(finalized["refund"]),
            "client_gain": market.balance(client.address) - after_challenge,
            "panels": market.get_audit(job_id).panels,
        }
    finally:
        stop_nodes(serving, timeout=40)


def test_a_challenged_honest_job_costs_the_challenger_its_bond(challenge_market: AuditMarket) -> None:
    market = challenge_market.market
    earned_before = {
        a: sum(e["args"]["amount"] for e in market.events("EarningsWithdrawn", node=a))
        for a in (Sender(challenge_market.w3, k).address for k in SERVING_KEYS)
    }
    result = _challenged_job(challenge_market, {})
    bond = market.challenge_bond()
    per_node = (bond - bond // 2) // 2
    to_court = bond - 2 * per_node
    settled, resolved = result["settled"], result["resolved"]
    assert (settled["toChallenger"], settled["perNode"], settled["toAuditor"]) == (0, per_node, to_court)
    assert (resolved["fraudMask"], resolved["slashed"]) == (0, 0)
    # Half the bond pays the honest verifiers (one per position here), the other half the route's nodes.
    verifiers = [v for p in result["panels"] for v in p.verifiers]  # type: ignore[attr-defined]
    assert len(verifiers) == 2
    share = to_court // 2
    rewarded = {
        e["args"]["verifier"]: e["args"]["amount"]
        for e in market.events("VerifierRewarded", jobId=result["job_id"])
    }
    assert rewarded == dict.fromkeys(verifiers, PARAMS.verifier_bond + share)
    assert resolved["rewarded"] == 2 * share
    # The client lost its bond but for the rounding dust; the escrow's refund came back as usual.
    assert result["client_gain"] == result["refund"] + resolved["toClient"]
    fee = market.hop_fee()
    # Each route node was credited its pay, the hop fee and its part of the bond (withdrawn or not yet:
    # the serving nodes are stopped now, so the two reads cannot race a withdrawal).
    for node, price in zip(result["route"], result["prices"], strict=True):  # type: ignore[call-overload]
        withdrawn = sum(e["args"]["amount"] for e in market.events("EarningsWithdrawn", node=node))
        credited = withdrawn + market.get_node(node).earnings - earned_before[node]
        assert credited == price * result["billed"] + fee + per_node  # type: ignore[operator]
    wait_until(
        lambda: all(market.court_credit_of(v) == 0 for v in verifiers),
        timeout=30,
        message="timed out waiting for the verifiers to withdraw",
    )


def test_a_challenged_garbage_job_refunds_and_pays_the_challenger(challenge_market: AuditMarket) -> None:
    market = challenge_market.market
    cheater = Sender(challenge_market.w3, SERVING_KEYS[0]).address
    stake_before = market.get_node(cheater).stake
    result = _challenged_job(challenge_market, {1: "garbage"})
    bond = market.challenge_bond()
    settled, resolved = result["settled"], result["resolved"]
    assert settled["toChallenger"] == bond and settled["perNode"] == 0
    assert resolved["fraudMask"] == 0b01 and resolved["slashed"] > 0
    assert market.get_node(cheater).stake == stake_before - resolved["slashed"]
    # The bond back, the cheater's unpaid share of the escrow, and the slash less the verifiers' reward.
    assert result["client_gain"] == bond + result["refund"] + resolved["toClient"]
    assert resolved["toClient"] == resolved["slashed"] - resolved["rewarded"] > 0

"""The coordinator on a real chain: index == direct scan == the contracts' views, after random activity;
restarts (a killed process) lose and repeat nothing; reorgs are healed; the API paginates and filters;
the CLI answers from the chain alone and from the coordinator alike; the keeper moves jobs on."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from coordinator import queries, schema
from coordinator.errors import ReorgTooDeep
from coordinator.indexer import Indexer, IndexerConfig
from coordinator.keeper import Keeper
from splitmesh.chain import AuditStatus, JobStatus, LocalChain, Marketplace, NodeStatus, Verdict
from splitmesh.chain.launcher import advance_time, dev_key, free_port
from splitmesh_cli.wait import wait_until
from tests.integration.chain_activity import PARAMS, Activity, deploy_court_market

STEPS = int(os.environ.get("SPLITMESH_COORDINATOR_STEPS", "160"))


@pytest.fixture(scope="module")
def local_chain() -> Iterator[LocalChain]:
    with LocalChain() as chain:
        yield chain


@pytest.fixture(scope="module")
def world(local_chain: LocalChain) -> tuple[Marketplace, Activity]:
    w3 = Web3(Web3.HTTPProvider(local_chain.rpc_url, request_kwargs={"timeout": 60}))
    market, model_id = deploy_court_market(w3)
    activity = Activity(market, model_id, seed=11)
    activity.register_nodes()
    return market, activity


def rpc(w3: Web3, method: str, params: list[Any] | None = None) -> Any:
    return w3.provider.make_request(method, params or [])["result"]  # type: ignore[arg-type]


def dump(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the logs and the read model, in a stable order."""
    tables = ("logs", *schema.READ_MODEL_TABLES)
    return {t: sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {t}")) for t in tables}


def scan(market: Marketplace) -> sqlite3.Connection:
    indexer = Indexer(market, schema.connect(":memory:"))
    indexer.sync()
    return indexer.conn


def assert_matches_contracts(conn: sqlite3.Connection, market: Marketplace) -> None:
    """The read model against the contracts' own views, field by field."""
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == market.job_count()
    for row in conn.execute("SELECT * FROM nodes"):
        info = market.get_node(row["address"])
        expected_status = {NodeStatus.ACTIVE: "active", NodeStatus.INACTIVE: "inactive"}.get(
            info.status, "staked"
        )
        assert (row["status"], bool(row["pooled"])) == (expected_status, info.pooled), row["address"]
        assert int(row["stake"]) == info.stake, row["address"]
        assert int(row["unbonding"]) == info.unbonding, row["address"]
        assert int(row["earned"]) - int(row["withdrawn"]) == info.earnings, row["address"]
        # Every credited wei is a hop's payment (price x billed + hop fee) or its share of a lost challenge.
        credited = sum(
            int(h["paid"]) + int(h["bonus"])
            for h in conn.execute("SELECT paid, bonus FROM hops WHERE node = ?", (row["address"],))
        )
        assert int(row["earned"]) == credited, row["address"]
        if info.status != NodeStatus.NONE:
            assert (int(row["price"]), row["endpoint"]) == (info.price_per_token, info.endpoint)
    for row in conn.execute("SELECT * FROM jobs"):
        state = market.get_job(row["job_id"])
        assert row["status"] == state.status.name.lower(), row["job_id"]
        assert row["committed_mask"] == state.committed_mask, row["job_id"]
        assert row["billed_tokens"] == state.billed_tokens, row["job_id"]
        if state.status in (JobStatus.OPEN, JobStatus.COMMITTED, JobStatus.DISPUTED):
            assert row["timestamp"] == state.timestamp, row["job_id"]
        if state.status == JobStatus.DISPUTED:
            assert row["dispute_block"] == market.dispute_block_of(row["job_id"]), row["job_id"]
        if row["status"] in ("finalized", "cancelled"):
            hops_paid = sum(
                int(h[0]) for h in conn.execute("SELECT paid FROM hops WHERE job_id = ?", (row[0],))
            )
            assert hops_paid == int(row["paid"]), row["job_id"]
            # A cancel's miss-slash is burned: the escrow splits into payments and the refund, nothing more.
            assert int(row["paid"]) + int(row["refund"]) == int(row["escrow"]), row["job_id"]
    for row in conn.execute("SELECT * FROM challenges"):
        challenge = market.challenge_of(row["job_id"])
        assert (row["status"] == "open") == challenge.open, row["job_id"]
        if challenge.open:
            assert (row["challenger"], int(row["bond"])) == (challenge.challenger, challenge.bond)
        else:
            settled = int(row["to_challenger"]) + int(row["to_auditor"])
            hops = conn.execute(
                "SELECT COUNT(*) FROM hops WHERE job_id = ? AND bonus != '0'", (row["job_id"],)
            ).fetchone()[0]
            # Returned, or split between the auditor and the paid hops; without a verdict the rounding
            # dust (less than a wei per hop) is burned.
            burned = int(row["bond"]) - settled - hops * int(row["per_node"])
            assert 0 <= burned < max(hops, 1), row["job_id"]
    for row in conn.execute("SELECT * FROM audits"):
        audit = market.get_audit(row["job_id"])
        assert row["status"] == audit.status.name.lower()
        if audit.status == AuditStatus.RESOLVED:
            assert row["fraud_mask"] == audit.fraud_mask


def run_activity(activity: Activity, steps: int, indexer: Indexer | None = None, every: int = 7) -> None:
    for i in range(steps):
        activity.step()
        if indexer is not None and i % every == 0:
            indexer.sync()


# ------------------------------------------------------------------ index == scan == contracts


def test_index_equals_direct_scan_and_contract_state(
    world: tuple[Marketplace, Activity], tmp_path: Path
) -> None:
    market, activity = world
    # Small ranges and frequent syncs: the incremental fold sees the activity in many pieces.
    indexer = Indexer.open(market, tmp_path / "index.sqlite", IndexerConfig(batch_blocks=3))
    run_activity(activity, STEPS, indexer)
    # Make sure every kind of outcome happened, or the comparison proves little.
    activity.settle()
    indexer.sync()
    statuses = {r[0] for r in indexer.conn.execute("SELECT DISTINCT status FROM jobs")}
    assert {"finalized", "cancelled"} <= statuses, statuses
    assert indexer.conn.execute("SELECT COUNT(*) FROM audits").fetchone()[0] > 0
    assert indexer.conn.execute("SELECT COUNT(*) FROM nodes WHERE slash_count > 0").fetchone()[0] > 0
    # The new economics too: challenges won and lost, sampled audits, checkpoints, penalties, anchors. Random
    # activity reaches most of them; these make sure of each.
    anchored = activity.anchored_audit()
    for vote in (0, Verdict.HONEST, Verdict.FRAUD):
        activity.challenged_audit(vote)
    advance_time(market.w3, PARAMS.audit_commit_window + PARAMS.audit_reveal_window)
    activity.settle()
    advance_time(market.w3, PARAMS.dispute_timeout)
    activity.settle()
    activity.cash_out()
    indexer.sync()
    assert indexer.conn.execute("SELECT COUNT(*) FROM nodes WHERE withdrawn != '0'").fetchone()[0] > 0
    challenges = {r[0] for r in indexer.conn.execute("SELECT DISTINCT status FROM challenges")}
    assert {"forfeited", "returned"} <= challenges, challenges
    events = {r[0] for r in indexer.conn.execute("SELECT DISTINCT event FROM logs")}
    assert {"AuditSampled", "ReceiptCheckpointed", "VerifierPenalized", "AuditAnchored"} <= events, events
    assert indexer.conn.execute("SELECT COUNT(*) FROM votes WHERE status = 'penalized'").fetchone()[0] > 0
    assert indexer.conn.execute("SELECT COUNT(*) FROM hops WHERE bonus != '0'").fetchone()[0] > 0
    job = indexer.conn.execute("SELECT * FROM jobs WHERE job_id = ?", (anchored,)).fetchone()
    assert job["audit_anchor"] > job["dispute_block"] + 256

    direct = scan(market)
    assert dump(indexer.conn) == dump(direct)
    assert_matches_contracts(indexer.conn, market)
    # Nothing is duplicated: one row per (block, log index), as many as the chain has logs.
    logs = market.w3.eth.get_logs(
        {"fromBlock": 0, "toBlock": "latest", "address": [market.registry.address, market.job_market.address,
                                                          market.court.address]}  # type: ignore[union-attr]
    )  # fmt: skip
    assert indexer.conn.execute("SELECT COUNT(*) FROM logs").fetchone()[0] == len(logs)


def test_refold_from_logs_gives_the_same_read_model(world: tuple[Marketplace, Activity]) -> None:
    market, _ = world
    direct = scan(market)
    before = dump(direct)
    indexer = Indexer(market, direct)
    direct.execute("BEGIN")
    indexer.refold()
    direct.execute("COMMIT")
    assert dump(direct) == before


def test_index_of_another_deployment_is_refused(world: tuple[Marketplace, Activity], tmp_path: Path) -> None:
    market, _ = world
    path = tmp_path / "index.sqlite"
    Indexer.open(market, path).sync()
    conn = schema.connect(path)
    schema.set_meta(conn, "market", "0x" + "11" * 20)
    with pytest.raises(Exception, match="another deployment"):
        Indexer(market, conn)


# ------------------------------------------------------------------ restarts


def test_crash_between_ranges_resumes_without_gaps_or_duplicates(
    world: tuple[Marketplace, Activity], tmp_path: Path
) -> None:
    market, _ = world
    path = tmp_path / "index.sqlite"
    crashes = iter(range(10**6))

    class Crash(Exception):
        pass

    def crash_sometimes(_report: object) -> None:
        if next(crashes) % 9 == 8:
            raise Crash

    head = market.w3.eth.block_number
    runs = 0
    while True:
        indexer = Indexer(
            market, schema.connect(path), IndexerConfig(batch_blocks=4), on_batch=crash_sometimes
        )
        runs += 1
        try:
            indexer.sync(to_block=head)
            break
        except Crash:
            indexer.conn.close()
    assert runs > 3
    assert indexer.synced_block == head == market.w3.eth.block_number
    assert dump(indexer.conn) == dump(scan(market))


def _start_coordinator(
    rpc_url: str, market: Marketplace, db: Path, log: Path, *extra: str, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = port or free_port()
    cmd = [
        sys.executable, "-m", "splitmesh_cli.main", "coordinator", "run", "--rpc-url", rpc_url,
        "--market", market.deployment.market, "--db", str(db), "--port", str(port), "--poll", "0.2", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def _wait_api(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60.0) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise AssertionError(f"coordinator exited {proc.returncode}:\n{log.read_text()}")
        try:
            return get(url + "/api/status")
        except (urllib.error.URLError, OSError):
            return None

    return wait_until(
        status,
        timeout=timeout,
        interval=0.1,
        message=lambda: f"coordinator did not answer:\n{log.read_text()}",
    )


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return dict(json.loads(response.read()))


def get_error(url: str) -> tuple[int, dict[str, Any]]:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=30)
    return info.value.code, json.loads(info.value.read())


def _synced(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        row = conn.execute("SELECT value FROM meta WHERE key = 'synced_block'").fetchone()
        conn.close()
        return -1 if row is None else int(row[0])
    except sqlite3.Error:
        return -1


def test_killed_coordinator_resumes_without_gaps_or_duplicates(
    world: tuple[Marketplace, Activity], local_chain: LocalChain, tmp_path: Path
) -> None:
    market, _ = world
    db, log = tmp_path / "index.sqlite", tmp_path / "coordinator.log"
    head = market.w3.eth.block_number
    assert head > 100
    # One block per range: the process is killed (SIGKILL, no cleanup) in the middle of its catch-up.
    proc, url = _start_coordinator(local_chain.rpc_url, market, db, log, "--no-keeper", "--batch-blocks", "1")

    def catching_up() -> bool:
        assert proc.poll() is None, log.read_text()
        return _synced(db) >= head // 3

    wait_until(catching_up, timeout=60, interval=0.005, message=lambda: log.read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _synced(db)
    assert 0 < killed_at < head, (killed_at, head)

    proc, url = _start_coordinator(local_chain.rpc_url, market, db, log, "--no-keeper", "--batch-blocks", "5")
    try:
        status = _wait_api(proc, url, log)
        assert status["synced_block"] >= head
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    assert dump(schema.connect(db)) == dump(scan(market))


# ------------------------------------------------------------------ reorgs


def test_reorg_is_healed(world: tuple[Marketplace, Activity], tmp_path: Path) -> None:
    market, activity = world
    w3 = market.w3
    indexer = Indexer.open(market, tmp_path / "index.sqlite", IndexerConfig(reorg_depth=64, batch_blocks=5))
    indexer.sync()
    fork_block = w3.eth.block_number
    snap = rpc(w3, "evm_snapshot")
    # Branch A: indexed, then abandoned.
    a = Activity(market, activity.model_id, seed=101, jobs=list(activity.jobs))
    for _ in range(20):
        a.step()
    a.submit()
    indexer.sync()
    jobs_a = {r[0] for r in indexer.conn.execute("SELECT job_id FROM jobs")}
    assert rpc(w3, "evm_revert", [snap]) is True
    activity.resync()
    # Branch B: other transactions at the same heights (different block hashes).
    b = Activity(market, activity.model_id, seed=202, jobs=list(activity.jobs))
    b.submit()
    b.submit()
    for _ in range(5):
        b.step()
    report = indexer.sync()
    assert report.reorged_from == fork_block + 1
    assert dump(indexer.conn) == dump(scan(market))
    assert_matches_contracts(indexer.conn, market)
    jobs_b = {r[0] for r in indexer.conn.execute("SELECT job_id FROM jobs")}
    assert len(jobs_b) == market.job_count() <= len(jobs_a) + 2
    # The live chain goes on from branch B.
    activity.jobs = list(b.jobs)
    activity.resync()


def test_reorg_to_a_shorter_chain_is_healed(world: tuple[Marketplace, Activity], tmp_path: Path) -> None:
    market, activity = world
    w3 = market.w3
    indexer = Indexer.open(market, tmp_path / "index.sqlite", IndexerConfig(reorg_depth=64))
    indexer.sync()
    fork_block = w3.eth.block_number
    snap = rpc(w3, "evm_snapshot")
    Activity(market, activity.model_id, seed=303, jobs=list(activity.jobs)).submit()
    advance_time(w3, 1)
    indexer.sync()
    assert indexer.synced_block == fork_block + 2
    assert rpc(w3, "evm_revert", [snap]) is True  # the head is now below the indexed block
    activity.resync()
    report = indexer.sync()
    assert report.reorged_from == fork_block + 1 and indexer.synced_block == fork_block
    assert dump(indexer.conn) == dump(scan(market))


def test_reorg_deeper_than_the_window_is_refused(world: tuple[Marketplace, Activity], tmp_path: Path) -> None:
    market, activity = world
    w3 = market.w3
    indexer = Indexer.open(market, tmp_path / "index.sqlite", IndexerConfig(reorg_depth=2))
    indexer.sync()
    snap = rpc(w3, "evm_snapshot")
    for _ in range(5):
        advance_time(w3, 1)
    indexer.sync()
    assert rpc(w3, "evm_revert", [snap]) is True
    activity.resync()
    for _ in range(6):
        advance_time(w3, 2)  # other timestamps: other hashes at the same heights
    with pytest.raises(ReorgTooDeep, match="reorg-depth"):
        indexer.sync()


# ------------------------------------------------------------------ API, CLI


@pytest.fixture(scope="module")
def coordinator_url(
    world: tuple[Marketplace, Activity], local_chain: LocalChain, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    market, _ = world
    tmp = tmp_path_factory.mktemp("coordinator")
    log = tmp / "coordinator.log"
    proc, url = _start_coordinator(local_chain.rpc_url, market, tmp / "index.sqlite", log, "--no-keeper")
    try:
        _wait_api(proc, url, log)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()


def _synced_api(url: str, market: Marketplace) -> None:
    head = market.w3.eth.block_number
    wait_until(
        lambda: get(url + "/api/status")["synced_block"] >= head,
        timeout=30,
        interval=0.1,
        message=f"the API did not reach block {head}",
    )


def test_api_paginates_and_filters(world: tuple[Marketplace, Activity], coordinator_url: str) -> None:
    market, activity = world
    for _ in range(30):
        activity.step()
    _synced_api(coordinator_url, market)
    direct = scan(market)
    expected = [r[0] for r in direct.execute("SELECT job_id FROM jobs ORDER BY job_id DESC")]
    assert len(expected) > 10
    seen: list[int] = []
    offset: int | None = 0
    while offset is not None:
        page = get(f"{coordinator_url}/api/jobs?limit=4&offset={offset}")
        assert page["total"] == len(expected) and len(page["items"]) <= 4
        seen += [j["job_id"] for j in page["items"]]
        offset = page["next_offset"]
    assert seen == expected  # every job exactly once, newest first

    for status in queries.JOB_STATUSES:
        want = [
            r[0]
            for r in direct.execute(
                "SELECT job_id FROM jobs WHERE status = ? ORDER BY job_id DESC", (status,)
            )
        ]
        page = get(f"{coordinator_url}/api/jobs?status={status}&limit=500")
        assert [j["job_id"] for j in page["items"]] == want
        assert all(j["status"] == status for j in page["items"])
    node = activity.senders[1].address
    page = get(f"{coordinator_url}/api/jobs?node={node.lower()}&limit=500")
    assert page["total"] > 0 and all(node in j["route"] for j in page["items"])
    want_node = {r[0] for r in direct.execute("SELECT job_id FROM hops WHERE node = ?", (node,))}
    assert {j["job_id"] for j in page["items"]} == want_node
    client = activity.senders[7].address
    page = get(f"{coordinator_url}/api/jobs?client={client}&status=finalized&limit=500")
    assert all(j["client"] == client and j["status"] == "finalized" for j in page["items"])
    assert (
        page["total"]
        == direct.execute(
            "SELECT COUNT(*) FROM jobs WHERE client = ? AND status = 'finalized'", (client,)
        ).fetchone()[0]
    )
    assert get(f"{coordinator_url}/api/jobs?model={activity.model_id + 1}")["total"] == 0

    nodes = get(f"{coordinator_url}/api/nodes?limit=2")
    assert nodes["total"] == 6 and len(nodes["items"]) == 2 and nodes["next_offset"] == 2
    shard2 = get(f"{coordinator_url}/api/nodes?shard=2")["items"]
    assert {n["address"] for n in shard2} == {activity.senders[i].address for i in (4, 5, 6)}
    one = get(f"{coordinator_url}/api/nodes/{node}")
    assert one["address"] == node and one["jobs_served"] == len(want_node)
    job_id = expected[-1]
    job = get(f"{coordinator_url}/api/jobs/{job_id}")
    assert job == queries.get_job(direct, job_id)
    assert [h["node"] for h in job["hops"]] == job["route"] and job["transactions"][0][
        "event"
    ] == "JobSubmitted"


@pytest.mark.parametrize(
    ("path", "status", "needle"),
    [
        ("/api/jobs?limit=0", 400, "limit"),
        ("/api/jobs?limit=x", 400, "not an integer"),
        ("/api/jobs?offset=-1", 400, "offset"),
        ("/api/jobs?status=paid", 400, "unknown job status"),
        ("/api/jobs?client=0x1234", 400, "not an address"),
        ("/api/jobs/999999", 404, "job 999999"),
        ("/api/jobs/abc", 400, "is not a decimal number"),
        ("/api/nodes/0x" + "ab" * 20, 404, "not in the index"),
        ("/api/nodes?status=gone", 400, "unknown node status"),
        ("/api/nothing", 404, "Not Found"),
    ],
)
def test_api_rejects_bad_queries(coordinator_url: str, path: str, status: int, needle: str) -> None:
    code, body = get_error(coordinator_url + path)
    assert code == status and needle in body["error"]
    assert get(coordinator_url + "/api/status")["chain_id"] == 31337  # still serving


def splitmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitmesh_cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_answers_from_the_chain_and_from_the_coordinator_alike(
    world: tuple[Marketplace, Activity], local_chain: LocalChain, coordinator_url: str
) -> None:
    market, activity = world
    _synced_api(coordinator_url, market)
    chain = ["--rpc-url", local_chain.rpc_url, "--market", market.deployment.market]
    via = ["--coordinator", coordinator_url]
    for args in (
        ["jobs", "list", "--limit", "7"],
        ["jobs", "list", "--status", "cancelled"],
        ["nodes", "list"],
    ):
        direct, api = splitmesh(*args, *chain, "--json"), splitmesh(*args, *via, "--json")
        assert direct.returncode == 0, direct.stderr
        assert api.returncode == 0, api.stderr
        assert json.loads(direct.stdout) == json.loads(api.stdout)
        assert json.loads(direct.stdout)["items"]

    audited = market.events("AuditOpened")[0]["args"]["jobId"]
    shown = splitmesh("jobs", "show", str(audited), *chain)
    assert shown.returncode == 0, shown.stderr
    job = queries.get_job(scan(market), audited)
    for hop in job["hops"]:
        assert hop["node"] in shown.stdout
    assert "audit: resolved" in shown.stdout or "audit: open" in shown.stdout
    assert "JobSubmitted" in shown.stdout and job["transactions"][0]["tx_hash"] in shown.stdout

    table = splitmesh("nodes", "list", *via)
    assert table.returncode == 0 and activity.senders[4].address in table.stdout and "STAKE" in table.stdout

    missing = splitmesh("jobs", "show", "424242", *via)
    assert missing.returncode == 2 and "job 424242" in missing.stderr
    nowhere = splitmesh("jobs", "list")
    assert nowhere.returncode == 2 and "--coordinator" in nowhere.stderr
    down = splitmesh("jobs", "list", "--coordinator", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 2 and "did not answer" in down.stderr


# ------------------------------------------------------------------ keeper


@pytest.fixture(scope="module")
def quiet_world(local_chain: LocalChain) -> tuple[Marketplace, Activity]:
    """A second deployment on the same chain that samples no job for audit: outcomes are predictable."""
    w3 = Web3(Web3.HTTPProvider(local_chain.rpc_url, request_kwargs={"timeout": 60}))
    market, model_id = deploy_court_market(w3, replace(PARAMS, audit_rate_bps=0))
    activity = Activity(market, model_id, seed=5)
    activity.register_nodes()
    return market, activity


def _job(activity: Activity, commit: str | None) -> int:
    activity.resync()  # the deployments on this chain share the dev accounts: nonces move under each other
    activity.submit()
    job = activity.jobs[-1]
    if commit is not None:
        activity.commit_job(job, lie=commit == "lie")
    return job[0]


def test_keeper_finalizes_cancels_and_runs_audits(
    quiet_world: tuple[Marketplace, Activity], tmp_path: Path
) -> None:
    market, activity = quiet_world
    indexer = Indexer.open(market, tmp_path / "index.sqlite")
    keeper_sender = market.sender(dev_key(19))
    keeper = Keeper(market, keeper_sender, indexer.conn)
    committed, silent, lied = _job(activity, "honest"), _job(activity, None), _job(activity, "lie")
    assert market.get_job(committed).status == JobStatus.COMMITTED
    assert market.get_job(lied).status == JobStatus.DISPUTED
    indexer.sync()
    assert [(a.job_id, a.action) for a in keeper.tick()] == [(lied, "open_audit")]  # nothing else is due
    assert keeper.tick() == []
    advance_time(market.w3, PARAMS.challenge_window)
    indexer.sync()
    assert [(a.job_id, a.action) for a in keeper.tick()] == [(committed, "finalize")]
    advance_time(market.w3, PARAMS.commit_timeout)  # past the commit deadline and the audit's reveal
    indexer.sync()
    done = [(a.job_id, a.action, a.error) for a in keeper.tick()]
    assert done == [(silent, "cancel", None), (lied, "resolve_audit", None)]
    assert market.get_job(committed).status == JobStatus.FINALIZED
    assert market.get_job(silent).status == JobStatus.CANCELLED
    assert market.get_audit(lied).status == AuditStatus.RESOLVED
    assert market.get_job(lied).status == JobStatus.FINALIZED
    indexer.sync()
    assert keeper.tick() == []  # nothing left to do
    for action in keeper.actions:
        assert market.w3.eth.get_transaction(action.tx_hash)["from"] == keeper_sender.address


def test_a_released_job_is_indexed_and_its_cancel_slashes_nobody(
    quiet_world: tuple[Marketplace, Activity], tmp_path: Path
) -> None:
    market, activity = quiet_world
    job_id = _job(activity, None)
    _, terms, packed = activity.jobs[-1]
    client = next(s for s in activity.senders.values() if s.address == terms.client)
    market.release_job(client, job_id, packed)
    indexer = Indexer.open(market, tmp_path / "index.sqlite")
    indexer.sync()
    assert queries.get_job(indexer.conn, job_id)["released"] is True
    advance_time(market.w3, PARAMS.commit_timeout + 1)
    market.cancel(market.sender(dev_key(19)), job_id, packed)
    indexer.sync()
    job = queries.get_job(indexer.conn, job_id)
    assert (job["status"], job["slashed_wei"], job["refund_wei"]) == ("cancelled", "0", str(terms.escrow))
    assert [h["slashed_wei"] for h in job["hops"]] == ["0"] * len(terms.route)


@pytest.fixture(scope="module")
def sampling_world(local_chain: LocalChain) -> tuple[Marketplace, Activity]:
    """A third deployment that draws every completed job for a sampled audit."""
    w3 = Web3(Web3.HTTPProvider(local_chain.rpc_url, request_kwargs={"timeout": 60}))
    market, model_id = deploy_court_market(w3, replace(PARAMS, audit_rate_bps=10_000))
    activity = Activity(market, model_id, seed=7)
    activity.register_nodes()
    return market, activity


def test_keeper_samples_drawn_jobs_and_reopens_anchored_audits(
    sampling_world: tuple[Marketplace, Activity], tmp_path: Path
) -> None:
    market, activity = sampling_world
    w3 = market.w3
    indexer = Indexer.open(market, tmp_path / "index.sqlite")
    keeper = Keeper(market, market.sender(dev_key(19)), indexer.conn)
    drawn = _job(activity, "honest")
    assert market.audit_draw(drawn) == (True, True)
    indexer.sync()
    assert [(a.job_id, a.action, a.error) for a in keeper.tick()] == [(drawn, "sample_audit", None)]
    assert market.get_job(drawn).status == JobStatus.DISPUTED
    # Another drawn job the keeper does not see within 256 blocks: its draw is lost, it is finalized later.
    lost = _job(activity, "honest")
    rpc(w3, "hardhat_mine", [hex(257)])  # the dispute block of `drawn` is out of blockhash's reach too
    indexer.sync()
    done = [(a.job_id, a.action, a.error) for a in keeper.tick()]
    assert done == [(drawn, "anchor_audit", None), (drawn, "open_audit", None)]
    assert market.get_audit(drawn).status == AuditStatus.OPEN
    assert market.get_job(lost).status == JobStatus.COMMITTED and lost in keeper.drawn
    advance_time(w3, PARAMS.challenge_window)
    indexer.sync()
    assert [(a.job_id, a.action) for a in keeper.tick()] == [(lost, "finalize")]
    advance_time(w3, PARAMS.audit_commit_window + PARAMS.audit_reveal_window)
    indexer.sync()
    assert [(a.job_id, a.action) for a in keeper.tick()] == [(drawn, "resolve_audit")]
    assert market.get_job(drawn).status == JobStatus.FINALIZED
    indexer.sync()
    assert keeper.tick() == []


def test_coordinator_daemon_keeper_finalizes_due_jobs(
    quiet_world: tuple[Marketplace, Activity], local_chain: LocalChain, tmp_path: Path
) -> None:
    market, activity = quiet_world
    job_id = _job(activity, "honest")
    advance_time(market.w3, PARAMS.challenge_window)
    log = tmp_path / "coordinator.log"
    proc, url = _start_coordinator(local_chain.rpc_url, market, tmp_path / "index.sqlite", log)
    try:
        _wait_api(proc, url, log)
        deadline = time.monotonic() + 30
        while get(f"{url}/api/jobs/{job_id}")["status"] != "finalized":
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        status = get(url + "/api/status")
        assert (
            status["follower"]["keeper_actions"] >= 1
            and status["keeper"] == market.sender(dev_key(19)).address
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    tx_hash = get_tx(market, job_id, "JobFinalized")
    assert market.w3.eth.get_transaction(tx_hash)["from"] == market.sender(dev_key(19)).address


def get_tx(market: Marketplace, job_id: int, event: str) -> str:
    job = queries.get_job(scan(market), job_id)
    return next(t["tx_hash"] for t in job["transactions"] if t["event"] == event)

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_utils import keccak

from node.metrics import NodeMetrics
from node.store import JobPhase, NodeStore, StoreError

ZERO_CHAIN = b"\0" * 32  # splitmesh.protocol's, without importing torch

CLIENT = "0x" + "ab" * 20
TERMS = b"\x01\x02terms"
BIG_JOB = 2**200 + 12345  # job ids are uint256


def receipt(step: int, tokens: int) -> tuple[int, int, bytes, bytes]:
    return (step, tokens, bytes([step % 256]) * 32, bytes([tokens % 256]) * 65)


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[NodeStore]:
    with NodeStore(tmp_path / "state" / "node.sqlite") as s:
        yield s


def extend_chain(chain: bytes, step: int, digest: bytes) -> bytes:
    return keccak(chain + step.to_bytes(4, "big") + digest)


def serve(store: NodeStore, job: int, steps: int, *, frame: bytes = b"f" * 16) -> tuple[bytes, bytes]:
    """Record `steps` steps of one token each; returns the final (input_chain, output_chain)."""
    inp = out = ZERO_CHAIN
    for step in range(steps):
        din, dout = bytes([step]) * 32, bytes([step + 100]) * 32
        inp, out = extend_chain(inp, step, din), extend_chain(out, step, dout)
        store.record_step(
            job, step, step, step + 1, din, dout, inp, out, receipt(step, step + 1), frame, frame
        )
    return inp, out


def test_open_job_round_trip_and_idempotent(store: NodeStore) -> None:
    rec = store.open_job(7, 2, CLIENT, TERMS)
    assert (rec.job_id, rec.position, rec.client, rec.packed_terms) == (7, 2, CLIENT, TERMS)
    assert rec.phase is JobPhase.SERVING
    assert (rec.steps, rec.last_step, rec.tokens, rec.receipt) == (0, None, 0, None)
    assert rec.input_chain == rec.output_chain == ZERO_CHAIN
    again = store.open_job(7, 5, "0xother", b"different")
    assert again == rec
    assert store.job(8) is None


def test_steps_update_chains_tokens_and_transcript(store: NodeStore) -> None:
    store.open_job(1, 0, CLIENT, TERMS)
    inp, out = serve(store, 1, 3)
    rec = store.job(1)
    assert rec is not None
    assert (rec.steps, rec.last_step, rec.tokens) == (3, 2, 3)
    assert (rec.input_chain, rec.output_chain) == (inp, out)
    assert rec.receipt == receipt(2, 3)
    steps = store.transcript(1)
    assert [s.step for s in steps] == [0, 1, 2]
    assert steps[1].start == 1 and steps[1].tokens == 2
    assert steps[1].input_digest == bytes([1]) * 32 and steps[1].output_digest == bytes([101]) * 32
    assert steps[1].input_frame == steps[1].output_frame == b"f" * 16
    assert steps[1].job_id == 1 and steps[1].received_at > 0


def test_receipt_keeps_highest_tokens(store: NodeStore) -> None:
    store.open_job(1, 0, CLIENT, TERMS)
    store.set_receipt(1, receipt(4, 50))
    store.set_receipt(1, receipt(3, 40))  # lower: ignored
    store.set_receipt(1, receipt(9, 50))  # equal: ignored
    rec = store.job(1)
    assert rec is not None and rec.receipt == receipt(4, 50)
    store.set_receipt(1, receipt(5, 60))
    rec = store.job(1)
    assert rec is not None and rec.receipt == receipt(5, 60)
    # A step whose envelope bills fewer tokens than the stored receipt keeps the receipt.
    store.record_step(1, 0, 0, 10, b"i" * 32, b"o" * 32, b"I" * 32, b"O" * 32, receipt(0, 10))
    rec = store.job(1)
    assert rec is not None and rec.receipt == receipt(5, 60) and rec.tokens == 10


def test_duplicate_step_is_ignored(store: NodeStore, caplog: pytest.LogCaptureFixture) -> None:
    store.open_job(1, 0, CLIENT, TERMS)
    inp, out = serve(store, 1, 2)
    with caplog.at_level(logging.WARNING, logger="node.store"):
        store.record_step(1, 1, 1, 99, b"x" * 32, b"y" * 32, b"X" * 32, b"Y" * 32, receipt(1, 99), b"z", b"z")
        rec = store.job(1)
    assert rec is not None
    assert (rec.steps, rec.tokens, rec.input_chain, rec.output_chain) == (2, 2, inp, out)
    assert rec.receipt == receipt(1, 2)
    assert store.transcript(1)[1].input_digest == bytes([1]) * 32
    assert any("duplicate step 1" in r.getMessage() for r in caplog.records)


def test_steps_after_end_or_for_unknown_jobs_are_ignored(store: NodeStore) -> None:
    store.open_job(1, 0, CLIENT, TERMS)
    _, out = serve(store, 1, 1)
    store.mark_ended(1)
    store.record_step(1, 1, 1, 5, b"x" * 32, b"y" * 32, b"X" * 32, b"Y" * 32, None)
    store.record_step(2, 0, 0, 5, b"x" * 32, b"y" * 32, b"X" * 32, b"Y" * 32, None)
    rec = store.job(1)
    assert rec is not None and (rec.steps, rec.output_chain) == (1, out)
    assert store.job(2) is None and store.transcript(2) == []


def test_phases_move_forward_only(store: NodeStore) -> None:
    store.open_job(1, 0, CLIENT, TERMS)
    store.mark_ended(1)
    store.mark_ended(1)  # same phase: no-op
    store.mark_committed(1, "0xc0")
    store.mark_committed(1, "0xdifferent")  # no-op keeps the first tx
    with pytest.raises(StoreError, match="only move forward"):
        store.mark_ended(1)
    rec = store.job(1)
    assert rec is not None and rec.phase is JobPhase.COMMITTED and rec.commit_tx == "0xc0"
    store.mark_finalized(1)
    store.mark_paid(1, "0xc1")
    rec = store.job(1)
    assert rec is not None and (rec.phase, rec.claim_tx) == (JobPhase.PAID, "0xc1")
    with pytest.raises(StoreError, match="terminal"):
        store.mark_failed(1, "too late")
    with pytest.raises(StoreError, match="never opened"):
        store.mark_ended(99)


def test_cancel_and_fail_are_terminal(store: NodeStore) -> None:
    for job in (1, 2):
        store.open_job(job, 0, CLIENT, TERMS)
    store.mark_ended(1)
    store.mark_failed(1, "commit reverted: CommitWindowClosed")
    store.mark_failed(1, "another reason")  # same phase: no-op
    store.mark_cancelled(2)
    with pytest.raises(StoreError, match="terminal"):
        store.mark_committed(1, "0x01")
    with pytest.raises(StoreError, match="terminal"):
        store.mark_failed(2, "x")
    failed, cancelled = store.job(1), store.job(2)
    assert failed is not None and failed.phase is JobPhase.FAILED
    assert failed.error == "commit reverted: CommitWindowClosed"
    assert cancelled is not None and cancelled.phase is JobPhase.CANCELLED


def test_jobs_filter_and_order(store: NodeStore) -> None:
    for job in (5, 3, 9):
        store.open_job(job, 0, CLIENT, TERMS)
    store.mark_ended(3)
    store.mark_ended(9)
    assert [j.job_id for j in store.jobs()] == [5, 3, 9]
    assert [j.job_id for j in store.jobs([JobPhase.ENDED])] == [3, 9]
    assert [j.job_id for j in store.jobs([JobPhase.SERVING, JobPhase.PAID])] == [5]
    assert store.jobs([]) == []


def test_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    with NodeStore(path) as s:
        s.open_job(BIG_JOB, 1, CLIENT, TERMS)
        s.open_job(2, 1, CLIENT, TERMS)
        s.mark_ended(2)
        s.mark_committed(2, "0xabc")
        inp, out = serve(s, BIG_JOB, 50)  # queued right before close: close must write them
        s.set_receipt(BIG_JOB, receipt(2**32 - 1, 500))
    with NodeStore(path) as s:
        big, committed = s.job(BIG_JOB), s.job(2)
        assert big is not None and committed is not None
        assert (big.steps, big.last_step, big.input_chain, big.output_chain) == (50, 49, inp, out)
        assert big.receipt == receipt(2**32 - 1, 500)
        assert (committed.phase, committed.commit_tx) == (JobPhase.COMMITTED, "0xabc")
        assert len(s.transcript(BIG_JOB)) == 50
        assert [j.job_id for j in s.jobs([JobPhase.COMMITTED])] == [2]


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    s = NodeStore(tmp_path / "node.sqlite")
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.record_step(1, 0, 0, 1, b"", b"", b"", b"", None)
    with pytest.raises(StoreError, match="closed"):
        s.job(1)


def test_read_from_another_thread_sees_queued_step(store: NodeStore) -> None:
    store.open_job(1, 0, CLIENT, TERMS)
    seen: list[int] = []
    for step in range(20):
        store.record_step(1, step, step, step + 1, b"i" * 32, b"o" * 32, b"I" * 32, b"O" * 32, None)
        reader = threading.Thread(target=lambda: seen.append(store.transcript(1)[-1].step))
        reader.start()
        reader.join()
    assert seen == list(range(20))


def test_concurrent_writers(store: NodeStore) -> None:
    for job in range(4):
        store.open_job(job, 0, CLIENT, TERMS)
    threads = [threading.Thread(target=serve, args=(store, job, 100)) for job in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [j.steps for j in store.jobs()] == [100] * 4
    assert store.stats()["steps"] == 400


def test_job_ids_above_2_64(store: NodeStore) -> None:
    big, bigger = 2**64 + 1, 2**256 - 1
    store.open_job(big, 0, CLIENT, TERMS)
    store.open_job(bigger, 0, CLIENT, TERMS)
    serve(store, bigger, 2)
    rec = store.job(bigger)
    assert rec is not None and rec.job_id == bigger and rec.steps == 2
    assert store.job(big) is not None and store.job(big + 1) is None
    assert {s.job_id for s in store.transcript(bigger)} == {bigger}
    store.mark_cancelled(big)
    assert [j.job_id for j in store.jobs([JobPhase.CANCELLED])] == [big]


def test_transcripts_can_be_disabled(tmp_path: Path) -> None:
    with NodeStore(tmp_path / "node.sqlite", keep_transcripts=False) as s:
        s.open_job(1, 0, CLIENT, TERMS)
        serve(s, 1, 3, frame=b"x" * 2300)
        steps = s.transcript(1)
    assert len(steps) == 3
    assert all(st.input_frame == st.output_frame == b"" for st in steps)
    assert steps[2].input_digest == bytes([2]) * 32


def test_prune_transcripts(store: NodeStore) -> None:
    for job in (1, 2, 3):
        store.open_job(job, 0, CLIENT, TERMS)
        serve(store, job, 2)
    store.mark_paid(1, None)
    store.mark_failed(2, "gave up")  # job 3 stays SERVING
    assert store.prune_transcripts(older_than=time.time() - 3600) == 0  # settled too recently
    assert store.prune_transcripts(older_than=time.time() + 1) == 4
    assert store.prune_transcripts(older_than=time.time() + 1) == 0  # already pruned
    assert [st.input_frame for st in store.transcript(1)] == [b"", b""]
    assert store.transcript(2)[0].input_digest == bytes([0]) * 32  # digests stay
    assert [st.output_frame for st in store.transcript(3)] == [b"f" * 16] * 2


def test_stats(store: NodeStore) -> None:
    store.open_job(1, 0, CLIENT, TERMS)
    store.open_job(2, 0, CLIENT, TERMS)
    serve(store, 1, 3)
    store.mark_ended(2)
    stats = store.stats()
    assert stats["serving"] == 1 and stats["ended"] == 1 and stats["paid"] == 0
    assert stats["steps"] == 3
    assert set(stats) == {p.value for p in JobPhase} | {"steps"}


def test_metrics_render() -> None:
    first, second = NodeMetrics(), NodeMetrics()  # separate registries: no duplicate-name error
    first.steps_total.inc(3)
    first.errors_total.labels(code="bad_signature").inc()
    first.step_seconds.observe(0.004)
    second.steps_total.inc(1)
    body, content_type = first.render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    for name in (
        "sessions_active",
        "steps_total",
        "tokens_total",
        "step_seconds_bucket",
        "handle_seconds_bucket",
        "errors_total",
        "stake_wei",
        "earnings_wei",
        "paid_wei_total",
        "jobs_committed_total",
    ):
        assert f"splitmesh_node_{name}" in text
    assert "splitmesh_node_steps_total 3.0" in text
    assert 'splitmesh_node_errors_total{code="bad_signature"} 1.0' in text
    assert 'splitmesh_node_step_seconds_bucket{le="0.005"} 1.0' in text
    assert "splitmesh_node_steps_total 1.0" in second.render()[0].decode()


def test_open_job_keeps_the_first_deadline(store: NodeStore) -> None:
    assert store.open_job(1, 0, CLIENT, TERMS).deadline is None
    assert store.open_job(1, 0, CLIENT, TERMS, deadline=500).deadline == 500  # a missing deadline is set
    assert store.open_job(1, 0, CLIENT, TERMS, deadline=900).deadline == 500  # a known one stays


def test_serving_due_selects_serving_jobs_by_deadline(store: NodeStore) -> None:
    for job, deadline in ((1, 100), (2, 200), (3, 300), (4, 150)):
        store.open_job(job, 0, CLIENT, TERMS, deadline=deadline)
    store.open_job(5, 0, CLIENT, TERMS)  # no deadline known: never due by this rule
    store.mark_ended(4)
    assert store.serving_due(99) == []
    assert store.serving_due(200) == [1, 2]


def test_end_orphans_ends_served_and_undated_jobs_only(store: NodeStore) -> None:
    store.open_job(1, 0, CLIENT, TERMS, deadline=100)
    inp, out = serve(store, 1, 2)  # served, then the process died
    store.open_job(2, 0, CLIENT, TERMS, deadline=100)  # waiting for its client's first step
    store.open_job(3, 0, CLIENT, TERMS)  # opened by an older version: deadline unknown
    store.open_job(4, 0, CLIENT, TERMS, deadline=100)
    serve(store, 4, 1)
    store.mark_ended(4)
    assert store.end_orphans() == [1, 3]
    phases = {j.job_id: j.phase for j in store.jobs()}
    assert phases == {1: JobPhase.ENDED, 2: JobPhase.SERVING, 3: JobPhase.ENDED, 4: JobPhase.ENDED}
    one = store.job(1)
    assert one is not None and (one.steps, one.input_chain, one.output_chain) == (2, inp, out)
    assert store.end_orphans() == []


def test_hold_hides_a_job_until_its_time(store: NodeStore) -> None:
    for job in (1, 2):
        store.open_job(job, 0, CLIENT, TERMS)
        store.mark_ended(job)
        store.mark_committed(job, "0x")
    store.hold(1, 1000)
    committed = [JobPhase.COMMITTED]
    assert [j.job_id for j in store.jobs(committed, due_at=999)] == [2]
    assert [j.job_id for j in store.jobs(committed, due_at=1000)] == [1, 2]
    assert [j.job_id for j in store.jobs(committed)] == [1, 2]
    store.hold(1, None)
    assert [j.job_id for j in store.jobs(committed, due_at=0)] == [1, 2]


def test_meta_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    with NodeStore(path) as s:
        assert s.meta("scan_cursor") is None
        s.set_meta("scan_cursor", "41")
        s.set_meta("scan_cursor", "42")
    with NodeStore(path) as s:
        assert s.meta("scan_cursor") == "42"


def test_a_v1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(f"BEGIN; {V1_SCHEMA} PRAGMA user_version = 1; COMMIT;")
    conn.execute(
        "INSERT INTO jobs (job_id, position, client, packed_terms, phase, steps, input_chain, output_chain, "
        "created_at, updated_at) VALUES ('7', 1, ?, ?, 'serving', 3, ?, ?, 1.0, 1.0)",
        (CLIENT, TERMS, b"i" * 32, b"o" * 32),
    )
    conn.commit()
    conn.close()
    with NodeStore(path) as s:
        old = s.job(7)
        assert old is not None and (old.steps, old.deadline, old.hold_until) == (3, None, None)
        assert s.end_orphans() == [7]  # a v1 job in flight has no deadline: it is committed at start
        s.set_meta("k", "v")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


# The v1 schema verbatim, frozen on purpose: the migration test must keep opening a v1 file even after
# node/store.py's schema changes again.
V1_SCHEMA = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, position INTEGER NOT NULL, client TEXT NOT NULL, packed_terms BLOB NOT NULL,
    phase TEXT NOT NULL, steps INTEGER NOT NULL DEFAULT 0, last_step INTEGER,
    tokens INTEGER NOT NULL DEFAULT 0, input_chain BLOB NOT NULL, output_chain BLOB NOT NULL,
    receipt_step INTEGER, receipt_tokens INTEGER,
    receipt_hash BLOB, receipt_sig BLOB, commit_tx TEXT, claim_tx TEXT, error TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX jobs_phase ON jobs (phase);
CREATE TABLE steps (
    job_id TEXT NOT NULL, step INTEGER NOT NULL, start INTEGER NOT NULL, tokens INTEGER NOT NULL,
    input_digest BLOB NOT NULL, output_digest BLOB NOT NULL, input_frame BLOB NOT NULL,
    output_frame BLOB NOT NULL, received_at REAL NOT NULL, PRIMARY KEY (job_id, step)
);
"""

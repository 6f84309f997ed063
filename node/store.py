"""The node daemon's persistent state: jobs, their commitment chains and receipts, step transcripts.

SQLite in WAL mode. One writer thread owns every write and batches whatever is queued into one
transaction, so the serving path only pays for a queue put. Reads flush first, then use their own
connection (WAL lets them run beside the writer). Job ids are uint256 and stored as decimal TEXT.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import NodeError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
MAX_BATCH = 1000  # queued writes folded into one transaction

Receipt = tuple[int, int, bytes, bytes]  # (step, tokens, payload_hash32, signature65)


class StoreError(NodeError, RuntimeError):
    """The node's state database refused an operation (bad phase transition, closed store, I/O)."""


class JobPhase(enum.StrEnum):
    SERVING = "serving"  # steps arriving
    ENDED = "ended"  # session over, commit pending
    COMMITTED = "committed"  # commit tx mined, claim pending
    FINALIZED = "finalized"  # settled on-chain, earnings not yet withdrawn
    PAID = "paid"  # earnings withdrawn or nothing to withdraw
    CANCELLED = "cancelled"
    FAILED = "failed"  # gave up; reason in `error`


_FORWARD = [JobPhase.SERVING, JobPhase.ENDED, JobPhase.COMMITTED, JobPhase.FINALIZED, JobPhase.PAID]
_TERMINAL = {JobPhase.PAID, JobPhase.CANCELLED, JobPhase.FAILED}


@dataclass(frozen=True)
class JobRecord:
    job_id: int
    position: int  # this node's index in the job's route
    client: str
    packed_terms: bytes
    phase: JobPhase
    steps: int  # steps recorded
    last_step: int | None
    tokens: int  # highest tokens seen in a verified envelope
    input_chain: bytes  # 32 bytes
    output_chain: bytes  # 32 bytes
    receipt: Receipt | None  # best client-signed receipt (highest tokens)
    commit_tx: str | None
    claim_tx: str | None
    error: str | None
    created_at: float  # unix seconds
    updated_at: float  # unix seconds
    deadline: int | None  # chain unix seconds: the last second the JobMarket accepts this node's commit
    hold_until: int | None  # chain unix seconds: the duties leave the job alone until then


@dataclass(frozen=True)
class StepRecord:
    job_id: int
    step: int
    start: int  # position id of the first token
    tokens: int
    input_digest: bytes
    output_digest: bytes
    input_frame: bytes  # b"" when transcripts are disabled or pruned
    output_frame: bytes
    received_at: float  # unix seconds


_SCHEMA = """
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
# Schema upgrades, by the version they upgrade from. v2: commit deadlines, claim holds, the scan cursor.
_MIGRATIONS = {
    1: """
ALTER TABLE jobs ADD COLUMN deadline INTEGER;
ALTER TABLE jobs ADD COLUMN hold_until INTEGER;
CREATE INDEX jobs_deadline ON jobs (phase, deadline);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""",
}
_JOB_COLUMNS = (
    "job_id, position, client, packed_terms, phase, steps, last_step, tokens, input_chain, output_chain, "
    "receipt_step, receipt_tokens, receipt_hash, receipt_sig, commit_tx, claim_tx, error, "
    "created_at, updated_at, deadline, hold_until"
)

_Op = Callable[[sqlite3.Connection], Any]
_Item = tuple[_Op | None, "Future[Any] | None"]  # (None, None) stops the writer
_Result = tuple["Future[Any] | None", Any, BaseException | None]  # (future, value, error) of one op


class NodeStore:
    """Thread-safe. Writes are queued to one writer thread; `flush` waits for them; reads flush first."""

    def __init__(self, path: str | Path, *, keep_transcripts: bool = True):
        self.path = Path(path)
        self.keep_transcripts = keep_transcripts
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = self._connect()
        version = self._writer.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._writer.close()
            raise StoreError(
                f"{self.path} has schema v{version}, newer than v{SCHEMA_VERSION}; upgrade splitmesh"
            )
        self._migrate(version)
        self._reader = self._connect()
        self._read_lock = threading.Lock()
        self._enqueue_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"nodestore:{self.path.name}", daemon=True)
        self._thread.start()

    def _migrate(self, found: int) -> None:
        version = found
        if version == 0:
            self._writer.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = 1; COMMIT;")
            version = 1
        while version < SCHEMA_VERSION:
            script = _MIGRATIONS[version]
            version += 1
            self._writer.executescript(f"BEGIN; {script} PRAGMA user_version = {version}; COMMIT;")
        if 0 < found < version:
            logger.info("node store %s upgraded from schema v%d to v%d", self.path, found, version)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash of the process loses nothing
        return conn

    # --- writer thread ---

    def _put(self, op: _Op | None, future: Future[Any] | None) -> None:
        with self._enqueue_lock:
            if self._closed:
                raise StoreError(f"node store {self.path} is closed")
            self._queue.put((op, future))

    def _call(self, op: _Op, timeout: float = 30.0) -> Any:
        future: Future[Any] = Future()
        self._put(op, future)
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise StoreError(f"node store writer did not answer within {timeout} s (disk stalled?)") from None

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1][0] is None  # close() queues its sentinel last and nothing after it
            results: list[_Result] = []
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                results = [self._apply(op, future) for op, future in batch if op is not None]
                self._writer.execute("COMMIT")
            except Exception as exc:  # the whole batch is lost: the disk or the database is broken
                logger.error("node store lost a batch of %d writes: %s", len(batch), exc, exc_info=True)
                with contextlib.suppress(sqlite3.Error):
                    self._writer.execute("ROLLBACK")
                failure = StoreError(f"writing to {self.path} failed: {exc}")
                results = [(f, None, failure) for _, f in batch if f is not None]
            for future, value, error in results:
                if future is None:
                    continue
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)

    def _apply(self, op: _Op, future: Future[Any] | None) -> _Result:
        # A savepoint per op: one bad op must not lose the rest of the batch.
        self._writer.execute("SAVEPOINT op")
        try:
            value, error = op(self._writer), None
        except Exception as exc:
            self._writer.execute("ROLLBACK TO op")
            value, error = None, StoreError(f"{self.path}: {exc}") if isinstance(exc, sqlite3.Error) else exc
            if future is None:
                logger.error("node store write failed and was skipped: %s", exc, exc_info=True)
        self._writer.execute("RELEASE op")
        return future, value, error

    def flush(self, timeout: float = 5.0) -> None:
        """Block until every write queued before this call is committed."""
        self._call(lambda _conn: None, timeout)

    def close(self) -> None:
        with self._enqueue_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put((None, None))
        self._thread.join()
        self._writer.close()
        with self._read_lock:
            self._reader.close()

    def __enter__(self) -> NodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes ---

    def open_job(
        self, job_id: int, position: int, client: str, packed_terms: bytes, deadline: int | None = None
    ) -> JobRecord:
        """Create the job in SERVING; if it exists already return it unchanged (a missing deadline is set)."""
        now = time.time()
        row = (str(job_id), position, client, packed_terms, JobPhase.SERVING.value, b"\0" * 32, b"\0" * 32)

        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT OR IGNORE INTO jobs (job_id, position, client, packed_terms, phase, input_chain, "
                "output_chain, created_at, updated_at, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, now, now, deadline),
            )
            if deadline is not None:
                c.execute(
                    "UPDATE jobs SET deadline = ? WHERE job_id = ? AND deadline IS NULL", (deadline, row[0])
                )

        self._call(op)
        record = self.job(job_id)
        assert record is not None
        return record

    def record_step(
        self,
        job_id: int,
        step: int,
        start: int,
        tokens: int,
        input_digest: bytes,
        output_digest: bytes,
        input_chain: bytes,
        output_chain: bytes,
        receipt: Receipt | None,
        input_frame: bytes = b"",
        output_frame: bytes = b"",
    ) -> None:
        """Queue one served step and the job's new chains; returns without waiting for the disk."""
        # Written later by another thread: take immutable copies (bytes() of bytes is free).
        input_frame, output_frame = (
            (bytes(input_frame), bytes(output_frame)) if self.keep_transcripts else (b"", b"")
        )
        now = time.time()

        def op(c: sqlite3.Connection) -> None:
            key = str(job_id)
            row = c.execute("SELECT phase FROM jobs WHERE job_id = ?", (key,)).fetchone()
            if row is None or row[0] != JobPhase.SERVING.value:
                logger.warning(
                    "step %d of job %s ignored: job is %s", step, job_id, row[0] if row else "unknown"
                )
                return
            cur = c.execute(
                "INSERT OR IGNORE INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, step, start, tokens, input_digest, output_digest, input_frame, output_frame, now),
            )
            if cur.rowcount == 0:
                logger.warning("duplicate step %d of job %s ignored (already recorded)", step, job_id)
                return
            c.execute(
                "UPDATE jobs SET steps = steps + 1, last_step = ?, input_chain = ?, output_chain = ?, "
                "tokens = MAX(tokens, ?), updated_at = ? WHERE job_id = ?",
                (step, input_chain, output_chain, tokens, now, key),
            )
            if receipt is not None:
                _keep_best_receipt(c, key, receipt, now)

        self._put(op, None)

    def set_receipt(self, job_id: int, receipt: Receipt) -> None:
        """Queue a client-signed receipt (e.g. the end-of-job envelope); kept only if it bills more tokens."""
        now = time.time()
        self._put(lambda c: _keep_best_receipt(c, str(job_id), receipt, now), None)

    def mark_ended(self, job_id: int) -> None:
        self._transition(job_id, JobPhase.ENDED)

    def mark_committed(self, job_id: int, tx_hash: str) -> None:
        self._transition(job_id, JobPhase.COMMITTED, commit_tx=tx_hash)

    def mark_finalized(self, job_id: int) -> None:
        self._transition(job_id, JobPhase.FINALIZED)

    def mark_paid(self, job_id: int, tx_hash: str | None) -> None:
        self._transition(job_id, JobPhase.PAID, claim_tx=tx_hash)

    def mark_cancelled(self, job_id: int) -> None:
        self._transition(job_id, JobPhase.CANCELLED)

    def mark_failed(self, job_id: int, reason: str) -> None:
        self._transition(job_id, JobPhase.FAILED, error=reason)

    def end_orphans(self) -> list[int]:
        """At start: end the jobs a crash left SERVING with steps served (their KV caches are gone) or
        without a known deadline; their recorded chains get committed. Jobs still waiting for their
        client's first step stay SERVING until their deadline."""

        def op(c: sqlite3.Connection) -> list[int]:
            where = "phase = ? AND (steps > 0 OR deadline IS NULL)"
            serving = JobPhase.SERVING.value
            ids = [
                int(r[0])
                for r in c.execute(f"SELECT job_id FROM jobs WHERE {where} ORDER BY rowid", (serving,))
            ]
            c.execute(
                f"UPDATE jobs SET phase = ?, updated_at = ? WHERE {where}",
                (JobPhase.ENDED.value, time.time(), serving),
            )
            return ids

        ended: list[int] = self._call(op)
        for job_id in ended:
            logger.info(
                "job %d: serving -> ended (left open by the last run; its recorded steps commit)", job_id
            )
        return ended

    def hold(self, job_id: int, until: int | None) -> None:
        """Leave the job out of `jobs(..., due_at=t)` while t < until (chain unix seconds)."""
        self._put(
            lambda c: c.execute("UPDATE jobs SET hold_until = ? WHERE job_id = ?", (until, str(job_id))),
            None,
        )

    def wake(self, job_ids: Iterable[int]) -> None:
        """End the hold of these jobs (the chain moved them): the next duty pass looks at them again."""
        ids = [str(j) for j in job_ids]
        for i in range(0, len(ids), 500):  # SQLite's bound on host parameters
            self._put(_release_holds(ids[i : i + 500]), None)

    def set_meta(self, key: str, value: str) -> None:
        """Remember a small value (scan cursor, top-up spent, ...) across restarts."""
        self._call(
            lambda c: c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        )

    def _transition(self, job_id: int, target: JobPhase, **fields: str | None) -> None:
        now = time.time()

        def op(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT phase FROM jobs WHERE job_id = ?", (str(job_id),)).fetchone()
            if row is None:
                raise StoreError(f"job {job_id} is not in the node store; it was never opened on this node")
            current = JobPhase(row[0])
            if current == target:
                return
            terminal = current in _TERMINAL
            if terminal or (target in _FORWARD and _FORWARD.index(target) < _FORWARD.index(current)):
                why = "a terminal phase" if terminal else "phases only move forward"
                raise StoreError(f"job {job_id} is {current.value} ({why}); cannot move it to {target.value}")
            sets = "".join(f", {name} = ?" for name in fields)
            c.execute(
                f"UPDATE jobs SET phase = ?, updated_at = ?{sets} WHERE job_id = ?",
                (target.value, now, *fields.values(), str(job_id)),
            )
            logger.info("job %s: %s -> %s", job_id, current.value, target.value)

        self._call(op)

    def prune_transcripts(self, older_than: float) -> int:
        """Drop the frames of settled jobs last updated before `older_than` (unix seconds); digests stay."""

        def op(c: sqlite3.Connection) -> int:
            return c.execute(
                "UPDATE steps SET input_frame = x'', output_frame = x'' WHERE "
                "(length(input_frame) > 0 OR length(output_frame) > 0) AND job_id IN "
                "(SELECT job_id FROM jobs WHERE phase IN (?, ?, ?) AND updated_at < ?)",
                (JobPhase.PAID.value, JobPhase.CANCELLED.value, JobPhase.FAILED.value, older_than),
            ).rowcount

        return int(self._call(op))

    def drop_transcript(self, job_id: int) -> int:
        """Drop one job's frames (the caller knows no audit can ask for them); digests stay. Returns the
        steps that still held frames."""

        def op(c: sqlite3.Connection) -> int:
            return c.execute(
                "UPDATE steps SET input_frame = x'', output_frame = x'' WHERE job_id = ? AND "
                "(length(input_frame) > 0 OR length(output_frame) > 0)",
                (str(job_id),),
            ).rowcount

        return int(self._call(op))

    # --- reads ---

    def _read(self, sql: str, args: Iterable[object] = (), *, flush: bool = True) -> list[tuple[Any, ...]]:
        if flush:
            self.flush()
        with self._read_lock:
            return self._reader.execute(sql, tuple(args)).fetchall()

    def job(self, job_id: int, *, flush: bool = True) -> JobRecord | None:
        """The job's record. `flush=False` skips waiting for queued step writes: enough for what only
        waited-for writes change (existence, position, client, deadline, phase)."""
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (str(job_id),), flush=flush)
        return _job_record(rows[0]) if rows else None

    def jobs(
        self, phases: Iterable[JobPhase] | None = None, *, due_at: float | None = None
    ) -> list[JobRecord]:
        """Jobs in the given phases (all if None), oldest first; with `due_at` (chain unix seconds) only
        those not on hold at that time."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE 1"
        args: list[object] = []
        if phases is not None:
            values = [JobPhase(p).value for p in phases]
            sql += f" AND phase IN ({', '.join('?' * len(values))})"
            args += values
        if due_at is not None:
            sql += " AND (hold_until IS NULL OR hold_until <= ?)"
            args.append(due_at)
        return [_job_record(r) for r in self._read(sql + " ORDER BY created_at, rowid", args)]

    def serving_due(self, deadline_at_most: int) -> list[int]:
        """SERVING jobs whose commit deadline is at or before `deadline_at_most` (chain unix seconds)."""
        rows = self._read(
            "SELECT job_id FROM jobs WHERE phase = ? AND deadline <= ? ORDER BY deadline",
            (JobPhase.SERVING.value, deadline_at_most),
        )
        return [int(r[0]) for r in rows]

    def meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def transcript(self, job_id: int) -> list[StepRecord]:
        rows = self._read("SELECT * FROM steps WHERE job_id = ? ORDER BY step", (str(job_id),))
        return [StepRecord(int(r[0]), *r[1:]) for r in rows]

    def stats(self) -> dict[str, int]:
        """Jobs per phase (every phase present) and `steps`, the steps recorded over all jobs."""
        counts = {p.value: 0 for p in JobPhase} | {"steps": 0}
        for phase, jobs, steps in self._read("SELECT phase, COUNT(*), SUM(steps) FROM jobs GROUP BY phase"):
            counts[phase] = jobs
            counts["steps"] += steps
        return counts


def _release_holds(ids: list[str]) -> _Op:
    sql = f"UPDATE jobs SET hold_until = NULL WHERE job_id IN ({', '.join('?' * len(ids))})"
    return lambda c: c.execute(sql, ids)


def _keep_best_receipt(c: sqlite3.Connection, key: str, receipt: Receipt, now: float) -> None:
    step, tokens, payload_hash, signature = receipt
    c.execute(
        "UPDATE jobs SET receipt_step = ?, receipt_tokens = ?, receipt_hash = ?, receipt_sig = ?, "
        "updated_at = ? "
        "WHERE job_id = ? AND (receipt_tokens IS NULL OR receipt_tokens < ?)",
        (step, tokens, payload_hash, signature, now, key, tokens),
    )


def _job_record(r: tuple[Any, ...]) -> JobRecord:
    receipt = (r[10], r[11], r[12], r[13]) if r[11] is not None else None
    values: tuple[Any, ...] = (int(r[0]), *r[1:4], JobPhase(r[4]), *r[5:10], receipt, *r[14:])
    return JobRecord(*values)

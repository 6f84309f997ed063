"""The votes a verifier committed, in SQLite, so that a restart can still reveal and resolve them."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from splitmesh.chain.records import Verdict


class VoteBook:
    """Votes this node committed. Phases: committed -> revealed -> settled (the audit resolved), or
    expired (a window closed before this node acted). Thread-safe."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS votes (job_id TEXT, position INTEGER, verdict INTEGER, "
                "salt BLOB, reason TEXT, phase TEXT, PRIMARY KEY (job_id, position))"
            )

    def add(self, job_id: int, position: int, verdict: Verdict, salt: bytes, reason: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO votes VALUES (?, ?, ?, ?, ?, 'committed')",
                (str(job_id), position, int(verdict), salt, reason),
            )

    def mark(self, job_id: int, position: int, phase: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "UPDATE votes SET phase = ? WHERE job_id = ? AND position = ?", (phase, str(job_id), position)
            )

    def pending(self, phase: str) -> list[tuple[int, int, Verdict, bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, position, verdict, salt FROM votes WHERE phase = ?", (phase,)
            ).fetchall()
        return [(int(j), int(p), Verdict(v), bytes(s)) for j, p, v, s in rows]

    def has(self, job_id: int, position: int) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM votes WHERE job_id = ? AND position = ?", (str(job_id), position)
            ).fetchone()
        return row is not None

    def close(self) -> None:
        self._db.close()

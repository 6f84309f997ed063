"""A node's verifier role: when the AuditCourt draws it for an audit of its shard, it fetches the audited
node's transcript, checks it against the on-chain commitments and signatures, re-executes the shard on
the recorded inputs, and votes (commit, then reveal), by itself. Blocking (chain and HTTP calls): the
daemon runs `run_once` in a worker thread.

Verdict rules (fraud on any of them):
- the transcript is withheld, malformed, does not hash to the node's commitments, holds a step the
  client did not sign, or an input the previous hop did not relay;
- the recomputed outputs differ beyond the measured tolerance for the two dtypes (splitmesh.audit);
- the next hop holds this node's relay signatures over tensors other than the ones it committed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from splitmesh.audit.replay import audit_training_transcript, audit_transcript
from splitmesh.audit.transcript import (
    TranscriptError,
    TranscriptStep,
    TranscriptUnavailable,
    check_transcript,
    decode_transcript,
    fetch_transcript,
)
from splitmesh.chain import Marketplace, Sender
from splitmesh.chain.market import AuditStatus, Verdict, VoteStatus
from splitmesh.errors import ChainError, ContractRevert
from splitmesh.model.runner import ShardRunner

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str


class VoteBook:
    """Votes this node committed and must still reveal: SQLite, so a restart can reveal them."""

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


class Verifier:
    """Answers the AuditCourt for one node serving one shard."""

    def __init__(
        self,
        market: Marketplace,
        sender: Sender,
        private_key: str,
        runner: ShardRunner,
        model_id: int,
        shard: int,
        votes: VoteBook,
        *,
        lie: bool = False,  # tests only: vote the opposite of the judgement
    ):
        self.market = market
        self.sender = sender
        self.private_key = private_key
        self.runner = runner
        self.model_id = model_id
        self.shard = shard
        self.votes = votes
        self.lie = lie
        self._next_block = market.deployment.block

    def run_once(self) -> None:
        if self.market.court is None:
            return
        for job_id, position, node in self._new_assignments():
            if not self.votes.has(job_id, position):
                self._guard(job_id, position, lambda j=job_id, p=position, n=node: self.vote(j, p, n))
        for job_id, position, verdict, salt in self.votes.pending("committed"):
            self._guard(
                job_id, position, lambda j=job_id, p=position, v=verdict, s=salt: self.reveal(j, p, v, s)
            )
        self._withdraw()

    def _guard(self, job_id: int, position: int, action: object) -> None:
        try:
            action()  # type: ignore[operator]
        except (ChainError, OSError, ValueError) as exc:
            logger.warning(
                "audit of job %d position %d: %s; retrying on the next pass", job_id, position, exc
            )

    def _new_assignments(self) -> list[tuple[int, int, str]]:
        latest = int(self.market.w3.eth.block_number)
        if latest < self._next_block:
            return []
        events = self.market.events("AuditOpened", from_block=self._next_block, to_block=latest)
        self._next_block = latest + 1
        me = self.sender.address
        return [
            (int(e["args"]["jobId"]), int(e["args"]["position"]), str(e["args"]["node"]))
            for e in events
            if me in [str(v) for v in e["args"]["verifiers"]]
        ]

    # ------------------------------------------------------------------ judging

    def judge(self, job_id: int, position: int, node: str) -> Judgement:
        """Everything a verifier checks, from the chain and the audited node's transcript."""
        job = self.market.job_submitted(job_id)
        terms = job.terms
        commits = {
            int(e["args"]["position"]): (
                bytes(e["args"]["inputCommitment"]),
                bytes(e["args"]["outputCommitment"]),
            )
            for e in self.market.events("JobCommitted", jobId=job_id)
        }
        if position not in commits:
            return Judgement(Verdict.FRAUD, "the node never committed")
        steps = self._transcript(job_id, position, node)
        if isinstance(steps, Judgement):
            return steps
        d = self.market.deployment
        try:
            check_transcript(
                steps,
                chain_id=d.chain_id,
                market=d.market,
                job_id=job_id,
                position=position,
                client=terms.client,
                previous_hop=terms.route[position - 1].node if position else None,
                input_commitment=commits[position][0],
                output_commitment=commits[position][1],
                is_last=position == len(terms.route) - 1,
            )
        except TranscriptError as exc:
            return Judgement(Verdict.FRAUD, f"transcript check failed: {exc}")
        if position + 1 < len(terms.route):
            fetched = self._transcript(job_id, position + 1, terms.route[position + 1].node)
            relayed = fetched if isinstance(fetched, list) and position + 1 in commits else None
            # The next hop's transcript carries this node's relay signatures (checked against the next
            # hop's own commitments below); if it is unavailable, it cannot count against this node.
            if relayed is not None:
                try:
                    check_transcript(
                        relayed,
                        chain_id=d.chain_id,
                        market=d.market,
                        job_id=job_id,
                        position=position + 1,
                        client=terms.client,
                        previous_hop=node,
                        input_commitment=commits[position + 1][0],
                        output_commitment=commits[position + 1][1],
                        is_last=position + 1 == len(terms.route) - 1,
                    )
                except TranscriptError:
                    relayed = None  # the next hop's own problem; judged in its own panel
                if relayed is not None:
                    sent = [s.input_digest for s in relayed]
                    recorded = [s.output_digest for s in steps]
                    if sent != recorded:
                        return Judgement(
                            Verdict.FRAUD,
                            "the node signed relays of tensors other than the ones it committed",
                        )
        audited_dtype = str(steps[0].output.dtype).removeprefix("torch.")
        if steps[0].meta.mode != "infer":
            training = [(s.meta.mode, s.step, s.meta.of_step, s.input, s.output) for s in steps]
            verdict = audit_training_transcript(self.runner, training, audited_dtype)
        else:
            verdict = audit_transcript(
                self.runner, [(s.start, s.input) for s in steps], [s.output for s in steps], audited_dtype
            )
        if verdict.is_fraud:
            return Judgement(Verdict.FRAUD, f"re-execution differs: {verdict.reason}")
        return Judgement(Verdict.HONEST, f"re-executed {len(steps)} steps within tolerance")

    def _transcript(self, job_id: int, position: int, node: str) -> list[TranscriptStep] | Judgement:
        d = self.market.deployment
        endpoint = self.market.get_node(node).endpoint
        try:
            raw = fetch_transcript(endpoint, job_id, position, self.private_key, d.chain_id, d.market)
            return decode_transcript(raw)
        except TranscriptUnavailable as exc:
            return Judgement(Verdict.FRAUD, f"transcript withheld: {exc}")
        except TranscriptError as exc:
            return Judgement(Verdict.FRAUD, f"transcript malformed: {exc}")

    # ------------------------------------------------------------------ voting

    def vote(self, job_id: int, position: int, node: str) -> None:
        audit = self.market.get_audit(job_id)
        if audit.status != AuditStatus.OPEN or self._now() > audit.commit_deadline:
            return
        judgement = self.judge(job_id, position, node)
        verdict = judgement.verdict
        if self.lie:
            verdict = Verdict.HONEST if verdict == Verdict.FRAUD else Verdict.FRAUD
        salt = os.urandom(32)
        commitment = self.market.vote_commitment(job_id, position, verdict, salt, self.sender.address)
        # Persist before sending: a crash after the commit must still be able to reveal.
        self.votes.add(job_id, position, verdict, salt, judgement.reason)
        self.market.commit_vote(self.sender, job_id, position, commitment)
        logger.info(
            "audit of job %d position %d (node %s): voted %s: %s",
            job_id,
            position,
            node,
            verdict.name.lower(),
            judgement.reason,
        )

    def reveal(self, job_id: int, position: int, verdict: Verdict, salt: bytes) -> None:
        audit = self.market.get_audit(job_id)
        now = self._now()
        if audit.status != AuditStatus.OPEN or now > audit.reveal_deadline:
            self.votes.mark(job_id, position, "expired")
            return
        panel = audit.panels[position]
        everyone_committed = panel.committed == len(panel.verifiers)
        if now <= audit.commit_deadline and not everyone_committed:
            return
        try:
            self.market.reveal_vote(self.sender, job_id, position, verdict, salt)
        except ContractRevert as exc:
            if exc.name != "RevealNotOpen":
                raise
            return
        self.votes.mark(job_id, position, "revealed")

    def _withdraw(self) -> None:
        try:
            if self.market.court_credit_of(self.sender.address) > 0:
                self.market.withdraw_court_credit(self.sender)
        except ChainError as exc:
            logger.warning("withdrawing court credit failed (%s); retrying later", exc)

    def _now(self) -> int:
        return int(self.market.w3.eth.get_block("latest")["timestamp"])


__all__ = ["Judgement", "Verifier", "VoteBook", "VoteStatus"]

"""A node's verifier role: when the AuditCourt draws it for an audit of its shard, it fetches the audited
node's transcript, checks it against the on-chain commitments and signatures, re-executes the shard on
the recorded inputs, and votes (commit, then reveal), by itself. Blocking (chain and HTTP calls): the
daemon runs `run_once` in a worker thread.

Money rules it follows (AuditCourt): a drawn verifier that never commits is slashed one bond, and one
that commits but does not reveal, or reveals the losing verdict, forfeits its bond; bonds and rewards
are credited only at resolve. So it always commits (a fallback verdict if judging keeps failing), always
reveals, resolves audits it voted in once the reveal window closed, and then withdraws its credit.
It also keeps the audits of its model's jobs moving: it calls sampleAudit on completed jobs the draw
selected, and opens the audit of disputed jobs whose route crosses its shard.

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
import time
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
from splitmesh.chain.market import AuditStatus, JobStatus, Verdict, VoteStatus
from splitmesh.chain.sampling import draw_pending, open_audit_if_ready, sample_if_drawn
from splitmesh.errors import ChainError, ContractRevert
from splitmesh.model.runner import ShardRunner
from splitmesh.wire.tls import LinkSecurityError

logger = logging.getLogger(__name__)

JUDGE_RETRY_S = 5.0  # seconds between attempts to judge a position after an error
JUDGE_ATTEMPTS = 3  # failed attempts after which the fallback verdict is committed
FALLBACK_VERDICT = Verdict.HONEST  # when judging keeps failing: most jobs are honest; silence costs a bond


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str


class VoteBook:
    """Votes this node committed: SQLite, so a restart can still reveal and resolve them. Phases:
    committed -> revealed -> settled (the audit resolved), or expired (the reveal window closed)."""

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
        self._completing: dict[int, bytes] = {}  # jobs of our model not yet drawn: job id -> packed terms
        self._disputed: dict[int, bytes] = {}  # disputed jobs crossing our shard, audit not opened yet
        self._failures: dict[tuple[int, int], tuple[int, float]] = {}  # (job, position) -> (count, at)

    def run_once(self) -> None:
        if self.market.court is None:
            return
        assignments = self._scan()
        for job_id, packed in list(self._completing.items()):
            self._keep(job_id, lambda j=job_id, t=packed: self._sample(j, t), "sampling")
        for job_id, packed in list(self._disputed.items()):
            self._keep(job_id, lambda j=job_id, t=packed: self._open(j, t), "opening the audit")
        for job_id, position, node in assignments:
            if not self.votes.has(job_id, position):
                self._guard(job_id, position, lambda j=job_id, p=position, n=node: self.vote(j, p, n))
        for job_id, position, verdict, salt in self.votes.pending("committed"):
            self._guard(
                job_id, position, lambda j=job_id, p=position, v=verdict, s=salt: self.reveal(j, p, v, s)
            )
        for job_id, position, _, _ in self.votes.pending("revealed"):
            self._guard(job_id, position, lambda j=job_id, p=position: self.resolve(j, p))
        self._withdraw()

    def _guard(self, job_id: int, position: int, action: object) -> None:
        try:
            action()  # type: ignore[operator]
        except (ChainError, OSError, ValueError) as exc:
            logger.warning(
                "audit of job %d position %d: %s; retrying on the next pass", job_id, position, exc
            )

    @staticmethod
    def _keep(job_id: int, action: object, what: str) -> None:
        try:
            action()  # type: ignore[operator]
        except (ChainError, OSError, ValueError) as exc:
            logger.warning("job %d: %s failed (%s); retrying on the next pass", job_id, what, exc)

    def _scan(self) -> list[tuple[int, int, str]]:
        """New blocks' events: audits we were drawn for (returned), and jobs of our model to sample or to
        open an audit for (remembered)."""
        latest = int(self.market.w3.eth.block_number)
        if latest < self._next_block:
            return []
        first, self._next_block = self._next_block, latest + 1
        if self.market.audit_rate_bps() != 0:
            committed = self.market.events("JobCommitted", from_block=first, to_block=latest)
            for job_id in sorted({int(e["args"]["jobId"]) for e in committed}):
                self._remember(job_id, self._completing, any_shard=True)
        disputed = self.market.events("JobDisputed", from_block=first, to_block=latest)
        for job_id in sorted({int(e["args"]["jobId"]) for e in disputed}):
            self._remember(job_id, self._disputed, any_shard=False)
        events = self.market.events("AuditOpened", from_block=first, to_block=latest)
        me = self.sender.address
        return [
            (int(e["args"]["jobId"]), int(e["args"]["position"]), str(e["args"]["node"]))
            for e in events
            if me in [str(v) for v in e["args"]["verifiers"]]
        ]

    def _remember(self, job_id: int, into: dict[int, bytes], *, any_shard: bool) -> None:
        if job_id in into:
            return
        job = self.market.job_submitted(job_id)
        if job.terms.model_id == self.model_id and (any_shard or self.shard in job.terms.shards):
            into[job_id] = job.packed_terms

    def _sample(self, job_id: int, packed: bytes) -> None:
        """Call sampleAudit once the job completed, if the draw selected it; then forget the job."""
        status = self.market.get_job(job_id).status
        if status == JobStatus.OPEN or (status == JobStatus.COMMITTED and draw_pending(self.market, job_id)):
            return  # not complete yet, or its draw is readable only from the next block
        if status == JobStatus.COMMITTED:
            sample_if_drawn(self.market, self.sender, job_id, packed)
        del self._completing[job_id]

    def _open(self, job_id: int, packed: bytes) -> None:
        """Open the audit of a disputed job unless someone did; forget the job once nothing is left."""
        if self.market.get_job(job_id).status != JobStatus.DISPUTED:
            del self._disputed[job_id]
            return
        if self.market.get_audit(job_id).status != AuditStatus.NONE:
            del self._disputed[job_id]
            return
        if open_audit_if_ready(self.market, self.sender, job_id, packed) is not None:
            del self._disputed[job_id]

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
        info = self.market.get_node(node)
        try:
            raw = fetch_transcript(
                info.endpoint,
                job_id,
                position,
                self.private_key,
                d.chain_id,
                d.market,
                key=info.encryption_key,
            )
            return decode_transcript(raw)
        except (TranscriptUnavailable, LinkSecurityError) as exc:
            # A node that does not serve its transcript over a link bound to its on-chain key withholds it.
            return Judgement(Verdict.FRAUD, f"transcript withheld: {exc}")
        except TranscriptError as exc:
            return Judgement(Verdict.FRAUD, f"transcript malformed: {exc}")

    # ------------------------------------------------------------------ voting

    def vote(self, job_id: int, position: int, node: str) -> None:
        """Judge and commit a sealed vote with the bond. Drawn verifiers that never commit are slashed a
        bond, so if judging keeps failing the fallback verdict is committed instead of nothing."""
        audit = self.market.get_audit(job_id)
        if audit.status != AuditStatus.OPEN:
            return
        if self._now() > audit.commit_deadline:
            logger.warning(
                "audit of job %d position %d: drawn, but the commit phase closed before this node could "
                "vote; the court slashes one verifier bond from its stake (keep the node running and its "
                "RPC reachable while audits are open)",
                job_id,
                position,
            )
            self.votes.add(job_id, position, FALLBACK_VERDICT, b"", "missed the commit phase")
            self.votes.mark(job_id, position, "expired")
            return
        judgement = self._judge_or_fallback(job_id, position, node, audit.commit_deadline)
        if judgement is None:
            return  # retry on a later pass
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

    def _judge_or_fallback(self, job_id: int, position: int, node: str, deadline: int) -> Judgement | None:
        """The judgement; after repeated errors (or near the commit deadline) the fallback verdict; None
        to wait before trying again."""
        key = (job_id, position)
        count, at = self._failures.get(key, (0, 0.0))
        if count and time.monotonic() - at < JUDGE_RETRY_S and deadline - self._now() > 2 * JUDGE_RETRY_S:
            return None
        try:
            judgement = self.judge(job_id, position, node)
        except Exception as exc:  # any failure to judge must still end in a vote
            count += 1
            logger.debug("judging job %d position %d failed", job_id, position, exc_info=True)
            if count < JUDGE_ATTEMPTS and deadline - self._now() > 2 * JUDGE_RETRY_S:
                self._failures[key] = (count, time.monotonic())
                logger.warning(
                    "audit of job %d position %d: judging failed (%s); retrying in %g s",
                    job_id,
                    position,
                    exc,
                    JUDGE_RETRY_S,
                )
                return None
            logger.warning(
                "audit of job %d position %d: judging failed %d times (%s); committing the fallback "
                "verdict %s so the bond is not slashed for silence; check the node's model files and logs",
                job_id,
                position,
                count,
                exc,
                FALLBACK_VERDICT.name.lower(),
            )
            judgement = Judgement(FALLBACK_VERDICT, f"could not judge: {exc}")
        self._failures.pop(key, None)
        return judgement

    def reveal(self, job_id: int, position: int, verdict: Verdict, salt: bytes) -> None:
        audit = self.market.get_audit(job_id)
        now = self._now()
        if audit.status != AuditStatus.OPEN or now > audit.reveal_deadline:
            logger.warning(
                "audit of job %d position %d: the reveal window closed before this node revealed; its "
                "bond is forfeited",
                job_id,
                position,
            )
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

    def resolve(self, job_id: int, position: int) -> None:
        """Bonds and rewards are credited at resolve: resolve once the reveal window closed (anyone may;
        the route nodes usually do first), then the credit is withdrawn."""
        audit = self.market.get_audit(job_id)
        if audit.status == AuditStatus.OPEN:
            if self._now() <= audit.reveal_deadline:
                return
            try:
                self.market.resolve_audit(self.sender, job_id, self.market.job_submitted(job_id).packed_terms)
                logger.info("audit of job %d resolved", job_id)
            except ContractRevert as exc:
                if exc.name not in ("AuditNotOpen", "RevealPhaseOpen"):
                    raise
                return
        self.votes.mark(job_id, position, "settled")

    def _withdraw(self) -> None:
        try:
            if self.market.court_credit_of(self.sender.address) > 0:
                self.market.withdraw_court_credit(self.sender)
        except ChainError as exc:
            logger.warning("withdrawing court credit failed (%s); retrying later", exc)

    def _now(self) -> int:
        return int(self.market.w3.eth.get_block("latest")["timestamp"])


__all__ = ["Judgement", "Verifier", "VoteBook", "VoteStatus"]

"""A node's verifier role: when the AuditCourt draws it for an audit of its shard, it fetches the audited
node's transcript, checks it against the on-chain commitments and signatures, re-executes the shard on
the recorded inputs, and votes (commit, then reveal), by itself. Blocking (chain calls): the daemon runs
`run_once` in a worker thread; each drawn audit is judged in a thread of its own (at most
`AuditLimits.max_concurrent` at once), so one slow audit never holds up another. What a vote needs next
(commit, reveal, resolve, or its window is gone) is splitmesh.chain.due's `vote_due`, the rule the
keepers and route nodes follow for audits too.

Transcripts are read streamed, refused past a size cap and abandoned at a total deadline (a quarter of
the court's commit window by default, never more than a quarter of what is left of it): an accused node
that drip-feeds or bloats its transcript has withheld it, and withheld evidence is a fraud vote.

Money rules it follows (AuditCourt): a drawn verifier that never commits is slashed one bond, and one
that commits but does not reveal, or reveals the losing verdict, forfeits its bond; bonds and rewards
are credited only at resolve. So it always commits (a fallback verdict if judging keeps failing), always
reveals, resolves audits it voted in once the reveal window closed, and then withdraws its credit.
It also keeps the audits of its model's jobs moving: it calls sampleAudit on completed jobs the draw
selected, and opens the audit of disputed jobs whose route crosses its shard.

Verdict rules (fraud on any of them):
- the transcript is withheld (refused, unreachable, stalled past its deadline, oversized), malformed,
  does not hash to the node's commitments, holds a step the client did not sign, or an input the
  previous hop did not relay;
- the recomputed outputs differ beyond the measured tolerance for the two dtypes (splitmesh.audit);
- the next hop holds this node's relay signatures over tensors other than the ones it committed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass

from node.transcript_fetch import read_transcript
from node.votebook import VoteBook
from splitmesh.audit.replay import audit_training_transcript, audit_transcript
from splitmesh.audit.transcript import (
    MAX_TRANSCRIPT_BYTES,
    TranscriptError,
    TranscriptStep,
    TranscriptUnavailable,
    check_transcript,
    decode_transcript,
    relay_mismatch,
    transcript_request_headers,
    transcript_url,
)
from splitmesh.chain import Marketplace, Sender
from splitmesh.chain.due import DueKind, VotePhase, Windows, due_action, vote_due
from splitmesh.chain.records import AuditStatus, JobStatus, Verdict, VoteStatus
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


@dataclass(frozen=True)
class AuditLimits:
    """How long and how much one audit may take (node config)."""

    transcript_timeout: float = 0.0  # seconds one transcript fetch may take in total; 0 = C/4 (see below)
    max_transcript_bytes: int = MAX_TRANSCRIPT_BYTES  # bytes read before a transcript is refused
    max_concurrent: int = 4  # audits judged at once, each in its own thread with its own deadline

    def fetch_timeout(self, commit_window: int, left: int) -> float:
        """Seconds for one transcript fetch of an audit whose commit phase has `left` seconds to go: the
        configured timeout (default a quarter of the court's commit window C), never over a quarter of
        what is left (a judgement may fetch two transcripts, then re-executes and commits its vote)."""
        configured = self.transcript_timeout if self.transcript_timeout > 0 else commit_window / 4
        return max(1.0, min(configured, left / 4))


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
        limits: AuditLimits | None = None,
        lie: bool = False,  # tests only: vote the opposite of the judgement
    ):
        self.market = market
        self.sender = sender
        self.private_key = private_key
        self.runner = runner
        self.model_id = model_id
        self.shard = shard
        self.votes = votes
        self.limits = limits or AuditLimits()
        self.lie = lie
        self._windows: Windows | None = None  # read from the chain on the first pass
        self._next_block = market.deployment.block
        self._completing: dict[int, bytes] = {}  # jobs of our model not yet drawn: job id -> packed terms
        self._disputed: dict[int, bytes] = {}  # disputed jobs crossing our shard, audit not opened yet
        self._failures: dict[tuple[int, int], tuple[int, float]] = {}  # (job, position) -> (count, at)
        self._lock = threading.Lock()  # guards the two below (audit threads finish on their own)
        self._drawn: dict[tuple[int, int], str] = {}  # audits we were drawn for, not voted: -> node
        self._judging: set[tuple[int, int]] = set()  # audits a thread is judging now

    @property
    def windows(self) -> Windows:
        if self._windows is None:
            self._windows = Windows.of(self.market)
        return self._windows

    def run_once(self) -> None:
        if self.market.court is None:
            return
        drawn = self._scan()
        for job_id, packed in list(self._completing.items()):
            self._keep(job_id, lambda j=job_id, t=packed: self._sample(j, t), "sampling")
        for job_id, packed in list(self._disputed.items()):
            self._keep(job_id, lambda j=job_id, t=packed: self._open(j, t), "opening the audit")
        with self._lock:
            self._drawn.update({(j, p): n for j, p, n in drawn if not self.votes.has(j, p)})
        self._dispatch()
        for job_id, position, verdict, salt in self.votes.pending("committed"):
            self._guard(
                job_id, position, lambda j=job_id, p=position, v=verdict, s=salt: self.reveal(j, p, v, s)
            )
        for job_id, position, _, _ in self.votes.pending("revealed"):
            self._guard(job_id, position, lambda j=job_id, p=position: self.resolve(j, p))
        self._withdraw()

    def _dispatch(self) -> None:
        """Start judging every drawn audit no thread is judging yet, up to `max_concurrent` at once."""
        with self._lock:
            waiting = [(key, node) for key, node in self._drawn.items() if key not in self._judging]
            room = max(0, self.limits.max_concurrent - len(self._judging))
            started = waiting[:room]
            self._judging.update(key for key, _ in started)
        for (job_id, position), node in started:
            name = f"audit-{job_id}-{position}"
            thread = threading.Thread(
                target=self._audit, args=(job_id, position, node), name=name, daemon=True
            )
            thread.start()

    def _audit(self, job_id: int, position: int, node: str) -> None:
        """One audit's thread: judge and commit the vote (or learn it is too late); forget it when done."""
        done = False
        try:
            done = self.vote(job_id, position, node)
        except (ChainError, OSError, ValueError) as exc:
            logger.warning("audit of job %d position %d: %s; retrying next pass", job_id, position, exc)
        except Exception:
            logger.exception("audit of job %d position %d failed; retrying next pass", job_id, position)
        finally:
            with self._lock:
                self._judging.discard((job_id, position))
                if done:
                    self._drawn.pop((job_id, position), None)

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
        """Open the audit of a disputed job while the court still accepts it (due_action: someone opened
        it, the job settled, or it is too late: forget the job)."""
        state = self.market.get_job(job_id)
        audit = self.market.get_audit(job_id) if state.status == JobStatus.DISPUTED else None
        now = self._now()
        due = due_action(state, now, self.windows, audit=audit)
        if due.kind is not DueKind.OPEN_AUDIT:
            del self._disputed[job_id]
            return
        if due.ready(now) and open_audit_if_ready(self.market, self.sender, job_id, packed) is not None:
            del self._disputed[job_id]

    # ------------------------------------------------------------------ judging

    def judge(self, job_id: int, position: int, node: str, *, fetch_timeout: float) -> Judgement:
        """Everything a verifier checks, from the chain and the audited node's transcript (each transcript
        fetch gets `fetch_timeout` seconds in total)."""
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
        steps = self._transcript(job_id, position, node, fetch_timeout)
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
            fetched = self._transcript(job_id, position + 1, terms.route[position + 1].node, fetch_timeout)
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
                mismatch = relay_mismatch(steps, relayed) if relayed is not None else None
                if mismatch is not None:
                    return Judgement(
                        Verdict.FRAUD,
                        f"step {mismatch}: the node signed a relay of a tensor it did not commit",
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

    def _transcript(
        self, job_id: int, position: int, node: str, timeout: float
    ) -> list[TranscriptStep] | Judgement:
        d = self.market.deployment
        info = self.market.get_node(node)
        headers = transcript_request_headers(self.private_key, d.chain_id, d.market, job_id, position)
        try:
            raw = asyncio.run(
                read_transcript(
                    transcript_url(info.endpoint, job_id),
                    info.encryption_key,
                    headers,
                    max_bytes=self.limits.max_transcript_bytes,
                    timeout=timeout,
                )
            )
            return decode_transcript(raw, self.limits.max_transcript_bytes)
        except (TranscriptUnavailable, LinkSecurityError) as exc:
            # A node that does not serve its transcript over a link bound to its on-chain key withholds it.
            return Judgement(Verdict.FRAUD, f"transcript withheld: {exc}")
        except TranscriptError as exc:
            return Judgement(Verdict.FRAUD, f"transcript malformed: {exc}")

    # ------------------------------------------------------------------ voting

    def vote(self, job_id: int, position: int, node: str) -> bool:
        """Judge and commit a sealed vote with the bond; True once nothing is left to do (voted, too late,
        or the audit is over), False to try again on a later pass. Drawn verifiers that never commit are
        slashed a bond, so if judging keeps failing the fallback verdict is committed instead of nothing."""
        audit = self.market.get_audit(job_id)
        now = self._now()
        due = vote_due(audit, now, self.windows, vote=VotePhase.DRAWN)
        if due.kind is DueKind.MISSED:
            logger.warning(
                "audit of job %d position %d: drawn, but the commit phase closed before this node could "
                "vote; the court slashes one verifier bond from its stake (keep the node running and its "
                "RPC reachable while audits are open)",
                job_id,
                position,
            )
            self.votes.add(job_id, position, FALLBACK_VERDICT, b"", "missed the commit phase")
            self.votes.mark(job_id, position, "expired")
            return True
        if due.kind is not DueKind.COMMIT_VOTE:
            return True  # resolved (or never opened): nothing to vote on
        assert self.windows.audit_commit_window is not None and due.until is not None
        timeout = self.limits.fetch_timeout(self.windows.audit_commit_window, due.until - now)
        judgement = self._judge_or_fallback(job_id, position, node, due.until, timeout)
        if judgement is None:
            return False
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
        return True

    def _judge_or_fallback(
        self, job_id: int, position: int, node: str, deadline: int, fetch_timeout: float
    ) -> Judgement | None:
        """The judgement; after repeated errors (or near the commit deadline) the fallback verdict; None
        to wait before trying again."""
        key = (job_id, position)
        count, at = self._failures.get(key, (0, 0.0))
        if count and time.monotonic() - at < JUDGE_RETRY_S and deadline - self._now() > 2 * JUDGE_RETRY_S:
            return None
        try:
            judgement = self.judge(job_id, position, node, fetch_timeout=fetch_timeout)
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
        panel = audit.panels[position] if audit.status == AuditStatus.OPEN else None
        everyone = panel is not None and panel.committed == len(panel.verifiers)
        due = vote_due(audit, now, self.windows, vote=VotePhase.COMMITTED, everyone_committed=everyone)
        if due.kind is not DueKind.REVEAL_VOTE:
            logger.warning(
                "audit of job %d position %d: the reveal window closed before this node revealed; its "
                "bond is forfeited",
                job_id,
                position,
            )
            self.votes.mark(job_id, position, "expired")
            return
        if not due.ready(now):
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
        now = self._now()
        due = vote_due(audit, now, self.windows, vote=VotePhase.REVEALED)
        if due.kind is DueKind.RESOLVE_AUDIT:
            if not due.ready(now):
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


__all__ = ["AuditLimits", "Judgement", "Verifier", "VoteBook", "VoteStatus"]

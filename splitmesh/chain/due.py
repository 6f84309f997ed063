"""What is due for a job next, and from when: one rule over the contracts' clocks.

Keepers (coordinator.keeper) and route nodes (node.duties) move jobs on with the same transactions. Both
ask `due_action` which one a job needs and when the contracts accept it, given the job's on-chain state,
its audit's, the chain time and the market's windows:

- Open: `cancel` strictly after `submitted + commit_timeout` (JobMarket.cancel: CommitWindowOpen until then);
- Committed: `sample` (sampleAudit) while the challenge window is open and the caller may still find the
  job drawn, else `finalize` from `last commit + challenge_window` (JobMarket.finalize);
- Disputed without an AuditCourt: `finalize` from `disputed + dispute_timeout`;
- Disputed with one, no audit yet: `open_audit` up to `disputed + dispute_timeout - commit_window -
  reveal_window - 2` (AuditCourt.openAudit: AuditTooLate after), then `finalize` at the dispute timeout;
- Disputed with an open audit: `resolve_audit` strictly after `opened + commit_window + reveal_window`
  (AuditCourt.resolve: RevealPhaseOpen until then);
- anything else: nothing.

A drawn verifier asks `vote_due` what its own vote needs next (AuditCourt's vote phases, from an audit
opened at T with windows C and R):

- drawn, not committed: `commit_vote` from T up to T + C (commitVote: CommitPhaseClosed after), then
  `missed` (the court slashes one bond from the stake of a verifier that never committed);
- committed: `reveal_vote` from T + C + 1, or at once when every drawn verifier committed (revealVote:
  RevealNotOpen until then), up to T + C + R (RevealPhaseClosed after), then `missed` (bond forfeited);
- revealed: `resolve_audit` strictly after T + C + R, the keepers' rule above;
- a resolved audit (or none): nothing.

Whether a job can still be audited at all (`auditable`): only a Disputed job can have an audit opened
(openAudit: JobNotDisputed), and only a Committed one can become Disputed (challenge, sampleAudit); an
Open job may still be committed. Finalized and Cancelled are final; once such a job's audit (if any) is
past its reveal deadline, nobody can ask for its evidence again.

Times are chain seconds; a caller compares `at` with the latest block's timestamp (a transaction sent now
lands in a later block). Pure: the caller reads the state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from splitmesh.chain.marketplace import Marketplace
from splitmesh.chain.records import AuditStatus, JobStatus
from splitmesh.chain.tx import Sender, TxResult


class DueKind(enum.Enum):
    NOTHING = "nothing"
    CANCEL = "cancel"
    SAMPLE = "sample_audit"
    FINALIZE = "finalize"
    OPEN_AUDIT = "open_audit"
    RESOLVE_AUDIT = "resolve_audit"
    COMMIT_VOTE = "commit_vote"  # a drawn verifier's sealed vote
    REVEAL_VOTE = "reveal_vote"
    MISSED = "missed"  # the vote's window closed before this verifier acted: nothing to send any more


class JobClock(Protocol):
    """The part of a job the rule reads (a `JobState` is one)."""

    @property
    def status(self) -> JobStatus: ...

    @property
    def timestamp(self) -> int: ...  # Open: submitted at; Committed: last commit at; Disputed: held at


class AuditClock(Protocol):
    """The part of an audit the rule reads (an `AuditInfo` is one)."""

    @property
    def status(self) -> AuditStatus: ...

    @property
    def opened_at(self) -> int: ...  # chain seconds; 0 while not opened


@dataclass(frozen=True, slots=True)
class Windows:
    """The market's clocks (JobMarket and AuditCourt parameters)."""

    commit_timeout: int  # seconds after submission route nodes may commit
    challenge_window: int  # seconds after the last commit a job may be challenged or sampled
    dispute_timeout: int  # seconds after a dispute (or its audit's opening) it may finalize unaudited
    audit_commit_window: int | None = None  # seconds verifiers may commit votes; None: no AuditCourt
    audit_reveal_window: int = 0  # seconds after the commit phase verifiers may reveal

    @classmethod
    def of(cls, market: Marketplace) -> Windows:
        """The windows of a deployment. Blocking (one or two calls)."""
        p = market.parameters()
        court = market.audit_parameters() if market.court is not None else None
        return cls(
            commit_timeout=int(p["commit_timeout"]),
            challenge_window=int(p["challenge_window"]),
            dispute_timeout=int(p["dispute_timeout"]),
            audit_commit_window=None if court is None else int(court["commit_window"]),
            audit_reveal_window=0 if court is None else int(court["reveal_window"]),
        )


@dataclass(frozen=True, slots=True)
class Due:
    kind: DueKind
    at: int | None = None  # first chain second the contracts accept it; None with NOTHING
    until: int | None = None  # last chain second they accept it; None: no end (or NOTHING)

    def ready(self, now: int) -> bool:
        return self.at is not None and now >= self.at and (self.until is None or now <= self.until)


NOTHING = Due(DueKind.NOTHING)


def due_action(
    job: JobClock, now: int, windows: Windows, *, audit: AuditClock | None = None, sample: bool = False
) -> Due:
    """The next transaction a job needs and from when (see the module docstring for the rule).

    audit: the job's AuditCourt audit (None: never opened, or no court); sample: the caller may still
    find a Committed job drawn for a sampled audit (sampling on, its draw not known to pass it over)."""
    w = windows
    if job.status == JobStatus.OPEN:
        return Due(DueKind.CANCEL, job.timestamp + w.commit_timeout + 1)
    if job.status == JobStatus.COMMITTED:
        window_ends = job.timestamp + w.challenge_window
        if sample and now < window_ends:
            return Due(DueKind.SAMPLE, job.timestamp)
        return Due(DueKind.FINALIZE, window_ends)
    if job.status != JobStatus.DISPUTED:
        return NOTHING
    timeout = Due(DueKind.FINALIZE, job.timestamp + w.dispute_timeout)
    if w.audit_commit_window is None:
        return timeout
    phases = w.audit_commit_window + w.audit_reveal_window
    status = AuditStatus.NONE if audit is None else audit.status
    if status == AuditStatus.NONE:
        # The court refuses to open an audit it could not finish before the dispute times out.
        latest_open = job.timestamp + w.dispute_timeout - phases - 2
        return Due(DueKind.OPEN_AUDIT, job.timestamp) if now <= latest_open else timeout
    if status == AuditStatus.OPEN:
        assert audit is not None
        return Due(DueKind.RESOLVE_AUDIT, audit.opened_at + phases + 1)
    return NOTHING  # resolved: resolving settled the job


class VotePhase(enum.Enum):
    """Where a drawn verifier's own vote stands."""

    DRAWN = "drawn"  # not committed yet
    COMMITTED = "committed"
    REVEALED = "revealed"


def vote_due(
    audit: AuditClock, now: int, windows: Windows, *, vote: VotePhase, everyone_committed: bool = False
) -> Due:
    """What a drawn verifier's vote needs next (see the module docstring). everyone_committed: every
    verifier drawn for the position committed (reveals open early)."""
    if audit.status != AuditStatus.OPEN or windows.audit_commit_window is None:
        return NOTHING
    commit_deadline = audit.opened_at + windows.audit_commit_window
    reveal_deadline = commit_deadline + windows.audit_reveal_window
    if vote is VotePhase.DRAWN:
        if now > commit_deadline:
            return Due(DueKind.MISSED, commit_deadline + 1)
        return Due(DueKind.COMMIT_VOTE, audit.opened_at, commit_deadline)
    if vote is VotePhase.COMMITTED:
        if now > reveal_deadline:
            return Due(DueKind.MISSED, reveal_deadline + 1)
        opens = audit.opened_at if everyone_committed else commit_deadline + 1
        return Due(DueKind.REVEAL_VOTE, opens, reveal_deadline)
    return Due(DueKind.RESOLVE_AUDIT, reveal_deadline + 1)


def auditable(job: JobClock, windows: Windows, *, audit: AuditClock | None = None, now: int) -> bool:
    """Whether anyone may still need the job's evidence: an audit may still be opened, or an open one is
    still in its commit or reveal phase (see the module docstring)."""
    if job.status not in (JobStatus.FINALIZED, JobStatus.CANCELLED):
        return True  # None (unknown here: not ours to judge), Open, Committed, Disputed
    if audit is None or audit.status != AuditStatus.OPEN or windows.audit_commit_window is None:
        return False
    return now <= audit.opened_at + windows.audit_commit_window + windows.audit_reveal_window


def send_due(market: Marketplace, sender: Sender, kind: DueKind, job_id: int, terms: bytes) -> TxResult:
    """Send the transaction of a due action (not NOTHING). Blocking."""
    send: dict[DueKind, Callable[[Sender, int, bytes], TxResult]] = {
        DueKind.CANCEL: market.cancel,
        DueKind.SAMPLE: market.sample_audit,
        DueKind.FINALIZE: market.finalize,
        DueKind.OPEN_AUDIT: market.open_audit,
        DueKind.RESOLVE_AUDIT: market.resolve_audit,
    }
    return send[kind](sender, job_id, terms)

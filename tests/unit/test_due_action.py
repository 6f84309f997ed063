"""The due-action rule against the contracts' own clocks.

Every expected value below is worked out by hand from contracts/JobMarket.sol and contracts/AuditCourt.sol
with the windows of WINDOWS, for a job whose timestamp is T = 1000:
- cancel:        reverts CommitWindowOpen while `block.timestamp <= T + commitTimeout` (1100): from 1101;
- finalize (Committed): reverts ChallengeWindowOpen while `block.timestamp < T + challengeWindow` (1050);
- sampleAudit:   reverts ChallengeWindowClosed from `T + challengeWindow` (1050);
- finalize (Disputed): reverts ChallengeWindowOpen while `block.timestamp < T + disputeTimeout` (1400);
- openAudit:     reverts AuditTooLate after `T + disputeTimeout - commitWindow - revealWindow - 2` (1298);
- resolve:       reverts RevealPhaseOpen while `block.timestamp <= openedAt + commitWindow + revealWindow`
                 (opened at 1200: 1300), so from 1301.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest

from splitmesh.chain import AuditStatus, JobStatus
from splitmesh.chain.due import Due, DueKind, VotePhase, Windows, auditable, due_action, vote_due

T = 1000
WINDOWS = Windows(
    commit_timeout=100,
    challenge_window=50,
    dispute_timeout=400,
    audit_commit_window=60,
    audit_reveal_window=40,
)
NO_COURT = replace(WINDOWS, audit_commit_window=None, audit_reveal_window=0)


@dataclass(frozen=True)
class Job:
    status: JobStatus
    timestamp: int


@dataclass(frozen=True)
class Audit:
    status: AuditStatus
    opened_at: int


OPEN, COMMITTED, DISPUTED = JobStatus.OPEN, JobStatus.COMMITTED, JobStatus.DISPUTED
K = DueKind
OPENED = Audit(AuditStatus.OPEN, 1200)  # its job was held at 1200 too
NONE = Audit(AuditStatus.NONE, 0)
RESOLVED = Audit(AuditStatus.RESOLVED, 1200)

# name: (status, audit, sample, windows, now, expected kind, expected at, ready now)
CASES = {
    "open, at the commit deadline": (OPEN, None, False, WINDOWS, 1100, K.CANCEL, 1101, False),
    "open, one second after the deadline": (OPEN, None, False, WINDOWS, 1101, K.CANCEL, 1101, True),
    "open, just submitted": (OPEN, None, False, WINDOWS, T, K.CANCEL, 1101, False),
    "committed, window open": (COMMITTED, None, False, WINDOWS, 1049, K.FINALIZE, 1050, False),
    "committed, exactly at the window's end": (COMMITTED, None, False, WINDOWS, 1050, K.FINALIZE, 1050, True),
    "committed, drawable, window open": (COMMITTED, None, True, WINDOWS, 1049, K.SAMPLE, T, True),
    "committed, drawable, window closed": (COMMITTED, None, True, WINDOWS, 1050, K.FINALIZE, 1050, True),
    "committed, drawable, in its own second": (COMMITTED, None, True, WINDOWS, T, K.SAMPLE, T, True),
    "disputed, no court, before timeout": (DISPUTED, None, False, NO_COURT, 1399, K.FINALIZE, 1400, False),
    "disputed, no court, at the timeout": (DISPUTED, None, False, NO_COURT, 1400, K.FINALIZE, 1400, True),
    "disputed, no court, audit ignored": (DISPUTED, OPENED, False, NO_COURT, 1300, K.FINALIZE, 1400, False),
    "disputed, just now": (DISPUTED, None, False, WINDOWS, T, K.OPEN_AUDIT, T, True),
    "disputed, last second to open": (DISPUTED, None, False, WINDOWS, 1298, K.OPEN_AUDIT, T, True),
    "disputed, too late to open": (DISPUTED, None, False, WINDOWS, 1299, K.FINALIZE, 1400, False),
    "disputed, unaudited at the timeout": (DISPUTED, None, False, WINDOWS, 1400, K.FINALIZE, 1400, True),
    "disputed, audit status none": (DISPUTED, NONE, False, WINDOWS, 1100, K.OPEN_AUDIT, T, True),
    "at the reveal deadline": (DISPUTED, OPENED, False, WINDOWS, 1300, K.RESOLVE_AUDIT, 1301, False),
    "after the reveal deadline": (DISPUTED, OPENED, False, WINDOWS, 1301, K.RESOLVE_AUDIT, 1301, True),
    "disputed, audit resolved": (DISPUTED, RESOLVED, False, WINDOWS, 5000, K.NOTHING, None, False),
    "finalized": (JobStatus.FINALIZED, None, True, WINDOWS, 5000, K.NOTHING, None, False),
    "cancelled": (JobStatus.CANCELLED, None, False, WINDOWS, 5000, K.NOTHING, None, False),
    "unknown job": (JobStatus.NONE, None, False, WINDOWS, 5000, K.NOTHING, None, False),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_due_action_follows_the_contracts(case: tuple) -> None:
    status, audit, sample, windows, now, kind, at, ready = case
    due = due_action(Job(status, T), now, windows, audit=audit, sample=sample)
    assert due == Due(kind, at)
    assert due.ready(now) is ready


def test_windows_are_read_from_the_market_and_its_court() -> None:
    params = {"commit_timeout": 100, "challenge_window": 50, "dispute_timeout": 400}
    court = {"commit_window": 60, "reveal_window": 40}
    with_court = SimpleNamespace(parameters=lambda: params, audit_parameters=lambda: court, court=object())
    without = SimpleNamespace(parameters=lambda: params, audit_parameters=None, court=None)
    assert Windows.of(with_court) == WINDOWS  # type: ignore[arg-type]
    assert Windows.of(without) == NO_COURT  # type: ignore[arg-type]


# A verifier's own vote, for an audit opened at 1200 (commit deadline 1260, reveal deadline 1300):
# - commitVote:  reverts CommitPhaseClosed when `block.timestamp > openedAt + commitWindow` (1260);
# - revealVote:  reverts RevealNotOpen while `block.timestamp <= 1260` unless every drawn verifier
#                committed, and RevealPhaseClosed when `block.timestamp > 1300`;
# - resolve:     from 1301, as above.
DRAWN, VOTED, REVEALED = VotePhase.DRAWN, VotePhase.COMMITTED, VotePhase.REVEALED
# name: (audit, vote phase, everyone committed, now, expected due, ready now)
VOTE_CASES = {
    "drawn, just opened": (OPENED, DRAWN, False, 1200, Due(K.COMMIT_VOTE, 1200, 1260), True),
    "drawn, last second to commit": (OPENED, DRAWN, False, 1260, Due(K.COMMIT_VOTE, 1200, 1260), True),
    "drawn, commit phase closed": (OPENED, DRAWN, False, 1261, Due(K.MISSED, 1261), True),
    "committed, others still voting": (OPENED, VOTED, False, 1230, Due(K.REVEAL_VOTE, 1261, 1300), False),
    "committed, everyone committed": (OPENED, VOTED, True, 1230, Due(K.REVEAL_VOTE, 1200, 1300), True),
    "committed, commit phase over": (OPENED, VOTED, False, 1261, Due(K.REVEAL_VOTE, 1261, 1300), True),
    "committed, last second to reveal": (OPENED, VOTED, False, 1300, Due(K.REVEAL_VOTE, 1261, 1300), True),
    "committed, reveal phase closed": (OPENED, VOTED, False, 1301, Due(K.MISSED, 1301), True),
    "revealed, at the reveal deadline": (OPENED, REVEALED, True, 1300, Due(K.RESOLVE_AUDIT, 1301), False),
    "revealed, after it": (OPENED, REVEALED, True, 1301, Due(K.RESOLVE_AUDIT, 1301), True),
    "revealed, audit resolved": (RESOLVED, REVEALED, True, 1400, Due(K.NOTHING), False),
    "drawn, audit resolved": (RESOLVED, DRAWN, False, 1230, Due(K.NOTHING), False),
}


@pytest.mark.parametrize("case", VOTE_CASES.values(), ids=list(VOTE_CASES))
def test_vote_due_follows_the_court(case: tuple) -> None:
    audit, phase, everyone, now, expected, ready = case
    due = vote_due(audit, now, WINDOWS, vote=phase, everyone_committed=everyone)
    assert due == expected
    assert due.ready(now) is ready


def test_a_verifier_and_the_keepers_resolve_from_the_same_second() -> None:
    keeper = due_action(Job(DISPUTED, 1200), 1301, WINDOWS, audit=OPENED)
    verifier = vote_due(OPENED, 1301, WINDOWS, vote=REVEALED)
    assert keeper == verifier == Due(K.RESOLVE_AUDIT, 1301)


# name: (job status, audit, now, still auditable)
AUDITABLE_CASES = {
    "open": (OPEN, None, 9999, True),
    "committed": (COMMITTED, None, 9999, True),
    "disputed": (DISPUTED, OPENED, 9999, True),
    "finalized, never audited": (JobStatus.FINALIZED, None, 1000, False),
    "finalized by its audit": (JobStatus.FINALIZED, RESOLVED, 1250, False),
    "cancelled": (JobStatus.CANCELLED, None, 1000, False),
    "finalized at its timeout, audit still revealing": (JobStatus.FINALIZED, OPENED, 1300, True),
    "finalized at its timeout, audit past its reveal": (JobStatus.FINALIZED, OPENED, 1301, False),
}


@pytest.mark.parametrize("case", AUDITABLE_CASES.values(), ids=list(AUDITABLE_CASES))
def test_auditable_until_no_window_is_left(case: tuple) -> None:
    status, audit, now, expected = case
    assert auditable(Job(status, T), WINDOWS, audit=audit, now=now) is expected

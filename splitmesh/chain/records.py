"""What the contracts' views and events describe: statuses, nodes, jobs, audits, challenges (plain records).

The enums mirror the Solidity enums by value; the records are what `splitmesh.chain.marketplace.Marketplace`
reads back, decoupled from web3 so the coordinator, node and client can pass them around.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from splitmesh.chain.terms import JobTerms
from splitmesh.chain.tx import TxResult


class JobStatus(enum.IntEnum):
    NONE = 0
    OPEN = 1
    COMMITTED = 2
    DISPUTED = 3
    FINALIZED = 4
    CANCELLED = 5


class NodeStatus(enum.IntEnum):
    NONE = 0
    ACTIVE = 1
    INACTIVE = 2


class AuditStatus(enum.IntEnum):
    NONE = 0
    OPEN = 1
    RESOLVED = 2


class VoteStatus(enum.IntEnum):
    NONE = 0  # not drawn
    DRAWN = 1
    COMMITTED = 2
    HONEST = 3  # revealed
    FRAUD = 4  # revealed


class Verdict(enum.IntEnum):
    """What a verifier votes on one route position (AuditCourt.HONEST / FRAUD)."""

    HONEST = 1
    FRAUD = 2


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: int
    name: str
    weights_hash: bytes
    registrant: str
    num_layers: int
    boundaries: tuple[int, ...]  # b_0 = 0 < ... < b_m = num_layers

    @property
    def num_shards(self) -> int:
        return len(self.boundaries) - 1

    def layers_of(self, shard: int) -> range:
        return range(self.boundaries[shard], self.boundaries[shard + 1])


@dataclass(frozen=True, slots=True)
class NodeInfo:
    address: str
    status: NodeStatus
    model_id: int
    shard: int
    price_per_token: int  # wei
    stake: int  # wei
    unbonding: int  # wei
    unlock_at: int  # unix seconds; unbonding is withdrawable strictly after
    earnings: int  # wei credited, withdrawable from the JobMarket
    pooled: bool  # eligible for matching now
    encryption_key: bytes
    endpoint: str


@dataclass(frozen=True, slots=True)
class JobState:
    job_id: int
    terms_hash: bytes
    status: JobStatus
    committed_mask: int
    billed_tokens: int
    timestamp: int  # Open: submitted at; Committed: last commit at; Disputed: held at


@dataclass(frozen=True, slots=True)
class PanelInfo:
    """The verifiers drawn for one route position of an audit, their votes and the tallies."""

    position: int
    verifiers: tuple[str, ...]
    votes: tuple[VoteStatus, ...]  # votes[i] is verifiers[i]'s
    commitments: tuple[bytes, ...]  # zero until committed, zero again once revealed
    committed: int  # verifiers who committed (revealed or not)
    honest_votes: int  # revealed honest
    fraud_votes: int  # revealed fraud


@dataclass(frozen=True, slots=True)
class AuditInfo:
    job_id: int
    status: AuditStatus
    hops: int
    unverifiable_mask: int  # positions without any verifier to draw (counted as honest)
    fraud_mask: int  # positions found fraudulent, once resolved
    opened_at: int  # unix seconds
    commit_deadline: int  # last second of the commit phase
    reveal_deadline: int  # last second of the reveal phase; resolve strictly after
    panels: tuple[PanelInfo, ...]  # one per route position


@dataclass(frozen=True, slots=True)
class ChallengeInfo:
    """An open challenge of a job (JobMarket.challengeOf); settled challenges read as none."""

    challenger: str  # zero address: no open challenge
    bond: int  # wei

    @property
    def open(self) -> bool:
        return int(self.challenger, 16) != 0


@dataclass(frozen=True, slots=True)
class SubmittedJob:
    job_id: int
    terms: JobTerms
    packed_terms: bytes
    metadata: bytes
    tx: TxResult | None  # None when read back from an event

"""Failover mid-generation: who to blame for a failed step, how long to ban it, what to replay.

When a step fails because a route node died, stalled past the step timeout, lost its state (restarted)
or answered garbage or a forged answer, the client abandons the job (not ended: the route's honest nodes
commit what they served when their sessions expire and are paid what the client signed for; a node that
never commits is not paid) and submits a new job for the rest of the generation, asking the JobMarket to
avoid the banned nodes (`submitJobAvoiding`). The new route's first step replays the prefix: the very
same noised Z chunks the client already released (never fresh noise, so the new nodes learn nothing the
old ones were not already given), in one prefill. Sampling continues on the client's own generator, so
greedy and seeded generations give the tokens an unfaulted run gives.

The chain stays the source of truth for payment: every job used (abandoned or ended) settles on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from client_sdk.errors import ForgedReply, MalformedReply, NodeLostState, NodeUnavailable, StepFailed

logger = logging.getLogger(__name__)

# A node answering these codes is reporting the failure of the next node on the route.
DOWNSTREAM_CODES = frozenset(
    {
        "next_node_unreachable",
        "next_node_refused",
        "next_node_timeout",
        "next_node_closed",
        "bad_downstream_reply",
    }
)
# A node answering these codes has left the job on its own: the job cannot go on there, the generation
# can go on elsewhere. `shutting_down`: it is draining to stop (banned: it is going away); `job_ended`:
# it closed the job (a restart drained it, or the client idled past its session TTL) and is otherwise
# fine (not banned: a new job may be routed to it).
LEFT_JOB_CODES = {"shutting_down": True, "job_ended": False}  # code -> ban the node
MAX_AVOID = 8  # the registry's MAX_AVOID: most nodes one submit may avoid


@dataclass(kw_only=True)
class FailoverPolicy:
    """How a generation survives a failing route node. Defaults suit a public marketplace."""

    max_failovers: int = 3  # new jobs one generation may open after route failures; 0 = fail at once
    step_timeout: float | None = None  # seconds one step may take; None = the Client's step_timeout
    probe_timeout: float = 2.0  # seconds a route node gets to answer /health after a stalled step
    ban_seconds: float = 300.0  # first ban of a failing node; each further ban doubles it (backoff)
    max_ban_seconds: float = 3600.0  # longest ban

    def __post_init__(self) -> None:
        if self.max_failovers < 0 or self.probe_timeout <= 0 or self.ban_seconds < 0:
            raise ValueError("max_failovers >= 0, probe_timeout > 0 and ban_seconds >= 0, please")


@dataclass
class FailoverReport:
    """What failing over cost a generation (on its receipt)."""

    failovers: int = 0  # new jobs opened after a route failure
    replays: int = 0  # replayed prefill steps (one per failover)
    replayed_tokens: int = 0  # positions sent again to a new route
    seconds_lost: float = 0.0  # from the failed step's start to the replacement route's answer
    jobs: list[int] = field(default_factory=list)  # every job the generation used, oldest first
    abandoned: list[int] = field(default_factory=list)  # jobs left open (settle with cancel/finalize)
    banned: list[str] = field(default_factory=list)  # nodes blamed, in order
    causes: list[str] = field(default_factory=list)  # one line per failover

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class BanList:
    """Nodes the client will not be routed to for a while; a repeat offender's ban doubles. Thread-safe:
    one per Client, shared by its concurrent generations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def ban(self, node: str, policy: FailoverPolicy, now: float | None = None) -> float:
        """Ban `node`; returns the ban's length in seconds."""
        now = time.monotonic() if now is None else now
        key = node.lower()
        with self._lock:
            count = self._count.get(key, 0)
            seconds = min(policy.ban_seconds * 2**count, policy.max_ban_seconds)
            self._count[key] = count + 1
            self._until[key] = max(self._until.get(key, 0.0), now + seconds)
        return seconds

    def active(self, now: float | None = None) -> list[str]:
        """Banned nodes now, the longest-banned first, at most MAX_AVOID (what one submit can avoid)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            live = sorted(((u, n) for n, u in self._until.items() if u > now), reverse=True)
        return [n for _, n in live[:MAX_AVOID]]


def blame(exc: Exception, route: list[str], probe: Any = None) -> tuple[list[str], str] | None:
    """The route nodes a failed step points at, and a one-line cause; None when the failure is not a
    node's (a refused step the client caused, a job past its deadline): then there is no failover.
    `probe(position) -> bool` checks a node's liveness after a stall (no reply in time)."""
    if isinstance(exc, ForgedReply):
        return [route[exc.position]], f"forged answer at position {exc.position}: {exc.reason}"
    if isinstance(exc, NodeLostState):
        return [exc.node or route[exc.position or 0]], f"node lost the job's state: {exc.reason}"
    if isinstance(exc, StepFailed) and exc.code in LEFT_JOB_CODES:
        where = exc.position if exc.position is not None else _index(route, exc.node)
        if where is None or not 0 <= where < len(route):
            return None
        banned = [route[where]] if LEFT_JOB_CODES[exc.code] else []
        return banned, f"{exc.code} from position {where}: {exc.reason}"
    if isinstance(exc, StepFailed):
        if exc.code not in DOWNSTREAM_CODES:
            return None
        reporter = exc.position if exc.position is not None else _index(route, exc.node)
        if reporter is None or reporter + 1 >= len(route):
            return None
        return [route[reporter + 1]], f"{exc.code} reported by position {reporter}"
    if isinstance(exc, MalformedReply):
        return [route[0]], f"malformed reply from the first node: {exc}"
    if isinstance(exc, NodeUnavailable):
        if probe is None or not exc.stalled:  # the link it names: the first node's, or a return channel
            node = route[_index(route, exc.node) or 0]
            return [node], f"node {node} unreachable: {exc}"
        dead = [node for position, node in enumerate(route) if not probe(position)]
        return dead, f"step stalled past its timeout; not answering a probe: {dead or 'none'}"
    return None


def _index(route: list[str], node: str | None) -> int | None:
    lowered = [n.lower() for n in route]
    return lowered.index(node.lower()) if node is not None and node.lower() in lowered else None


@dataclass
class Released:
    """The noised Z chunks the client sent, in order: what a replacement route is given again."""

    chunks: list[torch.Tensor] = field(default_factory=list)  # each [1, q, hidden]

    def add(self, chunk: torch.Tensor) -> None:
        self.chunks.append(chunk)

    def prefix(self) -> torch.Tensor:
        """Every released position so far, [1, positions, hidden]."""
        return torch.cat(self.chunks, dim=1)

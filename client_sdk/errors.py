"""Errors the client SDK raises. Each says what went wrong and what to try next."""

from __future__ import annotations

from splitmesh.errors import SplitmeshError


class ClientError(SplitmeshError):
    """Base class of client SDK errors."""


class NoRoute(ClientError, LookupError):
    """No plan or no active node can serve the shards the client needs."""


class EscrowTooSmall(ClientError, ValueError):
    """The escrow does not cover max tokens times the matched route's prices plus the hop fees."""


class NodeUnavailable(ClientError, ConnectionError):
    """A node of the route could not be reached or dropped the session; `stalled` when it was reached but
    no reply came within the step timeout (any node of the route may be the one stalling)."""

    def __init__(self, message: str, *, stalled: bool = False, node: str | None = None):
        super().__init__(message)
        self.stalled = stalled
        self.node = node  # set when the first node refused the link (nothing was sent)
        self.job_id: int | None = None  # set when that happened to a job just submitted


class StepFailed(ClientError, RuntimeError):
    """A node of the route rejected a step; `status`, `code` and `node` say which and why."""

    def __init__(self, status: int, code: str, reason: str, node: str | None, position: int | None):
        where = f"node {node}" + (f" (route position {position})" if position is not None else "")
        super().__init__(f"{where} rejected the step with {status} {code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason
        self.node = node
        self.position = position


class NodeLostState(StepFailed):
    """A node of the route lost the job's state (it restarted and its KV cache is gone): code
    `state_lost`. The job cannot continue through it; the client fails over to a new job."""


class NodeBusy(StepFailed):
    """A node of the route is at capacity (HTTP 503 `busy`): retry after `retry_after` seconds or on
    another route. `job_id` is set when the refused step was the job's first: the SDK released that job
    on-chain (JobMarket.releaseJob), so its cancel after the commit deadline refunds the escrow and slashes
    nobody."""

    def __init__(
        self,
        status: int,
        code: str,
        reason: str,
        node: str | None,
        position: int | None,
        retry_after: float | None = None,  # seconds; None: the node gave no hint
    ):
        super().__init__(status, code, reason, node, position)
        self.retry_after = retry_after
        self.job_id: int | None = None


class RouteBusy(ClientError, ConnectionRefusedError):
    """Every probed node of a shard's pool is at capacity: nothing was submitted and no escrow locked.
    Retry after `retry_after` seconds (the shortest hint a full node gave)."""

    def __init__(self, message: str, *, shard: int, full: list[str], retry_after: float):
        super().__init__(message)
        self.shard = shard  # the first shard with no node that has room
        self.full = full  # the nodes of that shard found full
        self.retry_after = retry_after  # seconds


class MalformedReply(ClientError, ValueError):
    """A node returned a frame or message that does not follow the protocol."""


class ForgedReply(ClientError, ValueError):
    """A step's reply fails its signed answers: a tensor was replaced on the route (the job is stopped).

    `position` is the route position whose answer failed (missing, signed by someone else, or not
    chaining with its neighbour or with what the client sent or received), `node` the route's node there.
    """

    def __init__(self, job_id: int, step: int, position: int, node: str, reason: str):
        super().__init__(
            f"job {job_id} step {step}: the answer of route position {position} (node {node}) fails: "
            f"{reason}. The reply was refused and the job stopped (not ended; its nodes commit what they "
            "served when their sessions expire); submit a new job to continue."
        )
        self.job_id = job_id
        self.step = step
        self.position = position
        self.node = node
        self.reason = reason


class CommitmentMismatch(ClientError, ValueError):
    """A node's hash chain (reported, or committed on-chain) differs from what the client sent or received.

    When raised for an on-chain commitment, `job_id` and `position` say which, the message says how to
    dispute it (`Client.challenge(job_id)` inside the challenge window), and `result` carries what the
    job returned (a Generation or a TrainingReport) when there is one.
    """

    def __init__(self, message: str, *, job_id: int | None = None, position: int | None = None):
        super().__init__(message)
        self.job_id = job_id
        self.position = position
        self.result: object | None = None


class NotSettled(ClientError, RuntimeError):
    """The job cannot be finalized yet (commits missing or the challenge window is still open)."""


class ChallengeRefused(ClientError, RuntimeError):
    """The job cannot be challenged (not committed, challenge window closed, or challenges disabled)."""


class TrainingError(ClientError, ValueError):
    """A training setting, example or tensor does not fit (no trainable part, wrong shapes, bad file)."""

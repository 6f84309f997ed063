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
    """A node of the route could not be reached or dropped the session."""


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


class MalformedReply(ClientError, ValueError):
    """A node returned a frame or message that does not follow the protocol."""


class CommitmentMismatch(ClientError, ValueError):
    """A node's reported hash chain differs from what the client sent or received."""


class NotSettled(ClientError, RuntimeError):
    """The job cannot be finalized yet (commits missing or the challenge window is still open)."""


class ChallengeRefused(ClientError, RuntimeError):
    """The job cannot be challenged (not committed, challenge window closed, or challenges disabled)."""


class TrainingError(ClientError, ValueError):
    """A training setting, example or tensor does not fit (no trainable part, wrong shapes, bad file)."""

"""Errors of the node daemon. A `StepRejected` becomes a 4xx/5xx JSON reply; the server keeps serving."""

from __future__ import annotations

from splitmesh.errors import SplitmeshError


class NodeError(SplitmeshError):
    """Base class of node daemon errors."""


class NodeSetupError(NodeError, RuntimeError):
    """The node cannot start: model not registered, stake too low, port taken, ..."""


class StepRejected(NodeError, ValueError):
    """A peer's message was refused; carries the HTTP-like status and a stable code for the reply."""

    def __init__(
        self, status: int, code: str, reason: str, *, node: str | None = None, position: int | None = None
    ):
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.node = node  # set when the rejection came from a node further down the route
        self.position = position


def bad_request(code: str, reason: str) -> StepRejected:
    return StepRejected(400, code, reason)


def unauthorized(reason: str, code: str = "bad_signature") -> StepRejected:
    return StepRejected(401, code, reason)


def forbidden(code: str, reason: str) -> StepRejected:
    return StepRejected(403, code, reason)


def not_found(reason: str, code: str = "unknown_job") -> StepRejected:
    return StepRejected(404, code, reason)


def conflict(code: str, reason: str) -> StepRejected:
    return StepRejected(409, code, reason)


def gone(code: str, reason: str) -> StepRejected:
    return StepRejected(410, code, reason)

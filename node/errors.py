"""Errors of the node daemon. A `StepRejected` becomes a 4xx/5xx JSON reply; the server keeps serving."""

from __future__ import annotations

from splitmesh.errors import SplitmeshError


class NodeError(SplitmeshError):
    """Base class of node daemon errors."""


class NodeSetupError(NodeError, RuntimeError):
    """The node cannot start: model not registered, stake too low, port taken, ..."""


# Every code a node puts in an error reply. Codes and statuses relayed from a node further down the
# route are peer data: anything outside these sets is replaced (node.relay), so a hostile next hop can
# neither grow the metrics' label set nor make this node answer with a status of its choosing.
ERROR_CODES = frozenset(
    [
        "bad_deadline",
        "bad_direct_meta",
        "bad_downstream_reply",
        "bad_dtype",
        "bad_frame",
        "bad_gradient",
        "bad_job_id",
        "bad_meta",
        "bad_positions",
        "bad_relay_signature",
        "bad_reply_signature",
        "bad_request",
        "bad_shape",
        "bad_signature",
        "bad_start",
        "bad_tokens",
        "body_too_large",
        "busy",
        "chain_unavailable",
        "client_unreachable",
        "direct_needs_stream",
        "downstream_error",
        "frame_too_large",
        "http_error",
        "internal",
        "job_closed",
        "job_deadline",
        "job_ended",
        "job_mismatch",
        "job_running",
        "mode_mismatch",
        "next_node_closed",
        "next_node_insecure",
        "next_node_key_mismatch",
        "next_node_refused",
        "next_node_timeout",
        "next_node_unreachable",
        "no_return_channel",
        "non_finite",
        "not_auditor",
        "not_in_route",
        "not_last_hop",
        "over_max_tokens",
        "payload_mismatch",
        "replayed_step",
        "session_broken",
        "shutting_down",
        "step_consumed",
        "terms_mismatch",
        "too_many_connections",
        "training_unsupported",
        "transcript_pruned",
        "unexpected_relay",
        "unknown_job",
        "unknown_step",
        "withheld",
        "wrong_shard",
    ]
)
ERROR_STATUSES = frozenset({400, 401, 403, 404, 409, 410, 413, 429, 500, 501, 502, 503, 504})


class StepRejected(NodeError, ValueError):
    """A peer's message was refused; carries the HTTP-like status and a stable code for the reply."""

    def __init__(
        self,
        status: int,
        code: str,
        reason: str,
        *,
        node: str | None = None,
        position: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.node = node  # set when the rejection came from a node further down the route
        self.position = position
        self.retry_after = retry_after  # seconds after which a retry may succeed (503 busy, 429)


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


def busy(code: str, reason: str, retry_after: float) -> StepRejected:
    """A 503 the peer may retry after `retry_after` seconds (a full queue, not a broken request)."""
    return StepRejected(503, code, reason, retry_after=retry_after)

"""The client's synchronous link to the first node of a route: one WebSocket per job."""

from __future__ import annotations

import json
import logging

import torch
from pydantic import ValidationError

from client_sdk.errors import MalformedReply, NodeBusy, NodeLostState, NodeUnavailable, StepFailed
from splitmesh.protocol import STREAM_PATH, EndMeta, EndResult, ErrorReply, StepResult
from splitmesh.wire import DEFAULT_MAX_FRAME_BYTES, FrameError, decode_frame
from splitmesh.wire.tls import LinkSecurityError, link_ssl, ws_url
from splitmesh.wire.websocket import BlockingWebSocket

logger = logging.getLogger(__name__)

STATE_LOST = "state_lost"  # a node's code for a job whose state it lost (it restarted)
BUSY = "busy"  # a node's code for a step refused at capacity (503, with a retry hint)


class RouteLink:
    """Sends step frames into the route and returns the last node's hidden state, in order."""

    def __init__(self, endpoint: str, job_id: int, node: str, key: bytes, *, timeout: float = 120.0):
        """`key` is the node's on-chain TLS key: the link is refused (splitmesh.wire.tls.PeerKeyMismatch,
        NoRegisteredKey) unless the node at `endpoint` proves it holds it."""
        self.url = ws_url(endpoint, STREAM_PATH.format(job=job_id))
        self.node = node
        self.timeout = timeout
        try:
            pin = link_ssl(self.url, key)
            self._ws = BlockingWebSocket(self.url, ssl=pin, open_timeout=10.0, close_timeout=2.0)
        except LinkSecurityError:
            raise
        except OSError as exc:  # refused, unreachable, handshake timed out
            raise NodeUnavailable(
                f"first node {node} at {endpoint} is unreachable ({exc}); the job stays open and can be "
                "cancelled for a refund after the commit timeout",
                node=node,
            ) from exc

    def _receive(self) -> str | bytes:
        try:
            return self._ws.receive(self.timeout)
        except TimeoutError as exc:
            raise NodeUnavailable(
                f"no reply from {self.url} within {self.timeout:g} s", stalled=True
            ) from exc
        except OSError as exc:
            raise NodeUnavailable(f"lost the link to node {self.node} at {self.url}: {exc}") from exc

    def _send(self, message: str | bytes) -> None:
        try:
            self._ws.send(message)
        except OSError as exc:
            raise NodeUnavailable(f"lost the link to node {self.node} at {self.url}: {exc}") from exc

    def step(self, frame: bytes, dtype: str) -> tuple[torch.Tensor, StepResult]:
        self._send(frame)
        reply = self._receive()
        if isinstance(reply, str):
            raise _failure(reply)
        try:
            result = decode_frame(reply, max_bytes=DEFAULT_MAX_FRAME_BYTES, allowed_dtypes={dtype})
            meta = StepResult.model_validate(result.meta)
        except (FrameError, ValidationError) as exc:
            raise MalformedReply(f"the route returned a malformed result frame: {exc}") from exc
        return result.tensor, meta

    def end(self, meta: EndMeta) -> EndResult:
        self._send(meta.model_dump_json())
        reply = self._receive()
        if isinstance(reply, bytes):
            raise MalformedReply("the route answered the end of the job with a binary frame")
        try:
            return EndResult.model_validate_json(reply)
        except ValidationError:
            raise _failure(reply) from None

    def close(self) -> None:
        self._ws.close()


def _failure(text: str) -> Exception:
    try:
        error = ErrorReply.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return MalformedReply(f"the route sent an unexpected message: {text[:200]!r}")
    if error.code == BUSY and error.status == 503:
        return NodeBusy(error.status, error.code, error.error, error.node, error.position, error.retry_after)
    kind = NodeLostState if error.code == STATE_LOST else StepFailed
    return kind(error.status, error.code, error.error, error.node, error.position)

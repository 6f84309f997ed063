"""The client's synchronous link to the first node of a route: one WebSocket per job."""

from __future__ import annotations

import contextlib
import json
import logging

import torch
from pydantic import ValidationError
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from client_sdk.errors import MalformedReply, NodeUnavailable, StepFailed
from splitmesh.protocol import STREAM_PATH, EndMeta, EndResult, ErrorReply, StepResult
from splitmesh.wire import FrameError, decode_frame

logger = logging.getLogger(__name__)

MAX_REPLY_BYTES = 256 * 1024 * 1024  # bytes of one result frame accepted from the route


class RouteLink:
    """Sends step frames into the route and returns the last node's hidden state, in order."""

    def __init__(self, endpoint: str, job_id: int, node: str, *, timeout: float = 120.0):
        base = endpoint.rstrip("/")
        self.url = ("ws" + base[4:] if base.startswith("http") else base) + STREAM_PATH.format(job=job_id)
        self.node = node
        self.timeout = timeout
        try:
            self._ws: ClientConnection = connect(
                self.url,
                max_size=MAX_REPLY_BYTES,
                compression=None,
                open_timeout=10.0,
                close_timeout=2.0,
                legacy=True,  # a plain connection object, owned and closed by this link
            )
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise NodeUnavailable(
                f"first node {node} at {endpoint} is unreachable ({exc}); the job stays open and can be "
                "cancelled for a refund after the commit timeout"
            ) from exc

    def _receive(self) -> str | bytes:
        try:
            return self._ws.recv(timeout=self.timeout)
        except TimeoutError as exc:
            raise NodeUnavailable(f"no reply from {self.url} within {self.timeout:g} s") from exc
        except (OSError, WebSocketException) as exc:
            raise NodeUnavailable(f"lost the link to node {self.node} at {self.url}: {exc}") from exc

    def _send(self, message: str | bytes) -> None:
        try:
            self._ws.send(message)
        except (OSError, WebSocketException) as exc:
            raise NodeUnavailable(f"lost the link to node {self.node} at {self.url}: {exc}") from exc

    def step(self, frame: bytes, dtype: str) -> tuple[torch.Tensor, StepResult]:
        self._send(frame)
        reply = self._receive()
        if isinstance(reply, str):
            raise _failure(reply)
        try:
            result = decode_frame(reply, max_bytes=MAX_REPLY_BYTES, allowed_dtypes={dtype})
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
        with contextlib.suppress(OSError, WebSocketException):
            self._ws.close()


def _failure(text: str) -> Exception:
    try:
        error = ErrorReply.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return MalformedReply(f"the route sent an unexpected message: {text[:200]!r}")
    return StepFailed(error.status, error.code, error.error, error.node, error.position)

"""The client's synchronous links to a route: one WebSocket per job to the first node and, for a
direct-return job (splitmesh.protocol), a return channel from the last node.

On a direct-return job the first node's link carries the client's step frames down and only
rejections (and the end's reply) back; each step's result comes on the return channel. The link waits
on both at once, so a rejection anywhere on the route and a result from the last node both end the wait.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from dataclasses import dataclass

import torch
from pydantic import ValidationError

from client_sdk.errors import MalformedReply, NodeBusy, NodeLostState, NodeUnavailable, StepFailed
from splitmesh.protocol import (
    RETURN_PATH,
    RETURN_READY,
    STREAM_PATH,
    EndMeta,
    EndResult,
    ErrorReply,
    ReturnHello,
    StepResult,
)
from splitmesh.wire import DEFAULT_MAX_FRAME_BYTES, FrameError, decode_frame
from splitmesh.wire.tls import LinkSecurityError, link_ssl, ws_url
from splitmesh.wire.websocket import BlockingWebSocket

logger = logging.getLogger(__name__)

STATE_LOST = "state_lost"  # a node's code for a job whose state it lost (it restarted)
Message = concurrent.futures.Future[bytes | str]
BUSY = "busy"  # a node's code for a step refused at capacity (503, with a retry hint)


@dataclass(frozen=True)
class ReturnRoute:
    """Where a direct-return job's results come from: the last node and the client's signed hello."""

    endpoint: str
    node: str
    key: bytes  # the last node's on-chain TLS key
    hello: ReturnHello


class RouteLink:
    """Sends step frames into the route and returns the last node's hidden state, in order."""

    def __init__(
        self,
        endpoint: str,
        job_id: int,
        node: str,
        key: bytes,
        *,
        timeout: float = 120.0,  # seconds one step may take
        returns: ReturnRoute | None = None,  # the return channel of a direct-return job
    ):
        """`key` is the node's on-chain TLS key: the link is refused (splitmesh.wire.tls.PeerKeyMismatch,
        NoRegisteredKey) unless the node at `endpoint` proves it holds it."""
        self.url = ws_url(endpoint, STREAM_PATH.format(job=job_id))
        self.node = node
        self.timeout = timeout
        self._ws = _open(self.url, key, node, "first")
        self._pending: Message | None = None  # the first link's next message, once asked for
        self.returns = returns
        self._back: BlockingWebSocket | None = None
        self._back_pending: Message | None = None
        if returns is not None:
            try:
                self._back = self._open_return(job_id, returns)
            except BaseException:
                self._ws.close()
                raise

    def _open_return(self, job_id: int, returns: ReturnRoute) -> BlockingWebSocket:
        url = ws_url(returns.endpoint, RETURN_PATH.format(job=job_id))
        back = _open(url, returns.key, returns.node, "last")
        try:
            back.send(returns.hello.model_dump_json())
            answer = back.receive(self.timeout)
        except (OSError, TimeoutError) as exc:
            back.close()
            raise NodeUnavailable(
                f"last node {returns.node} did not open the return channel: {exc}", node=returns.node
            ) from exc
        if answer != RETURN_READY:
            back.close()
            problem = _failure(answer) if isinstance(answer, str) else "a binary frame"
            raise NodeUnavailable(
                f"last node {returns.node} refused the return channel: {problem}", node=returns.node
            )
        return back

    def _receive(self) -> str | bytes:
        future, self._pending = self._pending or self._ws.receive_later(), None
        try:
            return future.result(self.timeout)
        except TimeoutError as exc:
            self._pending = future  # still the next message when it comes
            raise NodeUnavailable(
                f"no reply from {self.url} within {self.timeout:g} s", stalled=True
            ) from exc
        except OSError as exc:
            raise NodeUnavailable(f"lost the link to node {self.node} at {self.url}: {exc}") from exc

    def _receive_direct(self) -> bytes:
        """The result on the return channel, or a rejection on the first link, whichever comes first."""
        assert self._back is not None and self.returns is not None
        first = self._pending = self._pending or self._ws.receive_later()
        back = self._back_pending = self._back_pending or self._back.receive_later()
        done, _ = concurrent.futures.wait(
            [first, back], self.timeout, return_when=concurrent.futures.FIRST_COMPLETED
        )
        if first in done:  # the first link speaks on a direct job only to refuse, or it closed
            message = self._receive()
            if isinstance(message, str):
                raise _failure(message)
            raise MalformedReply("the first node sent a result frame on a direct-return job")
        if back in done:
            self._back_pending = None
            try:
                reply = back.result()
            except OSError as exc:
                node = self.returns.node
                raise NodeUnavailable(
                    f"lost the return channel from last node {node}: {exc}", node=node
                ) from exc
            if isinstance(reply, str):
                raise _failure(reply)
            return reply
        raise NodeUnavailable(f"no reply from the route within {self.timeout:g} s", stalled=True)

    def _send(self, message: str | bytes) -> None:
        try:
            self._ws.send(message)
        except OSError as exc:
            raise NodeUnavailable(f"lost the link to node {self.node} at {self.url}: {exc}") from exc

    def step(self, frame: bytes, dtype: str, *, direct: bool = False) -> tuple[torch.Tensor, StepResult]:
        """Send a step frame; the route's result (on the return channel when `direct`)."""
        self._send(frame)
        reply = self._receive_direct() if direct else self._receive()
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
        if self._back is not None:
            self._back.close()


def _open(url: str, key: bytes, node: str, which: str) -> BlockingWebSocket:
    try:
        pin = link_ssl(url, key)
        return BlockingWebSocket(url, ssl=pin, open_timeout=10.0, close_timeout=2.0)
    except LinkSecurityError:
        raise
    except OSError as exc:  # refused, unreachable, handshake timed out
        raise NodeUnavailable(
            f"{which} node {node} at {url} is unreachable ({exc}); the job stays open and can be "
            "cancelled for a refund after the commit timeout",
            node=node,
        ) from exc


def _failure(text: str) -> Exception:
    try:
        error = ErrorReply.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return MalformedReply(f"the route sent an unexpected message: {text[:200]!r}")
    if error.code == BUSY and error.status == 503:
        return NodeBusy(error.status, error.code, error.error, error.node, error.position, error.retry_after)
    kind = NodeLostState if error.code == STATE_LOST else StepFailed
    return kind(error.status, error.code, error.error, error.node, error.position)

"""The link from a node to the next node of a job's route: one WebSocket per job session, TLS pinned to
the next node's on-chain key (splitmesh.wire.tls), proxies from *_PROXY variables ignored.

On the old return path each step waits for the next node's reply (`send`, then `receive`). For
direct-return steps (splitmesh.protocol) nothing comes back for a step that went on: `watch` starts a
reader that owns the socket's receiving side and hands every rejection (or the next node's death) to a
callback, which passes it upstream; `end` then takes its reply from that reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from pydantic import ValidationError

from node.errors import ERROR_CODES, ERROR_STATUSES, StepRejected
from splitmesh.protocol import STREAM_PATH, EndMeta, EndResult, ErrorReply
from splitmesh.wire import DEFAULT_MAX_FRAME_BYTES
from splitmesh.wire.tls import LinkSecurityError, link_ssl, mismatch_from, ws_url

logger = logging.getLogger(__name__)

IDLE_CLOSE = 4408  # WebSocket close code (private range): no message within the idle timeout
Rejected = Callable[[StepRejected], Awaitable[None]]  # what a direct-return link does with a rejection
_CLOSED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


class Downstream:
    """Sends frames of one job to the next hop and returns its replies, in order."""

    def __init__(
        self, endpoint: str, job_id: int, key: bytes, *, timeout: float = 60.0, send_timeout: float = 30.0
    ):
        self.url = ws_url(endpoint, STREAM_PATH.format(job=job_id))
        self.key = key  # the next node's on-chain TLS key
        self.job_id = job_id
        self.timeout = timeout  # seconds the next node may take to answer one step
        self.send_timeout = send_timeout  # seconds one message may wait for a next node that stops reading
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None  # direct return: owns the socket's receiving side
        self._on_rejected: Rejected | None = None
        self._waiter: asyncio.Future[aiohttp.WSMessage] | None = None  # the end's reply, via the reader

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        if self._ws is not None and not self._ws.closed:
            return self._ws
        try:
            pin = link_ssl(self.url, self.key)
        except LinkSecurityError as exc:
            raise StepRejected(502, "next_node_insecure", str(exc)) from exc
        self._http = self._http or aiohttp.ClientSession(trust_env=False)
        try:
            self._ws = await self._http.ws_connect(
                self.url,
                max_msg_size=DEFAULT_MAX_FRAME_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                ssl=pin,
            )
        except aiohttp.ServerFingerprintMismatch as exc:
            logger.warning("refusing the next hop of job %d: %s", self.job_id, mismatch_from(self.url, exc))
            raise StepRejected(502, "next_node_key_mismatch", str(mismatch_from(self.url, exc))) from exc
        except aiohttp.WSServerHandshakeError as exc:
            raise StepRejected(
                502, "next_node_refused", f"next node at {self.url} refused the session: HTTP {exc.status}"
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise StepRejected(
                502, "next_node_unreachable", f"next node at {self.url} is unreachable: {exc}"
            ) from exc
        return self._ws

    async def send(self, frame: bytes) -> None:
        """Send one step frame; pair with `receive`."""
        ws = await self._connect()
        try:
            await asyncio.wait_for(ws.send_bytes(frame), self.send_timeout)
        except TimeoutError as exc:
            await self._abort()
            raise self._send_timed_out() from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            await self.close()
            raise StepRejected(502, "next_node_unreachable", f"lost the link to {self.url}: {exc}") from exc

    async def watch(self, on_rejected: Rejected) -> None:
        """Direct return: from now on the next node's messages are read in the background; a rejection
        of a step (or the link's loss) goes to `on_rejected` (the latest one given)."""
        self._on_rejected = on_rejected
        ws = await self._connect()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            message = await ws.receive()
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
                if message.type in _CLOSED:
                    return
                continue
            closed = message.type in _CLOSED
            if closed and (ws is not self._ws or ws.close_code == IDLE_CLOSE):
                return  # closed by us, or idle between steps: the next send opens a new link
            if message.type == aiohttp.WSMsgType.TEXT and (error := _as_error(message.data)) is not None:
                rejection = _relayed_rejection(error)
            elif closed:
                rejection = StepRejected(
                    502, "next_node_closed", f"next node at {self.url} closed the session"
                )
            else:
                rejection = StepRejected(
                    502, "bad_downstream_reply", f"next node at {self.url} answered a direct step"
                )
            if self._on_rejected is not None:
                try:
                    await self._on_rejected(rejection)
                except Exception:  # the upstream link may be gone too; nothing more to tell
                    logger.debug("job %d: could not pass a rejection upstream", self.job_id, exc_info=True)
            if closed:
                self._ws = None
                return

    def _send_timed_out(self) -> StepRejected:
        return StepRejected(
            504, "next_node_timeout", f"next node at {self.url} read nothing for {self.send_timeout:g} s"
        )

    async def _abort(self) -> None:
        """Drop a link whose peer stopped reading; a close handshake could wait on it forever."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.close(), 2.0)
        self._ws = self._http = None

    async def receive(self) -> bytes:
        """The next node's result frame for the step sent last, or its error."""
        message = await self._exchange()
        if message.type != aiohttp.WSMsgType.BINARY:
            raise StepRejected(
                502, "bad_downstream_reply", f"next node at {self.url} answered a step with text"
            )
        return bytes(message.data)

    async def _exchange(self, send_text: str | None = None) -> aiohttp.WSMessage:
        """Send `send_text` (if any) and return the next message; the next node's errors raise."""
        ws = await self._connect()
        reading = self._reader is not None and not self._reader.done()
        if reading:
            self._waiter = asyncio.get_running_loop().create_future()
        try:
            if send_text is not None:
                try:
                    await asyncio.wait_for(ws.send_str(send_text), self.send_timeout)
                except TimeoutError as exc:
                    await self._abort()
                    raise self._send_timed_out() from exc
            if reading and self._waiter is not None:
                message = await asyncio.wait_for(self._waiter, self.timeout)
            else:
                message = await ws.receive(self.timeout)
        except TimeoutError as exc:
            await self.close()
            raise StepRejected(
                504, "next_node_timeout", f"next node at {self.url} took over {self.timeout:g} s"
            ) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            await self.close()
            raise StepRejected(502, "next_node_unreachable", f"lost the link to {self.url}: {exc}") from exc
        if message.type == aiohttp.WSMsgType.TEXT:
            error = _as_error(message.data)
            if error is not None:
                raise _relayed_rejection(error)
        elif message.type != aiohttp.WSMsgType.BINARY:
            await self.close()
            raise StepRejected(
                502, "next_node_closed", f"next node at {self.url} closed the session ({message.type.name})"
            )
        return message

    async def end(self, meta: EndMeta) -> EndResult:
        message = await self._exchange(meta.model_dump_json())
        try:
            return EndResult.model_validate_json(message.data)
        except (ValidationError, TypeError) as exc:
            raise StepRejected(
                502, "bad_downstream_reply", f"next node at {self.url} sent a bad end reply: {exc}"
            ) from exc

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._http is not None:
            await self._http.close()
            self._http = None


def _as_error(text: str) -> ErrorReply | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or "code" not in data:
        return None
    try:
        return ErrorReply.model_validate(data)
    except ValidationError:
        return None


def _relayed_rejection(error: ErrorReply) -> StepRejected:
    """A downstream node's error, passed upstream with its code and status from the fixed sets only:
    they are peer data, and end up as a metrics label and as this node's own HTTP status."""
    code = error.code if error.code in ERROR_CODES else "downstream_error"
    status = error.status if error.status in ERROR_STATUSES else 502
    node = error.node if error.node is None or len(error.node) <= 42 else error.node[:42]
    reason = error.error if len(error.error) <= 1000 else error.error[:1000] + "..."
    if code != error.code:
        reason = f"next node answered an unknown error code: {reason}"
    # A busy next hop's retry hint goes up too, bounded (peer data): the client backs off as told.
    retry = None if error.retry_after is None else min(max(error.retry_after, 0.0), 600.0)
    return StepRejected(status, code, reason, node=node, position=error.position, retry_after=retry)

"""The node's aiohttp application: step stream (WebSocket), one-shot step/end (HTTP), health, metrics.

Every rejection is a JSON object {"status", "code", "error", "node", "position"}: the HTTP status on
the HTTP routes, a text message on the WebSocket (which stays open). Nothing a peer sends crashes
the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web
from pydantic import ValidationError

from node.admission import StreamLimits
from node.cheats import STALL_INTERVAL, Cheat
from node.errors import ERROR_CODES, StepRejected, bad_request
from node.relay import IDLE_CLOSE
from node.service import NodeService
from splitmesh.protocol import (
    END_PATH,
    RETURN_PATH,
    RETURN_READY,
    STEP_PATH,
    STREAM_PATH,
    TRANSCRIPT_PATH,
    EndMeta,
    ErrorReply,
    ReturnHello,
)

logger = logging.getLogger(__name__)

SERVICE = web.AppKey("service", NodeService)
INFO = web.AppKey("info", dict[str, Any])
LIMITS = web.AppKey("limits", StreamLimits)
JOB_ID = re.compile(r"[0-9]{1,78}")  # ASCII digits only: str.isdigit() also takes "²" and "١٢"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    service: NodeService, info: dict[str, Any], limits: StreamLimits | None = None
) -> web.Application:
    """App factory. `info` is static facts for /health (model, shard, layers, endpoint, ...)."""
    app = web.Application(client_max_size=service.max_frame_bytes, middlewares=[_error_middleware])
    app[SERVICE] = service
    app[INFO] = info
    app[LIMITS] = limits or StreamLimits()
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get(STREAM_PATH, _stream)
    app.router.add_get(RETURN_PATH, _return_channel)
    app.router.add_post(STEP_PATH, _post_step)
    app.router.add_post(END_PATH, _post_end)
    app.router.add_get(TRANSCRIPT_PATH, _get_transcript)
    return app


def _reply(service: NodeService, exc: StepRejected) -> ErrorReply:
    service.metrics.errors_total.labels(code=exc.code if exc.code in ERROR_CODES else "other").inc()
    return ErrorReply(
        status=exc.status,
        code=exc.code,
        error=exc.reason,
        node=exc.node or service.address,
        position=exc.position if exc.node else None,
        retry_after=exc.retry_after,
    )


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    service = request.app[SERVICE]
    try:
        return await handler(request)
    except StepRejected as exc:
        logger.debug("rejected %s: %s", request.path, exc.reason)
        response = web.json_response(_reply(service, exc).model_dump(), status=exc.status)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return response
    except web.HTTPRequestEntityTooLarge as exc:
        service.metrics.errors_total.labels(code="body_too_large").inc()
        reply = ErrorReply(
            status=413, code="body_too_large", error=exc.text or "body too large", node=service.address
        )
        return web.json_response(reply.model_dump(), status=413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reply = ErrorReply(status=exc.status, code="http_error", error=exc.reason, node=service.address)
        return web.json_response(reply.model_dump(), status=exc.status)
    except Exception:
        logger.exception("internal error on %s", request.path)
        service.metrics.errors_total.labels(code="internal").inc()
        reply = ErrorReply(
            status=500, code="internal", error="internal error; see the node log", node=service.address
        )
        return web.json_response(reply.model_dump(), status=500)


def _job_id(request: web.Request) -> int:
    raw = request.match_info["job"]
    if JOB_ID.fullmatch(raw) is None or int(raw) >= 1 << 256:
        raise bad_request("bad_job_id", f"job id {raw[:80]!r} is not a decimal uint256 (ASCII digits)")
    return int(raw)


async def _health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    info: dict[str, Any] = request.app[INFO]
    body = {
        "status": "ok" if service.accepting else "draining",
        "address": service.address,
        "sessions": len(service.sessions),
        "capacity": service.capacity(),
        **info,
    }
    return web.json_response(body)


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[SERVICE].metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def _post_step(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    job_id = _job_id(request)
    data = await request.read()
    result = await service.handle_step(data, job_id)
    assert result is not None  # without a stream to report on, direct-return steps are refused
    return web.Response(body=result, content_type="application/octet-stream")


async def _post_end(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    job_id = _job_id(request)
    meta = _parse_end(await request.read())  # bytes: bad UTF-8 is a 400, not a 500
    return web.json_response((await service.handle_end(meta, job_id)).model_dump())


async def _get_transcript(request: web.Request) -> web.StreamResponse:
    """Signed request in headers: X-Splitmesh-Requester, X-Splitmesh-Deadline, X-Splitmesh-Signature."""
    service = request.app[SERVICE]
    job_id = _job_id(request)
    headers = request.headers
    try:
        requester = headers["X-Splitmesh-Requester"]
        deadline = int(headers["X-Splitmesh-Deadline"])
        signature = headers["X-Splitmesh-Signature"]
        if not (requester.startswith("0x") and len(requester) == 42 and len(signature) == 132):
            raise ValueError("requester must be a 0x address and the signature 65 bytes in hex")
        bytes.fromhex(requester[2:] + signature[2:])
    except (KeyError, ValueError) as exc:
        raise bad_request(
            "bad_request", f"transcript requests need signed X-Splitmesh-* headers: {exc}"
        ) from exc
    body = await service.transcript(job_id, requester, deadline, signature)
    if service.cheat == Cheat.STALL_TRANSCRIPT:
        return await _drip(request, body)
    return web.Response(body=body, content_type="application/octet-stream")


async def _drip(request: web.Request, body: bytes) -> web.StreamResponse:
    """The stall-transcript cheat: the real transcript, one byte per STALL_INTERVAL seconds."""
    logger.warning("CHEAT stall-transcript: drip-feeding a %d-byte transcript", len(body))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = len(body)
    await response.prepare(request)
    for at in range(len(body)):
        await response.write(body[at : at + 1])
        await asyncio.sleep(STALL_INTERVAL)
    await response.write_eof()
    return response


def _parse_end(text: str | bytes) -> EndMeta:
    try:
        return EndMeta.model_validate_json(text)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise bad_request("bad_meta", f"end message rejected: {err.get('loc')}: {err.get('msg')}") from exc


async def _stream(request: web.Request) -> web.StreamResponse:
    """One WebSocket per job session: binary step frames in order, text end message last.

    Admitted under the per-IP and total caps; never compressed (a small deflated message could inflate
    to the frame limit); a message over the frame limit closes the socket (1009); a stream silent for
    the idle timeout is closed (4408); a peer that stops reading is dropped by the heartbeat and the
    send timeout.
    """
    service, limits = request.app[SERVICE], request.app[LIMITS]
    job_id = _job_id(request)
    if not service.accepting:
        raise StepRejected(503, "shutting_down", f"node {service.address} is shutting down")
    ip = request.remote or "?"
    limits.caps.acquire(ip)
    service.metrics.streams_open.inc()
    try:
        ws = web.WebSocketResponse(
            max_msg_size=service.max_frame_bytes, compress=False, heartbeat=limits.heartbeat
        )
        await ws.prepare(request)
        await _serve_stream(service, limits, ws, job_id)
        return ws
    finally:
        limits.caps.release(ip)
        service.metrics.streams_open.dec()


async def _return_channel(request: web.Request) -> web.StreamResponse:
    """The client's return channel for a job this node is the last hop of (direct return): a signed
    `ReturnHello` first, answered "ready" or with an error (then closed); then the node's result frames.
    Admitted under the same caps as a step stream."""
    service, limits = request.app[SERVICE], request.app[LIMITS]
    job_id = _job_id(request)
    ip = request.remote or "?"
    limits.caps.acquire(ip)
    try:
        ws = web.WebSocketResponse(max_msg_size=64 * 1024, compress=False, heartbeat=limits.heartbeat)
        await ws.prepare(request)

        async def send(frame: bytes) -> None:
            await asyncio.wait_for(ws.send_bytes(frame), limits.send_timeout)

        try:
            message = await ws.receive(timeout=limits.idle_timeout)
            if message.type != WSMsgType.TEXT:
                raise bad_request("bad_meta", "a return channel opens with a text ReturnHello")
            try:
                hello = ReturnHello.model_validate_json(message.data)
            except ValidationError as exc:
                raise bad_request("bad_meta", f"return hello rejected: {exc.errors()[0].get('msg')}") from exc
            await service.open_return(hello, job_id, send)
        except StepRejected as exc:
            await ws.send_str(json.dumps(_reply(service, exc).model_dump()))
            await ws.close()
            return ws
        except TimeoutError:
            await ws.close(code=IDLE_CLOSE, message=b"idle")
            return ws
        try:
            await ws.send_str(RETURN_READY)
            async for _ in ws:  # the client sends nothing more; this waits for the close
                pass
        finally:
            service.close_return(job_id, send)
        return ws
    finally:
        limits.caps.release(ip)


async def _serve_stream(
    service: NodeService, limits: StreamLimits, ws: web.WebSocketResponse, job_id: int
) -> None:
    async def report(exc: StepRejected) -> None:
        """A rejection that came from downstream after a direct-return step went on."""
        if not ws.closed:
            await asyncio.wait_for(ws.send_str(_reply(service, exc).model_dump_json()), limits.send_timeout)

    while True:
        try:
            message = await ws.receive(timeout=limits.idle_timeout)
        except TimeoutError:
            await ws.close(code=IDLE_CLOSE, message=b"idle")
            return
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return
        if message.type == WSMsgType.ERROR:
            logger.debug("job %d: stream error %s; closing it", job_id, ws.exception())
            return
        try:
            if message.type == WSMsgType.BINARY:
                step_reply = await service.handle_step(message.data, job_id, report)
                if step_reply is None:  # a direct-return step: answered on the client's return channel
                    continue
                reply: bytes | str = step_reply
            elif message.type == WSMsgType.TEXT:
                reply = (await service.handle_end(_parse_end(message.data), job_id)).model_dump_json()
            else:
                continue
        except StepRejected as exc:
            reply = json.dumps(_reply(service, exc).model_dump())
        except Exception:
            logger.exception("internal error on job %d's stream", job_id)
            service.metrics.errors_total.labels(code="internal").inc()
            reply = ErrorReply(
                status=500, code="internal", error="internal error; see the node log", node=service.address
            ).model_dump_json()
        send = ws.send_bytes(reply) if isinstance(reply, bytes) else ws.send_str(reply)
        try:
            await asyncio.wait_for(send, limits.send_timeout)
        except (TimeoutError, ConnectionError):
            logger.debug("job %d: the peer does not read its replies; dropping the stream", job_id)
            return

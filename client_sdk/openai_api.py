"""An OpenAI-compatible HTTP endpoint in front of the SDK: any OpenAI client, private split inference.

    GET  /v1/models            the local weights' name, with their registered plans (splitmesh extras)
    POST /v1/chat/completions  messages -> the model's chat template; stream or not
    POST /v1/completions       a prompt string; stream or not

Each request is one paid job through `Client.stream` (escrow, route, DP noise, receipt). The response
carries OpenAI's usage (prompt tokens, generated tokens, as in the receipt) and a `splitmesh` object an
OpenAI client ignores: job id, cost, epsilon and what the nodes could see. Epsilon per request comes in
`{"splitmesh": {"epsilon": 8}}` (the official client's `extra_body`), else the server's default.

Concurrency: jobs run at once, also on one key. A Client runs several generations in threads (each with
its own KV cache and noise; the key's transactions take nonces under the Sender's lock, so concurrent
submits never collide), up to `jobs_per_key` at a time per key; more keys add more. At most
`max_waiting` requests wait for a free slot; more get a 503 `busy` with Retry-After.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from client_sdk.client import Client, Generation, TokenEvent
from client_sdk.disclosure import sentence
from client_sdk.errors import (
    CommitmentMismatch,
    EscrowTooSmall,
    ForgedReply,
    MalformedReply,
    NodeUnavailable,
    NoRoute,
    RouteBusy,
    StepFailed,
)
from client_sdk.openai_schema import (
    APIError,
    ChatRequest,
    CompletionRequest,
    chat_response,
    chunk,
    parse,
    text_response,
    usage,
)
from splitmesh.errors import ConfigError, SplitmeshError

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class EndpointConfig:
    default_epsilon: float = math.inf  # DP budget per token when a request names none
    default_max_tokens: int = 256  # new tokens when a chat request names no limit (escrow is sized on it)
    max_waiting: int = 16  # requests that may wait for a free job slot; more get a 503
    jobs_per_key: int = 8  # generations one client key runs at once (each is its own on-chain job)
    api_key: str | None = None  # bearer key every request must carry; None = no check
    client_max_size: int = 1 << 20  # bytes of a request body


class ClientPool:
    """Clients (one per key), each running up to `jobs_per_key` jobs at once; a lease takes the least
    busy one."""

    def __init__(self, clients: list[Client], max_waiting: int, jobs_per_key: int = 1):
        if not clients:
            raise ConfigError("the endpoint needs at least one Client")
        if jobs_per_key < 1:
            raise ConfigError("jobs_per_key must be at least 1")
        self.clients = clients
        self.jobs_per_key = jobs_per_key
        self._running = dict.fromkeys(range(len(clients)), 0)  # client index -> jobs it runs now
        self._slots = asyncio.Semaphore(len(clients) * jobs_per_key)
        self._waiting = 0
        self.max_waiting = max_waiting

    @property
    def running(self) -> int:
        """Jobs running now, over every key."""
        return sum(self._running.values())

    async def lease(self) -> Client:
        if self._slots.locked() and self._waiting >= self.max_waiting:
            raise APIError(
                503,
                f"{self._waiting} requests already wait for one of {len(self.clients)} client keys "
                f"({self.jobs_per_key} jobs each); retry later",
                "busy",
                type_="server_error",
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        index = min(self._running, key=self._running.__getitem__)
        self._running[index] += 1
        return self.clients[index]

    def release(self, client: Client) -> None:
        index = next(i for i, c in enumerate(self.clients) if c is client)
        self._running[index] -= 1
        self._slots.release()


POOL = web.AppKey("pool", ClientPool)
WORKERS = web.AppKey("workers", ThreadPoolExecutor)
CONFIG = web.AppKey("config", EndpointConfig)
MODEL_NAME = web.AppKey("model_name", str)


def create_app(clients: list[Client], config: EndpointConfig | None = None) -> web.Application:
    """App factory: the endpoint over `clients` (one per key; all on the same model and deployment)."""
    config = config or EndpointConfig()
    app = web.Application(client_max_size=config.client_max_size, middlewares=[_error_middleware])
    app[CONFIG] = config
    app[MODEL_NAME] = model_name(clients[0])

    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        # Its semaphore belongs to the serving loop. One worker thread per job slot: the loop's default
        # executor (cores + 4 threads) would queue jobs past it.
        pool = ClientPool(clients, config.max_waiting, config.jobs_per_key)
        app[POOL] = pool
        with ThreadPoolExecutor(len(clients) * config.jobs_per_key, thread_name_prefix="job") as workers:
            app[WORKERS] = workers
            yield

    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    return app


def model_name(client: Client) -> str:
    """The name requests use: the newest registered plan's name, else the model directory's."""
    plans = client.plans()
    return plans[-1].name if plans else Path(client.model_dir).name


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        _check_key(request)
        return await handler(request)
    except APIError as exc:
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "body_too_large" if exc.status == 413 else "not_found" if exc.status == 404 else "http_error"
        return _error_response(APIError(exc.status, exc.text or exc.reason, code))


def _error_response(exc: APIError) -> web.Response:
    headers = {"Retry-After": "1"} if exc.code == "busy" else None
    return web.json_response(exc.body(), status=exc.status, headers=headers)


def _check_key(request: web.Request) -> None:
    expected = request.app[CONFIG].api_key
    if expected is None:
        return
    given = request.headers.get("Authorization", "")
    token = given[7:] if given.startswith("Bearer ") else ""
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise APIError(
            401,
            "missing or wrong API key: send `Authorization: Bearer KEY` (the key of --api-key-file)",
            "invalid_api_key",
            type_="authentication_error",
        )


async def _models(request: web.Request) -> web.Response:
    client = request.app[POOL].clients[0]
    plans = await asyncio.to_thread(client.plans)  # read-only chain calls: safe beside a running job
    name = request.app[MODEL_NAME]
    entry = {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "splitmesh",
        "splitmesh": {
            "plans": [{"model_id": p.model_id, "boundaries": list(p.boundaries)} for p in plans],
            "splits": sorted({b for p in plans for b in p.boundaries[1:-1]}),
        },
    }
    return web.json_response({"object": "list", "data": [entry] if plans else []})


async def _body(request: web.Request) -> Any:
    try:
        return await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", "invalid_json") from None


async def _chat(request: web.Request) -> web.StreamResponse:
    req = parse(ChatRequest, await _body(request))
    prompt = [m.as_turn() for m in req.messages]
    return await _serve(request, req, prompt, chat=True)


async def _completions(request: web.Request) -> web.StreamResponse:
    req = parse(CompletionRequest, await _body(request))
    return await _serve(request, req, req.prompt, chat=False)


async def _serve(request: web.Request, req: Any, prompt: Any, *, chat: bool) -> web.StreamResponse:
    if req.model != request.app[MODEL_NAME]:
        raise APIError(
            404,
            f"model {req.model!r} is not served here; GET /v1/models lists {request.app[MODEL_NAME]!r}",
            "model_not_found",
            param="model",
        )
    config = request.app[CONFIG]
    pool = request.app[POOL]
    client = await pool.lease()
    options = _options(req, config, chat)
    job = JobThread(client, options, prompt, chat, req.new_tokens(), config.default_max_tokens)
    job.start(asyncio.get_running_loop(), request.app[WORKERS])
    try:
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        if req.stream:
            return await _stream(request, job, req, rid, chat)
        return await _complete(job, req, rid, chat)
    finally:
        job.cancel()
        await job.finished()
        pool.release(client)


def _options(req: Any, config: EndpointConfig, chat: bool) -> dict[str, Any]:
    extras = req.splitmesh
    return {
        "epsilon": config.default_epsilon if extras.epsilon is None else extras.epsilon,
        "split": extras.split,
        "max_price_per_token": extras.max_price_per_token,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "seed": req.seed,
        "stop": req.stops(),
        "chat": chat,  # a completion's prompt is raw text: no chat template
    }


class JobThread:
    """One job run by `Client.stream` in a worker thread; its events reach the event loop in order."""

    def __init__(
        self,
        client: Client,
        options: dict[str, Any],
        prompt: Any,
        chat: bool,
        max_new: int | None,
        default_new: int,
    ):
        self.client = client
        self.options = options
        self.prompt = prompt
        self.chat = chat
        self.max_new = max_new
        self.default_new = default_new
        self._cancelled = threading.Event()
        self._events: asyncio.Queue[TokenEvent | Generation | BaseException | None] = asyncio.Queue()
        self._done: asyncio.Future[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop, workers: ThreadPoolExecutor | None = None) -> None:
        def emit(item: TokenEvent | Generation | BaseException | None) -> None:
            loop.call_soon_threadsafe(self._events.put_nowait, item)

        self._done = asyncio.ensure_future(loop.run_in_executor(workers, self._run, emit))

    def _run(self, emit: Callable[[Any], None]) -> None:
        stream: Iterator[TokenEvent | Generation] | None = None
        try:
            max_new = self._budget()
            stream = self.client.stream(self.prompt, max_new, **self.options)
            for event in stream:
                emit(event)
                if self._cancelled.is_set():  # the HTTP client left: stop paying for tokens
                    break
        except BaseException as exc:  # handed to the request's coroutine, which answers it
            emit(exc)
        finally:
            if stream is not None and hasattr(stream, "close"):
                stream.close()
            emit(None)

    def _budget(self) -> int:
        """New tokens for the job: the request's limit, checked against the model's context."""
        local = self.client.prepare(self.options["split"])
        ids = self.client.encode_prompt(self.prompt, self.chat)
        context = int(getattr(local.model.config, "max_position_embeddings", 0) or 0)
        room = context - len(ids) if context else self.default_new
        if self.max_new is not None and self.max_new > room:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens and {self.max_new} new tokens were asked for, but the "
                f"model's context is {context} tokens; ask for at most {max(room, 0)}",
                "context_length_exceeded",
                param="max_tokens",
            )
        if room < 1:
            raise APIError(
                400, f"the prompt fills the model's {context}-token context", "context_length_exceeded"
            )
        return self.max_new if self.max_new is not None else min(self.default_new, room)

    async def events(self) -> AsyncIterator[TokenEvent | Generation]:
        while (item := await self._events.get()) is not None:
            if isinstance(item, CommitmentMismatch) and isinstance(item.result, Generation):
                yield item.result  # the answer stands; its extras carry the commitment problem
            elif isinstance(item, BaseException):
                raise as_api_error(item) from item
            else:
                yield item

    def cancel(self) -> None:
        self._cancelled.set()

    async def finished(self) -> None:
        if self._done is not None:
            await asyncio.shield(self._done)


def as_api_error(exc: BaseException) -> APIError:
    """An SDK failure as the HTTP status an OpenAI client understands."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, NoRoute):
        return APIError(503, str(exc), "no_route", type_="service_unavailable")
    if isinstance(exc, EscrowTooSmall):
        return APIError(402, str(exc), "escrow_too_small", type_="insufficient_funds")
    if isinstance(exc, RouteBusy):  # every candidate node full: nothing was submitted
        return APIError(503, str(exc), "busy", type_="service_unavailable")
    if isinstance(exc, StepFailed) and exc.status == 503:
        return APIError(503, str(exc), exc.code, type_="service_unavailable")
    if isinstance(exc, StepFailed | NodeUnavailable | ForgedReply | MalformedReply):
        return APIError(502, str(exc), "route_failed", type_="upstream_error")
    if isinstance(exc, ConfigError | ValueError):
        return APIError(400, str(exc), "invalid_request")
    if isinstance(exc, SplitmeshError):
        return APIError(502, str(exc), "marketplace_error", type_="upstream_error")
    logger.error("internal error in a job", exc_info=exc)
    return APIError(500, "internal error; see the endpoint's log", "internal_error")


def extras(client: Client, generation: Generation) -> dict[str, Any]:
    """The `splitmesh` object of a response: the job, its cost and the privacy applied."""
    receipt = generation.receipt
    privacy = receipt.privacy
    leakage = privacy.get("leakage")
    return {
        "job_id": receipt.job_id,
        "cost_wei": receipt.cost_wei(client.market.hop_fee()),
        "escrow_wei": receipt.escrow_wei,
        "billed_tokens": receipt.billed_tokens,
        "route": [hop.node for hop in receipt.route],
        "split": receipt.split,
        "epsilon": privacy.get("per_token_epsilon"),  # "inf" = no noise
        "delta": privacy.get("per_token_delta"),
        "composed_epsilon": privacy.get("composed_epsilon"),  # over every vector the job released
        "privacy": sentence(leakage) if isinstance(leakage, dict) else None,
        "exposure": privacy.get("exposure"),
        "commitment_problem": receipt.commitment_problem,
    }


async def _complete(job: JobThread, req: Any, rid: str, chat: bool) -> web.Response:
    generation: Generation | None = None
    async for event in job.events():
        if isinstance(event, Generation):
            generation = event
    assert generation is not None
    receipt = generation.receipt
    use = usage(receipt.prompt_tokens, receipt.generated_tokens)
    extra = await asyncio.to_thread(extras, job.client, generation)
    build = chat_response if chat else text_response
    return web.json_response(build(rid, req.model, generation.text, generation.finish_reason, use, extra))


class StopHoldback:
    """Streamed text, minus a tail that may be the start of a stop string (OpenAI never sends a stop)."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.text = ""
        self.sent = 0

    def feed(self, delta: str) -> str:
        self.text += delta
        safe = len(self.text)
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text)), 0, -1):
                if self.text.endswith(stop[:k]):
                    safe = min(safe, len(self.text) - k)
                    break
        return self._take(safe)

    def finish(self, final_text: str) -> str:
        self.text = final_text
        return self._take(len(final_text))

    def _take(self, upto: int) -> str:
        out = self.text[self.sent : upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return out


def _sse(data: dict[str, Any] | str) -> bytes:
    return b"data: " + (data if isinstance(data, str) else json.dumps(data)).encode() + b"\n\n"


async def _stream(request: web.Request, job: JobThread, req: Any, rid: str, chat: bool) -> web.StreamResponse:
    events = job.events()
    first = await anext(events)  # a failure before the first token is a plain HTTP error
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        if chat:
            await response.write(_sse(chunk(rid, req.model, True, None, None)))
        await _stream_events(response, job, req, rid, chat, first, events)
    except APIError as exc:
        await response.write(_sse(exc.body()))
    except ConnectionError:  # the HTTP client left; the job stops at its next token
        logger.info("stream %s: the client disconnected", rid)
        return response
    await response.write(_sse("[DONE]"))
    await response.write_eof()
    return response


async def _stream_events(
    response: web.StreamResponse,
    job: JobThread,
    req: Any,
    rid: str,
    chat: bool,
    first: TokenEvent | Generation,
    events: AsyncIterator[TokenEvent | Generation],
) -> None:
    held = StopHoldback(req.stops())
    event: TokenEvent | Generation = first
    while isinstance(event, TokenEvent):
        if text := held.feed(event.text):
            await response.write(_sse(chunk(rid, req.model, chat, text, None)))
        event = await anext(events)
    if text := held.finish(event.text):
        await response.write(_sse(chunk(rid, req.model, chat, text, None)))
    last = chunk(rid, req.model, chat, "" if not chat else None, event.finish_reason)
    last["splitmesh"] = await asyncio.to_thread(extras, job.client, event)
    await response.write(_sse(last))
    if req.include_usage():
        receipt = event.receipt
        tail = {**chunk(rid, req.model, chat, None, None), "choices": []}
        tail["usage"] = usage(receipt.prompt_tokens, receipt.generated_tokens)
        await response.write(_sse(tail))

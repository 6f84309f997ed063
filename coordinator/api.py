"""The coordinator's HTTP JSON API and explorer page (aiohttp).

GET /api/status                    index coverage and follower state
GET /api/jobs?client=&node=&status=&model=&limit=&offset=
GET /api/jobs/{job_id}             one job in full
GET /api/nodes?model=&shard=&status=&limit=&offset=
GET /api/nodes/{address}
GET /api/models
GET /                              the explorer (static HTML/JS; #/jobs, #/jobs/ID, #/nodes)

Errors are JSON {"status", "error"} with a 4xx code; the API only reads the index.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from coordinator import queries
from coordinator.errors import BadQuery, NotFound
from coordinator.follower import FollowerState

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
DB = web.AppKey("db", sqlite3.Connection)
STATE = web.AppKey("state", FollowerState)
INFO = web.AppKey("info", dict[str, Any])
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INTEGER = re.compile(r"-?[0-9]{1,20}")  # ASCII digits only: int() also takes "١٢", " 12", "1_2"
JOB_ID = re.compile(r"[0-9]{1,78}")  # a decimal uint256
SQLITE_MAX = (1 << 63) - 1  # the index's INTEGER columns are signed 64-bit


def create_app(
    conn: sqlite3.Connection, state: FollowerState | None = None, info: dict[str, Any] | None = None
) -> web.Application:
    """App factory over an open index connection (read only here)."""
    app = web.Application(client_max_size=64 * 1024, middlewares=[_errors])
    app[DB] = conn
    app[STATE] = state or FollowerState()
    app[INFO] = info or {}
    r = app.router
    r.add_get("/api/status", _status)
    r.add_get("/api/jobs", _jobs)
    r.add_get("/api/jobs/{job_id}", _job)
    r.add_get("/api/nodes", _nodes)
    r.add_get("/api/nodes/{address}", _node)
    r.add_get("/api/models", _models)
    r.add_get("/", _index)
    r.add_static("/static/", STATIC_DIR, show_index=False)
    return app


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": status, "error": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadQuery as exc:
        return _error(400, str(exc))
    except NotFound as exc:
        return _error(404, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except Exception:
        logger.exception("internal error on %s", request.path)
        return _error(500, "internal error; see the coordinator log")


def _int(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if INTEGER.fullmatch(raw) is None or not -SQLITE_MAX <= int(raw) <= SQLITE_MAX:
        raise BadQuery(f"query parameter {name}={raw[:40]!r} is not an integer within +-(2**63-1)")
    return int(raw)


def _str(request: web.Request, name: str) -> str | None:
    return request.query.get(name) or None


def _page(request: web.Request, default_limit: int) -> tuple[int, int]:
    limit = _int(request, "limit", default_limit)
    offset = _int(request, "offset", 0)
    assert limit is not None and offset is not None
    return limit, offset


async def _status(request: web.Request) -> web.Response:
    out = queries.status(request.app[DB])
    out["follower"] = request.app[STATE].as_dict()
    info: dict[str, Any] = request.app[INFO]
    out.update(info)
    return web.json_response(out)


async def _jobs(request: web.Request) -> web.Response:
    limit, offset = _page(request, 50)
    filt = queries.JobFilter(
        client=_str(request, "client"),
        node=_str(request, "node"),
        status=_str(request, "status"),
        model=_int(request, "model"),
    )
    return web.json_response(queries.list_jobs(request.app[DB], filt, limit=limit, offset=offset))


async def _job(request: web.Request) -> web.Response:
    raw = request.match_info["job_id"]
    if JOB_ID.fullmatch(raw) is None:
        raise BadQuery(f"job id {raw[:80]!r} is not a decimal number (ASCII digits)")
    if int(raw) > SQLITE_MAX:  # a real job id, but far beyond any job a chain will ever have
        raise NotFound(f"job {raw} is not in the index")
    return web.json_response(queries.get_job(request.app[DB], int(raw)))


async def _nodes(request: web.Request) -> web.Response:
    limit, offset = _page(request, 100)
    filt = queries.NodeFilter(
        model=_int(request, "model"), shard=_int(request, "shard"), status=_str(request, "status")
    )
    return web.json_response(queries.list_nodes(request.app[DB], filt, limit=limit, offset=offset))


async def _node(request: web.Request) -> web.Response:
    return web.json_response(queries.get_node(request.app[DB], request.match_info["address"]))


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"items": queries.list_models(request.app[DB])})


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

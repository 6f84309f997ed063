"""Where queries are answered: a coordinator's HTTP API, a local index file, or a scan of the chain.

All three return the same dicts (coordinator/queries.py). A direct scan needs nothing but an RPC URL: it
folds every event of the deployment into a throwaway in-memory index, which is exactly what a
coordinator's index holds, only built on the spot.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from coordinator import queries, schema
from coordinator.errors import BadQuery, CoordinatorUnavailable, NotFound
from coordinator.indexer import Indexer, IndexerConfig, SyncReport
from splitmesh.chain import Marketplace


class Source(Protocol):
    def list_jobs(self, filt: queries.JobFilter, limit: int, offset: int) -> dict[str, Any]: ...
    def get_job(self, job_id: int) -> dict[str, Any]: ...
    def list_nodes(self, filt: queries.NodeFilter, limit: int, offset: int) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...


class IndexSource:
    """Queries on an index database (a coordinator's file, or an in-memory scan)."""

    def __init__(self, conn: sqlite3.Connection, description: str):
        self.conn = conn
        self.description = description

    @classmethod
    def file(cls, path: str | Path) -> IndexSource:
        if not Path(path).exists():
            raise NotFound(f"no index file at {path}; start `splitmesh coordinator run` to build one")
        return cls(schema.connect(path), f"index {path}")

    @classmethod
    def scan(cls, market: Marketplace, progress: Callable[[SyncReport], None] | None = None) -> IndexSource:
        """Read every event of the deployment from the chain into a throwaway index."""
        indexer = Indexer(market, schema.connect(":memory:"), IndexerConfig(), on_batch=progress)
        report = indexer.sync()
        return cls(indexer.conn, f"chain {market.chain_id} up to block {report.to_block} (direct scan)")

    def list_jobs(self, filt: queries.JobFilter, limit: int, offset: int) -> dict[str, Any]:
        return queries.list_jobs(self.conn, filt, limit=limit, offset=offset)

    def get_job(self, job_id: int) -> dict[str, Any]:
        return queries.get_job(self.conn, job_id)

    def list_nodes(self, filt: queries.NodeFilter, limit: int, offset: int) -> dict[str, Any]:
        return queries.list_nodes(self.conn, filt, limit=limit, offset=offset)

    def status(self) -> dict[str, Any]:
        return queries.status(self.conn)


class ApiSource:
    """Queries answered by a running coordinator's HTTP API."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout  # seconds for one request
        self.description = f"coordinator {self.url}"

    def _get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            if exc.code == 404:
                raise NotFound(message) from None
            if exc.code == 400:
                raise BadQuery(message) from None
            raise CoordinatorUnavailable(f"{url}: HTTP {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CoordinatorUnavailable(
                f"coordinator {self.url} did not answer ({exc}); is `splitmesh coordinator run` running? "
                "Or query the chain directly with --rpc-url"
            ) from None

    def list_jobs(self, filt: queries.JobFilter, limit: int, offset: int) -> dict[str, Any]:
        params = {"client": filt.client, "node": filt.node, "status": filt.status, "model": filt.model}
        return self._get("/api/jobs", {**params, "limit": limit, "offset": offset})

    def get_job(self, job_id: int) -> dict[str, Any]:
        return self._get(f"/api/jobs/{int(job_id)}")

    def list_nodes(self, filt: queries.NodeFilter, limit: int, offset: int) -> dict[str, Any]:
        params = {"model": filt.model, "shard": filt.shard, "status": filt.status}
        return self._get("/api/nodes", {**params, "limit": limit, "offset": offset})

    def status(self) -> dict[str, Any]:
        return self._get("/api/status")

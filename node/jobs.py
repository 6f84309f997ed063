"""What a node learns from the chain about a job before serving it: terms, its position, the next hop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from node.admission import ExpiringMap
from node.errors import StepRejected, bad_request, forbidden, not_found
from splitmesh.chain import JobStatus, JobTerms, Marketplace, terms_hash
from splitmesh.chain.terms import MalformedTerms
from splitmesh.errors import ChainError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    job_id: int
    terms: JobTerms
    packed_terms: bytes
    position: int  # this node's place on the route
    shard: int
    next_node: str | None  # None: this node is the last hop and answers the client
    next_endpoint: str | None
    next_key: bytes = b"\0" * 32  # the next node's on-chain TLS key (SHA-256 of its certificate)

    @property
    def client(self) -> str:
        return self.terms.client

    @property
    def client_bytes(self) -> bytes:
        return bytes.fromhex(self.terms.client[2:])

    @property
    def is_last(self) -> bool:
        return self.next_node is None


class JobDirectory:
    """Resolves and caches job contexts. Blocking (chain calls): run it in a worker thread."""

    def __init__(
        self,
        market: Marketplace,
        me: str,
        model_id: int,
        shard: int,
        *,
        refusal_ttl: float = 2.0,  # seconds a job the chain refused (unknown, closed, not ours) stays refused
        on_lookup: Callable[[], None] | None = None,  # called once per getJob call (metrics)
    ):
        self.market = market
        self.me = me
        self.model_id = model_id
        self.shard = shard
        self._cache: dict[int, JobContext] = {}
        self._lock = threading.Lock()
        # Refusals that depend on the job id alone (not on what the peer sent): a flood of frames for one
        # unknown job costs one chain call per `refusal_ttl`, not one per frame.
        self._refused = ExpiringMap(refusal_ttl)
        self._terms_hashes = ExpiringMap(3600.0)  # job id -> on-chain terms hash (never changes)
        self._on_lookup = on_lookup

    def cached(self, job_id: int) -> JobContext | None:
        return self._cache.get(job_id)

    def forget(self, job_id: int) -> None:
        with self._lock:
            self._cache.pop(job_id, None)

    def resolve(self, job_id: int, packed_terms: bytes | None) -> JobContext:
        """Check the job on-chain (exists, open, routes through this node) and return its context."""
        hit = self.cached(job_id)
        if hit is not None and (packed_terms is None or packed_terms == hit.packed_terms):
            return hit
        refused = self.refusal(job_id, packed_terms)
        if refused is not None:
            raise refused
        try:
            return self._resolve(job_id, packed_terms)
        except StepRejected as exc:
            if exc.code in ("unknown_job", "job_closed", "not_in_route", "wrong_shard"):
                self._refused.put(job_id, (exc.status, exc.code, exc.reason))
            raise

    def refusal(self, job_id: int, packed_terms: bytes | None) -> StepRejected | None:
        """Why this job would be refused, if known without a chain call: a recent refusal of the job id,
        or terms that do not hash to the job's on-chain terms hash (which never changes)."""
        refused = self._refused.get(job_id)
        if refused is not None:
            status, code, reason = cast(tuple[int, str, str], refused)
            return StepRejected(status, code, f"{reason} (checked moments ago)")
        known = self._terms_hashes.get(job_id)
        hit = self.cached(job_id)
        if hit is not None:
            known = terms_hash(job_id, hit.packed_terms)
        if packed_terms is not None and known is not None and terms_hash(job_id, packed_terms) != known:
            return bad_request(
                "terms_mismatch", f"the terms sent do not hash to job {job_id}'s on-chain terms"
            )
        return None

    def _resolve(self, job_id: int, packed_terms: bytes | None) -> JobContext:
        if self._on_lookup is not None:
            self._on_lookup()
        try:
            state = self.market.get_job(job_id)
        except ChainError as exc:
            raise StepRejected(
                503, "chain_unavailable", f"cannot read job {job_id} from the chain: {exc}", retry_after=5.0
            ) from exc
        if state.status == JobStatus.NONE:
            raise not_found(f"job {job_id} does not exist on JobMarket {self.market.deployment.market}")
        if state.status != JobStatus.OPEN:
            raise StepRejected(410, "job_closed", f"job {job_id} is {state.status.name.lower()}, not open")
        self._terms_hashes.put(job_id, state.terms_hash)
        if packed_terms is None:
            packed_terms = self.market.job_submitted(job_id).packed_terms
        if terms_hash(job_id, packed_terms) != state.terms_hash:
            raise bad_request(
                "terms_mismatch", f"the terms sent do not hash to job {job_id}'s on-chain terms"
            )
        try:
            terms = JobTerms.decode(packed_terms)
        except MalformedTerms as exc:
            raise bad_request("terms_mismatch", str(exc)) from exc
        try:
            position = terms.position_of(self.me)
        except ValueError:
            raise forbidden("not_in_route", f"node {self.me} is not on job {job_id}'s route") from None
        shard = terms.first_shard + position
        if terms.model_id != self.model_id or shard != self.shard:
            raise forbidden(
                "wrong_shard",
                f"job {job_id} needs model {terms.model_id} shard {shard}; this node serves model "
                f"{self.model_id} shard {self.shard}",
            )
        next_node = next_endpoint = None
        next_key = b"\0" * 32
        if position + 1 < len(terms.route):
            next_node = terms.route[position + 1].node
            next_info = self.market.get_node(next_node)
            next_endpoint, next_key = next_info.endpoint, next_info.encryption_key
        context = JobContext(job_id, terms, packed_terms, position, shard, next_node, next_endpoint, next_key)
        with self._lock:
            self._cache[job_id] = context
        return context

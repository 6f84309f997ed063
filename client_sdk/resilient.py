"""A generation's route that fails over: a RouteJob replaced by a new job when a route node fails.

See client_sdk.failover for the policy (what is blamed, how long a ban lasts) and why replaying the
released noised Z chunks to the new route keeps both the tokens and the privacy of an unfaulted run.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from client_sdk.errors import ForgedReply, MalformedReply, NodeUnavailable, NoRoute, StepFailed
from client_sdk.failover import BanList, FailoverPolicy, FailoverReport, Released, blame
from client_sdk.local_split import LocalSplit
from client_sdk.options import GenerateOptions
from client_sdk.route_job import JobOwner, RouteJob
from splitmesh.jobmeta import JobMeta
from splitmesh.protocol import StepResult
from splitmesh.wire.tls import pinned_get

logger = logging.getLogger(__name__)

# What a step may fail with that failover handles (when `blame` names a node).
STEP_FAILURES = (ForgedReply, MalformedReply, NodeUnavailable, StepFailed)


class ResilientRoute:
    """Submits the generation's job and sends its steps; on a route node's failure, bans it, submits a
    new job avoiding the banned nodes and replays the released prefix there, at most
    `policy.max_failovers` times per generation."""

    def __init__(
        self,
        owner: JobOwner,
        local: LocalSplit,
        opts: GenerateOptions,
        meta: JobMeta,
        max_tokens: int,
        bans: BanList,
    ):
        self.owner, self.local, self.opts, self.meta = owner, local, opts, meta
        self.max_tokens = max_tokens
        self.bans = bans
        self.policy: FailoverPolicy = opts.failover
        self.report = FailoverReport()
        self.released = Released()
        self.submits: list[RouteJob] = []
        try:
            self.route = self._first_route()
        except NodeUnavailable as exc:  # the matched first node refused the link: nothing sent yet
            if exc.job_id is None:
                raise
            self._replace(exc, None)

    def _first_route(self) -> RouteJob:
        try:
            return self._submit(self.bans.active())
        except NoRoute:
            # Bans steer matching; they never refuse a generation the pools could serve: with every
            # eligible node of a shard banned, the client takes a banned one rather than none.
            if not self.bans.active():
                raise
            logger.warning("every eligible node of a shard is banned; submitting without the bans")
            return self._submit(())

    def _submit(self, avoid: Sequence[str]) -> RouteJob:
        route = RouteJob.submit(
            self.owner,
            self.local,
            self.opts,
            self.meta,
            self.max_tokens,
            escrow_wei=self.opts.escrow_wei,
            avoid=avoid,
            step_timeout=self.policy.step_timeout,
        )
        self.report.jobs.append(route.job_id)
        self.submits.append(route)
        return route

    def step(self, z: torch.Tensor, start: int) -> tuple[torch.Tensor, StepResult]:
        """Send released (noised) chunk `z` [1, q, hidden] at position `start`; the last node's reply."""
        self.released.add(z)
        tokens = start + z.shape[1]
        started = time.perf_counter()
        out = self.route.prepare(z, tokens=tokens, start=start)
        try:
            return self.route.send(out)
        except STEP_FAILURES as exc:
            return self._fail_over(exc, tokens, started)

    def _fail_over(self, exc: Exception, tokens: int, started: float) -> tuple[torch.Tensor, StepResult]:
        """Replace the route until a replay of the released prefix answers."""
        while True:
            self._replace(exc, self.route)
            prefix = self.released.prefix()  # [1, tokens, hidden]: the same noised values, no new noise
            self.report.replays += 1
            self.report.replayed_tokens += prefix.shape[1]
            try:
                reply = self.route.send(self.route.prepare(prefix, tokens=tokens, start=0))
            except STEP_FAILURES as failure:
                exc = failure
                continue
            self.report.seconds_lost += time.perf_counter() - started
            return reply

    def _replace(self, exc: Exception, route: RouteJob | None) -> None:
        """Ban the nodes `exc` blames, abandon the job and submit a new one (`self.route`). Re-raises
        `exc` when it blames nobody, the attempts are spent, or no route avoids the banned nodes.
        `route` is None when `exc` is a just-submitted job's refused link (`exc.job_id`, `exc.node`)."""
        while True:
            blamed: tuple[list[str], str] | None
            if route is None and isinstance(exc, NodeUnavailable) and exc.node and exc.job_id is not None:
                job_id, blamed = exc.job_id, ([exc.node], f"first node unreachable: {exc}")
                self.report.jobs.append(job_id)
            elif route is not None:
                job_id = route.job_id
                blamed = blame(exc, [hop.node for hop in route.hops], self._prober(route))
            else:
                raise exc
            if blamed is None or self.report.failovers >= self.policy.max_failovers:
                raise exc
            culprits, cause = blamed
            for node in culprits:
                seconds = self.bans.ban(node, self.policy)
                self.report.banned.append(node)
                logger.warning(
                    "job %d: %s; node %s banned for %g s, failing over to a new job",
                    job_id,
                    cause,
                    node,
                    seconds,
                )
            self.report.causes.append(f"job {job_id}: {cause}")
            if route is not None:
                route.close()  # abandoned, not ended: its nodes commit what they served when sessions expire
            self.report.abandoned.append(job_id)
            self.report.failovers += 1
            try:
                self.route = self._submit(self.bans.active())
                return
            except NoRoute as no_route:
                raise exc from no_route
            except NodeUnavailable as failure:  # the new job's first node refused the link too
                exc, route = failure, None

    def _prober(self, route: RouteJob) -> Any:
        def alive(position: int) -> bool:
            hop = route.hops[position]
            url = hop.endpoint.rstrip("/") + "/health"
            try:
                status, _ = pinned_get(
                    url, bytes.fromhex(hop.tls_key[2:]), {}, timeout=self.policy.probe_timeout
                )
            except (http.client.HTTPException, OSError, TimeoutError, ValueError):
                return False  # unreachable, or not the node registered on-chain (LinkSecurityError)
            return status == 200

        return alive

    def close(self) -> None:
        for route in self.submits:
            route.close()

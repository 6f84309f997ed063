"""A generation's route that fails over: a RouteJob replaced by a new job when a route node fails.

See client_sdk.failover for the policy (what is blamed, how long a ban lasts) and why replaying the
released noised Z chunks to the new route keeps both the tokens and the privacy of an unfaulted run.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from typing import Any

import torch

from client_sdk.errors import ForgedReply, MalformedReply, NodeUnavailable, NoRoute, StepFailed
from client_sdk.failover import BanList, FailoverPolicy, FailoverReport, Released, blame
from client_sdk.local_split import LocalSplit
from client_sdk.options import GenerateOptions
from client_sdk.route_job import JobOwner, RouteJob
from splitmesh.jobmeta import JobMeta
from splitmesh.protocol import StepResult

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
        self.route = self._submit()

    def _submit(self) -> RouteJob:
        route = RouteJob.submit(
            self.owner,
            self.local,
            self.opts,
            self.meta,
            self.max_tokens,
            escrow_wei=self.opts.escrow_wei,
            avoid=self.bans.active(),
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
        """Replace the route until a replay answers; re-raise the failure when it names no node or the
        attempts are spent."""
        while True:
            route = self.route
            nodes = [hop.node for hop in route.hops]
            blamed = blame(exc, nodes, self._prober(route))
            if blamed is None or self.report.failovers >= self.policy.max_failovers:
                raise exc
            culprits, cause = blamed
            for node in culprits:
                seconds = self.bans.ban(node, self.policy)
                self.report.banned.append(node)
                logger.warning(
                    "job %d: %s; node %s banned for %g s, failing over to a new job",
                    route.job_id,
                    cause,
                    node,
                    seconds,
                )
            self.report.causes.append(f"job {route.job_id}: {cause}")
            route.close()  # abandoned, not ended: its nodes commit what they served when sessions expire
            self.report.abandoned.append(route.job_id)
            self.report.failovers += 1
            try:
                self.route = self._submit()
            except NoRoute as no_route:
                raise exc from no_route
            except STEP_FAILURES as failure:  # the new first node is unreachable too
                exc = failure
                continue
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

    def _prober(self, route: RouteJob) -> Any:
        def alive(position: int) -> bool:
            url = route.hops[position].endpoint.rstrip("/") + "/health"
            try:
                with urllib.request.urlopen(url, timeout=self.policy.probe_timeout) as answer:
                    return bool(answer.status == 200)
            except (urllib.error.URLError, OSError, TimeoutError):
                return False

        return alive

    def close(self) -> None:
        for route in self.submits:
            route.close()

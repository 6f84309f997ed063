"""Continuous batching of inference steps across a node's sessions.

Steps that arrive while a batch runs wait for the next one; when a batch ends, the next takes every
waiting step up to `max_sessions` steps and `max_tokens` tokens and runs them through the runner's
`forward_many` (steps of the same length go through the layers as one batch, splitmesh.model.batching).
A step that finds nothing running starts a batch at once: the single-user path has no sleep. Each step
gets its own output or its own refusal. Bounded: past `queue` waiting steps a new one gets the node's
fast 503 `busy` with Retry-After; batches run on the node's compute pool (node.admission.BoundedWork),
so training steps and inference still share one compute thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from node.admission import BoundedWork
from node.errors import busy
from splitmesh.model.errors import ModelError
from splitmesh.model.runner import ShardRunner, StepInput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchLimits:
    max_sessions: int = 16  # steps (one per session) in one batch; 1 = no batching
    max_tokens: int = 512  # tokens of all steps in one batch (a longer lone step still runs, alone)
    queue: int = 64  # steps waiting for the next batch; one more gets 503 busy
    retry_after: float = 2.0  # seconds suggested to a step refused by a full queue


@dataclass
class _Waiting:
    step: StepInput
    done: asyncio.Future[torch.Tensor]


class StepBatcher:
    """Collects inference steps and runs them in batches on `compute`. Use on the event loop only."""

    def __init__(
        self,
        runner: ShardRunner,
        compute: BoundedWork,
        limits: BatchLimits | None = None,
        on_batch: Callable[[int], None] | None = None,  # called with each batch's step count
    ):
        self.runner = runner
        self.compute = compute
        self.limits = limits or BatchLimits()
        self.on_batch = on_batch
        self._waiting: deque[_Waiting] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def forward(self, session_id: str, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """This step's output ([1, q, hidden]) once its batch ran; its own ModelError if refused."""
        if len(self._waiting) >= self.limits.queue:
            raise busy(
                "busy",
                f"this node's batch queue is full ({self.limits.queue} steps waiting); retry in "
                f"{self.limits.retry_after:g} s",
                self.limits.retry_after,
            )
        done: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(StepInput(session_id, hidden, positions), done))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await done

    def _take(self) -> list[_Waiting]:
        """The next batch: waiting steps in arrival order within the session and token caps."""
        batch: list[_Waiting] = []
        tokens = 0
        while self._waiting and len(batch) < self.limits.max_sessions:
            q = int(self._waiting[0].step.hidden.shape[1])
            if batch and tokens + q > self.limits.max_tokens:
                break
            item = self._waiting.popleft()
            if item.done.done():  # its caller went away (cancelled): do not run it
                continue
            batch.append(item)
            tokens += q
        return batch

    async def _drain(self) -> None:
        while self._waiting:
            batch = self._take()
            if not batch:
                continue
            try:
                results = await self.compute.run(self.runner.forward_many, [w.step for w in batch])
            except Exception as exc:  # a full compute pool (503 busy) or a failure of the whole batch
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for item, result in zip(batch, results, strict=True):
                if item.done.done():
                    continue
                if isinstance(result, ModelError):
                    item.done.set_exception(result)
                else:
                    item.done.set_result(result)

"""The node's bounded work queues (node.admission.BoundedWork, used for compute and chain lookups): past
`pending` jobs a new one is refused at once with a 503 `busy` and a retry hint, nothing queues without
bound, and the queue takes work again as soon as a slot frees."""

from __future__ import annotations

import asyncio
import threading

import pytest

from node.admission import BoundedWork
from node.errors import StepRejected


def test_a_full_compute_queue_answers_busy_with_a_retry_hint_and_recovers() -> None:
    gate = threading.Event()
    ran: list[int] = []

    def work(i: int) -> int:
        gate.wait(30)
        ran.append(i)
        return i

    async def scenario() -> None:
        queue = BoundedWork("compute", threads=1, pending=3, retry_after=2.0)
        try:
            taken = [asyncio.ensure_future(queue.run(work, i)) for i in range(3)]
            await asyncio.sleep(0.05)  # all three are in: one running, two waiting for the thread
            assert queue.waiting == 3
            with pytest.raises(StepRejected) as refused:
                await queue.run(work, 99)
            assert (refused.value.status, refused.value.code) == (503, "busy")
            assert refused.value.retry_after == 2.0
            assert "compute queue is full" in str(refused.value)
            gate.set()
            assert await asyncio.gather(*taken) == [0, 1, 2]
            assert queue.waiting == 0
            assert await queue.run(work, 4) == 4  # a freed queue takes work again
        finally:
            gate.set()
            queue.close()
        assert 99 not in ran

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_refused_job_never_runs_even_under_a_burst() -> None:
    gate = threading.Event()
    ran = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal ran
        gate.wait(30)
        with lock:
            ran += 1

    async def scenario() -> tuple[int, int]:
        queue = BoundedWork("compute", threads=2, pending=4, retry_after=1.0)
        try:
            results = asyncio.gather(*(queue.run(work) for _ in range(50)), return_exceptions=True)
            await asyncio.sleep(0.05)
            gate.set()
            outcomes = await results
        finally:
            queue.close()
        refused = [o for o in outcomes if isinstance(o, StepRejected)]
        assert all((o.status, o.code) == (503, "busy") for o in refused)
        return len(outcomes) - len(refused), len(refused)

    accepted, refused = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert (accepted, refused) == (4, 46)
    assert ran == 4

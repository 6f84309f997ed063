"""The node's step batcher (node.batcher.StepBatcher) on a real tiny shard runner: steps that arrive
together run as one batch with the outputs each session gets alone, a lone step runs at once, a bad step
is refused alone, and past the queue bound a step gets the fast 503 `busy` with a retry hint."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from node.admission import BoundedWork
from node.batcher import BatchLimits, StepBatcher
from node.errors import StepRejected
from splitmesh.model.errors import BadPositions
from splitmesh.model.runner import ShardRunner
from tests.family_configs import FAMILY_CONFIGS
from tests.model_fixtures import save_random_model

TOLERANCE = 1e-5  # fp32 max abs difference, batched vs alone (as tests/unit/test_batching.py)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(FAMILY_CONFIGS["llama"](), tmp_path_factory.mktemp("llama"))


def _hidden(q: int, seed: int) -> torch.Tensor:
    return torch.randn(1, q, 64, generator=torch.Generator().manual_seed(seed))


def _run(model_dir: Path, limits: BatchLimits, steps: list[tuple[str, int, int, int]]) -> tuple:
    """Submit (session, start, q, seed) steps in one loop turn; (results or errors, batch sizes)."""
    runner = ShardRunner.load(str(model_dir), 1, 3)
    sizes: list[int] = []

    async def scenario() -> list[object]:
        compute = BoundedWork("compute", threads=1, pending=8, retry_after=2.0)
        batcher = StepBatcher(runner, compute, limits, sizes.append)
        try:
            calls = [
                batcher.forward(sid, _hidden(q, seed), torch.arange(start, start + q))
                for sid, start, q, seed in steps
            ]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            compute.close()

    return asyncio.run(asyncio.wait_for(scenario(), 60)), sizes


def test_steps_arriving_together_run_as_one_batch_with_each_sessions_own_output(model_dir: Path) -> None:
    steps = [(f"s{i}", 0, 3, i) for i in range(4)]
    results, sizes = _run(model_dir, BatchLimits(max_sessions=16), steps)
    assert sizes == [4]
    alone = ShardRunner.load(str(model_dir), 1, 3)
    for (sid, _, q, seed), got in zip(steps, results, strict=True):
        assert isinstance(got, torch.Tensor)
        ref = alone.forward(sid, _hidden(q, seed), torch.arange(q))
        assert float((got - ref).abs().max()) < TOLERANCE


def test_batches_are_capped_by_sessions_and_tokens(model_dir: Path) -> None:
    steps = [(f"s{i}", 0, 3, i) for i in range(5)]
    _, by_sessions = _run(model_dir, BatchLimits(max_sessions=2), steps)
    assert by_sessions == [2, 2, 1]
    _, by_tokens = _run(model_dir, BatchLimits(max_sessions=16, max_tokens=7), steps)
    assert by_tokens == [2, 2, 1]
    _, off = _run(model_dir, BatchLimits(max_sessions=1), steps)  # the switch: batching off
    assert off == [1] * 5


def test_a_bad_step_gets_its_own_error_and_the_others_their_outputs(model_dir: Path) -> None:
    steps = [("a", 0, 2, 1), ("b", 4, 2, 2), ("c", 0, 2, 3)]  # b skips positions 0..3
    results, sizes = _run(model_dir, BatchLimits(), steps)
    assert isinstance(results[0], torch.Tensor) and isinstance(results[2], torch.Tensor)
    assert isinstance(results[1], BadPositions)
    assert sizes == [3]


def test_past_the_queue_bound_a_step_gets_busy_with_a_retry_hint(model_dir: Path) -> None:
    steps = [(f"s{i}", 0, 1, i) for i in range(5)]
    results, sizes = _run(model_dir, BatchLimits(queue=2, retry_after=1.5), steps)
    assert [isinstance(r, torch.Tensor) for r in results] == [True, True, False, False, False]
    for refused in results[2:]:
        assert isinstance(refused, StepRejected)
        assert (refused.status, refused.code, refused.retry_after) == (503, "busy", 1.5)
    assert sizes == [2]  # nothing refused ever ran

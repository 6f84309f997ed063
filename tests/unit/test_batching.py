"""Steps of several sessions batched through one shard (splitmesh.model.batching via
ShardRunner.forward_many) against the same sessions run alone.

For every family of tests/family_configs.py (llama-like SmolLM2 layout, sliding windows, alternating
layer kinds, GPT-2, ...): sessions with different prompt lengths (shorter and longer than the window),
prefilled and decoded together, give the hidden states of each session served alone on its own runner
within BATCH_TOLERANCE (fp32: batched kernels may differ in the last bits). And the isolation rule: a
session's KV cache is neither read nor written by another session's step in the same batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitmesh.model.errors import BadPositions
from splitmesh.model.runner import ShardRunner, StepInput
from tests.family_configs import FAMILY_CONFIGS
from tests.model_fixtures import save_random_model

BATCH_TOLERANCE = 1e-5  # fp32, max abs difference of hidden states (values of order 1)
SHARDS = [(1, 3), (3, 4)]  # both layer kinds start a shard where a family alternates them
PROMPTS = [3, 7, 11, 1]  # tokens per session: below, around and above the 4-token window
DECODE_STEPS = 5


@pytest.fixture(scope="module", params=sorted(FAMILY_CONFIGS))
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(FAMILY_CONFIGS[request.param](), tmp_path_factory.mktemp(request.param))


def _hidden(size: int, q: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, q, size, generator=generator)


def _step(runner: ShardRunner, sid: str, hidden: torch.Tensor) -> StepInput:
    past = runner.session_length(sid) if sid in runner.sessions() else 0
    return StepInput(sid, hidden, torch.arange(past, past + int(hidden.shape[1])))


def _batched(runner: ShardRunner, steps: list[StepInput]) -> list[torch.Tensor]:
    outputs = runner.forward_many(steps)
    for out in outputs:
        assert isinstance(out, torch.Tensor), out
    return outputs  # type: ignore[return-value]


@pytest.mark.parametrize("shard", SHARDS)
def test_a_batch_of_sessions_equals_each_session_alone(model_dir: Path, shard: tuple[int, int]) -> None:
    alone = ShardRunner.load(str(model_dir), *shard)
    together = ShardRunner.load(str(model_dir), *shard)
    assert together.batchable, "every tested family takes an explicit mask (sdpa or eager)"
    size = alone.hidden_size
    sids = [f"job-{i}" for i in range(len(PROMPTS))]
    worst = 0.0
    # Prefills of different lengths (grouped by length), then chunks of 2 tokens at different
    # positions in one batch, then single-token decode steps: every shape a node batches.
    rounds: list[list[int]] = [PROMPTS, [2] * len(PROMPTS)] + [[1] * len(PROMPTS)] * DECODE_STEPS
    for r, lengths in enumerate(rounds):
        inputs = [_hidden(size, q, seed=100 * r + i) for i, q in enumerate(lengths)]
        batched = _batched(together, [_step(together, s, h) for s, h in zip(sids, inputs, strict=True)])
        for sid, h, got in zip(sids, inputs, batched, strict=True):
            ref = alone.forward(sid, h, torch.arange(*_span(alone, sid, h)))
            assert got.shape == ref.shape
            worst = max(worst, float((got - ref).abs().max()))
    assert worst < BATCH_TOLERANCE, worst
    for sid in sids:  # the caches grew exactly as alone
        assert together.session_length(sid) == alone.session_length(sid)
    assert together.cache_bytes == alone.cache_bytes


def _span(runner: ShardRunner, sid: str, hidden: torch.Tensor) -> tuple[int, int]:
    past = runner.session_length(sid) if sid in runner.sessions() else 0
    return past, past + int(hidden.shape[1])


def _cache_tensors(runner: ShardRunner, sid: str) -> list[torch.Tensor]:
    session = runner._sessions[sid]  # test reaches into the runner to compare raw cache tensors
    return [t.clone() for layer in session.cache.layers for t in (layer.keys, layer.values) if t is not None]


def test_another_sessions_step_neither_reads_nor_alters_a_sessions_cache(model_dir: Path) -> None:
    """Attack: job B's steps share a batch with job A's. B's outputs must not depend on A's KV state
    (A's cache is overwritten with huge values: B's answers stay those of B alone), and A's cache must
    be bit-identical after B's steps ran beside a step of A's (only A's own new token is appended)."""
    runner = ShardRunner.load(str(model_dir), 1, 3)
    alone = ShardRunner.load(str(model_dir), 1, 3)
    size = runner.hidden_size
    _batched(runner, [_step(runner, "A", _hidden(size, 9, 1))])
    _batched(runner, [_step(runner, "B", _hidden(size, 4, 2))])  # shorter: B's row is padded
    alone.forward("B", _hidden(size, 4, 2), torch.arange(4))
    with torch.inference_mode():  # poison A's state (cache tensors are inference tensors)
        for layer in runner._sessions["A"].cache.layers:
            for t in (layer.keys, layer.values):
                if t is not None:
                    t.fill_(1e4)
    before = _cache_tensors(runner, "A")
    for step in range(3):
        h_a, h_b = _hidden(size, 1, 10 + step), _hidden(size, 1, 20 + step)
        _, got_b = _batched(runner, [_step(runner, "A", h_a), _step(runner, "B", h_b)])
        ref_b = alone.forward("B", h_b, torch.arange(4 + step, 5 + step))
        assert float((got_b - ref_b).abs().max()) < BATCH_TOLERANCE, "B read A's KV state"
    after = _cache_tensors(runner, "A")
    for old, new in zip(before, after, strict=True):
        # A appended its own 3 tokens; a sliding-window layer then dropped its oldest entries.
        dropped = old.shape[-2] + 3 - new.shape[-2]
        kept = old[..., dropped:, :]
        assert torch.equal(new[..., : kept.shape[-2], :], kept), "B's step altered A's cache"


def test_a_bad_step_in_a_batch_is_refused_alone(model_dir: Path) -> None:
    runner = ShardRunner.load(str(model_dir), 1, 3)
    size = runner.hidden_size
    good = StepInput("ok", _hidden(size, 2, 1), torch.arange(2))
    wrong_positions = StepInput("late", _hidden(size, 2, 2), torch.arange(5, 7))
    twice = StepInput("ok", _hidden(size, 2, 3), torch.arange(2))
    results = runner.forward_many([good, wrong_positions, twice])
    assert isinstance(results[0], torch.Tensor)
    assert isinstance(results[1], BadPositions)
    assert isinstance(results[2], BadPositions)  # one session, two steps in one batch
    assert runner.session_length("ok") == 2
    assert "late" not in runner.sessions() or runner.session_length("late") == 0

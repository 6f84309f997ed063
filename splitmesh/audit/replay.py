"""Re-execute an audited node's shard on its recorded inputs and judge its recorded outputs."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

import torch

from splitmesh.audit.compare import (
    BadTranscript,
    Comparison,
    Tolerance,
    UnsupportedDTypePair,
    Verdict,
    compare_step,
    judge,
)
from splitmesh.model.runner import ShardRunner

logger = logging.getLogger(__name__)

Step = tuple[int, torch.Tensor]  # (position of the step's first token, hidden [1, q, hidden])


def _check_steps(runner: ShardRunner, steps: Sequence[Step]) -> None:
    if not steps:
        raise BadTranscript("the transcript has no steps")
    position = 0
    for i, (start, hidden) in enumerate(steps):
        if start != position:
            raise BadTranscript(
                f"step {i} starts at position {start}, but the previous steps end at {position}: "
                "a replay needs the job's steps from position 0 without gaps"
            )
        if hidden.dim() != 3 or hidden.shape[0] != 1 or hidden.shape[2] != runner.hidden_size:
            raise BadTranscript(
                f"step {i}: input must be [1, tokens, {runner.hidden_size}], got {list(hidden.shape)}"
            )
        if not hidden.is_floating_point() or not bool(torch.isfinite(hidden).all()):
            raise BadTranscript(f"step {i}: input is not a finite float tensor")
        position += int(hidden.shape[1])


def replay_transcript(runner: ShardRunner, steps: Sequence[Step]) -> list[torch.Tensor]:
    """Outputs [1, q, hidden] of `runner` on each step's input, in one fresh session, in the runner's dtype.

    Steps keep their recorded chunking (a prefill, maybe in pieces, then decode steps); inputs are cast
    to the runner's dtype, so a float32 verifier replays a bfloat16 node's inputs exactly.
    """
    _check_steps(runner, steps)
    session_id = f"audit-{uuid.uuid4().hex}"
    outputs: list[torch.Tensor] = []
    try:
        for start, hidden in steps:
            q = int(hidden.shape[1])
            positions = torch.arange(start, start + q)
            outputs.append(runner.forward(session_id, hidden.to(runner.dtype), positions))
    finally:
        runner.close(session_id)
    return outputs


def compare_transcript(
    expected: Sequence[torch.Tensor],  # verifier outputs [1, q, hidden] per step
    recorded: Sequence[torch.Tensor],  # audited outputs [1, q, hidden] or [1, 1, hidden] (want="last")
    audited_dtype: str | torch.dtype,
) -> list[Comparison]:
    """One Comparison per step; a step without a recorded output is a failed comparison."""
    want = _torch_dtype(audited_dtype)
    out: list[Comparison] = []
    for i, exp in enumerate(expected):
        if i >= len(recorded):
            out.append(Comparison.failed(i, "no recorded output for this step"))
            continue
        got = recorded[i]
        # A last node may have sent only the last position of each step (want="last").
        if got.dim() == 3 and got.shape[1] == 1 and exp.shape[1] > 1:
            exp = exp[:, -1:]
        out.append(compare_step(exp, got, step=i, got_dtype=want))
    if len(recorded) > len(expected):
        out.append(Comparison.failed(len(expected), f"{len(recorded)} outputs for {len(expected)} steps"))
    return out


def audit_transcript(
    runner: ShardRunner,
    steps: Sequence[Step],
    recorded_outputs: Sequence[torch.Tensor],
    audited_dtype: str | torch.dtype,
    tolerance: Tolerance | None = None,
) -> Verdict:
    """Replay `steps` on the verifier's `runner` (serving the audited shard) and judge the recorded outputs.

    `audited_dtype` is the dtype the audited node declared; its outputs must carry it. The tolerance
    defaults to the measured one for (audited_dtype, runner.dtype). The transcript is the audited node's
    record, so one that cannot be replayed (gaps, wrong shapes, NaN inputs) or a dtype no node runs is
    fraud too: a node must not be able to escape an audit by serving something unauditable.
    """
    try:
        tolerance = tolerance or Tolerance.for_dtypes(audited_dtype, runner.dtype)
        comparisons = compare_transcript(replay_transcript(runner, steps), recorded_outputs, audited_dtype)
    except (BadTranscript, UnsupportedDTypePair) as exc:
        verdict = Verdict("fraud", None, f"the transcript cannot be audited: {exc}")
    else:
        verdict = judge(comparisons, tolerance, expected_steps=len(steps))
    log = logger.warning if verdict.is_fraud else logger.info
    log("audit of layers [%d, %d): %s (%s)", runner.start, runner.end, verdict.verdict, verdict.reason)
    return verdict


GRADIENT_FLOOR = 1e-3  # gradient tokens are judged against at least 1e-3 x the step's largest token


def replay_training(
    runner: ShardRunner,
    steps: Sequence[TrainingStep],
    audited_dtype: str | torch.dtype,
) -> list[Comparison]:
    """Re-execute a training transcript: every "train" step's output from its input, every "backward"
    step's returned gradient from the kept input of the step it answers and the gradient received from
    downstream. One Comparison per transcript step, in order."""
    want = _torch_dtype(audited_dtype)
    stack = runner.stack
    inputs: dict[int, torch.Tensor] = {}
    out: list[Comparison] = []
    for i, (mode, step, of_step, received, sent) in enumerate(steps):
        if received.dim() != 3 or received.shape[0] != 1 or received.shape[2] != runner.hidden_size:
            raise BadTranscript(f"step {i}: tensors must be [1, tokens, {runner.hidden_size}]")
        if not received.is_floating_point() or not bool(torch.isfinite(received).all()):
            raise BadTranscript(f"step {i}: input is not a finite float tensor")
        positions = torch.arange(int(received.shape[1])).unsqueeze(0)
        if mode == "train":
            inputs[step] = received
            with torch.no_grad():
                expected = stack(received.to(runner.dtype), positions, None)
            out.append(compare_step(expected, sent, step=i, got_dtype=want))
            continue
        # backward: `received` is what the node returned upstream, `sent` the gradient from downstream
        x = inputs.pop(of_step, None) if of_step is not None else None
        if x is None:
            raise BadTranscript(f"step {i}: a backward of step {of_step}, which no earlier train step kept")
        if sent.shape != x.shape or received.shape != x.shape:
            out.append(Comparison.failed(i, "gradient shapes differ from the step they answer"))
            continue
        x = x.to(runner.dtype).detach().requires_grad_(True)
        with torch.enable_grad():
            (expected,) = torch.autograd.grad(
                stack(x, positions, None), x, grad_outputs=sent.to(runner.dtype)
            )
        out.append(compare_step(expected, received, step=i, got_dtype=want, floor=GRADIENT_FLOOR))
    return out


TrainingStep = tuple[str, int, int | None, torch.Tensor, torch.Tensor]  # mode, step, of_step, in, out


def audit_training_transcript(
    runner: ShardRunner,
    steps: Sequence[TrainingStep],
    audited_dtype: str | torch.dtype,
    tolerance: Tolerance | None = None,
) -> Verdict:
    """`audit_transcript` for a training job: forwards and the gradients returned upstream."""
    try:
        tolerance = tolerance or Tolerance.for_dtypes(audited_dtype, runner.dtype)
        comparisons = replay_training(runner, steps, audited_dtype)
    except (BadTranscript, UnsupportedDTypePair) as exc:
        verdict = Verdict("fraud", None, f"the transcript cannot be audited: {exc}")
    else:
        verdict = judge(comparisons, tolerance, expected_steps=len(steps))
    log = logger.warning if verdict.is_fraud else logger.info
    log(
        "training audit of layers [%d, %d): %s (%s)",
        runner.start,
        runner.end,
        verdict.verdict,
        verdict.reason,
    )
    return verdict


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise UnsupportedDTypePair(f"{dtype!r} is not a torch dtype name; use float32 or bfloat16")
    return value

"""Compare a verifier's recomputation of a shard with the audited node's recorded outputs.

Re-execution on another machine or in another dtype is never bit-exact, so the verdict rests on relative
errors with a tolerance per pair of dtypes (audited node, verifier). The bounds below come from
bench/bench_honest_differences.py on SmolLM2-135M (shards [4,13), [13,22), [22,30) on real hidden states);
rerun it after changing the model family or the kernels and read the margins it prints.

Two statistics decide, because honest noise and cheating look different:
- the worst per-token relative L2 error ``||got_t - expected_t|| / ||expected_t||`` over every token of
  every audited step catches gross wrong work on any single token or step;
- the mean of the per-token relative errors over the audited transcript catches small but systematic
  cheats (a skipped layer): honest rounding noise has rare outliers (a few fragile positions) but a
  small, stable mean, while a missing layer is wrong on nearly every token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from splitmesh.errors import SplitmeshError

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


class AuditError(SplitmeshError, ValueError):
    """An audit could not be carried out (the inputs, not the audited node, are at fault)."""


class BadTranscript(AuditError):
    """A transcript's inputs cannot be replayed: wrong shape, non-finite, or positions that do not follow."""


class UnsupportedDTypePair(AuditError):
    """No measured tolerance exists for this pair of dtypes; audit with a float32 or bfloat16 verifier."""


@dataclass(frozen=True)
class Comparison:
    """How one step's recorded output differs from the verifier's recomputation.

    `problem` is set (and the errors are inf) when the output cannot be compared at all: missing step,
    wrong shape or dtype, NaN/Inf. Such a step is fraud whatever the tolerance.
    """

    step: int  # index of the step in the transcript
    tokens: int  # positions compared
    rel_l2: float  # ||got - expected|| / ||expected|| over the whole step
    max_abs: float  # largest absolute elementwise difference
    cosine: float  # cosine similarity of the whole step, flattened
    worst_token_rel: float  # largest per-token relative L2 error
    worst_token: int  # position (within the step) of that token
    mean_token_rel: float  # mean per-token relative L2 error
    token_rel: tuple[float, ...]  # per-token relative L2 errors, in order
    problem: str | None = None

    @classmethod
    def failed(cls, step: int, problem: str) -> Comparison:
        inf = math.inf
        return cls(step, 0, inf, inf, -inf, inf, -1, inf, (), problem)


def compare_step(
    expected: torch.Tensor,  # [1, q, hidden] the verifier's recomputation
    got: torch.Tensor,  # [1, q, hidden] the audited node's recorded output
    *,
    step: int = 0,
    got_dtype: torch.dtype | None = None,  # the dtype the audited node declared; None: not checked
    floor: float = 0.0,  # per-token errors relative to at least floor x the step's largest token norm
) -> Comparison:
    """Relative errors of `got` against `expected`, in float64. Structural defects set `problem`.

    `floor` is for gradients, whose tokens far from any label are tiny: rounding noise on them is
    measured against the step's scale instead of their own near-zero norm.
    """
    if not expected.is_floating_point() or not bool(torch.isfinite(expected).all()):
        raise AuditError(
            f"step {step}: the verifier's own recomputation is not finite; check the verifier's weights"
        )
    if not got.is_floating_point():
        return Comparison.failed(step, f"output dtype {got.dtype} is not a float type")
    if got_dtype is not None and got.dtype != got_dtype:
        return Comparison.failed(step, f"output dtype {got.dtype}, the node declared {got_dtype}")
    if got.shape != expected.shape:
        return Comparison.failed(step, f"output shape {list(got.shape)}, expected {list(expected.shape)}")
    if not bool(torch.isfinite(got).all()):
        return Comparison.failed(step, "output contains NaN or Inf")
    e = expected.detach().to(torch.float64).reshape(-1, expected.shape[-1])  # [tokens, hidden]
    g = got.detach().to(torch.float64).reshape(-1, got.shape[-1])
    diff = g - e
    tiny = torch.finfo(torch.float64).tiny
    diff_norm, e_tok = diff.norm(dim=-1), e.norm(dim=-1)  # [tokens]
    if floor > 0:
        e_tok = e_tok.clamp_min(float(e_tok.max()) * floor)
    token_rel = diff_norm / e_tok.clamp_min(tiny)
    # An all-zero expected token: equal is exact, any difference is infinitely wrong.
    token_rel = torch.where(e_tok > 0, token_rel, torch.where(diff_norm > 0, math.inf, 0.0))
    worst = int(token_rel.argmax())
    e_norm, g_norm = float(e.norm()), float(g.norm())
    cosine = float((e * g).sum()) / max(e_norm * g_norm, tiny)
    return Comparison(
        step=step,
        tokens=int(token_rel.numel()),
        rel_l2=float(diff.norm()) / max(e_norm, tiny),
        max_abs=float(diff.abs().max()),
        cosine=cosine,
        worst_token_rel=float(token_rel[worst]),
        worst_token=worst,
        mean_token_rel=float(token_rel.mean()),
        token_rel=tuple(token_rel.tolist()),
    )


@dataclass(frozen=True)
class Tolerance:
    """Bounds an honest node stays within; crossing either one is fraud.

    `token_rel` bounds the per-token relative L2 error of every token of every step. `mean_rel` bounds
    the mean per-token relative error over all tokens judged together (a job's transcript); it applies
    only from `min_tokens` tokens on, because the mean of a few tokens is as noisy as a single one.
    """

    token_rel: float  # largest per-token relative L2 error an honest node may show
    mean_rel: float  # largest mean per-token relative L2 error over the judged tokens
    min_tokens: int = 16  # tokens needed before `mean_rel` applies

    @classmethod
    def for_dtypes(cls, audited: str | torch.dtype, verifier: str | torch.dtype) -> Tolerance:
        """The measured tolerance for this (audited node, verifier) dtype pair (order does not matter)."""
        pair = frozenset({_dtype_name(audited), _dtype_name(verifier)})
        try:
            return TOLERANCES[pair]
        except KeyError:
            raise UnsupportedDTypePair(
                f"no tolerance measured for {sorted(pair)}; run bench/bench_honest_differences.py"
            ) from None


def _dtype_name(dtype: str | torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype) if isinstance(dtype, torch.dtype) else dtype
    if name not in ("float32", "bfloat16"):
        raise UnsupportedDTypePair(f"dtype {dtype} has no audit tolerance; use float32 or bfloat16")
    return name


# From bench/bench_honest_differences.py (SmolLM2-135M, 3 shards, 10 prompts x 25 steps, torch 2.13 CPU).
# float32: honest re-execution (other thread count, prefill fed token by token) stays below 3e-6 per
#   token and 9e-7 on average; the bounds leave ~35x / ~23x for other machines' kernels (keep TF32 off on
#   GPUs). Every cheat measured lands >= 6.7e-4 per step (0.1% tampering), a skipped layer >= 0.086.
#   A node computing in float32 with bfloat16-rounded weights shows 2e-3..5e-3: it is judged fraud here;
#   such a node must declare (and send) bfloat16.
# bfloat16 on either side: honest tokens reach 0.18 (the first positions of a sequence in the early shard,
#   where the attention sink forms, amplify rounding), transcript means stay below 0.017. A skipped
#   single layer gives steps as low as 0.086 per token, so only the mean separates it (>= 0.15, 3x over
#   the bound, which is 3x over honest). Tampering of about 1% is indistinguishable from bf16 noise.
TOLERANCES: dict[frozenset[str], Tolerance] = {
    frozenset({"float32"}): Tolerance(token_rel=1e-4, mean_rel=2e-5),
    frozenset({"float32", "bfloat16"}): Tolerance(token_rel=0.5, mean_rel=0.05),
    frozenset({"bfloat16"}): Tolerance(token_rel=0.5, mean_rel=0.05),
}


@dataclass(frozen=True)
class Verdict:
    """The outcome of an audit: "fraud" slashes the audited node, "honest" lets it be paid."""

    verdict: Literal["honest", "fraud"]
    worst_step: int | None  # step with the largest worst-token error (or the first defective step)
    reason: str
    worst_token_rel: float = math.nan  # over the transcript
    mean_token_rel: float = math.nan  # over the transcript
    comparisons: tuple[Comparison, ...] = field(default=(), repr=False)  # per step, as judged

    @property
    def is_fraud(self) -> bool:
        return self.verdict == "fraud"


def judge(
    comparisons: Sequence[Comparison], tolerance: Tolerance, *, expected_steps: int | None = None
) -> Verdict:
    """Fraud if a step is defective, repeated or (with `expected_steps`) missing, or a bound is crossed.

    Without `expected_steps` any distinct steps may be judged together (say, a sample of a job's steps).
    """
    if not comparisons and not expected_steps:
        raise AuditError("nothing to judge: the transcript has no steps")
    judged = tuple(comparisons)
    for c in judged:
        if c.problem is not None:
            return Verdict("fraud", c.step, f"step {c.step}: {c.problem}", comparisons=judged)
    steps = sorted(c.step for c in comparisons)
    if len(set(steps)) != len(steps) or (expected_steps is not None and steps != list(range(expected_steps))):
        n = len(steps) if expected_steps is None else expected_steps
        missing = sorted(set(range(n)) - set(steps))
        first = missing[0] if missing else None
        reason = f"the outputs cover steps {_ranges(steps)}, expected 0..{n - 1}"
        return Verdict("fraud", first, reason, comparisons=judged)
    worst = max(comparisons, key=lambda c: c.worst_token_rel)
    tokens = sum(c.tokens for c in comparisons)
    mean = sum(c.mean_token_rel * c.tokens for c in comparisons) / tokens
    if worst.worst_token_rel > tolerance.token_rel:
        reason = (
            f"step {worst.step} token {worst.worst_token}: relative error {worst.worst_token_rel:.3g} "
            f"> {tolerance.token_rel:.3g}"
        )
        return Verdict("fraud", worst.step, reason, worst.worst_token_rel, mean, judged)
    if tokens >= tolerance.min_tokens and mean > tolerance.mean_rel:
        reason = f"mean per-token relative error {mean:.3g} over {tokens} tokens > {tolerance.mean_rel:.3g}"
        return Verdict("fraud", worst.step, reason, worst.worst_token_rel, mean, judged)
    reason = f"worst token error {worst.worst_token_rel:.3g}, mean {mean:.3g}: within {tolerance}"
    return Verdict("honest", worst.step, reason, worst.worst_token_rel, mean, judged)


def _ranges(steps: list[int]) -> str:
    """[0, 1, 2, 5, 5] -> "0..2, 5, 5" (for messages)."""
    parts: list[str] = []
    i = 0
    while i < len(steps):
        j = i
        while j + 1 < len(steps) and steps[j + 1] == steps[j] + 1:
            j += 1
        parts.append(str(steps[i]) if i == j else f"{steps[i]}..{steps[j]}")
        i = j + 1
    return ", ".join(parts) or "none"

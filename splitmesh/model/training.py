"""A node's half of split fine-tuning: frozen layers that answer backward requests.

The client owns every trainable parameter and the loss; a node only maps d(loss)/d(output) of one of its
training steps to d(loss)/d(input). `forward` keeps the step's input and, while it fits the byte budget,
the autograd graph of the step (every layer's saved activations, measured exactly as they are saved:
about 115x the input on SmolLM2); `backward` then runs autograd on that graph. A step whose graph does
not fit keeps only its input, and its backward recomputes the layers first (activation recomputation:
one more forward, about 1.45x the nodes' compute of a step, for one tensor of memory).

Memory is bounded: stored inputs of all jobs together may not exceed `max_stored_bytes`, a job may keep at
most `max_steps_per_job` steps awaiting their backward, at most `max_jobs` jobs hold steps, and a step not
claimed within `step_ttl` seconds expires. A backward consumes its step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from splitmesh.model.errors import BadHiddenStates, BadPositions, CacheFull, ModelError
from splitmesh.model.runner import ShardRunner
from splitmesh.model.stack import LayerStack

logger = logging.getLogger(__name__)

_CONSUMED_MEMORY = 256  # step numbers remembered per job to tell "already consumed" from "never stored"


class UnknownStep(ModelError, KeyError):
    """No stored training step with this job and step number (never sent, expired or evicted)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else "unknown training step"


class StepConsumed(UnknownStep):
    """The step's backward already ran; each step answers one backward (run its forward again to retry)."""


class DuplicateStep(ModelError, ValueError):
    """A forward reused a step number the job already stored or consumed; step numbers must be new."""


class BadGradient(BadHiddenStates):
    """A gradient does not match the step's output (shape, dtype) or holds NaN / inf."""


class TrainingStoreFull(CacheFull):
    """Storing the step would exceed the trainer's byte, job or per-job step budget; run pending backwards."""


@dataclass(frozen=True)
class TrainerLimits:
    max_stored_bytes: int = 256 << 20  # inputs kept for pending backwards, all jobs together, bytes
    max_steps_per_job: int = 8  # forward steps of one job awaiting their backward (pipeline depth)
    max_jobs: int = 64  # jobs with steps awaiting backward at once
    step_ttl: float = 300.0  # seconds a stored step waits for its backward before it expires
    max_step_tokens: int = 8192  # batch * sequence tokens in one step
    keep_graph: bool = True  # keep autograd graphs that fit max_stored_bytes (else recompute in backward)


@dataclass
class _Stored:
    hidden: torch.Tensor  # [batch, seq, hidden] the step's input, detached copy
    position_ids: torch.Tensor  # [batch, seq]
    nbytes: int
    created: float
    output: torch.Tensor | None = None  # the forward's output with its autograd graph back to `hidden`


@dataclass
class _Job:
    steps: dict[int, _Stored] = field(default_factory=dict)
    consumed: OrderedDict[int, None] = field(default_factory=OrderedDict)  # bounded, oldest first
    last_used: float = field(default_factory=time.monotonic)


class ShardTrainer:
    """Training steps (full sequences, no KV cache) through frozen layers [start, end).

    Thread-safe: bookkeeping under one lock, and one forward or backward computes at a time, as in
    ShardRunner. May share its LayerStack with a ShardRunner (see `from_runner`): both only read weights.
    """

    def __init__(self, stack: LayerStack, dtype: torch.dtype, limits: TrainerLimits | None = None):
        if any(p.requires_grad for p in stack.parameters()):
            raise ModelError(
                "a ShardTrainer's layers must be frozen (requires_grad_(False)): nodes never train"
            )
        self.stack = stack
        self.dtype = dtype
        self.hidden_size = int(stack.config.hidden_size)
        self.limits = limits or TrainerLimits()
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()  # guards _jobs and stored_bytes
        self._compute = threading.Lock()  # one forward/backward at a time, like ShardRunner
        self.stored_bytes = 0
        self.graphs_kept = self.graphs_dropped = 0  # steps whose backward skips / needs the recompute
        self._weights = {t.untyped_storage().data_ptr() for t in (*stack.parameters(), *stack.buffers())}

    @classmethod
    def load(
        cls,
        model: str | None,
        start: int,
        end: int,
        dtype: str | torch.dtype = "float32",
        limits: TrainerLimits | None = None,
    ) -> ShardTrainer:
        """Layers [start, end) of a model, loaded as a ShardRunner loads them (the runner is not kept)."""
        return cls.from_runner(ShardRunner.load(model, start, end, dtype), limits)

    @classmethod
    def from_runner(cls, runner: ShardRunner, limits: TrainerLimits | None = None) -> ShardTrainer:
        """A trainer over a ShardRunner's layers: no second copy of the weights."""
        return cls(runner.stack, runner.dtype, limits)

    @property
    def start(self) -> int:
        return self.stack.start

    @property
    def end(self) -> int:
        return self.stack.end

    # ------------------------------------------------------------------ bookkeeping

    def jobs(self) -> list[str]:
        """Jobs with steps awaiting their backward."""
        with self._lock:
            return [key for key, job in self._jobs.items() if job.steps]

    def pending(self, job_key: str) -> list[int]:
        """Step numbers of `job_key` stored and awaiting their backward."""
        with self._lock:
            job = self._jobs.get(job_key)
            return sorted(job.steps) if job else []

    def evict(self, job_key: str) -> int:
        """Drop everything stored for a job (it ended or was abandoned); returns the steps dropped."""
        with self._lock:
            job = self._jobs.pop(job_key, None)
            if job is None:
                return 0
            self.stored_bytes -= sum(s.nbytes for s in job.steps.values())
            return len(job.steps)

    def expire(self, now: float | None = None) -> int:
        """Drop steps older than the TTL; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            dropped = self._expire_locked(now)
        if dropped:
            logger.info(
                "expired %d unclaimed training steps on layers [%d, %d)", dropped, self.start, self.end
            )
        return dropped

    def _expire_locked(self, now: float) -> int:
        dropped = 0
        for job_key in list(self._jobs):
            job = self._jobs[job_key]
            for step in [s for s, st in job.steps.items() if now - st.created > self.limits.step_ttl]:
                self.stored_bytes -= job.steps.pop(step).nbytes
                dropped += 1
            if not job.steps and now - job.last_used > self.limits.step_ttl:
                del self._jobs[job_key]  # forget its consumed steps too: a finished job nobody evicted
        return dropped

    # ------------------------------------------------------------------ checks

    def _check_input(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Validated position ids as [batch, seq] (a [seq] vector is shared by every row)."""
        if hidden.dtype != self.dtype:
            raise BadHiddenStates(f"hidden states are {hidden.dtype}, this shard runs {self.dtype}")
        if hidden.dim() != 3 or hidden.shape[2] != self.hidden_size or hidden.numel() == 0:
            raise BadHiddenStates(
                f"hidden states must be [batch, seq, {self.hidden_size}], got {list(hidden.shape)}"
            )
        batch, seq = int(hidden.shape[0]), int(hidden.shape[1])
        if batch * seq > self.limits.max_step_tokens:
            raise BadHiddenStates(
                f"a training step carries at most {self.limits.max_step_tokens} tokens, got {batch}x{seq}"
            )
        if not bool(torch.isfinite(hidden).all()):
            raise BadHiddenStates("hidden states hold NaN or inf; check the previous hop")
        if position_ids.dtype not in (torch.int32, torch.int64):
            raise BadPositions(f"position ids must be int32 or int64, got {position_ids.dtype}")
        if position_ids.dim() == 1 and position_ids.shape[0] == seq:
            position_ids = position_ids.unsqueeze(0).expand(batch, seq)
        if tuple(position_ids.shape) != (batch, seq):
            raise BadPositions(
                f"expected position ids [{batch}, {seq}] or [{seq}], got {list(position_ids.shape)}"
            )
        if bool((position_ids < 0).any()):
            raise BadPositions("position ids must be >= 0")
        return position_ids.to(torch.int64)

    # ------------------------------------------------------------------ compute

    def forward(
        self, job_key: str, step: int, hidden: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """hidden [batch, seq, hidden] at position_ids [batch, seq] -> output [batch, seq, hidden].

        Causal attention over each row; rows whose positions restart at 0 inside the row are treated as
        packed sequences (block-diagonal mask). The input is kept until `backward(job_key, step, ...)`.
        """
        positions = self._check_input(hidden, position_ids)
        saved = hidden.detach().clone()  # the caller's buffer (a wire frame) may be reused
        positions = positions.clone()
        nbytes = saved.numel() * saved.element_size() + positions.numel() * positions.element_size()
        now = time.monotonic()
        with self._lock:
            self._expire_locked(now)
            job = self._jobs.get(job_key)
            if job is not None and (step in job.steps or step in job.consumed):
                raise DuplicateStep(f"job {job_key!r} already used step {step}; number each step anew")
            active = sum(1 for j in self._jobs.values() if j.steps)
            if (job is None or not job.steps) and active >= self.limits.max_jobs:
                raise TrainingStoreFull(f"this trainer already holds steps of {self.limits.max_jobs} jobs")
            if job is not None and len(job.steps) >= self.limits.max_steps_per_job:
                raise TrainingStoreFull(
                    f"job {job_key!r} already has {len(job.steps)} steps awaiting backward "
                    f"(limit {self.limits.max_steps_per_job}); send their backward first"
                )
            if self.stored_bytes + nbytes > self.limits.max_stored_bytes:
                raise TrainingStoreFull(
                    f"stored activations would exceed {self.limits.max_stored_bytes} bytes "
                    f"({self.stored_bytes} held); retry after pending backwards or use another node"
                )
            if job is None:
                job = self._jobs[job_key] = _Job()
            job.steps[step] = _Stored(saved, positions, nbytes, now)
            job.last_used = now
            self.stored_bytes += nbytes
        try:
            with self._compute:
                if not self.limits.keep_graph:
                    with torch.no_grad():
                        return self.stack(saved, positions, None)
                output, graph_bytes = self._forward_with_graph(saved, positions)
        except BaseException:
            self._discard(job_key, step)
            raise
        with self._lock:
            stored = job.steps.get(step)
            if stored is not None and self.stored_bytes + graph_bytes <= self.limits.max_stored_bytes:
                stored.output = output
                stored.nbytes += graph_bytes
                self.stored_bytes += graph_bytes
                self.graphs_kept += 1
            else:
                self.graphs_dropped += 1  # over budget (or already gone): backward recomputes
        return output.detach()

    def _forward_with_graph(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The layers with autograd on `hidden`; the output and the bytes the graph holds (not weights)."""
        seen = set(self._weights)
        graph_bytes = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal graph_bytes
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                graph_bytes += storage.nbytes()
            return t

        hidden.requires_grad_(True)  # our own copy
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = self.stack(hidden, positions, None)
        return output, graph_bytes

    def _discard(self, job_key: str, step: int) -> None:
        with self._lock:
            job = self._jobs.get(job_key)
            stored = job.steps.pop(step, None) if job else None
            if stored is not None:
                self.stored_bytes -= stored.nbytes

    def _stored_locked(self, job_key: str, step: int, grad_output: torch.Tensor) -> tuple[_Job, _Stored]:
        job = self._jobs.get(job_key)
        stored = job.steps.get(step) if job else None
        if stored is None:
            if job is not None and step in job.consumed:
                raise StepConsumed(f"step {step} of job {job_key!r} already ran its backward")
            raise UnknownStep(
                f"no stored step {step} for job {job_key!r} (never sent to this node, expired after "
                f"{self.limits.step_ttl:g} s, or evicted); rerun its forward"
            )
        if grad_output.shape != stored.hidden.shape or grad_output.dtype != stored.hidden.dtype:
            raise BadGradient(
                f"grad_output must match the step's output {list(stored.hidden.shape)} "
                f"{stored.hidden.dtype}, got {list(grad_output.shape)} {grad_output.dtype}"
            )
        if not bool(torch.isfinite(grad_output).all()):
            raise BadGradient(f"grad_output of step {step} holds NaN or inf; lower the learning rate")
        assert job is not None
        return job, stored

    def check_backward(self, job_key: str, step: int, grad_output: torch.Tensor) -> None:
        """Raise what `backward` would raise for this step and gradient, without consuming the step (a
        node checks a backward request before relaying it downstream)."""
        with self._lock:
            self._stored_locked(job_key, step, grad_output)

    def backward(self, job_key: str, step: int, grad_output: torch.Tensor) -> torch.Tensor:
        """d(loss)/d(output) [batch, seq, hidden] of a stored step -> d(loss)/d(input), same shape.

        Consumes the step. A malformed gradient raises BadGradient and leaves the step stored.
        """
        with self._lock:
            job, stored = self._stored_locked(job_key, step, grad_output)
            del job.steps[step]
            job.consumed[step] = None
            job.last_used = time.monotonic()
            while len(job.consumed) > _CONSUMED_MEMORY:
                job.consumed.popitem(last=False)
            self.stored_bytes -= stored.nbytes
        x = stored.hidden.requires_grad_(True)  # our own copy: no clone needed
        with self._compute, torch.enable_grad():
            out = stored.output
            if out is None:  # no graph kept: recompute (same ops, same values as the forward)
                out = self.stack(x, stored.position_ids, None)
            (grad,) = torch.autograd.grad(out, x, grad_outputs=grad_output)
        return grad.detach()

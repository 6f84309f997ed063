"""A node's shard runner: its layers only, many concurrent sessions each with its own KV cache.

Memory is bounded: the KV cache of all sessions together may not exceed `max_cache_bytes`, there are
at most `max_sessions`, and sessions idle longer than `session_ttl` expire.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache

from splitmesh.model.batching import can_batch, forward_batched
from splitmesh.model.device import resolve_device, to_device, to_wire
from splitmesh.model.errors import BadHiddenStates, BadPositions, CacheFull, ModelError, UnknownSession
from splitmesh.model.loader import ModelSpec
from splitmesh.model.stack import LayerStack

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerLimits:
    max_sessions: int = 64  # concurrent sessions (jobs) on this runner
    max_cache_bytes: int = 1 << 30  # KV cache of all sessions together, bytes
    session_ttl: float = 300.0  # seconds a session may stay idle before it expires
    max_step_tokens: int = 4096  # tokens in one forward call (prefill chunk)


@dataclass(frozen=True)
class StepInput:
    """One session's step: hidden [1, q, hidden] at positions [q]."""

    session_id: str
    hidden: torch.Tensor
    positions: torch.Tensor


@dataclass
class Session:
    session_id: str
    cache: DynamicCache
    length: int = 0  # tokens in the cache
    cache_bytes: int = 0
    last_used: float = field(default_factory=time.monotonic)


class ShardRunner:
    """Runs layers [start, end) for many sessions. Thread-safe: one forward at a time per runner."""

    def __init__(
        self,
        spec: ModelSpec,
        start: int,
        end: int,
        limits: RunnerLimits | None = None,
        device: str | torch.device | None = None,  # None = cpu; see splitmesh.model.device
    ):
        self.spec = spec
        self.device = resolve_device(device)
        # Hidden states come and go as CPU tensors (frames); only the layers and KV caches live on the device.
        self.stack: LayerStack = spec.build_stack(start, end).to(self.device)
        self.limits = limits or RunnerLimits()
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.cache_bytes = 0
        self.batchable = can_batch(self.stack)  # False: sessions' steps run one by one (same results)
        cfg = spec.config
        heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        itemsize = torch.empty((), dtype=spec.dtype).element_size()
        self.bytes_per_token = 2 * kv_heads * head_dim * itemsize * (end - start)  # keys + values

    @classmethod
    def load(
        cls,
        model: str | None,
        start: int,
        end: int,
        dtype: str | torch.dtype = "float32",
        limits: RunnerLimits | None = None,
        device: str | torch.device | None = None,
    ) -> ShardRunner:
        return cls(ModelSpec.open(model, dtype), start, end, limits, device)

    @property
    def start(self) -> int:
        return self.stack.start

    @property
    def end(self) -> int:
        return self.stack.end

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.spec.dtype

    def num_parameters(self) -> int:
        return self.stack.num_parameters()

    # ------------------------------------------------------------------ sessions

    def sessions(self) -> list[str]:
        return list(self._sessions)

    def session_length(self, session_id: str) -> int:
        return self._get(session_id).length

    def close(self, session_id: str) -> bool:
        """Free a session's cache; False if it was not open."""
        with self._lock:
            return self._drop(session_id)

    def expire(self, now: float | None = None) -> list[str]:
        """Close sessions idle longer than the TTL; returns their ids."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [
                s.session_id for s in self._sessions.values() if now - s.last_used > self.limits.session_ttl
            ]
            for session_id in stale:
                self._drop(session_id)
        if stale:
            logger.info("expired %d idle sessions on layers [%d, %d)", len(stale), self.start, self.end)
        return stale

    def _drop(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self.cache_bytes -= session.cache_bytes
        return True

    def _get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(f"session {session_id!r} is not open on this runner (closed or expired)")
        return session

    # ------------------------------------------------------------------ compute

    def _check(self, hidden: torch.Tensor, positions: torch.Tensor) -> int:
        if hidden.dtype != self.dtype:
            raise BadHiddenStates(f"hidden states are {hidden.dtype}, this shard runs {self.dtype}")
        if hidden.dim() != 3 or hidden.shape[0] != 1 or hidden.shape[2] != self.hidden_size:
            raise BadHiddenStates(
                f"hidden states must be [1, tokens, {self.hidden_size}], got {list(hidden.shape)}"
            )
        q = int(hidden.shape[1])
        if not 1 <= q <= self.limits.max_step_tokens:
            raise BadHiddenStates(f"a step carries 1..{self.limits.max_step_tokens} tokens, got {q}")
        if positions.dim() != 1 or positions.shape[0] != q:
            raise BadPositions(f"expected {q} position ids, got shape {list(positions.shape)}")
        return q

    def forward(self, session_id: str, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run this shard's layers on hidden [1, q, hidden] at positions [q] for one session.

        The first call opens the session (positions must start at 0); each later call must continue
        exactly where the previous one ended, so a prefill may be split into chunks.
        """
        (result,) = self.forward_many([StepInput(session_id, hidden, positions)])
        if isinstance(result, Exception):
            raise result
        return result

    def forward_many(self, steps: list[StepInput]) -> list[torch.Tensor | ModelError]:
        """One step for each of several sessions: steps of the same length run as one batch through the
        layers (splitmesh.model.batching), a lone step as `forward` always did. Each step gets its own
        output, or the error that refused it (bad shape or positions, cache full) without failing others.
        """
        results: list[torch.Tensor | ModelError | None] = [None] * len(steps)
        with self._lock:
            admitted: dict[int, list[tuple[int, Session, int]]] = {}  # q -> [(index, session, past)]
            seen: set[str] = set()
            reserved = 0  # cache bytes the admitted steps will add
            for index, step in enumerate(steps):
                try:
                    if step.session_id in seen:
                        raise BadPositions(f"session {step.session_id!r} has two steps in one batch")
                    q = self._check(step.hidden, step.positions)
                    session, past = self._admit(step.session_id, step.positions, q, reserved)
                except (BadHiddenStates, BadPositions, CacheFull) as exc:
                    results[index] = exc
                    continue
                seen.add(step.session_id)
                reserved += q * self.bytes_per_token
                admitted.setdefault(q, []).append((index, session, past))
            for q, group in admitted.items():
                outputs = self._run(group, [steps[i].hidden for i, _, _ in group])
                for (index, session, _), out in zip(group, outputs, strict=True):
                    growth = q * self.bytes_per_token
                    session.length += q
                    session.cache_bytes += growth
                    session.last_used = time.monotonic()
                    self.cache_bytes += growth
                    results[index] = out
        return [r for r in results if r is not None]

    def _admit(self, session_id: str, positions: torch.Tensor, q: int, reserved: int) -> tuple[Session, int]:
        """The session a step of q tokens at `positions` continues (opened if new) and its length;
        `reserved`: cache bytes the steps admitted before it in the same batch will add."""
        session = self._sessions.get(session_id)
        past = 0 if session is None else session.length
        expected = torch.arange(past, past + q, dtype=positions.dtype)
        if not torch.equal(positions, expected):
            raise BadPositions(
                f"session {session_id!r} holds {past} tokens: positions must be {past}..{past + q - 1}"
            )
        growth = q * self.bytes_per_token
        if self.cache_bytes + reserved + growth > self.limits.max_cache_bytes:
            raise CacheFull(
                f"KV cache budget of {self.limits.max_cache_bytes} bytes is used up "
                f"({self.cache_bytes} in {len(self._sessions)} sessions); retry later"
            )
        if session is None:
            if len(self._sessions) >= self.limits.max_sessions:
                raise CacheFull(f"this runner already serves {self.limits.max_sessions} sessions")
            session = Session(session_id, DynamicCache(config=self.spec.config))
            self._sessions[session_id] = session
        return session, past

    def _run(self, group: list[tuple[int, Session, int]], hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs of one step per session, all q tokens long: one batch, or one by one if unbatchable."""
        if len(group) > 1 and self.batchable:
            caches = [session.cache for _, session, _ in group]
            return [
                to_wire(o)
                for o in forward_batched(self.stack, caches, [past for _, _, past in group], hidden)
            ]
        outputs = []
        for (_, session, past), h in zip(group, hidden, strict=True):
            positions = torch.arange(past, past + int(h.shape[1])).unsqueeze(0)
            with torch.inference_mode():
                outputs.append(to_wire(self.stack(h, positions, session.cache)))
        return outputs

    def backward(
        self, hidden: torch.Tensor, positions: torch.Tensor, grad_output: torch.Tensor
    ) -> torch.Tensor:
        """d(loss)/d(hidden) for this shard given d(loss)/d(output); weights stay frozen.

        Recomputes the forward over the whole sequence (no cache) with autograd on the input only.
        """
        self._check(hidden, positions)
        if grad_output.shape != hidden.shape or grad_output.dtype != hidden.dtype:
            raise BadHiddenStates(
                f"grad_output must match hidden {list(hidden.shape)} {hidden.dtype}, "
                f"got {list(grad_output.shape)} {grad_output.dtype}"
            )
        x = hidden.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = self.stack(x, positions.unsqueeze(0), None)
            (grad,) = torch.autograd.grad(out, x, grad_outputs=to_device(grad_output, out.device))
        return to_wire(grad)

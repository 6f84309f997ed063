"""What a generation returns besides its text: the job, the route, timings, privacy, money."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from client_sdk.failover import FailoverReport
from splitmesh.protocol import HopTiming


@dataclass(frozen=True)
class HopInfo:
    position: int
    shard: int
    layers: tuple[int, int]  # [start, end)
    node: str
    endpoint: str
    price_per_token: int  # wei
    tls_key: str = "0x" + "00" * 32  # SHA-256 of the node's TLS certificate as registered on-chain, hex


@dataclass
class StepStats:
    """Per-step timings on the client (seconds) and the nodes' own reports (milliseconds)."""

    head: list[float] = field(default_factory=list)  # embeddings + local layers
    privacy: list[float] = field(default_factory=list)  # clip + noise + digest + envelope signature
    route: list[float] = field(default_factory=list)  # send the frame until the result is back
    tail: list[float] = field(default_factory=list)  # norm + LM head + sampling
    node_compute_ms: list[list[float]] = field(default_factory=list)  # per step, per hop
    hops: list[list[HopTiming]] = field(default_factory=list)  # per step, the nodes' own timings

    def record(
        self, step: int, head: float, privacy: float, route: float, tail: float, hops: list[HopTiming]
    ) -> None:
        self.head.append(head)
        self.privacy.append(privacy)
        self.route.append(route)
        self.tail.append(tail)
        self.node_compute_ms.append([h.compute_ms for h in hops])
        self.hops.append(list(hops))

    def link_ms(self) -> list[list[float]]:
        """Per decode step, per link (client-node 0, node 0-1, ...): transport time both ways.

        Derived from the nodes' reports: what the sender waited minus what the receiver spent. Old return
        path only: on a direct-return step no node waits for the next one (their relay_ms are 0).
        """
        out = []
        for route, hops in list(zip(self.route, self.hops, strict=True))[1:]:
            waits = [route * 1e3] + [h.relay_ms for h in hops[:-1]]
            out.append([wait - hop.handle_ms for wait, hop in zip(waits, hops, strict=True)])
        return out

    def node_local_ms(self) -> list[list[float]]:
        """Per decode step, per node: handling time outside its layers and outside waiting downstream."""
        return [[h.handle_ms - h.compute_ms - h.relay_ms for h in hops] for hops in self.hops[1:]]

    def hop_overhead_ms(self) -> list[float]:
        """Per decode step: (route time - time in the nodes' layers) / number of network hops.

        A hop is one node-to-node (or client-to-node) link, counted once for the request and its reply.
        """
        out = []
        for route, computes in list(zip(self.route, self.node_compute_ms, strict=True))[1:]:
            if computes:
                out.append((route * 1e3 - sum(computes)) / len(computes))
        return out

    def summary(self) -> dict[str, Any]:
        decode = slice(1, None)  # step 0 is the prefill

        def p50(values: list[float], scale: float = 1e3) -> float | None:
            return round(statistics.median(values) * scale, 4) if values else None

        overhead = self.hop_overhead_ms()
        step_total = [
            h + p + r + t for h, p, r, t in zip(self.head, self.privacy, self.route, self.tail, strict=True)
        ]
        return {
            "steps": len(self.route),
            "prefill_ms": round(step_total[0] * 1e3, 3) if step_total else None,
            "decode_step_ms_p50": p50(step_total[decode]),
            "head_ms_p50": p50(self.head[decode]),
            "privacy_and_signing_ms_p50": p50(self.privacy[decode]),
            "route_ms_p50": p50(self.route[decode]),
            "tail_ms_p50": p50(self.tail[decode]),
            "node_compute_ms_p50": [
                round(statistics.median(col), 3) for col in zip(*self.node_compute_ms[1:], strict=True)
            ]
            if len(self.node_compute_ms) > 1
            else [],
            "hop_overhead_ms_p50": round(statistics.median(overhead), 4) if overhead else None,
        }


@dataclass
class GenerationReceipt:
    job_id: int
    client: str
    model_id: int
    split: int
    route: list[HopInfo]
    prompt_tokens: int
    max_tokens: int
    escrow_wei: int
    tx: dict[str, str]
    gas_used: dict[str, int]
    billed_tokens: int = 0  # tokens the client signed for (prompt + generated - 1)
    generated_tokens: int = 0
    decode_seconds: float = 0.0
    token_times: list[float] = field(default_factory=list)  # perf_counter() when each token was ready
    status: str = "open"
    privacy: dict[str, Any] = field(default_factory=dict)
    commitments: list[dict[str, Any]] = field(default_factory=list)
    commitment_problem: str | None = None  # set when the nodes' reported (or committed) chains disagree
    uncommitted: list[int] = field(default_factory=list)  # positions not committed on-chain in time
    steps: StepStats = field(default_factory=StepStats)
    settlement: Settlement | None = None
    failover: FailoverReport = field(
        default_factory=FailoverReport
    )  # route failures survived, and their cost

    @property
    def tokens_per_s(self) -> float | None:
        """Decode rate by the wall clock: tokens after the first over the time from the first to the last.

        Everything between two tokens counts (detokenizing, the caller's handling of the stream), the
        same way the reference's rate counts everything `model.generate` does after its first token.
        """
        times = self.token_times
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None

    def cost_wei(self, hop_fee: int) -> int:
        """Wei the job costs at most once settled: each hop's price x billed tokens + the hop fee."""
        return sum(hop.price_per_token * self.billed_tokens + hop_fee for hop in self.route)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("token_times")
        out["route"] = [asdict(h) for h in self.route]
        out["steps"] = self.steps.summary()
        out["tokens_per_s"] = self.tokens_per_s
        out["settlement"] = self.settlement.to_json() if self.settlement else None
        return out


@dataclass
class Settlement:
    job_id: int
    status: str
    billed_tokens: int
    paid_wei: dict[str, int]  # node -> price x billed tokens + the hop fee (0 if unpaid)
    total_paid_wei: int
    refund_wei: int
    escrow_wei: int
    tx_hash: str
    gas_used: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

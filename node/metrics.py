"""Prometheus metrics of the node daemon, in a registry of its own (several nodes may share a process)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PREFIX = "splitmesh_node_"
# A shard's layers take ~1 ms (one small layer) to ~2 s (many layers, long prefill).
STEP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
# Handling adds the downstream hops, so allow longer tails.
HANDLE_BUCKETS = (*STEP_BUCKETS, 5.0, 10.0, 30.0)


class NodeMetrics:
    """One node's metrics. Wei values are floats here: exact only up to 2**53 wei (~0.009 ETH)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions_active = Gauge(PREFIX + "sessions_active", "Open job sessions", registry=r)
        self.steps_total = Counter(PREFIX + "steps", "Steps served", registry=r)
        self.tokens_total = Counter(PREFIX + "tokens", "Tokens processed", registry=r)
        self.step_seconds = Histogram(
            PREFIX + "step_seconds", "Time in this node's layers per step", buckets=STEP_BUCKETS, registry=r
        )
        self.handle_seconds = Histogram(
            PREFIX + "handle_seconds",
            "Time from receiving a step to replying, downstream hops included",
            buckets=HANDLE_BUCKETS,
            registry=r,
        )
        self.batch_steps = Histogram(  # _count: batches run, _sum: steps in them (node.batcher)
            PREFIX + "batch_steps",
            "Inference steps of concurrent sessions run through the layers together, per batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        # Labels only from node.errors.ERROR_CODES (node.server maps anything else to "other").
        self.errors_total = Counter(PREFIX + "errors", "Rejected or failed requests", ["code"], registry=r)
        self.streams_open = Gauge(PREFIX + "streams_open", "Open WebSocket streams", registry=r)
        self.chain_lookups_total = Counter(
            PREFIX + "chain_lookups", "Jobs read from the chain (getJob calls) for peers' frames", registry=r
        )
        self.stake_wei = Gauge(PREFIX + "stake_wei", "Stake held on-chain, wei", registry=r)
        self.earnings_wei = Gauge(
            PREFIX + "earnings_wei", "Earnings credited, not withdrawn, wei", registry=r
        )
        self.paid_wei_total = Counter(PREFIX + "paid_wei", "Earnings withdrawn, wei", registry=r)
        self.jobs_committed_total = Counter(PREFIX + "jobs_committed", "Job commitments mined", registry=r)
        self.jobs_matched_total = Counter(
            PREFIX + "jobs_matched",
            "Jobs routed through this node, learned from JobSubmitted events",
            registry=r,
        )
        self.scanned_block = Gauge(
            PREFIX + "scanned_block", "Last block scanned for matched jobs", registry=r
        )
        self.pooled = Gauge(
            PREFIX + "pooled",
            "1 while the node is in the matching pool, 0 while jobs cannot reach it",
            registry=r,
        )
        self.transcripts_pruned_total = Counter(
            PREFIX + "transcripts_pruned",
            "Job transcripts dropped once no audit could ask for them any more",
            registry=r,
        )
        self.sessions_refused_total = Counter(
            PREFIX + "sessions_refused", "New jobs refused with 503 busy: the node was full", registry=r
        )
        self.jobs_released_total = Counter(
            PREFIX + "jobs_released",
            "Jobs their client released before any step served here: not committed, nobody slashed",
            registry=r,
        )
        self.duty_rpc_calls = Gauge(
            PREFIX + "duty_rpc_calls", "Chain RPC calls of the last duty pass", registry=r
        )
        self.topup_wei_total = Counter(PREFIX + "topup_wei", "Stake re-added by auto top-up, wei", registry=r)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type, for a /metrics handler."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

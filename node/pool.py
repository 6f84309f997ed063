"""Whether jobs can reach this node: its matching-pool membership, said loudly, and opt-in auto top-up.

The registry drops a node from the matching pool when it is deactivated or its stake falls below the
minimum (a slash, an unbonding). Nothing else tells the operator, so every duty pass checks. While the
node is out it logs a WARNING (when it leaves, then every few minutes), shows it on /health and sets
the `splitmesh_node_pooled` gauge to 0.

Auto top-up (`auto_topup_wei` > 0) stakes back up to the configured stake when the stake is below it,
spending at most `auto_topup_wei` in total over the life of the node's state file (the amount spent is
kept in the store, so restarts do not renew the allowance).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from node.metrics import NodeMetrics
from node.store import NodeStore
from splitmesh.chain import Marketplace, NodeInfo, NodeStatus, Sender

logger = logging.getLogger(__name__)

TOPUP_SPENT_KEY = "topup_spent_wei"  # store meta key: wei re-staked by auto top-up so far
OUT_OF_POOL_WARN_SECONDS = 300.0  # repeat the out-of-pool warning this often while the node stays out


@dataclass(frozen=True)
class PoolStatus:
    pooled: bool  # in the matching pool: new jobs can be routed to this node
    reason: str | None  # why not, while not pooled
    stake: int  # wei
    unbonding: int  # wei


def pool_status(info: NodeInfo, min_stake: int) -> PoolStatus:
    """Membership and, when out, the registry's reason in words."""
    reason = None
    if info.status == NodeStatus.NONE:
        reason = "not registered"
    elif info.status == NodeStatus.INACTIVE:
        reason = "deactivated"
    elif info.stake < min_stake:
        reason = (
            f"below minimum stake by {min_stake - info.stake} wei (stake {info.stake}, minimum {min_stake})"
        )
        if info.unbonding:
            reason += f"; {info.unbonding} wei unbonding"
    elif not info.pooled:
        reason = "not in the matching pool"
    return PoolStatus(info.pooled and reason is None, reason, info.stake, info.unbonding)


class StakeKeeper:
    """One check per duty pass: read the node's registry entry, top up if allowed, report membership."""

    def __init__(
        self,
        market: Marketplace,
        sender: Sender,
        store: NodeStore,
        metrics: NodeMetrics,
        *,
        target_stake: int,  # wei the operator configured (--stake)
        allowance: int,  # wei auto top-up may spend in total; 0 = off
        on_status: Callable[[PoolStatus], None] | None = None,  # e.g. update /health
    ):
        self.market = market
        self.sender = sender
        self.store = store
        self.metrics = metrics
        self.target_stake = target_stake
        self.allowance = allowance
        self.on_status = on_status
        self.min_stake = market.min_stake()
        self.status: PoolStatus | None = None
        self._warned_at = 0.0  # monotonic time of the last out-of-pool warning

    def _should_warn(self, status: PoolStatus) -> bool:
        """Warn at once when the node leaves the pool or the reason changes, then every
        OUT_OF_POOL_WARN_SECONDS while it stays out (health and metrics show it on every pass)."""
        now = time.monotonic()
        changed = self.status is None or self.status.pooled or self.status.reason != status.reason
        if changed or now - self._warned_at >= OUT_OF_POOL_WARN_SECONDS:
            self._warned_at = now
            return True
        return False

    def check(self) -> PoolStatus:
        info = self._top_up(self.market.get_node(self.sender.address))
        self.metrics.stake_wei.set(info.stake)
        self.metrics.earnings_wei.set(info.earnings)
        status = pool_status(info, self.min_stake)
        self.metrics.pooled.set(1 if status.pooled else 0)
        if not status.pooled and self._should_warn(status):
            logger.warning(
                "node %s is OUT of the matching pool: %s; no new job can be routed to it. %s",
                self.sender.address,
                status.reason,
                self._remedy(status),
            )
        elif self.status is not None and not self.status.pooled:
            logger.info(
                "node %s is back in the matching pool (stake %d wei)", self.sender.address, info.stake
            )
        self.status = status
        if self.on_status is not None:
            self.on_status(status)
        return status

    def spent(self) -> int:
        return int(self.store.meta(TOPUP_SPENT_KEY) or 0)

    def _top_up(self, info: NodeInfo) -> NodeInfo:
        left = self.allowance - self.spent()
        amount = min(self.target_stake - info.stake, left)
        if info.status != NodeStatus.ACTIVE or amount <= 0:
            return info
        self.market.stake(self.sender, amount)
        spent = self.spent() + amount
        self.store.set_meta(TOPUP_SPENT_KEY, str(spent))
        self.metrics.topup_wei_total.inc(amount)
        logger.warning(
            "auto top-up: staked %d wei (stake was %d wei, configured %d wei); %d of %d wei allowed left",
            amount,
            info.stake,
            self.target_stake,
            self.allowance - spent,
            self.allowance,
        )
        return self.market.get_node(self.sender.address)

    def _remedy(self, status: PoolStatus) -> str:
        if status.reason in ("not registered", "deactivated"):
            return "Restart the node to register it again."
        if self.allowance <= 0:
            return (
                "Restart the node (it stakes up to --stake at start) or allow auto top-up (--auto-topup-wei)."
            )
        return (
            f"Auto top-up has {max(self.allowance - self.spent(), 0)} of {self.allowance} wei left; "
            "restart the node to stake up to --stake, or raise --auto-topup-wei."
        )

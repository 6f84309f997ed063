"""Fold contract events, in chain order, into the read model (models, nodes, jobs, hops, audits).

Every handler mirrors what the contract did when it emitted the event, so the read model equals the
contracts' state: a node's stake, unbonding and earnings balance; a job's status, masks and payments.
Folding the same logs always gives the same tables, which is what lets the indexer heal a reorg by
deleting logs past the fork and folding again. The one input besides the logs is the JobMarket's hop fee
(immutable; the indexer stores it in `meta` when it creates the index).
"""

from coordinator.fold import court, jobs, registry  # noqa: F401  (importing registers their handlers)
from coordinator.fold.base import LogRecord, apply, hop_fee

__all__ = ["LogRecord", "apply", "hop_fee"]

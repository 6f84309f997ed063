"""What the stages of `splitmesh demo` share: its options, its printer, the chain and the gas table."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from splitmesh.chain import Marketplace
from splitmesh_cli.common import Session
from splitmesh_cli.output import Output

if TYPE_CHECKING:
    from splitmesh.model.identity import ModelDescription  # loads torch: typing only

GWEI = 10**9


@dataclass
class DemoRun:
    args: argparse.Namespace
    out: Output
    session: Session
    model: ModelDescription
    plan: list[int]  # shard boundaries registered on-chain
    started: float = field(default_factory=time.monotonic)  # monotonic seconds when the demo began
    gas: dict[str, int] = field(default_factory=dict)  # transaction -> gas used, in the order they ran
    chain_id: int = field(init=False)  # read once: a local chain is gone when the result is written

    def __post_init__(self) -> None:
        self.chain_id = self.session.chain_id

    @property
    def price(self) -> int:
        return round(self.args.price_gwei * GWEI)  # wei per token each route node asks


def gas_of(market: Marketplace, event: Any) -> int:
    """Gas used by the transaction that emitted `event`."""
    return int(market.w3.eth.get_transaction_receipt(event["transactionHash"])["gasUsed"])

"""Decoding raw contract logs (topics + data) into event arguments with eth_abi directly.

web3's `event.process_log` and the result formatters of `eth.get_logs` cost ~3 ms a log on this
machine, most of a catch-up (bench/bench_coordinator_growth.py). The arguments here are the same
values process_log gives (tests/integration/test_coordinator_logcodec.py compares them on every log of
random marketplace activity); the indexer turns both into the same JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak


def abi_type(item: dict[str, Any]) -> str:
    """The canonical ABI type of an input (tuples spelled out)."""
    t = str(item["type"])
    if t.startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in item["components"]) + ")" + t[len("tuple") :]
    return t


def event_signature(item: dict[str, Any]) -> str:
    """`Name(type1,type2,...)`, whose keccak is the event's topic 0."""
    return f"{item['name']}({','.join(abi_type(i) for i in item['inputs'])})"


def _hex_bytes(value: str | bytes) -> bytes:
    return bytes.fromhex(value[2:]) if isinstance(value, str) else bytes(value)


@dataclass(frozen=True)
class EventCodec:
    """One event of one contract: its topic 0 and how to read its arguments back."""

    contract: str  # NodeRegistry | JobMarket | AuditCourt
    name: str
    topic: bytes  # keccak of the signature
    indexed: tuple[tuple[str, str], ...]  # (name, type) of the indexed inputs, topics 1.. in order
    data_names: tuple[str, ...]  # the other inputs, ABI-encoded together in the data
    data_types: tuple[str, ...]
    order: tuple[str, ...]  # every input name in ABI order (the order of the returned dict)

    @classmethod
    def of(cls, contract: str, item: dict[str, Any]) -> EventCodec:
        inputs = item["inputs"]
        # No event here indexes a dynamic type (its topic would be a hash, not the value).
        return cls(
            contract=contract,
            name=str(item["name"]),
            topic=keccak(text=event_signature(item)),
            indexed=tuple((i["name"], abi_type(i)) for i in inputs if i.get("indexed")),
            data_names=tuple(i["name"] for i in inputs if not i.get("indexed")),
            data_types=tuple(abi_type(i) for i in inputs if not i.get("indexed")),
            order=tuple(i["name"] for i in inputs),
        )

    def decode(self, topics: list[Any], data: str | bytes) -> dict[str, Any]:
        """The event's arguments by name; ValueError when topics or data do not fit the event."""
        if len(topics) != 1 + len(self.indexed):
            raise ValueError(f"{self.name}: {len(topics)} topics, expected {1 + len(self.indexed)}")
        values: dict[str, Any] = {}
        for (name, typ), topic in zip(self.indexed, topics[1:], strict=True):
            values[name] = abi_decode([typ], _hex_bytes(topic))[0]
        decoded = abi_decode(list(self.data_types), _hex_bytes(data))
        values.update(zip(self.data_names, decoded, strict=True))
        return {name: values[name] for name in self.order}


def codecs(contracts: dict[str, Any]) -> dict[tuple[str, bytes], EventCodec]:
    """(contract address, topic 0) -> codec for every event in the ABIs of `contracts` (name -> web3
    contract); CreditWithdrawn exists in two contracts, told apart by address."""
    out: dict[tuple[str, bytes], EventCodec] = {}
    for name, contract in contracts.items():
        for item in contract.abi:
            if item.get("type") == "event" and not item.get("anonymous"):
                codec = EventCodec.of(name, item)
                out[(contract.address, codec.topic)] = codec
    return out

"""Job terms in the packed layout the JobMarket hashes and emits (see contracts/libraries/JobTermsLib.sol).

Layout, big-endian: client (20) | modelId (4) | firstShard (1) | maxTokens (4) | escrow (12) |
hops x [node (20) | price (8)].
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import keccak, to_checksum_address

from splitmesh.errors import ChainError

HEADER_LENGTH = 41
HOP_LENGTH = 28
MAX_HOPS = 8


class MalformedTerms(ChainError, ValueError):
    """Packed terms do not have the expected length or layout."""


@dataclass(frozen=True, slots=True)
class RouteHop:
    node: str  # checksummed address
    price_per_token: int  # wei per token


@dataclass(frozen=True, slots=True)
class JobTerms:
    client: str
    model_id: int
    first_shard: int  # the client runs shards [0, first_shard) itself
    max_tokens: int
    escrow: int  # wei
    route: tuple[RouteHop, ...]  # route[i] serves shard first_shard + i

    @property
    def shards(self) -> range:
        return range(self.first_shard, self.first_shard + len(self.route))

    def position_of(self, node: str) -> int:
        """Route position of a node address; ValueError if it is not on the route."""
        node = to_checksum_address(node)
        for i, hop in enumerate(self.route):
            if hop.node == node:
                return i
        raise ValueError(f"{node} is not on this job's route")

    def encode(self) -> bytes:
        out = bytearray()
        out += bytes.fromhex(self.client[2:])
        out += self.model_id.to_bytes(4, "big")
        out += self.first_shard.to_bytes(1, "big")
        out += self.max_tokens.to_bytes(4, "big")
        out += self.escrow.to_bytes(12, "big")
        for hop in self.route:
            out += bytes.fromhex(hop.node[2:])
            out += hop.price_per_token.to_bytes(8, "big")
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> JobTerms:
        n = len(data)
        tail = n - HEADER_LENGTH
        if tail < HOP_LENGTH or tail % HOP_LENGTH or tail // HOP_LENGTH > MAX_HOPS:
            raise MalformedTerms(f"packed terms of {n} bytes: expected 41 + 28 k bytes, 1 <= k <= 8")
        route = tuple(
            RouteHop(
                node=to_checksum_address(data[at : at + 20]),
                price_per_token=int.from_bytes(data[at + 20 : at + 28], "big"),
            )
            for at in range(HEADER_LENGTH, n, HOP_LENGTH)
        )
        return cls(
            client=to_checksum_address(data[0:20]),
            model_id=int.from_bytes(data[20:24], "big"),
            first_shard=data[24],
            max_tokens=int.from_bytes(data[25:29], "big"),
            escrow=int.from_bytes(data[29:41], "big"),
            route=route,
        )


def terms_hash(job_id: int, packed: bytes) -> bytes:
    """The 20-byte hash the JobMarket stores: keccak256(jobId (32 bytes) || packed terms)[:20]."""
    return keccak(job_id.to_bytes(32, "big") + packed)[:20]

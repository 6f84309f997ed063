from __future__ import annotations

import pytest
from eth_utils import keccak, to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from splitmesh.chain.terms import JobTerms, MalformedTerms, RouteHop, terms_hash

addresses = st.binary(min_size=20, max_size=20).map(to_checksum_address)
hops = st.builds(RouteHop, node=addresses, price_per_token=st.integers(0, 2**64 - 1))
terms_strategy = st.builds(
    JobTerms,
    client=addresses,
    model_id=st.integers(0, 2**32 - 1),
    first_shard=st.integers(0, 7),
    max_tokens=st.integers(0, 2**32 - 1),
    escrow=st.integers(0, 2**96 - 1),
    route=st.lists(hops, min_size=1, max_size=8).map(tuple),
)


@given(terms_strategy)
def test_packed_terms_round_trip(terms: JobTerms) -> None:
    packed = terms.encode()
    assert len(packed) == 41 + 28 * len(terms.route)
    assert JobTerms.decode(packed) == terms


def test_layout_is_big_endian_packed() -> None:
    client = "0x" + "11" * 20
    node = "0x" + "22" * 20
    terms = JobTerms(
        to_checksum_address(client), 7, 1, 300, 5 * 10**18, (RouteHop(to_checksum_address(node), 9),)
    )
    packed = terms.encode()
    assert packed[:20] == b"\x11" * 20
    assert packed[20:24] == (7).to_bytes(4, "big")
    assert packed[24] == 1
    assert packed[25:29] == (300).to_bytes(4, "big")
    assert packed[29:41] == (5 * 10**18).to_bytes(12, "big")
    assert packed[41:61] == b"\x22" * 20
    assert packed[61:69] == (9).to_bytes(8, "big")


@pytest.mark.parametrize("length", [0, 40, 41, 41 + 27, 41 + 29, 41 + 28 * 9])
def test_malformed_lengths_are_rejected(length: int) -> None:
    with pytest.raises(MalformedTerms):
        JobTerms.decode(b"\x01" * length)


def test_terms_hash_is_first_20_bytes_of_keccak_of_id_and_terms() -> None:
    packed = bytes(range(69))
    assert terms_hash(5, packed) == keccak((5).to_bytes(32, "big") + packed)[:20]
    assert terms_hash(5, packed) != terms_hash(6, packed)


def test_position_of() -> None:
    a, b = to_checksum_address("0x" + "aa" * 20), to_checksum_address("0x" + "bb" * 20)
    terms = JobTerms(a, 1, 2, 3, 4, (RouteHop(a, 1), RouteHop(b, 2)))
    assert terms.position_of(b.lower()) == 1
    assert list(terms.shards) == [2, 3]
    with pytest.raises(ValueError, match="not on this job's route"):
        terms.position_of("0x" + "cc" * 20)

"""Matching hints computed from the pools (splitmesh.chain.marketplace.hints_from_pools)."""

from __future__ import annotations

from splitmesh.chain import RouteHop, hints_from_pools

A, B, C = ("0x" + c * 40 for c in "abc")


def test_each_shard_hints_its_cheapest_node_within_the_price() -> None:
    pools = [
        [RouteHop(A, 9), RouteHop(B, 3), RouteHop(C, 5)],  # cheapest eligible: index 1
        [RouteHop(A, 4)],
    ]
    assert hints_from_pools(pools, 5) == [2, 1]  # 1 + the pool index


def test_a_shard_without_an_eligible_node_gets_no_hint() -> None:
    assert hints_from_pools([[RouteHop(A, 9)], [RouteHop(B, 1)]], 5) == [0, 1]
    assert hints_from_pools([[RouteHop(A, 9)], []], 5) == []  # nothing to hint: submit without hints


def test_ties_hint_the_first_entry() -> None:
    assert hints_from_pools([[RouteHop(A, 7), RouteHop(B, 2), RouteHop(C, 2)]], 2) == [2]


def test_an_avoided_node_is_never_hinted() -> None:
    pools = [[RouteHop(A, 1), RouteHop(B, 3)], [RouteHop(C, 2)]]
    assert hints_from_pools(pools, 5) == [1, 1]
    assert hints_from_pools(pools, 5, avoid=[A.upper().replace("0X", "0x")]) == [2, 1]  # any case
    assert hints_from_pools(pools, 5, avoid=[A, C]) == [2, 0]

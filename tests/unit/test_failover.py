"""The failover policy (client_sdk.failover): whom a failed step blames, how bans back off, the replay."""

from __future__ import annotations

import json

import pytest
import torch

from client_sdk.errors import ForgedReply, MalformedReply, NodeLostState, NodeUnavailable, StepFailed
from client_sdk.failover import MAX_AVOID, BanList, FailoverPolicy, Released, blame
from client_sdk.link import _failure

A, B, C = ("0x" + c * 40 for c in "abc")
ROUTE = [A, B, C]


def test_a_node_reporting_its_next_node_blames_the_next_node() -> None:
    for code in ("next_node_unreachable", "next_node_timeout", "next_node_closed", "bad_downstream_reply"):
        blamed = blame(StepFailed(502, code, "gone", A, 0), ROUTE)
        assert blamed is not None and blamed[0] == [B], code
    blamed = blame(StepFailed(504, "next_node_timeout", "slow", B, None), ROUTE)  # position from the node
    assert blamed is not None and blamed[0] == [C]


def test_refusals_the_client_caused_blame_nobody() -> None:
    assert blame(StepFailed(410, "job_deadline", "late", A, 0), ROUTE) is None
    assert blame(StepFailed(400, "bad_signature", "no", A, 0), ROUTE) is None
    assert blame(StepFailed(502, "next_node_unreachable", "?", C, 2), ROUTE) is None  # no next node
    assert blame(ValueError("not a route failure"), ROUTE) is None


def test_lost_state_forgery_and_garbage_blame_their_node() -> None:
    reply = {"status": 409, "code": "state_lost", "error": "restarted", "node": B, "position": 1}
    lost = _failure(json.dumps(reply))
    assert isinstance(lost, NodeLostState)
    assert blame(lost, ROUTE) == ([B], "node lost the job's state: restarted")
    forged = blame(ForgedReply(7, 3, 2, C, "signed by someone else"), ROUTE)
    assert forged is not None and forged[0] == [C]
    garbage = blame(MalformedReply("not a frame"), ROUTE)
    assert garbage is not None and garbage[0] == [A]


def test_a_stall_blames_the_nodes_that_do_not_answer_a_probe() -> None:
    stalled = NodeUnavailable("no reply", stalled=True)
    blamed = blame(stalled, ROUTE, probe=lambda position: position != 1)
    assert blamed is not None and blamed[0] == [B]
    refused = blame(NodeUnavailable("refused"), ROUTE, probe=lambda position: True)
    assert refused is not None and refused[0] == [A]  # not a stall: the first node is unreachable


def test_bans_back_off_and_expire() -> None:
    policy = FailoverPolicy(ban_seconds=10, max_ban_seconds=25)
    bans = BanList()
    assert bans.ban(A, policy, now=0) == 10
    assert bans.active(now=5) == [A.lower()]
    assert bans.active(now=10.5) == []
    assert bans.ban(A, policy, now=20) == 20  # doubled
    assert bans.ban(A, policy, now=20) == 25  # capped
    assert bans.active(now=44) == [A.lower()] and bans.active(now=46) == []


def test_at_most_max_avoid_bans_are_sent_the_longest_first() -> None:
    policy = FailoverPolicy(ban_seconds=10)
    bans = BanList()
    nodes = ["0x" + f"{i:040x}" for i in range(MAX_AVOID + 2)]
    for i, node in enumerate(nodes):
        bans.ban(node, policy, now=float(i))
    active = bans.active(now=MAX_AVOID + 2)
    assert len(active) == MAX_AVOID and active[0] == nodes[-1] and nodes[0] not in active


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        FailoverPolicy(max_failovers=-1)
    with pytest.raises(ValueError):
        FailoverPolicy(probe_timeout=0)


def test_the_replayed_prefix_is_every_released_chunk_in_order() -> None:
    released = Released()
    first, second = torch.randn(1, 4, 8), torch.randn(1, 1, 8)
    released.add(first)
    released.add(second)
    prefix = released.prefix()
    assert prefix.shape == (1, 5, 8)
    assert torch.equal(prefix[:, :4], first) and torch.equal(prefix[:, 4:], second)


def test_a_node_that_left_the_job_is_failed_over_a_draining_one_banned() -> None:
    draining = blame(StepFailed(503, "shutting_down", "stopping", B, 1), ROUTE)
    assert draining is not None and draining[0] == [B]
    ended = blame(StepFailed(409, "job_ended", "already ended (committed)", A, 0), ROUTE)
    assert ended is not None and ended[0] == []  # fail over, ban nobody: the node is fine, the job is over
    by_address = blame(StepFailed(503, "shutting_down", "stopping", C, None), ROUTE)
    assert by_address is not None and by_address[0] == [C]
    assert blame(StepFailed(503, "shutting_down", "?", "0x" + "d" * 40, None), ROUTE) is None  # not on it

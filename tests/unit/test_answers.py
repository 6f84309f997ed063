"""The client's check of a step's signed answers (client_sdk.answers): each attack a node on the route or
someone on a link could make against the returned tensor, with real keys and signatures."""

from __future__ import annotations

import pytest
import torch

from client_sdk.answers import AnswerCheck
from client_sdk.errors import ForgedReply
from splitmesh.chain import HARDHAT_DEV_KEYS
from splitmesh.protocol import Answer, HopTiming, StepResult, hex32, tensor_digest
from splitmesh.signing import RelaySigner

CHAIN_ID, MARKET, JOB = 31337, "0x5FbDB2315678afecb367f032d7a0a65A7B5bD8D2", 7
KEYS = HARDHAT_DEV_KEYS[1:4]
SIGNERS = [RelaySigner(k, CHAIN_ID, MARKET) for k in KEYS]
CHECK = AnswerCheck(CHAIN_ID, MARKET, JOB, tuple(bytes.fromhex(s.address[2:]) for s in SIGNERS))


def _digest(seed: int) -> bytes:
    return tensor_digest(torch.randn(1, 2, 8, generator=torch.Generator().manual_seed(seed)))


def _answer(signer: RelaySigner, step: int, position: int, up: bytes, down: bytes) -> Answer:
    signature = signer.sign_answer(JOB, step, position, up, down)
    return Answer(position=position, upstream=hex32(up), downstream=hex32(down), signature=hex32(signature))


def _result(answers: list[Answer], step: int = 3) -> StepResult:
    hops = [HopTiming(node="n", position=a.position, compute_ms=1.0, handle_ms=1.0) for a in answers]
    return StepResult(job=JOB, step=step, hops=hops, answers=answers)


def _honest(step: int = 3) -> tuple[list[Answer], list[bytes]]:
    """Answers of an honest 3-hop route: digests d0 (client -> node 0) ... d3 (last node -> client)."""
    d = [_digest(i) for i in range(4)]
    return [_answer(SIGNERS[p], step, p, d[p], d[p + 1]) for p in range(3)], d


def _refused(result: StepResult, first: bytes, last: bytes, step: int = 3) -> ForgedReply:
    with pytest.raises(ForgedReply) as info:
        CHECK.verify(result, step, first, last)
    return info.value


def test_an_honest_route_verifies_in_both_directions() -> None:
    answers, d = _honest()
    CHECK.verify(_result(answers), 3, d[0], d[3])  # infer/train: sent d0, received d3
    # A backward: the client's gradient crosses the last node's boundary, node 0's answer comes back.
    grads = [_digest(10 + i) for i in range(4)]
    back = [_answer(SIGNERS[p], 4, p, grads[p], grads[p + 1]) for p in range(3)]
    CHECK.verify(_result(back, 4), 4, first=grads[0], last=grads[3])


def test_a_replaced_returned_tensor_is_refused_at_the_last_position() -> None:
    answers, d = _honest()
    error = _refused(_result(answers), d[0], _digest(99))
    assert error.position == 2 and error.node == SIGNERS[2].address and error.step == 3
    assert "replaced between this node and the client" in str(error)


def test_a_replaced_backward_gradient_is_refused_at_the_first_position() -> None:
    grads = [_digest(10 + i) for i in range(4)]
    back = [_answer(SIGNERS[p], 4, p, grads[p], grads[p + 1]) for p in range(3)]
    assert _refused(_result(back, 4), _digest(98), grads[3], step=4).position == 0


def test_a_middle_node_cannot_sign_for_the_last_one() -> None:
    answers, d = _honest()
    swapped = _digest(99)
    answers[2] = _answer(SIGNERS[1], 3, 2, d[2], swapped)  # the middle node's key, the last's position
    error = _refused(_result(answers), d[0], swapped)
    assert error.position == 2 and "not by the route's node" in error.reason


def test_answers_that_do_not_chain_name_the_later_position() -> None:
    answers, d = _honest()
    answers[1] = _answer(SIGNERS[1], 3, 1, _digest(97), d[2])  # honest signature, wrong input
    assert _refused(_result(answers), d[0], d[3]).position == 1
    assert _refused(_result(_honest()[0]), _digest(96), d[3]).position == 0  # not what the client sent


def test_missing_extra_reordered_and_replayed_answers_are_refused() -> None:
    answers, d = _honest()
    assert _refused(_result(answers[:2]), d[0], d[3]).position == 2
    assert _refused(_result([*answers, answers[2]]), d[0], d[3]).position == 2
    assert _refused(_result([answers[1], answers[0], answers[2]]), d[0], d[3]).position == 0
    old, _ = _honest(step=2)  # last step's answers, same digests: bound to their step
    assert _refused(_result(old), d[0], d[3]).position == 0


def test_answers_are_bound_to_the_chain_and_the_job() -> None:
    answers, d = _honest()
    other = AnswerCheck(CHAIN_ID + 1, MARKET, JOB, CHECK.route)
    with pytest.raises(ForgedReply, match="not by the route's node"):
        other.verify(_result(answers), 3, d[0], d[3])
    with pytest.raises(ForgedReply, match="job 7 step 3"):
        CHECK.verify(StepResult(job=8, step=3, hops=[], answers=answers), 3, d[0], d[3])


def test_a_malformed_signature_is_refused_not_crashed() -> None:
    answers, d = _honest()
    high_s = "0x" + "11" * 32 + "ff" * 32 + "1b"
    answers[1] = answers[1].model_copy(update={"signature": high_s})
    assert "malformed signature" in _refused(_result(answers), d[0], d[3]).reason


def test_the_answer_signature_is_standard_eip712() -> None:
    """An independent encoder (eth_account) signs the same bytes: any wallet or contract can check it."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    up, down = _digest(1), _digest(2)
    typed = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Answer": [
                {"name": "jobId", "type": "uint256"},
                {"name": "step", "type": "uint32"},
                {"name": "position", "type": "uint8"},
                {"name": "upstream", "type": "bytes32"},
                {"name": "downstream", "type": "bytes32"},
            ],
        },
        "primaryType": "Answer",
        "domain": {"name": "splitmesh", "version": "1", "chainId": CHAIN_ID, "verifyingContract": MARKET},
        "message": {"jobId": JOB, "step": 3, "position": 1, "upstream": up, "downstream": down},
    }
    signed = Account.sign_message(encode_typed_data(full_message=typed), KEYS[1])
    assert SIGNERS[1].sign_answer(JOB, 3, 1, up, down) == bytes(signed.signature)

"""What the client checks of the route's answers: each step's signed answers, and at the end of the job
its own chains against the commitments the nodes posted on-chain.

Per step (splitmesh.protocol, "Answers"): every route position signs the digests it exchanged; they must
chain from what the client sent to what it received, each signed by the route's node at that position.
A failure is a `ForgedReply` naming the position: the reply is refused and the job goes no further.

At the end: node 0's on-chain input chain must equal the chain of what the client sent it, and the last
node's on-chain output chain the chain of what the client received from it. Nodes commit after the end,
asynchronously, so the client waits a bounded time for them; a position still uncommitted then is left
unchecked (reported, not an error: an uncommitted node is not paid, and the check can be re-run with
`check_onchain` until the commit timeout). A committed chain that differs is a `CommitmentMismatch`
saying how to dispute it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NoReturn

from eth_utils import to_checksum_address

from client_sdk.errors import CommitmentMismatch, ForgedReply
from splitmesh.chain import JobStatus, Marketplace
from splitmesh.protocol import StepResult, hex32, unhex
from splitmesh.signing import recover_answer_address


@dataclass(frozen=True)
class AnswerCheck:
    """What a route's answers must match: the deployment, the job and its route (node per position)."""

    chain_id: int
    market: str  # JobMarket address: the EIP-712 domain
    job_id: int
    route: tuple[bytes, ...]  # raw 20-byte node address per route position

    def verify(self, result: StepResult, step: int, first: bytes, last: bytes) -> None:
        """Check one step's answers. `first` is the digest of what crossed the client's boundary with
        node 0 (sent for "infer"/"train", received for "backward"), `last` that of what crossed the last
        node's boundary with the client (received for "infer"/"train", sent for "backward")."""
        if result.job != self.job_id or result.step != step:
            self._fail(step, 0, f"the reply is for job {result.job} step {result.step}")
        answers = result.answers
        for position, node in enumerate(self.route):
            if position >= len(answers):
                self._fail(step, position, "no answer from this position")
            answer = answers[position]
            if answer.position != position:
                self._fail(step, position, f"the answer in its place claims position {answer.position}")
            upstream = unhex(answer.upstream)
            try:
                signer = recover_answer_address(
                    self.chain_id,
                    self.market,
                    self.job_id,
                    step,
                    position,
                    upstream,
                    unhex(answer.downstream),
                    unhex(answer.signature),
                )
            except ValueError as exc:
                self._fail(step, position, f"malformed signature ({exc})")
            if signer != node:
                self._fail(
                    step, position, f"signed by {to_checksum_address(signer)}, not by the route's node"
                )
            expected = first if position == 0 else unhex(answers[position - 1].downstream)
            if upstream != expected:
                source = (
                    "the digest of what the client exchanged with node 0"
                    if position == 0
                    else f"what position {position - 1} attests across its downstream boundary"
                )
                self._fail(
                    step, position, f"it attests {answer.upstream} across its upstream boundary, not {source}"
                )
        if len(answers) != len(self.route):
            self._fail(step, len(self.route) - 1, f"{len(answers)} answers for a route of {len(self.route)}")
        if unhex(answers[-1].downstream) != last:
            self._fail(
                step,
                len(self.route) - 1,
                f"it signed {answers[-1].downstream} across its boundary with the client, but the client "
                f"exchanged {hex32(last)}: the tensor was replaced between this node and the client",
            )

    def _fail(self, step: int, position: int, reason: str) -> NoReturn:
        node = to_checksum_address(self.route[position]) if position < len(self.route) else "?"
        raise ForgedReply(self.job_id, step, position, node, reason)


def wait_commitments(
    market: Marketplace, job_id: int, hops: int, wait: float, poll: float = 0.25
) -> dict[int, tuple[bytes, bytes]]:
    """The job's on-chain commitments, waiting up to `wait` seconds for all `hops` positions."""
    deadline = time.monotonic() + wait
    while True:
        committed = market.commitments_of(job_id)
        if len(committed) >= hops or time.monotonic() >= deadline:
            return committed
        time.sleep(poll)


def check_onchain(
    market: Marketplace, job_id: int, route: list[str], sent: bytes, received: bytes, wait: float
) -> list[int]:
    """Compare the client's chains with the first and last node's on-chain commitments (waiting up to
    `wait` seconds for them). Returns the positions still uncommitted (left unchecked); raises
    CommitmentMismatch if a committed chain differs from what the client sent or received."""
    hops = len(route)
    committed = wait_commitments(market, job_id, hops, wait)
    checks = [(0, 0, sent, "input", "sent to it"), (hops - 1, 1, received, "output", "received from it")]
    for position, index, mine, which, verb in checks:
        if position in committed and committed[position][index] != mine:
            raise CommitmentMismatch(
                f"job {job_id}: node {route[position]} (route position {position}) committed an {which} "
                f"chain on-chain ({hex32(committed[position][index])}) that is not the chain of what this "
                f"client {verb} ({hex32(mine)}): its committed transcript is not what served you. "
                + dispute_hint(market, job_id),
                job_id=job_id,
                position=position,
            )
    return [p for p in range(hops) if p not in committed]


def dispute_hint(market: Marketplace, job_id: int) -> str:
    """How the client can dispute the job now, from its on-chain state."""
    state = market.get_job(job_id)
    if state.status == JobStatus.DISPUTED:
        return "The job is already disputed on-chain: the audit runs without a challenge."
    if state.status == JobStatus.OPEN:
        return (
            f"Once every node has committed, dispute it with Client.challenge({job_id}) "
            f"(bond {market.challenge_bond()} wei) inside the challenge window."
        )
    window = market.parameters()["challenge_window"]
    return (
        f"Dispute it with Client.challenge({job_id}) (bond {market.challenge_bond()} wei) within "
        f"{window} s of the last commit; a panel of staked verifiers then re-executes every position."
    )

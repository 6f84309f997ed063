"""One job on a route, the client's side of the wire: generation and training both drive it.

    job = RouteJob.submit(owner, local, settings, meta, max_tokens)   # escrow, on-chain route match, link
    out = job.prepare(z, tokens=n)                                    # digest + signed envelope
    hidden, result = job.send(out)                                    # through the route; chains extended
    job.end()                                                         # signed end: the nodes commit
    job.commitment_problem                                            # None when the chains agree

Every reply's signed answers are checked at once (client_sdk.answers): a reply that fails them raises
ForgedReply and the job goes no further. The client keeps two hash chains: node 0's input chain (what
crosses the client-node 0 boundary) and the last node's output chain (what crosses the last node-client
boundary). At the end each node reports its chains and `check_commitments` compares them with the
client's and with each other (a warning: the report travels through the route); then the client waits
up to `commit_wait` seconds for the on-chain commitments and checks its own chains against them (an
error, CommitmentMismatch, that says how to dispute).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from client_sdk.answers import AnswerCheck, check_onchain
from client_sdk.capacity import probe_route
from client_sdk.errors import (
    CommitmentMismatch,
    EscrowTooSmall,
    ForgedReply,
    NodeBusy,
    NodeUnavailable,
    NoRoute,
)
from client_sdk.link import ReturnRoute, RouteLink
from client_sdk.local_split import LocalSplit
from client_sdk.options import RouteSettings
from client_sdk.receipts import HopInfo
from splitmesh.chain import Marketplace, Sender, hints_from_pools
from splitmesh.errors import ContractRevert
from splitmesh.jobmeta import JobMeta
from splitmesh.model.arch import parse_dtype
from splitmesh.model.device import to_wire
from splitmesh.protocol import (
    END_PAYLOAD,
    END_STEP,
    RETURN_PAYLOAD,
    RETURN_STEP,
    ZERO_CHAIN,
    EndMeta,
    NodeCommitment,
    ReturnHello,
    StepMeta,
    StepResult,
    extend_chain,
    hex32,
    tensor_digest,
    training_payload,
    unhex,
)
from splitmesh.signing import EnvelopeSigner
from splitmesh.wire import encode_frame

logger = logging.getLogger(__name__)

Mode = Literal["infer", "train", "backward"]


class JobOwner(Protocol):
    """What a route job needs of the client that pays for it (a `Client` is one)."""

    market: Marketplace
    sender: Sender
    signer: EnvelopeSigner
    step_timeout: float  # seconds the route may take for one step
    commit_wait: float  # seconds to wait after the end for the route's on-chain commitments
    wire_dtype: str | None  # dtype of the frames (the route nodes' dtype); None = the client's layers'


@dataclass(frozen=True)
class OutgoingStep:
    """A signed step frame, ready for the route."""

    step: int  # wire step number
    tokens: int  # cumulative tokens the envelope bills
    mode: Mode
    digest: bytes  # tensor_digest of the tensor sent
    frame: bytes
    dtype: str  # the dtype the reply must carry


class RouteJob:
    """A submitted job, a link to its first node, the signed step counter and the hash chains."""

    def __init__(
        self,
        owner: JobOwner,
        local: LocalSplit,
        job: Any,
        hops: list[HopInfo],
        label: str,
        step_timeout: float | None = None,  # seconds one step may take; None = the owner's
        direct_return: bool = False,  # inference results on a return channel from the last node
    ):
        self.owner = owner
        self.job = job  # splitmesh.chain's SubmittedJob: id, terms, packed terms, transaction
        self.hops = hops
        self.label = label  # "job" or "training job", for log lines
        # The frames' dtype, both ways: what the route's nodes run (they refuse any other).
        self.dtype = owner.wire_dtype or str(local.model.dtype).removeprefix("torch.")
        first = hops[0]
        # A one-hop route's first node is its last: its link already is the shortest way back.
        self.direct = direct_return and len(hops) > 1
        self.link = RouteLink(
            first.endpoint,
            job.job_id,
            first.node,
            bytes.fromhex(first.tls_key[2:]),
            timeout=owner.step_timeout if step_timeout is None else step_timeout,
            returns=self._return_route(hops[-1]) if self.direct else None,
        )
        self.next_step = 0
        self.billed = 0  # tokens the client has signed for
        self.sent_chain = self.received_chain = ZERO_CHAIN
        self.ended: Any = None  # the route's EndResult once `end` ran
        self.commitment_problem: str | None = None  # set when the nodes' reported chains disagree
        self.uncommitted: list[int] = []  # positions not committed on-chain within commit_wait (unchecked)
        self.refused: ForgedReply | None = None  # the forged reply that stopped the job
        self.answers = AnswerCheck(
            chain_id=owner.signer.chain_id,
            market=owner.signer.market,
            job_id=int(job.job_id),
            route=tuple(bytes.fromhex(hop.node[2:]) for hop in job.terms.route),
        )
        self._closed = False

    def _return_route(self, last: HopInfo) -> ReturnRoute:
        signature = self.owner.signer.sign(self.job_id, RETURN_STEP, 0, RETURN_PAYLOAD).signature
        hello = ReturnHello(job=self.job_id, signature=hex32(signature), terms=hex32(self.job.packed_terms))
        return ReturnRoute(last.endpoint, last.node, bytes.fromhex(last.tls_key[2:]), hello)

    @property
    def job_id(self) -> int:
        return int(self.job.job_id)

    @property
    def submit_tx(self) -> str:
        return self.job.tx.tx_hash if self.job.tx else ""

    @property
    def submit_gas(self) -> int:
        return self.job.tx.gas_used if self.job.tx else 0

    @property
    def commitments(self) -> list[dict[str, Any]]:
        return [c.model_dump() for c in self.ended.commitments] if self.ended else []

    # ------------------------------------------------------------------ submit

    @classmethod
    def submit(
        cls,
        owner: JobOwner,
        local: LocalSplit,
        settings: RouteSettings,
        meta: JobMeta,
        max_tokens: int,
        *,
        escrow_wei: int | None = None,  # None = max tokens x max price + hop fee, per hop
        avoid: Sequence[str] = (),  # nodes the contract must not match (a failing-over client's bans)
        step_timeout: float | None = None,  # seconds one step may take; None = the owner's
    ) -> RouteJob:
        """Submit the job with escrow (the contract matches the route) and open the link to its first node."""
        market, info = owner.market, local.info
        shards = range(local.first_shard, info.num_shards)
        pools = [market.pool(info.model_id, s) for s in shards]
        max_price = settings.max_price_per_token
        if max_price is None:
            prices = [hop.price_per_token for pool in pools for hop in pool]
            if not prices:
                raise NoRoute(f"no active node serves model {info.model_id} shards {list(shards)}")
            max_price = max(prices)
        escrow = market.escrow_for(max_tokens, max_price, len(shards)) if escrow_wei is None else escrow_wei
        if settings.capacity.enabled:  # RouteBusy before any escrow is locked when a shard is full
            avoid = probe_route(
                market, list(zip(shards, pools, strict=True)), max_price, avoid, settings.capacity
            )
        try:
            job = market.submit_job(
                owner.sender,
                info.model_id,
                local.first_shard,
                max_tokens,
                max_price,
                escrow,
                meta.to_json(),
                hints=hints_from_pools(pools, max_price, avoid),
                avoid=avoid,
            )
        except ContractRevert as exc:
            refused = _submit_refused(exc, market, info.model_id, max_tokens, max_price, escrow)
            if refused is None:
                raise
            raise refused from exc
        hops = [
            _hop(market, local, position, hop.node, hop.price_per_token)
            for position, hop in enumerate(job.terms.route)
        ]
        try:
            training = meta.kind == "train"
            return cls(
                owner,
                local,
                job,
                hops,
                "training job" if training else "job",
                step_timeout,
                direct_return=settings.direct_return and not training,
            )
        except NodeUnavailable as exc:  # the job exists on-chain: say which, so that it can be settled
            exc.job_id = int(job.job_id)
            raise

    # ------------------------------------------------------------------ steps

    def prepare(
        self,
        tensor: torch.Tensor,
        *,
        tokens: int,  # cumulative tokens billed once this step is processed
        start: int = 0,  # position of the tensor's first token
        mode: Mode = "infer",
        of_step: int | None = None,  # the train step a backward answers
    ) -> OutgoingStep:
        """Digest and sign the next step. Inference signs the tensor's digest; training binds mode and
        step into the payload hash (`training_payload`)."""
        step = self.next_step
        tensor = to_wire(tensor, parse_dtype(self.dtype))  # hashed and sent as the CPU frame carries it
        digest = tensor_digest(tensor)
        training = mode != "infer"
        payload = training_payload(mode, of_step, digest) if training else digest
        envelope = self.owner.signer.sign(self.job_id, step, tokens, payload)
        meta = StepMeta(
            job=self.job_id,
            step=step,
            tokens=tokens,
            start=start,
            payload_hash=hex32(payload),
            signature=hex32(envelope.signature),
            terms=hex32(self.job.packed_terms) if step == 0 else None,
            want="all" if training else "last",  # generation needs the last position only
            mode=mode,
            of_step=of_step,
            tensor_hash=hex32(digest) if training else None,
            direct=self.direct and not training,
        )
        return OutgoingStep(step, tokens, mode, digest, encode_frame(tensor, meta.model_dump()), self.dtype)

    def send(self, out: OutgoingStep) -> tuple[torch.Tensor, StepResult]:
        """Send a prepared step: the route's reply; the chains, step counter and billed tokens advance."""
        if out.step != self.next_step:
            raise ValueError(f"step {out.step} was prepared out of turn; the route expects {self.next_step}")
        if self.refused is not None:
            raise self.refused
        try:
            reply, result = self.link.step(out.frame, out.dtype, direct=self.direct and out.mode == "infer")
        except NodeBusy as exc:
            if self.next_step == 0:  # refused before anything was served: nobody can be blamed
                self.release(exc)
            raise
        # A backward step carries the gradient down: our tensor crosses the last node's boundary and the
        # reply crosses node 0's.
        mine, theirs = out.digest, tensor_digest(reply)
        sent, received = (theirs, mine) if out.mode == "backward" else (mine, theirs)
        try:
            self.answers.verify(result, out.step, sent, received)
        except ForgedReply as exc:
            logger.warning("%s %d: %s", self.label, self.job_id, exc)
            self.refused = exc
            self.close()
            raise
        self.sent_chain = extend_chain(self.sent_chain, out.step, sent)
        self.received_chain = extend_chain(self.received_chain, out.step, received)
        self.next_step += 1
        self.billed = out.tokens
        return reply, result

    # ------------------------------------------------------------------ end

    def end(self) -> None:
        """Sign the billed tokens and close the job on every node (they commit on-chain), then check the
        chains. The ones the route reports: a mismatch is logged and kept in `commitment_problem` (the
        report travels through the route, so it proves nothing). The ones committed on-chain, waited for
        up to `owner.commit_wait` seconds: a mismatch with what this client sent or received raises
        CommitmentMismatch (with how to dispute); positions not committed by then are left unchecked in
        `uncommitted` (re-check with client_sdk.answers.check_onchain until the commit timeout)."""
        if self.ended is not None:
            return
        if self.refused is not None:  # stopped: not ended (the nodes commit what they served on expiry)
            return
        try:
            signature = self.owner.signer.sign(self.job_id, END_STEP, self.billed, END_PAYLOAD).signature
            end = EndMeta(job=self.job_id, tokens=self.billed, signature=hex32(signature))
            self.ended = self.link.end(end)
        finally:
            self.close()
        try:
            check_commitments(self.ended.commitments, self.sent_chain, self.received_chain, len(self.hops))
        except CommitmentMismatch as exc:
            logger.warning("%s %d: the route reports %s", self.label, self.job_id, exc)
            self.commitment_problem = str(exc)
        route = [hop.node for hop in self.job.terms.route]
        self.uncommitted = check_onchain(
            self.owner.market,
            self.job_id,
            route,
            self.sent_chain,
            self.received_chain,
            self.owner.commit_wait,
        )
        if self.uncommitted:
            logger.warning(
                "%s %d: positions %s had not committed on-chain after %g s; their chains are unchecked "
                "(an uncommitted node is not paid)",
                self.label,
                self.job_id,
                self.uncommitted,
                self.owner.commit_wait,
            )

    def release(self, exc: NodeBusy) -> None:
        """The route refused the job's first step for capacity: close the link and release the job on-chain
        (JobMarket.releaseJob), so its cancel after the commit deadline refunds the escrow and slashes
        nobody; the nodes that served nothing need not commit it. `exc.job_id` names the job."""
        self.close()
        exc.job_id = self.job_id
        try:
            self.owner.market.release_job(self.owner.sender, self.job_id, self.job.packed_terms)
        except ContractRevert as revert:  # already served or settled: the usual settlement applies
            logger.warning("%s %d: could not release it (%s)", self.label, self.job_id, revert)
            return
        logger.info(
            "%s %d: node %s is full (%s); released the job on-chain: its cancel after the commit deadline "
            "refunds the escrow and slashes nobody",
            self.label,
            self.job_id,
            exc.node or self.hops[0].node,
            exc.reason,
        )

    def close(self) -> None:
        """Close the link (without ending the job: it stays open and can be cancelled after the timeout)."""
        if not self._closed:
            self._closed = True
            self.link.close()


def check_commitments(commitments: list[NodeCommitment], sent: bytes, received: bytes, hops: int) -> None:
    """The first node must have hashed what we sent, the last what we received; neighbours must agree."""
    if len(commitments) != hops:
        raise CommitmentMismatch(f"expected {hops} commitments at the end of the job, got {len(commitments)}")
    if unhex(commitments[0].input_chain) != sent:
        raise CommitmentMismatch(
            f"node {commitments[0].node} reports an input chain that differs from what we sent"
        )
    if unhex(commitments[-1].output_chain) != received:
        raise CommitmentMismatch(
            f"node {commitments[-1].node} reports an output chain that differs from what we got"
        )
    for a, b in itertools.pairwise(commitments):
        if a.output_chain != b.input_chain:
            raise CommitmentMismatch(
                f"nodes {a.node} and {b.node} disagree on the hidden states between them"
            )


def _hop(market: Marketplace, local: LocalSplit, position: int, node: str, price: int) -> HopInfo:
    shard = local.first_shard + position
    layers = local.info.layers_of(shard)
    info = market.get_node(node)
    return HopInfo(
        position,
        shard,
        (layers.start, layers.stop),
        node,
        info.endpoint,
        price,
        "0x" + info.encryption_key.hex(),
    )


def _submit_refused(
    exc: ContractRevert, market: Marketplace, model_id: int, max_tokens: int, max_price: int, escrow: int
) -> Exception | None:
    """The SDK's error for a refused submitJob, saying what to change; None for other reverts."""
    if exc.name == "NoEligibleNode":
        return NoRoute(
            f"no active node at or under {max_price} wei/token serves model {model_id} shard "
            f"{exc.args_by_name.get('shard')}; raise max_price_per_token or start a node"
        )
    if exc.name == "EscrowTooSmall":
        required = exc.args_by_name.get("required")
        return EscrowTooSmall(
            f"escrow {escrow} wei does not cover {max_tokens} tokens at the matched route's prices "
            f"plus the hop fee of {market.hop_fee()} wei per hop (needs {required} wei); send "
            "more or lower max_new_tokens"
        )
    return None

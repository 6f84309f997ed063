"""Split fine-tuning over the marketplace: the client's adapters learn through frozen remote shards.

    client = Client(rpc_url, private_key, model=DIR)
    report = client.train("data.jsonl", epochs=2, lr=2e-3)      # one on-chain job for the whole run
    print(report.loss_first, report.loss_last, report.job_id)
    client.save_adapter("adapter/")

Per step (one sequence): embeddings (+ soft prompt) and layers [0, split) with LoRA -> clip + Gaussian
noise (differentiable) -> a signed "train" frame through the route -> loss on the client (labels never
leave it) -> a signed "backward" frame with d(loss)/d(last hidden) -> the route returns d(loss)/dZ ->
the head's backward -> AdamW on the client's parameters. Billing counts the tokens of every train and
every backward step; the nodes commit when the session ends, as for inference.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from client_sdk.errors import CommitmentMismatch
from client_sdk.link import RouteLink
from client_sdk.privacy import DEFAULT_EPSILON, Privatizer, calibrate_clip, compose
from client_sdk.training import AdapterConfig, ClientTrainer, TrainingBatch, TrainingError, make_batch
from splitmesh.protocol import (
    END_PAYLOAD,
    END_STEP,
    UINT32,
    ZERO_CHAIN,
    EndMeta,
    StepMeta,
    extend_chain,
    hex32,
    tensor_digest,
    training_payload,
)
from splitmesh.wire import encode_frame

if TYPE_CHECKING:
    from client_sdk.client import Client, _Prepared

logger = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    lr: float = 2e-3  # AdamW learning rate of the client's adapters
    epsilon: float = DEFAULT_EPSILON  # DP epsilon per released token vector; inf = no noise
    delta: float = 1e-5
    clip: float | None = None  # L2 bound per token vector; None = median norm on public text
    split: int | None = None  # layers the client runs; None = the smallest registered split
    seed: int | None = None  # adapter init and data order (None = fresh); the DP noise is never seeded
    max_length: int = 256  # tokens per training sequence (the completion is cut beyond it)
    max_grad_norm: float | None = 1.0  # clip of the adapters' gradient norm; None = no clipping
    chat: bool | None = None  # chat template; None = when the tokenizer has one
    max_price_per_token: int | None = None  # wei per hop; None = the highest price in the needed pools
    lora_rank: int = 8
    lora_alpha: int = 16
    soft_prompt_tokens: int = 0  # trainable prompt vectors (used in training only, not by generate)


@dataclass
class TrainStep:
    step: int  # training step index in this session (0, 1, ...)
    loss: float
    tokens: int  # tokens of this sequence (virtual + real), billed twice (forward and backward)
    seconds: float
    route_seconds: float  # forward + backward through the route, client-side wall time
    grad_norm: float | None = None


@dataclass
class TrainingReport:
    job_id: int
    steps: int
    epochs: int
    tokens: int  # billed: every train and every backward step's tokens
    losses: list[float]
    loss_first: float
    loss_last: float
    epsilon: float | str  # per released token vector ("inf" without noise)
    privacy: dict[str, Any]  # composed budget over every released vector
    seconds: float
    seconds_per_step: float
    route: list[dict[str, Any]]
    commitments: list[dict[str, Any]]
    commitment_problem: str | None = None
    max_tokens: int = 0
    escrow_wei: int = 0
    gas_used: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class TrainingSession:
    """One on-chain training job: a route, a link to its first node, the client's optimizer and budget.

    Use as a context manager (or call `end()`): ending signs the billed tokens so the nodes commit.
    """

    def __init__(
        self,
        client: Client,
        prepared: _Prepared,
        trainer: ClientTrainer,
        opts: TrainOptions,
        max_tokens: int,
    ):
        if not 1 <= max_tokens <= UINT32:
            raise TrainingError(f"a training job's token budget must be within 1..{UINT32}, got {max_tokens}")
        self.client = client
        self.trainer = trainer
        self.opts = opts
        model = prepared.model
        self.dtype_name = str(model.dtype).removeprefix("torch.")
        clip = opts.clip
        if math.isfinite(opts.epsilon) and clip is None:
            if prepared.clip is None:
                prepared.clip = calibrate_clip(model, client.tokenizer)
            clip = prepared.clip
        self.clip = clip
        # No public prefix: with LoRA the first position's output depends on private parameters too.
        self.privatizer = Privatizer(opts.epsilon, opts.delta, clip or 1.0, public_prefix=0)
        self.optimizer = trainer.optimizer(opts.lr)
        self.job, self.hops, submit_gas = client._submit(
            prepared,
            max_tokens,
            _generate_options(opts),
            clip,
            kind="train",
            extra={"adapter": {"lora_rank": opts.lora_rank, "soft_prompt_tokens": opts.soft_prompt_tokens}},
        )
        self.max_tokens = max_tokens
        self.gas_used = {"submitJob": submit_gas}
        self.link = RouteLink(
            self.hops[0].endpoint, self.job.job_id, self.hops[0].node, timeout=client.step_timeout
        )
        self.next_step = 0  # wire step number: 2 per training step (train, backward)
        self.billed = 0
        self.sent_chain = self.received_chain = ZERO_CHAIN  # node 0's input chain, last node's output chain
        self.history: list[TrainStep] = []
        self.started = time.perf_counter()
        self.ended: Any = None
        self.commitment_problem: str | None = None

    @property
    def job_id(self) -> int:
        return self.job.job_id

    def __enter__(self) -> TrainingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def _send(self, tensor: torch.Tensor, mode: str, of_step: int | None) -> tuple[torch.Tensor, float]:
        n = int(tensor.shape[1])
        tokens = self.billed + n
        if tokens > self.max_tokens:
            raise TrainingError(
                f"this step would bring job {self.job_id} to {tokens} tokens, over its budget of "
                f"{self.max_tokens}; end the session and start a new one"
            )
        digest = tensor_digest(tensor)
        payload = training_payload(mode, of_step, digest)
        step = self.next_step
        envelope = self.client.signer.sign(self.job_id, step, tokens, payload)
        meta = StepMeta(
            job=self.job_id,
            step=step,
            tokens=tokens,
            start=0,
            payload_hash=hex32(payload),
            signature=hex32(envelope.signature),
            terms=hex32(self.job.packed_terms) if step == 0 else None,
            mode=mode,  # type: ignore[arg-type]
            of_step=of_step,
            tensor_hash=hex32(digest),
        )
        started = time.perf_counter()
        reply, _result = self.link.step(encode_frame(tensor, meta.model_dump()), self.dtype_name)
        elapsed = time.perf_counter() - started
        if reply.shape != tensor.shape:
            raise TrainingError(f"the route returned {list(reply.shape)} for a {list(tensor.shape)} step")
        # Node 0's input chain: what crosses the client-node 0 boundary (Z up, d loss/dZ back); the last
        # node's output chain: what crosses the last node-client boundary (its output, our gradient).
        if mode == "train":
            self.sent_chain = extend_chain(self.sent_chain, step, digest)
            self.received_chain = extend_chain(self.received_chain, step, tensor_digest(reply))
        else:
            self.sent_chain = extend_chain(self.sent_chain, step, tensor_digest(reply))
            self.received_chain = extend_chain(self.received_chain, step, digest)
        self.next_step += 1
        self.billed = tokens
        return reply, elapsed

    def step(self, batch: TrainingBatch) -> TrainStep:
        """One optimizer step on one sequence (a batch of one row; padding is dropped)."""
        if self.ended is not None:
            raise TrainingError(f"training job {self.job_id} has ended; start a new session")
        if batch.input_ids.shape[0] != 1:
            raise TrainingError("the route carries one sequence per step: pass batches of one example")
        length = int(batch.attention_mask[0].sum())
        input_ids, labels = batch.input_ids[:, :length], batch.labels[:, :length]
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        head = self.trainer.head_forward(input_ids, self.privatizer)
        z = head.z.detach().contiguous()  # [1, virtual + seq, hidden]
        hidden, forward_s = self._send(z, "train", None)
        loss, grad = self.trainer.loss_from_hidden(hidden, labels)
        grad_z, backward_s = self._send(grad.contiguous(), "backward", self.next_step - 1)
        self.trainer.backward_head(head, grad_z)
        grad_norm = None
        if self.opts.max_grad_norm is not None:
            params = list(self.trainer.trainable_parameters().values())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.opts.max_grad_norm))
        self.optimizer.step()
        result = TrainStep(
            step=len(self.history),
            loss=float(loss),
            tokens=int(z.shape[1]),
            seconds=time.perf_counter() - started,
            route_seconds=forward_s + backward_s,
            grad_norm=grad_norm,
        )
        self.history.append(result)
        return result

    def end(self) -> None:
        """Sign the billed tokens and close the job on every node (they commit on-chain)."""
        if self.ended is not None:
            return
        try:
            signature = self.client.signer.sign(self.job_id, END_STEP, self.billed, END_PAYLOAD).signature
            self.ended = self.link.end(
                EndMeta(job=self.job_id, tokens=self.billed, signature=hex32(signature))
            )
        finally:
            self.link.close()
        from client_sdk.client import _check_commitments

        try:
            _check_commitments(self.ended.commitments, self.sent_chain, self.received_chain, len(self.hops))
        except CommitmentMismatch as exc:
            logger.warning("training job %d: %s; the job goes to audit", self.job_id, exc)
            self.commitment_problem = str(exc)

    def report(self, epochs: int = 1) -> TrainingReport:
        losses = [s.loss for s in self.history]
        if not losses:
            raise TrainingError("no training step ran")
        privacy = compose(self.opts.epsilon, self.opts.delta, self.privatizer.released).to_json()
        privacy["clip"] = self.clip if math.isfinite(self.opts.epsilon) else None
        privacy["exposure"] = {
            "every_route_node": (
                "the noised activations of every position (BOS included) and, on the way back, the "
                "un-noised gradient of the loss with respect to its own output; the sequence lengths"
            ),
            "last_node": "the gradient of the loss with respect to the final hidden state",
            "chain": "the client address, model, split, epsilon, token budget, prices and escrow of the job",
        }
        seconds = time.perf_counter() - self.started
        return TrainingReport(
            job_id=self.job_id,
            steps=len(losses),
            epochs=epochs,
            tokens=self.billed,
            losses=losses,
            loss_first=losses[0],
            loss_last=losses[-1],
            epsilon="inf" if math.isinf(self.opts.epsilon) else self.opts.epsilon,
            privacy=privacy,
            seconds=seconds,
            seconds_per_step=sum(s.seconds for s in self.history) / len(self.history),
            route=[asdict(h) for h in self.hops],
            commitments=[c.model_dump() for c in self.ended.commitments] if self.ended else [],
            commitment_problem=self.commitment_problem,
            max_tokens=self.max_tokens,
            escrow_wei=self.job.terms.escrow,
            gas_used=self.gas_used,
        )


def _generate_options(opts: TrainOptions) -> Any:
    from client_sdk.client import GenerateOptions

    return GenerateOptions(
        epsilon=opts.epsilon,
        delta=opts.delta,
        clip=opts.clip,
        split=opts.split,
        max_price_per_token=opts.max_price_per_token,
    )


def examples_from(data: str | Path | list[dict[str, str]] | None) -> list[dict[str, str]]:
    """A JSONL path, a list of {"prompt", "completion"} dicts, or None for the shipped dataset."""
    from client_sdk.training import load_examples

    if isinstance(data, list):
        return data
    return load_examples(data)


def batches(
    examples: list[dict[str, str]], tokenizer: Any, opts: TrainOptions, epochs: int
) -> list[list[TrainingBatch]]:
    """Per epoch, one single-sequence batch per example in a seeded shuffled order."""
    rng = random.Random(opts.seed)
    encoded = [make_batch([e], tokenizer, max_length=opts.max_length, chat=opts.chat) for e in examples]
    out = []
    for _ in range(epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        out.append([encoded[i] for i in order])
    return out


def run_training(
    client: Client,
    data: str | Path | list[dict[str, str]] | None,
    epochs: int,
    opts: TrainOptions,
    *,
    progress: bool = True,
) -> TrainingReport:
    """client.train(): one job for every step of every epoch, with a progress bar."""
    if epochs < 1:
        raise TrainingError("epochs must be at least 1")
    examples = examples_from(data)
    if not examples:
        raise TrainingError("the dataset has no examples")
    prepared, trainer = client._trainer(opts)
    plan = batches(examples, client.tokenizer, opts, epochs)
    virtual = trainer.virtual_tokens
    max_tokens = sum(2 * (virtual + int(b.attention_mask.sum())) for epoch in plan for b in epoch)
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(len(e) for e in plan), desc="training", unit="step", disable=not progress)
    with TrainingSession(client, prepared, trainer, opts, max_tokens) as session:
        for epoch, epoch_batches in enumerate(plan):
            for batch in epoch_batches:
                result = session.step(batch)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{result.loss:.3f}")
    bar.close()
    return session.report(epochs)


def save_json(report: TrainingReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_json(), indent=2))


__all__ = ["AdapterConfig", "TrainOptions", "TrainStep", "TrainingReport", "TrainingSession", "run_training"]

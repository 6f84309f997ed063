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
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from client_sdk.adapters import ClientTrainer
from client_sdk.dataset import TrainingBatch, load_examples, make_batch
from client_sdk.errors import CommitmentMismatch, TrainingError
from client_sdk.local_split import JobPrivacy, LocalSplit
from client_sdk.options import TrainOptions
from client_sdk.route_job import JobOwner, Mode, RouteJob
from splitmesh.jobmeta import AdapterMeta, JobMeta, epsilon_to_json
from splitmesh.protocol import UINT32

logger = logging.getLogger(__name__)


class Trainee(JobOwner, Protocol):
    """What a training run needs of the client (a `Client` is one)."""

    @property
    def tokenizer(self) -> Any: ...

    def prepare(self, split: int | None = None) -> LocalSplit: ...


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
    uncommitted: list[int] = field(default_factory=list)  # positions not committed on-chain in time
    max_tokens: int = 0
    escrow_wei: int = 0
    gas_used: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class TrainingSession:
    """One on-chain training job: a route job, the client's optimizer and the job's token budget.

    Use as a context manager (or call `end()`): ending signs the billed tokens so the nodes commit.
    """

    def __init__(
        self, owner: Trainee, local: LocalSplit, trainer: ClientTrainer, opts: TrainOptions, max_tokens: int
    ):
        if not 1 <= max_tokens <= UINT32:
            raise TrainingError(f"a training job's token budget must be within 1..{UINT32}, got {max_tokens}")
        self.trainer = trainer
        self.opts = opts
        # No public prefix: with LoRA the first position's output depends on private parameters too.
        self.privacy = JobPrivacy.open(local, opts, owner.tokenizer)
        self.optimizer = trainer.optimizer(opts.lr)
        adapter = AdapterMeta(lora_rank=opts.lora_rank, soft_prompt_tokens=opts.soft_prompt_tokens)
        meta = JobMeta(
            epsilon=opts.epsilon,
            delta=opts.delta,
            clip=self.privacy.clip,
            split=local.split,
            kind="train",
            adapter=adapter,
        )
        self.route = RouteJob.submit(owner, local, opts, meta, max_tokens)
        self.max_tokens = max_tokens
        self.history: list[TrainStep] = []
        self.started = time.perf_counter()

    @property
    def job_id(self) -> int:
        return self.route.job_id

    def __enter__(self) -> TrainingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def send(self, tensor: torch.Tensor, mode: Mode, of_step: int | None) -> tuple[torch.Tensor, float]:
        """One "train" or "backward" step through the route: the reply and the seconds it took."""
        tokens = self.route.billed + int(tensor.shape[1])
        if tokens > self.max_tokens:
            raise TrainingError(
                f"this step would bring job {self.job_id} to {tokens} tokens, over its budget of "
                f"{self.max_tokens}; end the session and start a new one"
            )
        out = self.route.prepare(tensor, tokens=tokens, mode=mode, of_step=of_step)
        started = time.perf_counter()
        reply, _result = self.route.send(out)
        elapsed = time.perf_counter() - started
        if reply.shape != tensor.shape:
            raise TrainingError(f"the route returned {list(reply.shape)} for a {list(tensor.shape)} step")
        return reply, elapsed

    def step(self, batch: TrainingBatch) -> TrainStep:
        """One optimizer step on one sequence (a batch of one row; padding is dropped)."""
        if self.route.ended is not None:
            raise TrainingError(f"training job {self.job_id} has ended; start a new session")
        if batch.input_ids.shape[0] != 1:
            raise TrainingError("the route carries one sequence per step: pass batches of one example")
        length = int(batch.attention_mask[0].sum())
        input_ids, labels = batch.input_ids[:, :length], batch.labels[:, :length]
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        head = self.trainer.head_forward(input_ids, self.privacy.privatizer)
        z = head.z.detach().contiguous()  # [1, virtual + seq, hidden]
        hidden, forward_s = self.send(z, "train", None)
        loss, grad = self.trainer.loss_from_hidden(hidden, labels)
        grad_z, backward_s = self.send(grad.contiguous(), "backward", self.route.next_step - 1)
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
        """Sign the billed tokens and close the job on every node (they commit on-chain); then check the
        on-chain commitments (RouteJob.end): a CommitmentMismatch carries this session's report."""
        try:
            self.route.end()
        except CommitmentMismatch as exc:
            self.route.commitment_problem = str(exc)
            exc.result = self.report() if self.history else None
            raise

    def report(self, epochs: int = 1) -> TrainingReport:
        losses = [s.loss for s in self.history]
        if not losses:
            raise TrainingError("no training step ran")
        privacy = self.privacy.receipt()
        privacy["exposure"] = {
            "every_route_node": (
                "the noised activations of every position (BOS included) and, on the way back, the "
                "un-noised gradient of the loss with respect to its own output; the sequence lengths"
            ),
            "last_node": "the gradient of the loss with respect to the final hidden state",
            "chain": "the client address, model, split, epsilon, token budget, prices and escrow of the job",
        }
        route = self.route
        return TrainingReport(
            job_id=self.job_id,
            steps=len(losses),
            epochs=epochs,
            tokens=route.billed,
            losses=losses,
            loss_first=losses[0],
            loss_last=losses[-1],
            epsilon=epsilon_to_json(self.opts.epsilon),
            privacy=privacy,
            seconds=time.perf_counter() - self.started,
            seconds_per_step=sum(s.seconds for s in self.history) / len(self.history),
            route=[asdict(h) for h in route.hops],
            commitments=route.commitments,
            commitment_problem=route.commitment_problem,
            uncommitted=route.uncommitted,
            max_tokens=self.max_tokens,
            escrow_wei=route.job.terms.escrow,
            gas_used={"submitJob": route.submit_gas},
        )


def examples_from(data: str | Path | list[dict[str, str]] | None) -> list[dict[str, str]]:
    """A JSONL path, a list of {"prompt", "completion"} dicts, or None for the shipped dataset."""
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
    owner: Trainee,
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
    local = owner.prepare(opts.split)
    trainer = local.adapters_for(opts)
    plan = batches(examples, owner.tokenizer, opts, epochs)
    virtual = trainer.virtual_tokens
    max_tokens = sum(2 * (virtual + int(b.attention_mask.sum())) for epoch in plan for b in epoch)
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(len(e) for e in plan), desc="training", unit="step", disable=not progress)
    with TrainingSession(owner, local, trainer, opts, max_tokens) as session:
        for epoch, epoch_batches in enumerate(plan):
            for batch in epoch_batches:
                result = session.step(batch)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{result.loss:.3f}")
    bar.close()
    return session.report(epochs)


def save_json(report: TrainingReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_json(), indent=2))


__all__ = ["TrainStep", "TrainingReport", "TrainingSession", "run_training"]

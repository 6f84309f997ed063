"""The app developer's entry point: private generation over the marketplace.

    client = Client(rpc_url, private_key, model=DIR)
    out = client.generate("What is the capital of France?", max_new_tokens=32, epsilon=math.inf)
    print(out.text, out.receipt.job_id)

Flow per job: tokenize (chat template for instruct models) -> submit the job with escrow (the contract
matches the route) -> embeddings and layers [0, split) locally -> clip + Gaussian noise per token ->
signed step frames through the route -> final norm + LM head locally -> sample -> ... -> signed end of
job (nodes commit) -> `finalize` after the challenge window pays the nodes and refunds the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from client_sdk.adapters import AdapterConfig, ClientTrainer
from client_sdk.dataset import TrainingBatch, make_batch
from client_sdk.disclosure import exposure
from client_sdk.disclosure import lookup as lookup_leakage
from client_sdk.errors import (
    ChallengeRefused,
    ClientError,
    CommitmentMismatch,
    NoRoute,
    NotSettled,
    TrainingError,
)
from client_sdk.failover import BanList
from client_sdk.finetune import TrainingReport, TrainingSession, TrainStep, run_training
from client_sdk.local_split import JobPrivacy, LocalSplit
from client_sdk.options import GenerateOptions, TrainOptions
from client_sdk.privacy import Budget, Privatizer
from client_sdk.receipts import GenerationReceipt, Settlement
from client_sdk.resilient import ResilientRoute
from client_sdk.route_job import RouteJob
from client_sdk.sampling import sample_token
from splitmesh.chain import (
    JobStatus,
    ModelInfo,
    Sender,
    connect,
)
from splitmesh.errors import ConfigError, ContractRevert
from splitmesh.jobmeta import JobMeta
from splitmesh.model.client import ClientModel
from splitmesh.model.device import resolve_device, resolve_dtype
from splitmesh.model.identity import weights_identity
from splitmesh.model.source import ModelSource
from splitmesh.signing import EnvelopeSigner

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, as it arrives."""

    index: int  # 0 for the first generated token
    token_id: int
    text: str  # the text this token adds to the answer


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    prompt_ids: list[int]
    receipt: GenerationReceipt
    # "stop": an end-of-sequence token or a stop string ended it; "length": max_new_tokens did
    finish_reason: str = "stop"


class Client:
    """A client key on one deployment, with a local copy of the model's first and last layers.

    Generations may run at once from several threads (the OpenAI gateway does): transactions share the
    Sender's nonce lock, each job has its own KV cache and Privatizer, and what is shared and stateful
    (the tokenizer, the per-split cache of loaded layers, the clip calibration) sits behind `_shared`.
    Training is one job at a time."""

    def __init__(
        self,
        rpc_url: str,
        private_key: str,
        model: str | None = None,
        *,
        market: str | None = None,
        device: str = "cpu",  # where the client's layers run: cpu, cuda[:N] or mps (splitmesh.model.device)
        dtype: str = "auto",  # of the client's layers: float32, bfloat16, or auto (bf16 on a GPU, else fp32)
        wire_dtype: str | None = None,  # of the frames: the route nodes' dtype; None = `dtype`
        tx_timeout: float = 120.0,
        step_timeout: float = 120.0,
        commit_wait: float = 30.0,
    ):
        self.device = resolve_device(device)  # first: an absent GPU is refused before any network call
        self.market = connect(rpc_url, market, timeout=tx_timeout)
        self.w3 = self.market.w3
        self.sender = Sender(self.w3, private_key, self.market.chain_id)
        self.signer = EnvelopeSigner(private_key, self.market.chain_id, self.market.deployment.market)
        self.address = self.sender.address
        self.source = ModelSource.resolve(model)
        self.model_dir = str(self.source.path)
        self.dtype = resolve_dtype(dtype, self.device)
        self.wire_dtype = None if wire_dtype is None else resolve_dtype(wire_dtype, torch.device("cpu"))
        self.step_timeout = step_timeout
        # Seconds to wait after a job's end for the route's on-chain commitments (client_sdk.answers):
        # positions not committed by then stay unchecked (receipt.uncommitted).
        self.commit_wait = commit_wait
        self._weights_hash = weights_identity(self.source).model_hash
        self._prepared: dict[int, LocalSplit] = {}
        self._tokenizer: Any = None
        self._training: TrainingSession | None = None
        # Guards the tokenizer (a Rust tokenizer's encode is not reentrant), the loaded splits and the
        # clip calibration when generations run in several threads.
        self._shared = threading.RLock()
        # Nodes this client saw fail mid-generation, kept out of its next routes for a while (failover).
        self.bans = BanList()

    # ------------------------------------------------------------------ setup

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"no tokenizer in {self.model_dir}: {exc}") from exc
        return self._tokenizer

    def plans(self) -> list[ModelInfo]:
        """Registered plans for this model's weights, oldest first."""
        return self.market.models(self._weights_hash)

    def prepare(self, split: int | None = None) -> LocalSplit:
        """Load the local layers for a split (cached): embeddings, layers [0, split), norm, LM head."""
        plans = self.plans()
        with self._shared:  # two threads asking for a new split load it once
            return self._prepare(plans, split)

    def _prepare(self, plans: list[ModelInfo], split: int | None) -> LocalSplit:
        if not plans:
            raise NoRoute(
                f"no plan is registered on-chain for the weights in {self.model_dir} "
                f"(hash 0x{self._weights_hash.hex()[:16]}..); register a plan (`splitmesh demo` does)"
            )
        if split is None:
            split = min(p.boundaries[1] for p in plans)
        if split in self._prepared:
            return self._prepared[split]
        for info in reversed(plans):  # the newest plan wins
            if split in info.boundaries[1:-1]:
                first_shard = info.boundaries.index(split)
                break
        else:
            splits = sorted({b for p in plans for b in p.boundaries[1:-1]})
            raise NoRoute(
                f"no registered plan starts a node shard after layer {split}; available splits: {splits}"
            )
        model = ClientModel.load(self.model_dir, split, self.dtype, self.device)
        local = LocalSplit(model, info, first_shard)
        self._prepared[split] = local
        return local

    def encode_prompt(self, prompt: str | list[dict[str, str]], chat: bool | None = None) -> list[int]:
        """Token ids of a prompt: a string (wrapped as one user turn when the model has a chat template),
        or a whole conversation as chat messages ({"role": ..., "content": ...}, oldest first)."""
        with self._shared:
            return self._encode_prompt(prompt, chat)

    def _encode_prompt(self, prompt: str | list[dict[str, str]], chat: bool | None) -> list[int]:
        tok = self.tokenizer
        use_chat = getattr(tok, "chat_template", None) is not None if chat is None else chat
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if use_chat:
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
            ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
            return [int(t) for t in ids[0]]
        if isinstance(prompt, list):
            raise ConfigError(f"the tokenizer in {self.model_dir} has no chat template for a conversation")
        return [int(t) for t in tok(prompt, return_tensors="pt")["input_ids"][0]]

    def _eos_ids(self, local: LocalSplit) -> set[int]:
        eos = getattr(local.model.config, "eos_token_id", None)
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    # ------------------------------------------------------------------ generation

    def generate(
        self, prompt: str | list[dict[str, str]], max_new_tokens: int = 64, **options: Any
    ) -> Generation:
        """Run one private generation; returns the text and the job's receipt (see `stream`)."""
        result: Generation | None = None
        for event in self.stream(prompt, max_new_tokens, **options):
            if isinstance(event, Generation):
                result = event
        assert result is not None
        return result

    def stream(
        self, prompt: str | list[dict[str, str]], max_new_tokens: int = 64, **options: Any
    ) -> Iterator[TokenEvent | Generation]:
        """Yield a TokenEvent per generated token, then the finished Generation with its receipt. The
        prompt is a string or a conversation (chat messages, see `encode_prompt`)."""
        opts = GenerateOptions(max_new_tokens=max_new_tokens, **options)
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        local = self.prepare(opts.split)
        prompt_ids = self.encode_prompt(prompt, opts.chat)
        yield from self._run(local, prompt_ids, opts)

    def _run(
        self, local: LocalSplit, prompt_ids: list[int], opts: GenerateOptions
    ) -> Iterator[TokenEvent | Generation]:
        bos = getattr(local.model.config, "bos_token_id", None)
        # A public BOS through public weights is the same vector for everyone: sent as is. Once the
        # client's layers carry a private adapter, the BOS vector identifies the client: noised too.
        public_bos = bos is not None and prompt_ids[0] == bos and not local.private_layers
        with self._shared:  # the first noised job of a split calibrates the clip with the tokenizer
            privacy = JobPrivacy.open(local, opts, self.tokenizer, public_prefix=1 if public_bos else 0)
        # Nodes process the prompt and every generated token except the last one.
        max_tokens = len(prompt_ids) + opts.max_new_tokens - 1
        meta = JobMeta(epsilon=opts.epsilon, delta=opts.delta, clip=privacy.clip, split=local.split)
        resilient = ResilientRoute(self, local, opts, meta, max_tokens, self.bans)
        route = resilient.route
        receipt = GenerationReceipt(
            job_id=route.job_id,
            client=self.address,
            model_id=local.info.model_id,
            split=local.split,
            route=route.hops,
            prompt_tokens=len(prompt_ids),
            max_tokens=max_tokens,
            escrow_wei=route.job.terms.escrow,
            tx={"submitJob": route.submit_tx},
            gas_used={"submitJob": route.submit_gas},
        )
        started = time.perf_counter()
        mismatch: CommitmentMismatch | None = None
        try:
            generated, text, finish = yield from self._decode(
                resilient, local, privacy.privatizer, prompt_ids, opts, receipt
            )
            receipt.decode_seconds = time.perf_counter() - started
            route = resilient.route  # the last job: the one that served the end of the generation
            _describe_final_job(receipt, route)
            try:
                route.end()
            except CommitmentMismatch as exc:  # raised below, with the generation attached
                mismatch = exc
        finally:
            receipt.failover = resilient.report
            resilient.close()
        receipt.commitments = route.commitments
        receipt.commitment_problem = str(mismatch) if mismatch else route.commitment_problem
        receipt.uncommitted = route.uncommitted
        receipt.generated_tokens = len(generated)
        receipt.privacy = privacy.receipt()
        receipt.privacy["public_prefix"] = privacy.privatizer.public_prefix
        receipt.privacy["leakage"] = lookup_leakage(self._weights_hash, local.split, opts.epsilon)
        receipt.privacy["exposure"] = exposure(
            epsilon=opts.epsilon, public_bos=public_bos, greedy=opts.temperature == 0, split=local.split
        )
        receipt.status = "ended"
        generation = Generation(text, generated, list(prompt_ids), receipt, finish)
        if mismatch is not None:
            mismatch.result = generation
            raise mismatch
        yield generation

    def _decode(
        self,
        route: ResilientRoute,
        local: LocalSplit,
        privatizer: Privatizer,
        prompt_ids: list[int],
        opts: GenerateOptions,
        receipt: GenerationReceipt,
    ) -> Generator[TokenEvent, None, tuple[list[int], str, str]]:
        """The decode loop: head, noise, a signed step through the route, tail, sample; a TokenEvent per
        token. Returns the generated ids, their text (cut before a stop string) and the finish reason."""
        model = local.model
        generator = torch.Generator().manual_seed(opts.seed) if opts.seed is not None else None
        cache = model.new_cache()
        eos_ids = self._eos_ids(local)
        generated: list[int] = []
        pending, position, text = prompt_ids, 0, ""
        for step in range(opts.max_new_tokens):
            q = len(pending)
            t0 = time.perf_counter()
            positions = torch.arange(position, position + q)
            with torch.inference_mode():
                z = model.head(torch.tensor([pending]), positions.unsqueeze(0), cache)  # [1, q, hidden]
            t1 = time.perf_counter()
            released = privatizer(z, position)  # [1, q, hidden], kept: a failover replays it as is
            t2 = time.perf_counter()
            hidden, result = route.step(released, position)  # fails over to a new job if a node fails
            t3 = time.perf_counter()
            with torch.inference_mode():
                logits = model.tail(hidden[:, -1:])[0, -1].float().cpu()  # [vocab]: sampled on the CPU
            token = sample_token(logits, opts.temperature, opts.top_p, generator)
            t4 = time.perf_counter()
            receipt.steps.record(step, t1 - t0, t2 - t1, t3 - t2, t4 - t3, result.hops)
            receipt.billed_tokens = position + q
            position += q
            generated.append(token)
            with self._shared:
                new_text = self.tokenizer.decode(generated, skip_special_tokens=True)
            receipt.token_times.append(time.perf_counter())
            yield TokenEvent(len(generated) - 1, token, new_text[len(text) :])
            text = new_text
            cut = _stop_at(text, opts.stop)
            if cut is not None:
                return generated, text[:cut], "stop"
            if token in eos_ids:
                return generated, text, "stop"
            pending = [token]
        return generated, text, "length"

    # ------------------------------------------------------------------ fine-tuning

    def train(
        self,
        data: str | Path | list[dict[str, str]] | None = None,
        epochs: int = 1,
        lr: float = 2e-3,
        *,
        progress: bool = True,
        **options: Any,
    ) -> TrainingReport:
        """Fine-tune the client's adapters on {"prompt", "completion"} examples (a JSONL path, a list, or
        None for the shipped dataset) through the marketplace: one on-chain job for the whole run, one
        optimizer step per example. Options: see client_sdk.options.TrainOptions. Afterwards `generate`
        on the same split uses the tuned LoRA."""
        return run_training(self, data, epochs, TrainOptions(lr=lr, **options), progress=progress)

    def train_step(
        self, example: dict[str, str] | TrainingBatch, *, budget_tokens: int = 32_768, **options: Any
    ) -> TrainStep:
        """One optimizer step on one example, in a training job opened on first use (with a budget of
        `budget_tokens`, forward and backward counted) and closed by `end_training()`."""
        if self._training is None:
            opts = TrainOptions(**options)
            local = self.prepare(opts.split)
            self._training = TrainingSession(self, local, local.adapters_for(opts), opts, budget_tokens)
        elif options:
            raise TrainingError("options apply when the training job opens; call end_training() first")
        session = self._training
        batch = example
        if not isinstance(batch, TrainingBatch):
            batch = make_batch(
                [batch], self.tokenizer, max_length=session.opts.max_length, chat=session.opts.chat
            )
        return session.step(batch)

    def end_training(self) -> TrainingReport | None:
        """End the job `train_step` opened (the nodes commit); its report, or None if none was open or
        no step of it ran (e.g. the first one was refused as a ForgedReply)."""
        session, self._training = self._training, None
        if session is None:
            return None
        session.end()
        return session.report() if session.history else None  # None too when no step ran

    def save_adapter(self, directory: str | Path, split: int | None = None) -> Path:
        """Write the trained adapter (safetensors + JSON) of a split."""
        local = self.prepare(split)
        if local.trainer is None:
            raise TrainingError("nothing was trained on this split yet")
        return local.trainer.save_adapter(directory)

    def load_adapter(self, directory: str | Path, split: int | None = None) -> None:
        """Load a saved adapter; `generate` and further training on that split use it."""
        meta = ClientTrainer.read_metadata(directory)
        config = AdapterConfig.from_json(meta["adapter"])
        local = self.prepare(split if split is not None else meta.get("split"))
        if local.trainer is None:
            local.trainer = ClientTrainer(local.model, config)
        local.trainer.load_adapter(directory)

    # ------------------------------------------------------------------ settlement

    def finalize(self, job_id: int) -> Settlement:
        """Settle a job after its challenge window: nodes are credited, the rest comes back to the client."""
        job = self.market.job_submitted(job_id)
        state = self.market.get_job(job_id)
        if state.status == JobStatus.OPEN:
            raise NotSettled(f"job {job_id} is still open: not every node of the route has committed")
        tx = None
        if state.status in (JobStatus.COMMITTED, JobStatus.DISPUTED):
            try:
                tx = self.market.finalize(self.sender, job_id, job.packed_terms)
            except ContractRevert as exc:
                if exc.name == "ChallengeWindowOpen":
                    raise NotSettled(f"job {job_id}'s challenge window is still open: {exc}") from exc
                if exc.name != "WrongJobStatus":
                    raise
        return self.settlement(job_id, tx.tx_hash if tx else None, tx.gas_used if tx else None)

    def challenge(self, job_id: int) -> str:
        """Dispute a committed job whose output you doubt, inside its challenge window, by posting the
        deployment's challenge bond (`self.market.challenge_bond()` wei). The AuditCourt then draws a
        panel of staked verifiers that re-execute every route position. Fraud: the bond comes back with the
        cheater's slash (less the verifiers' reward), and the cheater is not paid. Honest: the bond is lost,
        half to the verifiers, half to the route's nodes. Returns the transaction hash; ChallengeRefused if
        the job is not committed, its window closed, or the deployment disables challenges."""
        job = self.market.job_submitted(job_id)
        try:
            tx = self.market.challenge(self.sender, job_id, job.packed_terms)
        except ContractRevert as exc:
            if exc.name in ("WrongJobStatus", "ChallengeWindowClosed", "ChallengesDisabled"):
                raise ChallengeRefused(
                    f"job {job_id} cannot be challenged ({exc.name}): only a committed job, inside its "
                    "challenge window, on a deployment with a challenge bond"
                ) from exc
            raise
        logger.info(
            "challenged job %d with a bond of %d wei (tx %s)",
            job_id,
            self.market.challenge_bond(),
            tx.tx_hash,
        )
        return tx.tx_hash

    def settlement(self, job_id: int, tx_hash: str | None = None, gas: int | None = None) -> Settlement:
        """What a settled job paid each node and refunded, read from the chain."""
        job = self.market.job_submitted(job_id)
        state = self.market.get_job(job_id)
        events = self.market.events("JobFinalized", jobId=job_id) or self.market.events(
            "JobCancelled", jobId=job_id
        )
        if not events:
            raise NotSettled(f"job {job_id} is {state.status.name.lower()}, not settled yet")
        args = events[-1]["args"]
        # Positions found fraudulent by an audit are not paid; positions that never committed neither.
        resolved = self.market.events("DisputeResolved", jobId=job_id)
        unpaid = int(resolved[-1]["args"]["fraudMask"]) if resolved else 0
        unpaid |= ~state.committed_mask & ((1 << len(job.terms.route)) - 1)
        fee = self.market.hop_fee()
        paid = {
            hop.node: 0 if unpaid >> i & 1 else hop.price_per_token * state.billed_tokens + fee
            for i, hop in enumerate(job.terms.route)
        }
        return Settlement(
            job_id=job_id,
            status=state.status.name.lower(),
            billed_tokens=state.billed_tokens,
            paid_wei=paid,
            total_paid_wei=int(args["paid"]),
            refund_wei=int(args["refund"]),
            escrow_wei=job.terms.escrow,
            tx_hash=tx_hash or events[-1]["transactionHash"].hex(),
            gas_used=gas,
        )


def _describe_final_job(receipt: GenerationReceipt, route: RouteJob) -> None:
    """After a failover the receipt names the job that ended the generation (the others are listed in
    receipt.failover.jobs)."""
    if route.job_id == receipt.job_id:
        return
    receipt.job_id = route.job_id
    receipt.route = route.hops
    receipt.escrow_wei = route.job.terms.escrow
    receipt.tx[f"submitJob:{route.job_id}"] = route.submit_tx
    receipt.gas_used[f"submitJob:{route.job_id}"] = route.submit_gas


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


__all__ = ["Budget", "Client", "ClientError", "Generation", "TokenEvent"]

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

import itertools
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from client_sdk.disclosure import exposure
from client_sdk.disclosure import lookup as lookup_leakage
from client_sdk.errors import (
    ChallengeRefused,
    ClientError,
    CommitmentMismatch,
    EscrowTooSmall,
    NoRoute,
    NotSettled,
)
from client_sdk.link import RouteLink
from client_sdk.privacy import DEFAULT_EPSILON, Budget, Privatizer, calibrate_clip, compose
from client_sdk.receipts import GenerationReceipt, HopInfo, Settlement, StepStats
from client_sdk.sampling import sample_token
from client_sdk.train import TrainingReport, TrainingSession, TrainOptions, TrainStep
from client_sdk.training import AdapterConfig, ClientTrainer, TrainingBatch, TrainingError, make_batch
from splitmesh.chain import JobStatus, ModelInfo, Sender, connect, hints_from_pools
from splitmesh.errors import ConfigError, ContractRevert
from splitmesh.model.client import ClientModel
from splitmesh.model.identity import weights_identity
from splitmesh.model.source import ModelSource
from splitmesh.protocol import (
    END_PAYLOAD,
    END_STEP,
    ZERO_CHAIN,
    EndMeta,
    StepMeta,
    extend_chain,
    hex32,
    tensor_digest,
    unhex,
)
from splitmesh.signing import EnvelopeSigner
from splitmesh.wire import encode_frame

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


@dataclass
class _Prepared:
    model: ClientModel
    info: ModelInfo
    first_shard: int
    clip: float | None = None  # calibrated clip for this split, computed on first use
    trainer: ClientTrainer | None = None  # the adapters trained on this split (LoRA lives in `model`)


@dataclass
class GenerateOptions:
    max_new_tokens: int = 64
    epsilon: float = DEFAULT_EPSILON  # per token vector; inf = no noise (chosen from measurements)
    delta: float = 1e-5
    clip: float | None = None  # L2 bound per token vector; None = median norm on public text
    split: int | None = None  # layers the client runs; None = the smallest registered split
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # seeds sampling only (temperature > 0); the DP noise is never seeded
    chat: bool | None = None  # apply the chat template; None = when the tokenizer has one
    max_price_per_token: int | None = None  # wei per hop; None = the highest price in the needed pools
    escrow_wei: int | None = (
        None  # escrow sent with the job; None = (max tokens x max price + hop fee) x hops
    )


class Client:
    """A client key on one deployment, with a local copy of the model's first and last layers."""

    def __init__(
        self,
        rpc_url: str,
        private_key: str,
        model: str | None = None,
        *,
        market: str | None = None,
        dtype: str = "float32",
        tx_timeout: float = 120.0,
        step_timeout: float = 120.0,
    ):
        self.market = connect(rpc_url, market, timeout=tx_timeout)
        self.w3 = self.market.w3
        self.sender = Sender(self.w3, private_key, self.market.chain_id)
        self.signer = EnvelopeSigner(private_key, self.market.chain_id, self.market.deployment.market)
        self.address = self.sender.address
        self.source = ModelSource.resolve(model)
        self.model_dir = str(self.source.path)
        self.dtype = dtype
        self.step_timeout = step_timeout
        self._weights_hash = weights_identity(self.source).model_hash
        self._prepared: dict[int, _Prepared] = {}
        self._tokenizer: Any = None
        self._training: TrainingSession | None = None

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

    def prepare(self, split: int | None = None) -> _Prepared:
        """Load the local layers for a split (cached): embeddings, layers [0, split), norm, LM head."""
        plans = self.plans()
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
        prepared = _Prepared(ClientModel.load(self.model_dir, split, self.dtype), info, first_shard)
        self._prepared[split] = prepared
        return prepared

    def encode_prompt(self, prompt: str, chat: bool | None = None) -> list[int]:
        tok = self.tokenizer
        use_chat = getattr(tok, "chat_template", None) is not None if chat is None else chat
        if use_chat:
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
            )
            ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
            return [int(t) for t in ids[0]]
        return [int(t) for t in tok(prompt, return_tensors="pt")["input_ids"][0]]

    def _eos_ids(self, prepared: _Prepared) -> set[int]:
        eos = getattr(prepared.model.config, "eos_token_id", None)
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    # ------------------------------------------------------------------ generation

    def generate(self, prompt: str, max_new_tokens: int = 64, **options: Any) -> Generation:
        """Run one private generation; returns the text and the job's receipt (see `stream`)."""
        result: Generation | None = None
        for event in self.stream(prompt, max_new_tokens, **options):
            if isinstance(event, Generation):
                result = event
        assert result is not None
        return result

    def stream(
        self, prompt: str, max_new_tokens: int = 64, **options: Any
    ) -> Iterator[TokenEvent | Generation]:
        """Yield a TokenEvent per generated token, then the finished Generation with its receipt."""
        opts = GenerateOptions(max_new_tokens=max_new_tokens, **options)
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        prepared = self.prepare(opts.split)
        prompt_ids = self.encode_prompt(prompt, opts.chat)
        yield from self._run(prepared, prompt_ids, opts)

    def _run(
        self, prepared: _Prepared, prompt_ids: list[int], opts: GenerateOptions
    ) -> Iterator[TokenEvent | Generation]:
        model = prepared.model
        clip = opts.clip
        if math.isfinite(opts.epsilon) and clip is None:
            if prepared.clip is None:
                prepared.clip = calibrate_clip(model, self.tokenizer)
            clip = prepared.clip
        bos = getattr(model.config, "bos_token_id", None)
        # A public BOS through public weights is the same vector for everyone: sent as is. Once the
        # client's layers carry a private adapter, the BOS vector identifies the client: noised too.
        private_layers = prepared.trainer is not None
        public_prefix = 1 if bos is not None and prompt_ids[0] == bos and not private_layers else 0
        privatizer = Privatizer(opts.epsilon, opts.delta, clip or 1.0, public_prefix=public_prefix)
        generator = torch.Generator().manual_seed(opts.seed) if opts.seed is not None else None

        # Nodes process the prompt and every generated token except the last one.
        max_tokens = len(prompt_ids) + opts.max_new_tokens - 1
        job, hops, submit_gas = self._submit(prepared, max_tokens, opts, clip)
        receipt = GenerationReceipt(
            job_id=job.job_id,
            client=self.address,
            model_id=prepared.info.model_id,
            split=model.split,
            route=hops,
            prompt_tokens=len(prompt_ids),
            max_tokens=max_tokens,
            escrow_wei=job.terms.escrow,
            tx={"submitJob": job.tx.tx_hash if job.tx else ""},
            gas_used={"submitJob": submit_gas},
        )
        link = RouteLink(hops[0].endpoint, job.job_id, hops[0].node, timeout=self.step_timeout)
        dtype_name = str(model.dtype).removeprefix("torch.")
        cache = model.new_cache()
        sent_chain = received_chain = ZERO_CHAIN
        generated: list[int] = []
        eos_ids = self._eos_ids(prepared)
        pending = prompt_ids
        position = 0
        text = ""
        stats = StepStats()
        started = time.perf_counter()
        try:
            for step in range(opts.max_new_tokens):
                q = len(pending)
                t0 = time.perf_counter()
                positions = torch.arange(position, position + q)
                with torch.inference_mode():
                    z = model.head(torch.tensor([pending]), positions.unsqueeze(0), cache)  # [1, q, hidden]
                t1 = time.perf_counter()
                z_private = privatizer(z, position)
                digest = tensor_digest(z_private)
                envelope = self.signer.sign(job.job_id, step, position + q, digest)
                t2 = time.perf_counter()
                meta = StepMeta(
                    job=job.job_id,
                    step=step,
                    tokens=position + q,
                    start=position,
                    payload_hash=hex32(digest),
                    signature=hex32(envelope.signature),
                    terms=hex32(job.packed_terms) if step == 0 else None,
                    want="last",
                )
                hidden, result = link.step(encode_frame(z_private, meta.model_dump()), dtype_name)
                t3 = time.perf_counter()
                sent_chain = extend_chain(sent_chain, step, digest)
                received_chain = extend_chain(received_chain, step, tensor_digest(hidden))
                with torch.inference_mode():
                    logits = model.tail(hidden[:, -1:])[0, -1]  # [vocab]
                token = sample_token(logits, opts.temperature, opts.top_p, generator)
                t4 = time.perf_counter()
                stats.record(step, t1 - t0, t2 - t1, t3 - t2, t4 - t3, result.hops)
                receipt.billed_tokens = position + q
                position += q
                generated.append(token)
                new_text = self.tokenizer.decode(generated, skip_special_tokens=True)
                receipt.token_times.append(time.perf_counter())
                yield TokenEvent(len(generated) - 1, token, new_text[len(text) :])
                text = new_text
                if token in eos_ids:
                    break
                pending = [token]
            receipt.decode_seconds = time.perf_counter() - started
            end_sig = self.signer.sign(job.job_id, END_STEP, receipt.billed_tokens, END_PAYLOAD).signature
            ended = link.end(EndMeta(job=job.job_id, tokens=receipt.billed_tokens, signature=hex32(end_sig)))
        finally:
            link.close()
        receipt.commitments = [c.model_dump() for c in ended.commitments]
        try:
            _check_commitments(ended.commitments, sent_chain, received_chain, len(hops))
        except CommitmentMismatch as exc:
            # The answer is already here; the disagreement is evidence for the audit, not a reason to
            # drop it. On-chain the mismatch puts the job in dispute automatically.
            logger.warning("job %d: %s; the job goes to audit", job.job_id, exc)
            receipt.commitment_problem = str(exc)
        receipt.generated_tokens = len(generated)
        receipt.steps = stats
        receipt.privacy = compose(opts.epsilon, opts.delta, privatizer.released).to_json()
        receipt.privacy["clip"] = clip if math.isfinite(opts.epsilon) else None
        receipt.privacy["public_prefix"] = public_prefix
        receipt.privacy["leakage"] = lookup_leakage(self._weights_hash, model.split, opts.epsilon)
        receipt.privacy["exposure"] = exposure(
            epsilon=opts.epsilon,
            public_bos=public_prefix > 0,
            greedy=opts.temperature == 0,
            split=model.split,
        )
        receipt.status = "ended"
        yield Generation(text, generated, list(prompt_ids), receipt)

    def _submit(
        self,
        prepared: _Prepared,
        max_tokens: int,
        opts: GenerateOptions,
        clip: float | None,
        *,
        kind: str = "infer",
        extra: dict[str, Any] | None = None,
    ) -> tuple[Any, list[HopInfo], int]:
        info = prepared.info
        shards = range(prepared.first_shard, info.num_shards)
        pools = [self.market.pool(info.model_id, s) for s in shards]
        max_price = opts.max_price_per_token
        if max_price is None:
            prices = [hop.price_per_token for pool in pools for hop in pool]
            if not prices:
                raise NoRoute(f"no active node serves model {info.model_id} shards {list(shards)}")
            max_price = max(prices)
        if opts.escrow_wei is None:
            escrow = self.market.escrow_for(max_tokens, max_price, len(shards))
        else:
            escrow = opts.escrow_wei
        metadata = json.dumps(
            {
                "epsilon": "inf" if math.isinf(opts.epsilon) else opts.epsilon,
                "delta": opts.delta,
                "clip": clip,
                "split": prepared.model.split,
                "sdk": "splitmesh/1",
                **({"kind": kind} if kind != "infer" else {}),
                **(extra or {}),
            },
            separators=(",", ":"),
        ).encode()
        try:
            job = self.market.submit_job(
                self.sender,
                info.model_id,
                prepared.first_shard,
                max_tokens,
                max_price,
                escrow,
                metadata,
                hints=hints_from_pools(pools, max_price),
            )
        except ContractRevert as exc:
            if exc.name == "NoEligibleNode":
                raise NoRoute(
                    f"no active node at or under {max_price} wei/token serves model {info.model_id} shard "
                    f"{exc.args_by_name.get('shard')}; raise max_price_per_token or start a node"
                ) from exc
            if exc.name == "EscrowTooSmall":
                required = exc.args_by_name.get("required")
                raise EscrowTooSmall(
                    f"escrow {escrow} wei does not cover {max_tokens} tokens at the matched route's prices "
                    f"plus the hop fee of {self.market.hop_fee()} wei per hop (needs {required} wei); send "
                    "more or lower max_new_tokens"
                ) from exc
            raise
        hops = []
        for position, hop in enumerate(job.terms.route):
            shard = prepared.first_shard + position
            layers = info.layers_of(shard)
            node = self.market.get_node(hop.node)
            hops.append(
                HopInfo(
                    position, shard, (layers.start, layers.stop), hop.node, node.endpoint, hop.price_per_token
                )
            )
        return job, hops, job.tx.gas_used if job.tx else 0

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
        optimizer step per example. Options: see client_sdk.train.TrainOptions. Afterwards `generate`
        on the same split uses the tuned LoRA."""
        from client_sdk.train import run_training

        return run_training(self, data, epochs, TrainOptions(lr=lr, **options), progress=progress)

    def train_step(
        self, example: dict[str, str] | TrainingBatch, *, budget_tokens: int = 32_768, **options: Any
    ) -> TrainStep:
        """One optimizer step on one example, in a training job opened on first use (with a budget of
        `budget_tokens`, forward and backward counted) and closed by `end_training()`."""
        from client_sdk.train import TrainingSession

        if self._training is None:
            opts = TrainOptions(**options)
            prepared, trainer = self._trainer(opts)
            self._training = TrainingSession(self, prepared, trainer, opts, budget_tokens)
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
        """End the job `train_step` opened (the nodes commit); its report, or None if none was open."""
        session, self._training = self._training, None
        if session is None:
            return None
        session.end()
        return session.report()

    def _trainer(self, opts: TrainOptions) -> tuple[_Prepared, ClientTrainer]:
        prepared = self.prepare(opts.split)
        config = AdapterConfig(
            lora_rank=opts.lora_rank, lora_alpha=opts.lora_alpha, soft_prompt_tokens=opts.soft_prompt_tokens
        )
        if prepared.trainer is None:
            prepared.trainer = ClientTrainer(prepared.model, config, seed=opts.seed)
        elif prepared.trainer.config != config:
            raise TrainingError(
                f"split {prepared.model.split} already trains {prepared.trainer.config}; use a new Client "
                "for another adapter configuration"
            )
        return prepared, prepared.trainer

    def save_adapter(self, directory: str | Path, split: int | None = None) -> Path:
        """Write the trained adapter (safetensors + JSON) of a split."""
        prepared = self.prepare(split)
        if prepared.trainer is None:
            raise TrainingError("nothing was trained on this split yet")
        return prepared.trainer.save_adapter(directory)

    def load_adapter(self, directory: str | Path, split: int | None = None) -> None:
        """Load a saved adapter; `generate` and further training on that split use it."""
        meta = ClientTrainer.read_metadata(directory)
        config = AdapterConfig.from_json(meta["adapter"])
        prepared = self.prepare(split if split is not None else meta.get("split"))
        if prepared.trainer is None:
            prepared.trainer = ClientTrainer(prepared.model, config)
        prepared.trainer.load_adapter(directory)

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


def _check_commitments(commitments: list[Any], sent: bytes, received: bytes, hops: int) -> None:
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


__all__ = ["Budget", "Client", "ClientError", "GenerateOptions", "Generation", "TokenEvent"]

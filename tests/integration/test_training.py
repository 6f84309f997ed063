"""Split fine-tuning over the marketplace: real chain, three real SmolLM2 node processes (the session's
`running_market`), the client SDK's training session.

- the gradients the client receives through the route equal autograd through the unsplit model;
- a short fine-tune lowers the loss by a clear margin and teaches the held-out prompts the pattern;
- the job is billed for every forward and backward token and settles like an inference job;
- bad backward requests (wrong shape, unknown or consumed step, a stranger's signature, inference steps
  in a training job) are refused with a 4xx and the node keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from client_sdk import Client
from client_sdk.dataset import load_examples, make_batch, shipped_dataset
from client_sdk.finetune import TrainingSession
from client_sdk.options import TrainOptions
from splitmesh.chain import JobStatus, SubmittedJob
from splitmesh.chain.launcher import advance_time
from splitmesh.model.loader import ModelSpec
from splitmesh.protocol import (
    END_PATH,
    END_PAYLOAD,
    END_STEP,
    STEP_PATH,
    EndMeta,
    EndResult,
    ErrorReply,
    StepMeta,
    hex32,
    tensor_digest,
    training_payload,
)
from splitmesh.signing import EnvelopeSigner
from splitmesh.wire import decode_frame, encode_frame
from splitmesh.wire.tls import pinned_request
from splitmesh_cli.localnet import CLIENT_KEY, OTHER_KEY, PRICE, RunningMarket

HIDDEN = 576


@pytest.fixture(scope="module")
def client(running_market: RunningMarket) -> Client:
    return Client(running_market.rpc_url, CLIENT_KEY, None, market=running_market.deployment.market)


def test_gradients_through_the_route_equal_autograd_through_the_unsplit_model(
    running_market: RunningMarket,
) -> None:
    client = Client(running_market.rpc_url, CLIENT_KEY, None, market=running_market.deployment.market)
    opts = TrainOptions(lr=0.0, lora_rank=4, max_grad_norm=None, seed=3)
    prepared = client.prepare(opts.split)
    trainer = prepared.adapters_for(opts)
    # LoRA starts with B = 0, which makes every gradient of A zero: start from a trained-looking adapter.
    with torch.no_grad():
        for name, param in trainer.trainable_parameters().items():
            if "lora_B" in name:
                param.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    example = load_examples()[5]
    batch = make_batch([example], client.tokenizer, max_length=64)
    ids, labels = batch.input_ids, batch.labels
    with TrainingSession(client, prepared, trainer, opts, max_tokens=4 * ids.shape[1]) as session:
        head = trainer.head_forward(ids)
        z = head.z.detach().contiguous()
        hidden, _ = session.send(z, "train", None)
        loss, grad = trainer.loss_from_hidden(hidden, labels)
        grad_z, _ = session.send(grad.contiguous(), "backward", 0)
        trainer.backward_head(head, grad_z)
        route_grads = {n: p.grad.clone() for n, p in trainer.trainable_parameters().items()}  # type: ignore[union-attr]

    # The unsplit model in this process: head (same LoRA) -> layers 4..29 -> tail, one autograd graph.
    spec = ModelSpec.open(client.model_dir, "float32")
    rest = spec.build_stack(prepared.model.split, spec.config.num_hidden_layers)
    for p in trainer.trainable_parameters().values():
        p.grad = None
    z_ref = trainer.head_forward(ids).z
    z_ref.retain_grad()
    out = rest(z_ref, head.position_ids, None)
    logits, targets = trainer.logits_and_targets(out, labels)
    ref_loss = torch.nn.functional.cross_entropy(logits.float(), targets)
    ref_loss.backward()
    assert z_ref.grad is not None
    assert abs(float(ref_loss.detach()) - float(loss)) < 1e-5
    scale = float(z_ref.grad.abs().max())
    assert scale > 0
    assert float((grad_z - z_ref.grad).abs().max()) <= 1e-5 * max(1.0, scale)
    assert route_grads
    for name, param in trainer.trainable_parameters().items():
        assert param.grad is not None and float(param.grad.abs().max()) > 0, name
        assert float((route_grads[name] - param.grad).abs().max()) <= 1e-5 * max(
            1.0, float(param.grad.abs().max())
        ), name


def _heldout(client: Client) -> list[str]:
    prompts = [e["prompt"] for e in load_examples(shipped_dataset("instructions_heldout.jsonl"))]
    return [client.generate(p, max_new_tokens=6, seed=0).text for p in prompts]


def test_fine_tuning_over_the_marketplace_lowers_the_loss_and_teaches_the_pattern(
    running_market: RunningMarket,
) -> None:
    client = Client(running_market.rpc_url, CLIENT_KEY, None, market=running_market.deployment.market)
    before = _heldout(client)
    assert not any(text.startswith("Ahoy") for text in before), before
    examples = load_examples()[:16]
    report = client.train(examples, epochs=2, lr=2e-3, progress=False, seed=1)
    assert report.steps == 32
    first, last = sum(report.losses[:4]) / 4, sum(report.losses[-8:]) / 8
    assert last < 0.5 * first, report.losses
    after = _heldout(client)  # generate() on the same split runs the tuned LoRA
    assert all(text.startswith("Ahoy") for text in after), after
    assert report.commitment_problem is None

    # On-chain: billed = every train and backward token; the nodes commit, the job settles.
    assert report.tokens == report.max_tokens
    running_market.wait_status(report.job_id, JobStatus.COMMITTED)
    state = running_market.market.get_job(report.job_id)
    assert state.billed_tokens == report.tokens
    advance_time(running_market.w3, running_market.market.parameters()["challenge_window"] + 1)
    settlement = client.finalize(report.job_id)
    fee = running_market.market.hop_fee()  # each committed hop's flat pay per job
    assert set(settlement.paid_wei.values()) == {PRICE * report.tokens + fee}
    assert settlement.total_paid_wei + settlement.refund_wei == settlement.escrow_wei
    submitted = running_market.market.job_submitted(report.job_id)
    declared = json.loads(submitted.metadata)
    assert declared["kind"] == "train" and declared["adapter"]["lora_rank"] == 8


def test_adapter_saved_and_loaded_generates_the_same(client: Client, tmp_path: Path) -> None:
    client.train_step({"prompt": "Name a primary colour.", "completion": "Ahoy! Red is one."}, lr=1e-3)
    report = client.end_training()
    assert report is not None and report.steps == 1
    path = client.save_adapter(tmp_path / "adapter")
    text = client.generate("Name a primary colour.", max_new_tokens=5, seed=0).text
    other = Client(client.w3.provider.endpoint_uri, CLIENT_KEY, None, market=client.market.deployment.market)  # type: ignore[attr-defined]
    other.load_adapter(path)
    assert other.generate("Name a primary colour.", max_new_tokens=5, seed=0).text == text

    # With a private adapter in the client's layers the BOS vector identifies the client: it is noised
    # (and counted) like every other position, while a client on the public weights sends BOS as is.
    prompt = "Name a primary colour."
    private = other.generate(prompt, max_new_tokens=1, epsilon=1000.0).receipt
    plain = Client(client.w3.provider.endpoint_uri, CLIENT_KEY, None, market=client.market.deployment.market)  # type: ignore[attr-defined]
    public = plain.generate(prompt, max_new_tokens=1, epsilon=1000.0).receipt
    assert public.privacy["public_prefix"] == 1 and public.privacy["tokens"] == public.prompt_tokens - 1
    assert private.privacy["public_prefix"] == 0 and private.privacy["tokens"] == private.prompt_tokens


# ---------------------------------------------------------------------- rejections


class TrainRig:
    """Raw training frames to the first node of a fresh training job, signed as the client would."""

    def __init__(self, running: RunningMarket):
        self.running = running
        self.market = running.market
        self.sender = self.market.sender(CLIENT_KEY)
        self.signer = EnvelopeSigner(CLIENT_KEY, self.market.chain_id, running.deployment.market)
        self.stranger = EnvelopeSigner(OTHER_KEY, self.market.chain_id, running.deployment.market)
        self.job: SubmittedJob = self.market.submit_job(
            self.sender,
            running.model_id,
            1,
            200,
            PRICE,
            self.market.escrow_for(200, PRICE, 3),
            b'{"kind":"train"}',
        )
        self.first = running.nodes[0]
        self.billed = 0

    def frame(
        self,
        step: int,
        tensor: torch.Tensor,
        mode: str,
        of_step: int | None = None,
        *,
        signer: EnvelopeSigner | None = None,
        tokens: int | None = None,
    ) -> bytes:
        digest = tensor_digest(tensor)
        payload = training_payload(mode, of_step, digest)
        tokens = self.billed + int(tensor.shape[1]) if tokens is None else tokens
        signature = (signer or self.signer).sign(self.job.job_id, step, tokens, payload).signature
        meta = StepMeta(
            job=self.job.job_id,
            step=step,
            tokens=tokens,
            start=0,
            payload_hash=hex32(payload),
            signature=hex32(signature),
            terms=hex32(self.job.packed_terms),
            mode=mode,  # type: ignore[arg-type]
            of_step=of_step,
            tensor_hash=hex32(digest),
        )
        return encode_frame(tensor, meta.model_dump())

    def post(self, frame: bytes) -> tuple[int, Any]:
        url = self.first.endpoint.rstrip("/") + STEP_PATH.format(job=self.job.job_id)
        status, _, body = pinned_request("POST", url, self.first.tls_key, body=frame, timeout=60)
        if status == 200:
            return status, decode_frame(body).tensor
        return status, ErrorReply.model_validate(json.loads(body))

    def ok(self, frame: bytes, q: int) -> torch.Tensor:
        status, reply = self.post(frame)
        assert status == 200, reply
        self.billed += q
        return reply


def test_bad_backward_requests_are_refused_and_the_node_keeps_serving(running_market: RunningMarket) -> None:
    rig = TrainRig(running_market)
    seq = 5
    z = torch.randn(1, seq, HIDDEN)
    out = rig.ok(rig.frame(0, z, "train"), seq)
    assert out.shape == (1, seq, HIDDEN)
    grad = torch.randn(1, seq, HIDDEN) * 1e-3

    def rejected(frame: bytes, status: int, code: str) -> ErrorReply:
        got, reply = rig.post(frame)
        assert got == status and isinstance(reply, ErrorReply) and reply.code == code, (got, reply)
        return reply

    # Wrong shape: checked against the kept step on the node that holds it (the last node answers first).
    reply = rejected(rig.frame(1, torch.randn(1, seq + 1, HIDDEN), "backward", 0), 400, "bad_gradient")
    assert "must match" in reply.error
    # A step the nodes never kept.
    rejected(rig.frame(2, grad, "backward", 1), 404, "unknown_step")
    # Someone other than the job's client.
    rejected(rig.frame(3, grad, "backward", 0, signer=rig.stranger), 401, "bad_signature")
    # The signature binds the answered step: the same envelope with another of_step fails.
    frame = rig.frame(4, grad, "backward", 0)
    meta = decode_frame(frame).meta
    meta["of_step"] = 2
    rejected(encode_frame(grad, meta), 400, "payload_mismatch")
    # A token count that is not what the job processed so far.
    rejected(rig.frame(5, grad, "backward", 0, tokens=rig.billed + seq + 7), 400, "bad_tokens")
    # An inference step in a training job.
    infer = StepMeta(
        job=rig.job.job_id,
        step=6,
        tokens=seq,
        start=0,
        payload_hash=hex32(tensor_digest(z)),
        signature=hex32(rig.signer.sign(rig.job.job_id, 6, seq, tensor_digest(z)).signature),
        terms=hex32(rig.job.packed_terms),
    )
    rejected(encode_frame(z, infer.model_dump()), 409, "mode_mismatch")
    # Still serving: the valid backward of step 0 returns d loss / d Z, once.
    grad_z = rig.ok(rig.frame(7, grad, "backward", 0), seq)
    assert grad_z.shape == (1, seq, HIDDEN) and bool(torch.isfinite(grad_z).all())
    rejected(rig.frame(8, grad, "backward", 0), 409, "step_consumed")
    # Ending the job commits what was served: the client's end envelope over every billed token.
    signature = rig.signer.sign(rig.job.job_id, END_STEP, rig.billed, END_PAYLOAD).signature
    end = EndMeta(
        job=rig.job.job_id, tokens=rig.billed, signature=hex32(signature), terms=hex32(rig.job.packed_terms)
    )
    status, _, body = pinned_request(
        "POST",
        rig.first.endpoint.rstrip("/") + END_PATH.format(job=rig.job.job_id),
        rig.first.tls_key,
        body=end.model_dump_json().encode(),
        timeout=60,
    )
    assert status == 200, body[:300]
    ended = EndResult.model_validate_json(body)
    assert [c.steps for c in ended.commitments] == [2, 2, 2]  # one train and one backward each
    running_market.wait_status(rig.job.job_id, JobStatus.COMMITTED)
    assert running_market.market.get_job(rig.job.job_id).billed_tokens == 2 * seq

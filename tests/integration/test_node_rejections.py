"""Every bad step a peer can send is refused with a 4xx JSON reply, and the node keeps serving.

Runs against the session's `running_market` (its own hardhat chain and three real node processes for
SmolLM2, shards 1..3). Each test submits its own jobs with CLIENT_KEY, so it knows their terms and signs
their envelopes itself, builds step frames the way `client_sdk.Client._run` does (a random hidden state
stands in for the client's layers: the protocol does not care), sends a faulty one over HTTP or the
WebSocket stream and asserts the status, the stable `code`, the rejecting node and a reason naming the
problem. Each then proves the rejection changed nothing: /health still answers and a correctly signed
step returns a [1, 1, 576] result frame (on the WebSocket, over the very socket that got the error).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from splitmesh.chain import SubmittedJob
from splitmesh.protocol import (
    END_PATH,
    END_PAYLOAD,
    END_STEP,
    STEP_PATH,
    STREAM_PATH,
    EndMeta,
    EndResult,
    ErrorReply,
    StepMeta,
    StepResult,
    hex32,
    tensor_digest,
)
from splitmesh.signing import EnvelopeSigner, RelaySigner
from splitmesh.wire import DEFAULT_MAX_FRAME_BYTES, decode_frame, encode_frame
from splitmesh.wire.tls import link_ssl, pinned_request, ws_url
from splitmesh.wire.websocket import BlockingWebSocket, WebSocketClosed
from splitmesh_cli.localnet import CLIENT_KEY, NODE_KEYS, OTHER_KEY, PRICE, RunningMarket

HIDDEN = 576  # SmolLM2-135M hidden size
PROMPT = 3  # tokens of every test job's first step
MAX_TOKENS = 32
HTTP_TIMEOUT = 60.0  # seconds for one request (a valid step runs 26 layers over three processes)
TRANSPORTS = ["http", "ws"]


@dataclass
class Reply:
    """A node's answer to one step: a decoded result frame (status 200) or an error object."""

    status: int
    error: dict[str, Any] | None = None
    body: bytes = b""


class Rig:
    """The running market seen from a client: submit jobs, sign and build steps, send them."""

    def __init__(self, running: RunningMarket):
        self.running = running
        self.market = running.market
        deployment = running.deployment
        self.sender = self.market.sender(CLIENT_KEY)
        self.signer = EnvelopeSigner(CLIENT_KEY, self.market.chain_id, deployment.market)
        self.stranger = EnvelopeSigner(OTHER_KEY, self.market.chain_id, deployment.market)
        self.nodes = running.nodes
        self.open_jobs: dict[int, SubmittedJob] = {}  # submitted by the running test and not ended yet

    def submit(self, first_shard: int = 1) -> SubmittedJob:
        escrow = self.market.escrow_for(MAX_TOKENS, PRICE, hops=3)
        model_id = self.running.model_id
        job = self.market.submit_job(self.sender, model_id, first_shard, MAX_TOKENS, PRICE, escrow, b"{}")
        hops = [node.address for node in self.nodes[first_shard - 1 :]]
        assert [hop.node for hop in job.terms.route] == hops, "one node per shard: the route is fixed"
        self.open_jobs[job.job_id] = job
        return job

    def end(self, job: SubmittedJob, tokens: int) -> tuple[int, bytes]:
        """POST the client's signed end to the job's first hop: (status, body)."""
        first = next(node for node in self.nodes if node.address == job.terms.route[0].node)
        url = first.endpoint.rstrip("/") + END_PATH.format(job=job.job_id)
        status, _, body = http("POST", url, self.end_meta(job, tokens).model_dump_json().encode())
        if status == 200:
            self.open_jobs.pop(job.job_id, None)
        return status, body

    def end_open_jobs(self) -> None:
        """End the test's jobs so the nodes close their sessions (and commit) instead of holding them.

        Tokens 0: the nodes keep the client's last step envelope as the receipt they commit.
        """
        for job in list(self.open_jobs.values()):
            status, body = self.end(job, 0)
            assert status == 200, f"job {job.job_id} did not end: {status} {body[:300]!r}"

    def meta(
        self,
        job: SubmittedJob,
        step: int,
        start: int,
        z: torch.Tensor,
        *,
        signer: EnvelopeSigner | None = None,
        tokens: int | None = None,
    ) -> StepMeta:
        """The client's signed envelope for hidden state z [1, q, hidden] at positions start.."""
        tokens = start + int(z.shape[1]) if tokens is None else tokens
        digest = tensor_digest(z)
        signature = (signer or self.signer).sign(job.job_id, step, tokens, digest).signature
        return StepMeta(
            job=job.job_id,
            step=step,
            tokens=tokens,
            start=start,
            payload_hash=hex32(digest),
            signature=hex32(signature),
            terms=hex32(job.packed_terms),
            want="last",
        )

    def frame(self, job: SubmittedJob, step: int, start: int, q: int = PROMPT, **kwargs: Any) -> bytes:
        """A valid step frame (unless kwargs say otherwise) carrying a random hidden state."""
        z = torch.randn(1, q, HIDDEN)  # [batch, seq, hidden]
        return encode_frame(z, self.meta(job, step, start, z, **kwargs).model_dump())

    def end_meta(self, job: SubmittedJob, tokens: int, signer: EnvelopeSigner | None = None) -> EndMeta:
        signature = (signer or self.signer).sign(job.job_id, END_STEP, tokens, END_PAYLOAD).signature
        return EndMeta(
            job=job.job_id, tokens=tokens, signature=hex32(signature), terms=hex32(job.packed_terms)
        )


# ---------------------------------------------------------------------- transports


# Each node's on-chain TLS key by endpoint, filled by the `rig` fixture: every request pins it.
NODE_KEYS_BY_ENDPOINT: dict[str, bytes] = {}


def key_of(url: str) -> bytes:
    return next(key for endpoint, key in NODE_KEYS_BY_ENDPOINT.items() if url.startswith(endpoint))


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request; 4xx/5xx are answers here, not exceptions."""
    headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
    status, reply_headers, reply = pinned_request(
        method, url, key_of(url), headers=headers, body=body, timeout=HTTP_TIMEOUT
    )
    return status, reply_headers.get_content_type(), reply


class HttpChannel:
    """One POST per step to a node's STEP_PATH."""

    def __init__(self, endpoint: str, job_id: int):
        self.url = endpoint.rstrip("/") + STEP_PATH.format(job=job_id)

    def send(self, frame: bytes) -> Reply:
        status, content_type, body = http("POST", self.url, frame)
        if status == 200:
            assert content_type == "application/octet-stream"
            return Reply(status, body=body)
        assert content_type == "application/json", (
            f"HTTP {status} answered with {content_type}: {body[:200]!r}"
        )
        error = json.loads(body)
        assert error["status"] == status, "the JSON status repeats the HTTP status"
        return Reply(status, error=error)


class WsChannel:
    """Binary step frames over one WebSocket session; errors come back as JSON text, the socket stays."""

    def __init__(self, connection: BlockingWebSocket):
        self.connection = connection

    def send(self, frame: bytes) -> Reply:
        self.connection.send(frame)
        message = self.connection.receive(HTTP_TIMEOUT)
        if isinstance(message, bytes):
            return Reply(200, body=message)
        error = json.loads(message)
        return Reply(int(error["status"]), error=error)


Channel = HttpChannel | WsChannel


@pytest.fixture(scope="module")
def rig(running_market: RunningMarket) -> Rig:
    NODE_KEYS_BY_ENDPOINT.update({node.endpoint.rstrip("/"): node.tls_key for node in running_market.nodes})
    return Rig(running_market)


@pytest.fixture(autouse=True)
def end_jobs(rig: Rig) -> Iterator[None]:
    """Sessions left open would hold every node's shutdown for its whole drain timeout."""
    yield
    rig.end_open_jobs()


@pytest.fixture
def open_channel(request: pytest.FixtureRequest) -> Iterator[Any]:
    """open_channel(endpoint, job_id) for the test's `transport` parameter; sockets close at teardown."""
    transport = request.node.callspec.params["transport"]
    with contextlib.ExitStack() as sockets:

        def open_(endpoint: str, job_id: int) -> Channel:
            if transport == "http":
                return HttpChannel(endpoint, job_id)
            return WsChannel(sockets.enter_context(stream(endpoint, job_id)))

        yield open_


def fresh_job(rig: Rig, open_channel: Any) -> tuple[SubmittedJob, Any, Any]:
    """A new job of the test's and a channel to its first node: (job, node process, channel)."""
    job = rig.submit()
    node = rig.nodes[0]
    return job, node, open_channel(node.endpoint, job.job_id)


def stream(endpoint: str, job_id: int) -> BlockingWebSocket:
    """A WebSocket session of one job on a node (use it as a context manager)."""
    url = ws_url(endpoint, STREAM_PATH.format(job=job_id))
    return BlockingWebSocket(url, ssl=link_ssl(url, key_of(endpoint)), open_timeout=10)


# ---------------------------------------------------------------------- assertions


def assert_rejected(reply: Reply, status: int, code: str, node: str, *words: str) -> ErrorReply:
    """The reply is an ErrorReply with this status and code, from this node, naming the problem."""
    assert reply.status == status, f"expected {status} {code}, got {reply.status}: {reply.error}"
    assert reply.error is not None
    error = ErrorReply.model_validate(reply.error)
    assert error.code == code, error
    assert error.node == node, error
    for word in words:
        assert word.lower() in error.error.lower(), f"{word!r} not in the reason {error.error!r}"
    return error


def assert_result(reply: Reply, job: SubmittedJob, step: int, hops: list[tuple[str, int]]) -> torch.Tensor:
    """The reply is a result frame for this step: the last position's hidden state, timed by these hops."""
    assert reply.status == 200, f"expected a result, got {reply.status}: {reply.error}"
    result = decode_frame(reply.body, allowed_dtypes={"float32"}, expect_shape=(1, 1, HIDDEN))
    meta = StepResult.model_validate(result.meta)
    assert (meta.job, meta.step) == (job.job_id, step)
    assert [(hop.node, hop.position) for hop in meta.hops] == hops
    return result.tensor


def full_route(rig: Rig) -> list[tuple[str, int]]:
    return [(node.address, i) for i, node in enumerate(rig.nodes)]


def assert_healthy(rig: Rig) -> None:
    for node in rig.nodes:
        status, _, body = http("GET", node.endpoint.rstrip("/") + "/health")
        assert status == 200
        health = json.loads(body)
        assert (health["status"], health["address"]) == ("ok", node.address)


def error_counts(endpoint: str) -> dict[str, float]:
    status, _, body = http("GET", endpoint.rstrip("/") + "/metrics")
    assert status == 200
    assert b"splitmesh_node_errors_total" in body or b"# TYPE splitmesh_node_errors counter" in body
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "splitmesh_node_errors_total":
                counts[sample.labels["code"]] = sample.value
    return counts


# ---------------------------------------------------------------------- 1. signatures


def _garbage_signatures() -> list[tuple[str, bytes]]:
    random_bytes = os.urandom(65)
    return [
        ("random bytes", random_bytes),
        ("random r, s with v = 27", random_bytes[:64] + bytes([27])),
        ("zero r and s", bytes(64) + bytes([28])),
        ("v = 0", random_bytes[:64] + bytes([0])),
        ("s in the upper half", os.urandom(32) + b"\xff" * 32 + bytes([27])),
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_step_signed_by_a_stranger_is_unauthorized(rig: Rig, open_channel: Any, transport: str) -> None:
    job, node, channel = fresh_job(rig, open_channel)

    reply = channel.send(rig.frame(job, 0, 0, signer=rig.stranger))
    assert_rejected(reply, 401, "bad_signature", node.address, rig.stranger.address, "signed by")

    assert_result(channel.send(rig.frame(job, 0, 0)), job, 0, full_route(rig))
    assert_healthy(rig)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_garbage_signature_of_the_right_length_is_unauthorized(
    rig: Rig, open_channel: Any, transport: str
) -> None:
    job, node, channel = fresh_job(rig, open_channel)
    for what, signature in _garbage_signatures():
        meta = rig.meta(job, 0, 0, z := torch.randn(1, PROMPT, HIDDEN))
        bad = meta.model_copy(update={"signature": hex32(signature)})
        reply = channel.send(encode_frame(z, bad.model_dump()))
        error = assert_rejected(reply, 401, "bad_signature", node.address)
        assert "malformed" in error.error or "not the job's client" in error.error, (what, error)

    assert_result(channel.send(rig.frame(job, 0, 0)), job, 0, full_route(rig))
    assert_healthy(rig)


def test_signature_over_other_fields_is_unauthorized(rig: Rig) -> None:
    """A genuine client signature, but over another step, token count or payload, does not carry over."""
    job = rig.submit()
    node = rig.nodes[0]
    channel = HttpChannel(node.endpoint, job.job_id)
    z = torch.randn(1, PROMPT, HIDDEN)
    meta = rig.meta(job, 0, 0, z)
    other_step = rig.meta(job, 1, 0, z)
    other_payload = rig.meta(job, 0, 0, torch.randn(1, PROMPT, HIDDEN))
    for forged in (
        meta.model_copy(update={"signature": other_step.signature}),  # signed for step 1
        meta.model_copy(update={"payload_hash": other_payload.payload_hash}),  # hash of another tensor
    ):
        reply = channel.send(encode_frame(z, forged.model_dump()))
        assert_rejected(reply, 401, "bad_signature", node.address, "not the job's client")

    assert_result(channel.send(encode_frame(z, meta.model_dump())), job, 0, full_route(rig))


def test_payload_that_differs_from_the_signed_hash_is_rejected(rig: Rig) -> None:
    """The first node checks the tensor against the signed payload hash: a swapped tensor is refused."""
    job = rig.submit()
    node = rig.nodes[0]
    channel = HttpChannel(node.endpoint, job.job_id)
    meta = rig.meta(job, 0, 0, torch.randn(1, PROMPT, HIDDEN))
    reply = channel.send(encode_frame(torch.randn(1, PROMPT, HIDDEN), meta.model_dump()))
    assert_rejected(reply, 400, "payload_mismatch", node.address, "payload hash")

    assert_result(channel.send(rig.frame(job, 0, 0)), job, 0, full_route(rig))


# ---------------------------------------------------------------------- 2. replays


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_replayed_step_is_a_conflict(rig: Rig, open_channel: Any, transport: str) -> None:
    job, node, channel = fresh_job(rig, open_channel)
    step0 = rig.frame(job, 0, 0)
    assert_result(channel.send(step0), job, 0, full_route(rig))

    assert_rejected(channel.send(step0), 409, "replayed_step", node.address, "step 0", "not new")
    # Re-signed with fresh data, step 0 is still old; an older step number than the last one too.
    assert_rejected(channel.send(rig.frame(job, 0, PROMPT, q=1)), 409, "replayed_step", node.address)
    step5 = rig.frame(job, 5, PROMPT, q=1)
    assert_result(channel.send(step5), job, 5, full_route(rig))
    assert_rejected(channel.send(rig.frame(job, 4, PROMPT + 1, q=1)), 409, "replayed_step", node.address)

    assert_result(channel.send(rig.frame(job, 6, PROMPT + 1, q=1)), job, 6, full_route(rig))
    assert_healthy(rig)


def test_replay_on_a_second_transport_is_a_conflict(rig: Rig) -> None:
    """The replay guard belongs to the job, not to the connection: HTTP then WebSocket then HTTP."""
    job = rig.submit()
    node = rig.nodes[0]
    step0 = rig.frame(job, 0, 0)
    assert_result(HttpChannel(node.endpoint, job.job_id).send(step0), job, 0, full_route(rig))
    with stream(node.endpoint, job.job_id) as connection:
        reply = WsChannel(connection).send(step0)
    assert_rejected(reply, 409, "replayed_step", node.address)
    assert_rejected(HttpChannel(node.endpoint, job.job_id).send(step0), 409, "replayed_step", node.address)


# ---------------------------------------------------------------------- 3. unknown jobs


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_job_is_not_found(rig: Rig, open_channel: Any, transport: str) -> None:
    template = rig.submit()
    node = rig.nodes[0]
    for job_id in (rig.market.job_count() + 10**6, 2**256 - 1):
        ghost = SubmittedJob(job_id, template.terms, template.packed_terms, b"", None)
        channel = open_channel(node.endpoint, job_id)
        reply = channel.send(rig.frame(ghost, 0, 0))
        assert_rejected(reply, 404, "unknown_job", node.address, f"job {job_id}", "does not exist")

    channel = open_channel(node.endpoint, template.job_id)
    assert_result(channel.send(rig.frame(template, 0, 0)), template, 0, full_route(rig))
    assert_healthy(rig)


def test_malformed_job_id_in_the_path_is_a_bad_request(rig: Rig) -> None:
    job = rig.submit()
    node = rig.nodes[0]
    for raw in ("abc", "-1", "1" * 79):
        status, content_type, body = http(
            "POST", node.endpoint + STEP_PATH.format(job=raw), rig.frame(job, 0, 0)
        )
        assert (status, content_type) == (400, "application/json")
        assert_rejected(Reply(status, json.loads(body)), 400, "bad_job_id", node.address, "not a decimal")

    assert_result(HttpChannel(node.endpoint, job.job_id).send(rig.frame(job, 0, 0)), job, 0, full_route(rig))


def test_frame_for_another_job_is_a_bad_request(rig: Rig) -> None:
    job, other = rig.submit(), rig.submit()
    node = rig.nodes[0]
    reply = HttpChannel(node.endpoint, job.job_id).send(rig.frame(other, 0, 0))
    assert_rejected(reply, 400, "job_mismatch", node.address, f"job {other.job_id}")
    # The right job, signed by its client, but carrying altered terms (a route's last price byte flipped).
    # (The other job's terms would pass: same client, model, route and escrow give identical bytes.)
    altered = job.packed_terms[:-1] + bytes([job.packed_terms[-1] ^ 1])
    z = torch.randn(1, PROMPT, HIDDEN)
    meta = rig.meta(job, 0, 0, z).model_copy(update={"terms": hex32(altered)})
    reply = HttpChannel(node.endpoint, job.job_id).send(encode_frame(z, meta.model_dump()))
    assert_rejected(reply, 400, "terms_mismatch", node.address, f"job {job.job_id}'s on-chain terms")

    assert_result(HttpChannel(node.endpoint, job.job_id).send(rig.frame(job, 0, 0)), job, 0, full_route(rig))
    assert_result(
        HttpChannel(node.endpoint, other.job_id).send(rig.frame(other, 0, 0)), other, 0, full_route(rig)
    )


# ---------------------------------------------------------------------- 4. routes


def test_node_off_the_route_is_forbidden(rig: Rig) -> None:
    """Jobs from shard 2 route [node 2, node 3], from shard 3 [node 3]: node 1 (and node 2) are off them.

    The wrong_shard sub-case (a node on the route at a position whose shard it does not serve) cannot be
    built here: the contract matches each position from the pool of exactly its shard, each node
    address serves one shard of one model, and a second model would need a second set of nodes.
    """
    from_shard2, from_shard3 = rig.submit(first_shard=2), rig.submit(first_shard=3)
    n1, n2, n3 = rig.nodes
    for job, node in ((from_shard2, n1), (from_shard3, n1), (from_shard3, n2)):
        reply = HttpChannel(node.endpoint, job.job_id).send(rig.frame(job, 0, 0))
        assert_rejected(reply, 403, "not_in_route", node.address, "not on job", str(job.job_id))

    # The nodes that are on those routes serve them from position 0 (payload hash checked there).
    reply = HttpChannel(n2.endpoint, from_shard2.job_id).send(rig.frame(from_shard2, 0, 0))
    assert_result(reply, from_shard2, 0, [(n2.address, 0), (n3.address, 1)])
    reply = HttpChannel(n3.endpoint, from_shard3.job_id).send(rig.frame(from_shard3, 0, 0))
    assert_result(reply, from_shard3, 0, [(n3.address, 0)])
    assert_healthy(rig)


def test_a_later_hop_takes_frames_only_from_the_previous_hop(rig: Rig) -> None:
    """Node 2 serves position 1: a frame must carry node 1's relay signature over exactly that tensor.
    The client's own frame (no relay signature), a frame signed by someone else, or a signature over
    another tensor are refused before any layer runs, and the job then goes through node 1 normally.
    """
    job = rig.submit()
    n1, n2, _ = rig.nodes
    step0 = rig.frame(job, 0, 0)
    reply = HttpChannel(n2.endpoint, job.job_id).send(step0)
    assert_rejected(reply, 401, "bad_relay_signature", n2.address, "relay signature")

    frame = decode_frame(step0)
    digest = tensor_digest(frame.tensor)
    for key, signed_digest in ((OTHER_KEY, digest), (NODE_KEYS[0], b"\1" * 32)):
        signer = RelaySigner(key, rig.market.chain_id, rig.running.deployment.market)
        relay = "0x" + signer.sign(job.job_id, 0, 0, signed_digest).hex()
        forged = encode_frame(frame.tensor, {**frame.meta, "relay": relay})
        reply = HttpChannel(n2.endpoint, job.job_id).send(forged)
        assert_rejected(reply, 401, "bad_relay_signature", n2.address, "not by the previous hop")

    # Nothing changed on node 2: the real route serves step 0 and step 1.
    assert_result(HttpChannel(n1.endpoint, job.job_id).send(step0), job, 0, full_route(rig))

    fresh = rig.submit()
    assert_result(
        HttpChannel(n1.endpoint, fresh.job_id).send(rig.frame(fresh, 0, 0)), fresh, 0, full_route(rig)
    )
    assert_healthy(rig)


# ---------------------------------------------------------------------- 5. sizes


def test_body_over_the_size_limit_is_too_large(rig: Rig) -> None:
    job = rig.submit()
    node = rig.nodes[0]
    valid = rig.frame(job, 0, 0)
    body = valid + bytes(DEFAULT_MAX_FRAME_BYTES + 1 - len(valid))
    status, content_type, raw = http("POST", node.endpoint + STEP_PATH.format(job=job.job_id), body)
    assert (status, content_type) == (413, "application/json")
    assert_rejected(Reply(status, json.loads(raw)), 413, "body_too_large", node.address)

    assert_result(HttpChannel(node.endpoint, job.job_id).send(valid), job, 0, full_route(rig))
    assert_healthy(rig)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_header_declaring_a_huge_tensor_is_too_large(rig: Rig, open_channel: Any, transport: str) -> None:
    job, node, channel = fresh_job(rig, open_channel)
    valid = rig.frame(job, 0, 0)
    header = json.dumps({"dtype": "float32", "shape": [1, 10**7, HIDDEN], "meta": decode_frame(valid).meta})
    huge = struct.pack("<4sI", b"SMF1", len(header)) + header.encode() + bytes(4 * HIDDEN)
    assert_rejected(channel.send(huge), 413, "frame_too_large", node.address, "[1, 10000000, 576]")

    assert_result(channel.send(valid), job, 0, full_route(rig))


def test_stream_message_over_the_frame_limit_closes_the_stream(rig: Rig) -> None:
    """The stream's max message size is the frame limit (issue 15): a message over it closes the socket
    (1009, message too big) instead of being buffered; a new stream of the same job then serves."""
    job = rig.submit()
    node = rig.nodes[0]
    valid = rig.frame(job, 0, 0)
    with stream(node.endpoint, job.job_id) as connection:
        oversized = valid + bytes(DEFAULT_MAX_FRAME_BYTES + 1 - len(valid))
        with pytest.raises(WebSocketClosed):
            connection.send(oversized)
            connection.receive(HTTP_TIMEOUT)
    with stream(node.endpoint, job.job_id) as connection:
        assert_result(WsChannel(connection).send(valid), job, 0, full_route(rig))


# ---------------------------------------------------------------------- 6. values


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_hidden_state_is_a_bad_request(
    rig: Rig, open_channel: Any, transport: str, value: float
) -> None:
    job, node, channel = fresh_job(rig, open_channel)
    z = torch.randn(1, PROMPT, HIDDEN)
    z[0, 1, 7] = value  # one bad element in the middle token, correctly signed
    reply = channel.send(encode_frame(z, rig.meta(job, 0, 0, z).model_dump()))
    assert_rejected(reply, 400, "non_finite", node.address, "NaN or Inf")

    assert_result(channel.send(rig.frame(job, 0, 0)), job, 0, full_route(rig))


# ---------------------------------------------------------------------- 7. shapes and dtypes


def _float64_frame(z: torch.Tensor, meta: dict[str, Any]) -> bytes:
    """encode_frame refuses float64, so write the frame by hand: a well-formed frame of a refused dtype."""
    header = json.dumps({"dtype": "float64", "shape": list(z.shape), "meta": meta}).encode()
    return struct.pack("<4sI", b"SMF1", len(header)) + header + z.double().numpy().astype("<f8").tobytes()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((1, PROMPT, HIDDEN - 1), "[1, 3, 575]"),
        ((PROMPT, HIDDEN), "[3, 576]"),
        ((2, PROMPT, HIDDEN), "[2, 3, 576]"),
    ],
    ids=["hidden-575", "rank-2", "batch-2"],
)
def test_wrong_shape_is_a_bad_request(
    rig: Rig, open_channel: Any, transport: str, shape: tuple[int, ...], words: str
) -> None:
    job, node, channel = fresh_job(rig, open_channel)
    z = torch.randn(*shape)
    reply = channel.send(encode_frame(z, rig.meta(job, 0, 0, z.reshape(1, -1, shape[-1])).model_dump()))
    assert_rejected(reply, 400, "bad_shape", node.address, words)

    assert_result(channel.send(rig.frame(job, 0, 0)), job, 0, full_route(rig))


def test_empty_step_is_a_bad_request(rig: Rig) -> None:
    """A [1, 0, 576] frame decodes but carries no token: refused before it reaches the layers' cache."""
    job = rig.submit()
    node = rig.nodes[0]
    channel = HttpChannel(node.endpoint, job.job_id)
    z = torch.randn(1, 0, HIDDEN)
    reply = channel.send(encode_frame(z, rig.meta(job, 0, 1, z).model_dump()))
    assert_rejected(reply, 400, "bad_shape", node.address, "1..")

    assert_result(channel.send(rig.frame(job, 0, 0)), job, 0, full_route(rig))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_wrong_dtype_is_a_bad_request(rig: Rig, open_channel: Any, transport: str, dtype: str) -> None:
    job, node, channel = fresh_job(rig, open_channel)
    z = torch.randn(1, PROMPT, HIDDEN)
    if dtype == "float64":
        frame = _float64_frame(z, rig.meta(job, 0, 0, z).model_dump())
    else:
        z = z.to(getattr(torch, dtype))
        frame = encode_frame(z, rig.meta(job, 0, 0, z).model_dump())
    assert_rejected(channel.send(frame), 400, "bad_dtype", node.address, repr(dtype), "float32")

    assert_result(channel.send(rig.frame(job, 0, 0)), job, 0, full_route(rig))


# ---------------------------------------------------------------------- 8. malformed frames and meta


def _malformed_frames(valid: bytes) -> list[tuple[str, bytes, str]]:
    header_len = struct.unpack_from("<I", valid, 4)[0]
    return [
        ("empty", b"", "prefix"),
        ("garbage", b"GARB" + os.urandom(60), "SMF1"),
        ("truncated prefix", valid[:6], "prefix"),
        ("truncated header", valid[: 8 + header_len // 2], "header declares"),
        ("truncated payload", valid[:-100], "payload"),
        ("padded payload", valid + b"\0\0\0\0", "payload"),
        ("header not JSON", struct.pack("<4sI", b"SMF1", 5) + b"{oops" + valid[8 + header_len :], "JSON"),
        ("header too long", struct.pack("<4sI", b"SMF1", 10**6) + valid[8:], "header"),
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_malformed_frame_is_a_bad_request(rig: Rig, open_channel: Any, transport: str) -> None:
    job, node, channel = fresh_job(rig, open_channel)
    valid = rig.frame(job, 0, 0)
    for what, frame, words in _malformed_frames(valid):
        reply = channel.send(frame)
        assert reply.status == 400, (what, reply)
        assert_rejected(reply, 400, "bad_frame", node.address, words)

    assert_result(channel.send(valid), job, 0, full_route(rig))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_meta_is_a_bad_request(rig: Rig, open_channel: Any, transport: str) -> None:
    job, node, channel = fresh_job(rig, open_channel)
    z = torch.randn(1, PROMPT, HIDDEN)
    meta = rig.meta(job, 0, 0, z).model_dump()
    cases: list[tuple[dict[str, Any] | None, str]] = [
        ({k: v for k, v in meta.items() if k != "signature"}, "signature"),
        (None, "job"),  # no meta at all
        ({**meta, "extra": 1}, "extra"),
        ({**meta, "v": 2}, "v"),
        ({**meta, "kind": "result"}, "kind"),
        ({**meta, "job": str(job.job_id)}, "job"),  # strict: a string is not an int
        ({**meta, "step": -1}, "step"),
        ({**meta, "step": END_STEP}, "step"),  # the end marker is not a step
        ({**meta, "tokens": 0}, "tokens"),
        ({**meta, "payload_hash": meta["payload_hash"][:-2]}, "payload_hash"),
        ({**meta, "signature": meta["signature"] + "00"}, "signature"),
        ({**meta, "terms": "0xzz"}, "terms"),
        ({**meta, "want": "first"}, "want"),
    ]
    for bad, where in cases:
        reply = channel.send(encode_frame(z, bad))
        assert_rejected(reply, 400, "bad_meta", node.address, f"rejected: {where}:")

    assert_result(channel.send(encode_frame(z, meta)), job, 0, full_route(rig))


# ---------------------------------------------------------------------- 9. tokens and positions


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_token_count_that_does_not_match_the_positions_is_a_bad_request(
    rig: Rig, open_channel: Any, transport: str
) -> None:
    job, node, channel = fresh_job(rig, open_channel)
    for tokens in (PROMPT + 1, PROMPT - 1):  # signed, so only the mismatch is wrong
        reply = channel.send(rig.frame(job, 0, 0, tokens=tokens))
        assert_rejected(
            reply, 400, "bad_tokens", node.address, f"counts {tokens} tokens", f"ends at {PROMPT}"
        )
    reply = channel.send(rig.frame(job, 0, MAX_TOKENS, q=1))  # consistent, but over the job's max
    assert_rejected(reply, 400, "over_max_tokens", node.address, str(MAX_TOKENS))

    assert_result(channel.send(rig.frame(job, 0, 0)), job, 0, full_route(rig))
    assert_result(channel.send(rig.frame(job, 1, PROMPT, q=1)), job, 1, full_route(rig))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_positions_that_do_not_continue_the_session_are_a_conflict(
    rig: Rig, open_channel: Any, transport: str
) -> None:
    job, node, channel = fresh_job(rig, open_channel)
    # A fresh session starts at position 0.
    reply = channel.send(rig.frame(job, 0, 2))
    assert_rejected(reply, 409, "bad_positions", node.address, "holds 0 tokens", "positions must be 0..2")
    assert_result(channel.send(rig.frame(job, 0, 0)), job, 0, full_route(rig))

    # Then each step continues where the last ended: no gap, no overlap.
    for start in (PROMPT + 5, PROMPT - 1, 0):
        reply = channel.send(rig.frame(job, 1, start, q=1))
        assert_rejected(reply, 409, "bad_positions", node.address, f"holds {PROMPT} tokens")

    # The refused steps changed nothing: step 1 (never accepted) at the right position goes through.
    assert_result(channel.send(rig.frame(job, 1, PROMPT, q=1)), job, 1, full_route(rig))
    assert_healthy(rig)


# ---------------------------------------------------------------------- 10. end of job


def test_end_with_a_bad_signature_is_unauthorized(rig: Rig) -> None:
    job = rig.submit()
    node = rig.nodes[0]
    assert_result(HttpChannel(node.endpoint, job.job_id).send(rig.frame(job, 0, 0)), job, 0, full_route(rig))
    url = node.endpoint + END_PATH.format(job=job.job_id)

    forged = [
        rig.end_meta(job, PROMPT, signer=rig.stranger),
        rig.end_meta(job, PROMPT).model_copy(update={"tokens": PROMPT + 1}),  # signed for other tokens
        rig.end_meta(job, PROMPT).model_copy(update={"signature": hex32(os.urandom(64) + bytes([27]))}),
    ]
    for meta in forged:
        status, content_type, body = http("POST", url, meta.model_dump_json().encode())
        assert (status, content_type) == (401, "application/json")
        assert_rejected(Reply(status, json.loads(body)), 401, "bad_signature", node.address)
    for raw in (b"", b"{not json", json.dumps({"job": job.job_id}).encode()):
        status, _, body = http("POST", url, raw)
        assert_rejected(Reply(status, json.loads(body)), 400, "bad_meta", node.address, "end message")

    # The forged ends did not close the session: the job takes another step, then ends for real.
    assert_result(
        HttpChannel(node.endpoint, job.job_id).send(rig.frame(job, 1, PROMPT, q=1)), job, 1, full_route(rig)
    )
    status, body = rig.end(job, PROMPT + 1)
    assert status == 200, body
    ended = EndResult.model_validate_json(body)
    assert [(c.node, c.position, c.steps) for c in ended.commitments] == [
        (address, position, 2) for address, position in full_route(rig)
    ]
    assert_healthy(rig)


def test_end_with_a_bad_signature_on_the_stream_is_unauthorized(rig: Rig) -> None:
    job = rig.submit()
    node = rig.nodes[0]
    with stream(node.endpoint, job.job_id) as connection:
        channel = WsChannel(connection)
        assert_result(channel.send(rig.frame(job, 0, 0)), job, 0, full_route(rig))
        connection.send(rig.end_meta(job, PROMPT, signer=rig.stranger).model_dump_json())
        error = json.loads(connection.receive(HTTP_TIMEOUT))
        assert_rejected(
            Reply(error["status"], error), 401, "bad_signature", node.address, rig.stranger.address
        )
        # Same socket, still open: the next step is served.
        assert_result(channel.send(rig.frame(job, 1, PROMPT, q=1)), job, 1, full_route(rig))


# ---------------------------------------------------------------------- 11. metrics


def test_rejections_are_counted_in_metrics(rig: Rig) -> None:
    """Each rejected step adds one to splitmesh_node_errors_total{code=...} on the node that refused it."""
    node = rig.nodes[0]
    before = error_counts(node.endpoint)
    job = rig.submit()
    channel = HttpChannel(node.endpoint, job.job_id)
    z = torch.randn(1, PROMPT, HIDDEN)
    z[0, 0, 0] = float("nan")
    huge = json.dumps({"dtype": "float32", "shape": [1, 10**7, HIDDEN]}).encode()
    triggered: dict[str, tuple[int, bytes]] = {
        "bad_signature": (401, rig.frame(job, 0, 0, signer=rig.stranger)),
        "non_finite": (400, encode_frame(z, rig.meta(job, 0, 0, z).model_dump())),
        "bad_frame": (400, b"garbage"),
        "bad_meta": (400, encode_frame(torch.randn(1, PROMPT, HIDDEN))),
        "bad_shape": (400, encode_frame(torch.randn(1, PROMPT, HIDDEN - 1))),
        "bad_dtype": (400, encode_frame(torch.randn(1, PROMPT, HIDDEN).half())),
        "frame_too_large": (413, struct.pack("<4sI", b"SMF1", len(huge)) + huge),
        "bad_tokens": (400, rig.frame(job, 0, 0, tokens=PROMPT + 1)),
        "bad_positions": (409, rig.frame(job, 0, 1)),
    }
    for code, (status, frame) in triggered.items():
        assert_rejected(channel.send(frame), status, code, node.address)
    assert_result(channel.send(rig.frame(job, 0, 0)), job, 0, full_route(rig))
    assert_rejected(channel.send(rig.frame(job, 0, 0)), 409, "replayed_step", node.address)
    oversized = bytes(DEFAULT_MAX_FRAME_BYTES + 1)
    status, _, _ = http("POST", node.endpoint + STEP_PATH.format(job=job.job_id), oversized)
    assert status == 413

    after = error_counts(node.endpoint)
    for code in [*triggered, "replayed_step", "body_too_large"]:
        assert after.get(code, 0) - before.get(code, 0) == 1, (code, before, after)

"""What crosses the wire between client and nodes: men in the middle against real node processes.

Two nodes on a real chain; each registers a public endpoint that goes through a `Wiretap` in this test
process (client -> tap 1 -> node 1 -> tap 2 -> node 2), so every byte of both links passes through a
recorder. Every node and the client run with HTTP_PROXY, HTTPS_PROXY and ALL_PROXY pointing at a
`Sink` that records anything sent to it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from web3 import Web3

from client_sdk import Client, StepFailed
from splitmesh.chain import HARDHAT_DEV_KEYS, JobStatus, LocalChain, Marketplace, Sender, deploy
from splitmesh.chain.launcher import free_port
from splitmesh.model.identity import describe_model
from splitmesh.plan import client_split_plan
from splitmesh.wire.tls import (
    PLAINTEXT_ENV,
    ZERO_KEY,
    NoRegisteredKey,
    PeerKeyMismatch,
    load_or_create_identity,
)
from splitmesh_cli.localnet import CLIENT_KEY, PARAMS, SPLIT, RunningMarket, open_market
from splitmesh_cli.procs import NodeProcess
from tests.integration.wiretap import Sink, Wiretap

SCHEME = "https"
PROMPT = "Name three colors of the rainbow."
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
# What a frame or a protocol message looks like in the clear: the frame magic, the JSON header of every
# tensor frame, the meta the client signs, the end-of-job commitment report, the WebSocket upgrade.
CLEAR_MARKERS = (b"SMF1", b'"dtype"', b'"shape"', b'"signature"', b"input_chain", b"Upgrade: websocket")


@dataclass
class Rig:
    running: RunningMarket
    taps: list[Wiretap]
    sink: Sink
    impostor: ssl.SSLContext  # a TLS server context with a key no node registered


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("tls")
    sink = Sink(free_port())
    chain = LocalChain(log_path=tmp / "hardhat.log").start()
    taps: list[Wiretap] = []
    running = None
    try:
        rpc_url = chain.rpc_url.replace("127.0.0.1", "localhost")  # the one name NO_PROXY exempts
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 60}))
        deployer = Sender(w3, HARDHAT_DEV_KEYS[0])
        market = Marketplace(w3, deploy(w3, deployer, PARAMS))
        described = describe_model(None)
        plan = client_split_plan(described.num_layers, SPLIT, 2)
        running = open_market(
            market, deployer, described, plan, rpc_url=rpc_url, home=tmp / "nodes", log_dir=tmp / "logs"
        )
        specs = []
        proxy_env = _proxy_env(sink)
        for shard in (1, 2):
            port, public = free_port(), free_port()
            taps.append(Wiretap(public, upstream=port))
            spec = running.spec(shard, None, 10**12, 1.0, "--public-url", f"{SCHEME}://127.0.0.1:{public}")
            spec.port = port
            spec.env = proxy_env
            specs.append(spec)
        running.start_nodes(specs)
        impostor = load_or_create_identity(tmp / "impostor").server_context()
        yield Rig(running, taps, sink, impostor)
    finally:
        if running is not None:
            from splitmesh_cli.procs import stop_nodes

            stop_nodes(running.nodes, timeout=40)
        chain.stop()
        for tap in taps:
            tap.close()
        sink.close()


def _proxy_env(sink: Sink) -> dict[str, str]:
    """Every proxy variable set to the sink. Only the chain's RPC, reached as `localhost`, is exempted:
    web3 honours these variables, and the chain is not what this test is about. Nodes are reached at
    127.0.0.1, which NO_PROXY does not name."""
    env = {name: f"http://127.0.0.1:{sink.port}" for name in PROXY_VARS}
    return {**env, "NO_PROXY": "localhost", "no_proxy": "localhost"}


@pytest.fixture
def client(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> Client:
    for name, value in _proxy_env(rig.sink).items():
        monkeypatch.setenv(name, value)
    return Client(rig.running.rpc_url, CLIENT_KEY, market=rig.running.deployment.market)


def _reset(rig: Rig) -> None:
    for tap in rig.taps:
        tap.clear()
        tap.impostor_tls = None


def test_an_eavesdropper_on_both_links_sees_no_frame_content(rig: Rig, client: Client) -> None:
    _reset(rig)
    out = client.generate(PROMPT, 4, epsilon=math.inf, split=SPLIT)
    assert len(out.token_ids) == 4
    rig.running.wait_status(out.receipt.job_id, JobStatus.COMMITTED)
    for position, tap in enumerate(rig.taps):
        seen = tap.seen()
        assert tap.connections >= 1 and len(seen) > 10_000, f"link {position} did not pass the tap"
        found = [m for m in CLEAR_MARKERS if m in seen]
        assert found == [], f"the tap on link {position} read {found} in the clear"


def test_proxy_variables_do_not_divert_frames_or_transcripts(rig: Rig, client: Client) -> None:
    _reset(rig)
    out = client.generate(PROMPT, 3, epsilon=math.inf, split=SPLIT)
    job_id = out.receipt.job_id
    rig.running.wait_status(job_id, JobStatus.COMMITTED)
    # In a fresh process, as a verifier's node process runs it: urllib reads proxy variables once per
    # process, when it first opens a URL.
    d = rig.running.deployment
    node = rig.running.nodes[0]
    fetch = (
        "import sys; from splitmesh.audit.transcript import fetch_transcript as f; "
        f"print(len(f({node.endpoint!r}, {job_id}, 0, {CLIENT_KEY!r}, {d.chain_id}, {d.market!r}, "
        f"key=bytes.fromhex({node.info['tls_key'][2:]!r}))))"
    )
    env = {**os.environ, **_proxy_env(rig.sink)}
    done = subprocess.run([sys.executable, "-c", fetch], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 1000
    assert rig.taps[0].connections >= 2  # the step stream and the transcript went to the node
    assert (rig.sink.connections, bytes(rig.sink.recorded)) == (0, b"")


def test_the_client_refuses_a_first_node_with_another_key(rig: Rig, client: Client) -> None:
    _reset(rig)
    rig.taps[0].impostor_tls = rig.impostor
    registered = bytes.fromhex(rig.running.nodes[0].info["tls_key"][2:])
    with pytest.raises(PeerKeyMismatch) as refused:
        client.generate(PROMPT, 2, epsilon=math.inf, split=SPLIT)
    assert refused.value.expected == registered and refused.value.got != registered
    assert rig.taps[0].connections >= 1  # the impostor was reached, and read no request
    assert rig.taps[0].seen() == b""


def test_a_node_refuses_a_next_hop_with_another_key(rig: Rig, client: Client) -> None:
    _reset(rig)
    rig.taps[1].impostor_tls = rig.impostor
    with pytest.raises(StepFailed) as refused:  # the old return path: only the first node links to it
        client.generate(PROMPT, 2, epsilon=math.inf, split=SPLIT, direct_return=False)
    assert refused.value.code == "next_node_key_mismatch"
    assert f"127.0.0.1:{rig.taps[1].port}" in refused.value.reason  # names the next hop's endpoint
    assert rig.taps[1].connections >= 1
    assert rig.taps[1].seen() == b""  # no frame reached the impostor
    assert b"SMF1" not in rig.taps[0].seen()  # and the honest first link stayed encrypted
    # Direct return: the client's return channel to the last node meets the impostor first and refuses it.
    with pytest.raises(PeerKeyMismatch, match="/return"):
        client.generate(PROMPT, 2, epsilon=math.inf, split=SPLIT, direct_return=True)
    assert rig.taps[1].seen() == b""


def test_a_node_without_a_key_on_chain_is_refused(rig: Rig, client: Client) -> None:
    _reset(rig)
    first = rig.running.nodes[0]
    owner = Sender(rig.running.w3, first.spec.key)
    rig.running.market.set_encryption_key(owner, ZERO_KEY)
    try:
        with pytest.raises(NoRegisteredKey, match=PLAINTEXT_ENV):
            client.generate(PROMPT, 2, epsilon=math.inf, split=SPLIT)
        assert rig.taps[0].connections == 0  # refused before connecting
    finally:
        rig.running.market.set_encryption_key(owner, first.tls_key)


def test_a_node_restarted_with_another_key_dir_rotates_its_key_on_chain(
    rig: Rig, client: Client, tmp_path: Path
) -> None:
    _reset(rig)
    old = rig.running.nodes[1]
    old.stop()
    spec = dataclasses.replace(old.spec, extra_args=[*old.spec.extra_args, "--tls-dir", str(tmp_path / "k")])
    new = NodeProcess(spec, old.log_path).start()
    rig.running.nodes[1] = new
    assert new.tls_key not in (old.tls_key, ZERO_KEY)
    assert rig.running.market.get_node(new.address).encryption_key == new.tls_key
    changed = rig.running.market.events("EncryptionKeyChanged", node=new.address)
    assert [bytes(e["args"]["encryptionKey"]) for e in changed][-1] == new.tls_key
    out = client.generate(PROMPT, 2, epsilon=math.inf, split=SPLIT)  # the first node pins the new key
    assert len(out.token_ids) == 2

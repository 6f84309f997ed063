"""Hostile clients against a real route while an honest client generates on it (issue 15, admission).

One module fixture starts a local chain and three real `splitmesh node run` processes with small
admission limits (LIMITS). An honest client generates on the route over and over in a background thread
while the parameterised hostile cases run against the first node (the one the honest client talks to):
idle sockets beyond the per-IP cap, compression bombs, unknown-job floods, slow readers, oversized and
malformed frames, weird job ids. Each hostile request must get a 4xx/503 or a WebSocket close (never a
5xx, never a hang); afterwards every honest generation must have completed with the unsplit model's
tokens, and no node's RSS may have grown by more than RSS_BOUND_MIB over its baseline.

Hostile sockets come from other loopback addresses (127.0.0.2, ...) so that the per-IP cap they hit is
not the honest client's (127.0.0.1); the total cap is attacked last, once the honest client stopped.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitmesh.protocol import END_PATH, STEP_PATH, STREAM_PATH, TRANSCRIPT_PATH, StepMeta, hex32
from splitmesh.wire import DEFAULT_MAX_FRAME_BYTES, encode_frame
from splitmesh.wire.tls import link_ssl, pinned_request, ws_url
from splitmesh_cli.localnet import CLIENT_KEY, SPLIT, RunningMarket, start_market, stop_market
from splitmesh_cli.procs import NodeProcess
from tests.integration import hostile

LIMITS = {  # SPLITMESH_NODE_* for every node of the route
    "MAX_CONNECTIONS": "24",
    "MAX_CONNECTIONS_PER_IP": "6",
    "HEARTBEAT": "2",
    "STREAM_IDLE_TIMEOUT": "4",
    "SEND_TIMEOUT": "3",
    "REFUSAL_TTL": "60",
    "RETRY_AFTER": "1",
}
PER_IP, TOTAL = 6, 24
RSS_BOUND_MIB = 100  # growth of any node's VmRSS over its baseline, peak over the whole module
HIDDEN = 576
PROMPT = "Name three colors of the rainbow."
UNKNOWN_JOB = 10**15  # no chain will have this many jobs
CLOSE_WITHIN = 15.0  # seconds a hostile socket may stay open before the test calls it a hang


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class Honest:
    """Generations on the route, one after another, until stopped; with each node's RSS sampled."""

    running: RunningMarket
    stop: threading.Event = field(default_factory=threading.Event)
    outputs: list[list[int]] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    baseline: dict[int, int] = field(default_factory=dict)  # pid -> KiB
    peak: dict[int, int] = field(default_factory=dict)

    def generate(self) -> None:
        from client_sdk import Client

        client = Client(self.running.rpc_url, CLIENT_KEY, market=self.running.deployment.market)
        while not self.stop.is_set():
            try:
                out = client.generate(PROMPT, 6, epsilon=math.inf, split=SPLIT)
            except BaseException as exc:  # reported by the test that checks the honest client
                self.errors.append(exc)
                return
            self.prompt_ids = out.prompt_ids
            self.outputs.append(out.token_ids)

    def sample(self) -> None:
        while not self.stop.is_set():
            for node in self.running.nodes:
                assert node.proc is not None
                pid = node.proc.pid
                self.peak[pid] = max(self.peak.get(pid, 0), rss_kib(pid))
            time.sleep(0.05)


@pytest.fixture(scope="module")
def route(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMarket]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in LIMITS.items():
            env.setenv(f"SPLITMESH_NODE_{name}", value)
        running = start_market(tmp_path_factory.mktemp("admission"))
    yield running
    stop_market(running)


@pytest.fixture(scope="module")
def honest(route: RunningMarket) -> Iterator[Honest]:
    rig = Honest(route)
    for node in route.nodes:
        assert node.proc is not None
        rig.baseline[node.proc.pid] = rss_kib(node.proc.pid)
    threads = [
        threading.Thread(target=rig.generate, daemon=True),
        threading.Thread(target=rig.sample, daemon=True),
    ]
    for thread in threads:
        thread.start()
    yield rig
    rig.stop.set()
    for thread in threads:
        thread.join(120)


# ---------------------------------------------------------------------- helpers


def http(
    method: str, url: str, body: bytes | None = None, *, key: bytes | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request; to a node (`key`: its on-chain TLS key) over a pinned link."""
    if key is not None:
        status, headers, raw = pinned_request(method, url, key, body=body, timeout=60)
        try:
            data = json.loads(raw) if status >= 400 else {}
        except ValueError:
            data = {"raw": raw[:200].decode("latin-1")}
        return status, data, dict(headers)
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {}, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            data = json.loads(raw)
        except ValueError:
            data = {"raw": raw[:200].decode("latin-1")}
        return exc.code, data, dict(exc.headers)


def step_frame(job: int, q: int = 3, tensor: torch.Tensor | None = None) -> bytes:
    """A well-formed step frame for `job`, signed by nobody (random signature bytes)."""
    tensor = torch.zeros(1, q, HIDDEN) if tensor is None else tensor
    meta = StepMeta(
        job=job, step=0, tokens=q, start=0, payload_hash=hex32(os.urandom(32)), signature="0x" + "11" * 65
    )
    return encode_frame(tensor, meta.model_dump())


def metric(node: NodeProcess, name: str) -> float:
    status, _, body = pinned_request("GET", node.endpoint + "/metrics", node.tls_key, timeout=30)
    assert status == 200, f"{node.endpoint}/metrics: HTTP {status}"
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{node.endpoint} exports no {name}")


def stream_path(job: int) -> str:
    return STREAM_PATH.format(job=job)


def assert_serving(route: RunningMarket) -> None:
    for node in route.nodes:
        status, _, _ = http("GET", node.endpoint + "/health", key=node.tls_key)
        assert status == 200, f"{node.endpoint} stopped serving"


# ---------------------------------------------------------------------- hostile cases


def idle_sockets_beyond_the_per_ip_cap(route: RunningMarket) -> str:
    """PER_IP + 3 idle sockets from one address: the extra ones get 429, the others are closed."""
    node = route.nodes[0]
    sockets = [hostile.connect(node.endpoint, stream_path(1), source="127.0.0.2") for _ in range(PER_IP + 3)]
    statuses = [s.status for s in sockets]
    assert statuses == [101] * PER_IP + [429] * 3, statuses
    assert all(s.headers.get("retry-after") for s in sockets[PER_IP:]), "429 without Retry-After"
    endings = [hostile.closed_by_server(s, CLOSE_WITHIN) for s in sockets[:PER_IP]]
    for s in sockets:
        s.close()
    assert all(endings), f"idle sockets left open: {endings}"
    return f"101 x{PER_IP} then closed ({endings[0]}); 429 x3 with Retry-After"


def compression_bomb(route: RunningMarket) -> str:
    """Six sockets offering permessage-deflate, each sending ~30 KiB that inflates to a 30 MiB frame."""
    node = route.nodes[0]
    bomb_frame = step_frame(UNKNOWN_JOB + 1, q=(30 << 20) // (4 * HIDDEN))
    bomb = hostile.frame(hostile.OP_BINARY, hostile.deflated(bomb_frame), rsv1=True)

    def one(_: int) -> str:
        raw = hostile.connect(node.endpoint, stream_path(UNKNOWN_JOB + 1), source="127.0.0.4", deflate=True)
        assert raw.status == 101, raw.status
        negotiated = raw.headers.get("sec-websocket-extensions")
        raw.send(bomb)
        ending = hostile.closed_by_server(raw, CLOSE_WITHIN)
        raw.close()
        assert negotiated is None, f"node negotiated {negotiated}"
        assert ending is not None and ending != "close 1000", ending
        return ending

    with ThreadPoolExecutor(6) as pool:
        endings = list(pool.map(one, range(6)))
    return f"no deflate negotiated; {len(bomb)} B compressed frame -> {endings[0]}"


def oversized_frame(route: RunningMarket) -> str:
    """A frame header declaring one byte over the frame limit: closed at once, nothing buffered."""
    node = route.nodes[0]
    raw = hostile.connect(node.endpoint, stream_path(1), source="127.0.0.5")
    assert raw.status == 101
    raw.send(hostile.frame(hostile.OP_BINARY, b"SMF1" * 16, declared=DEFAULT_MAX_FRAME_BYTES + 1)[:-64])
    raw.send(b"SMF1" * 16)
    ending = hostile.closed_by_server(raw, CLOSE_WITHIN)
    raw.close()
    assert ending == "close 1009", ending
    return ending


def slow_reader(route: RunningMarket) -> str:
    """A socket that sends 300 bad frames and never reads a reply (nor a ping): dropped."""
    node = route.nodes[0]
    raw = hostile.connect(node.endpoint, stream_path(1), source="127.0.0.3", rcvbuf=4096)
    assert raw.status == 101
    for _ in range(300):
        raw.send(hostile.frame(hostile.OP_BINARY, b"garbage" * 20))
    time.sleep(float(LIMITS["HEARTBEAT"]) * 2)  # not reading: no pong goes back
    ending = hostile.closed_by_server(raw, CLOSE_WITHIN)
    raw.close()
    assert ending is not None, "a peer that never reads kept its socket"
    return f"dropped ({ending})"


def unknown_job_flood(route: RunningMarket) -> str:
    """200 frames for one unknown job and 40 for distinct unknown jobs: 404 (or 503 busy), and the
    chain is asked about the repeated job once."""
    node = route.nodes[0]
    url = node.endpoint + STEP_PATH.format(job=UNKNOWN_JOB)
    first = http("POST", url, step_frame(UNKNOWN_JOB), key=node.tls_key)
    assert first[0] == 404 and first[1]["code"] == "unknown_job", first
    before = metric(node, "splitmesh_node_chain_lookups_total")
    with ThreadPoolExecutor(8) as pool:
        same = list(
            pool.map(lambda _: http("POST", url, step_frame(UNKNOWN_JOB), key=node.tls_key)[:2], range(200))
        )
    after_same = metric(node, "splitmesh_node_chain_lookups_total")
    ids = [UNKNOWN_JOB + 100 + i for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        distinct = list(
            pool.map(
                lambda j: http(
                    "POST", node.endpoint + STEP_PATH.format(job=j), step_frame(j), key=node.tls_key
                )[:2],
                ids,
            )
        )
    outcomes = {(s, body.get("code")) for s, body in same + distinct}
    assert outcomes <= {(404, "unknown_job"), (503, "busy")}, outcomes
    # The counter is the node's: the honest client's new jobs (one lookup each, a job every few seconds)
    # land in it too. Without the refusal cache the 200 repeats alone cost 200.
    assert after_same - before <= 3, (
        f"{after_same - before} chain lookups during 200 repeats of one unknown job"
    )
    return f"{sorted(outcomes)}; chain lookups for 200 repeats: {after_same - before:g}"


def malformed_frames(route: RunningMarket) -> str:
    node = route.nodes[0]
    got = []
    for body in (b"garbage", b"SMF1", b"SMF1\xff\xff\xff\xff{", b""):
        status, data, _ = http("POST", node.endpoint + STEP_PATH.format(job=1), body, key=node.tls_key)
        got.append((status, data.get("code")))
    assert all(400 <= s < 500 for s, _ in got), got
    raw = hostile.connect(node.endpoint, stream_path(1), source="127.0.0.5")
    raw.send(hostile.frame(hostile.OP_TEXT, b"\xff\xfe not utf-8"))
    ending = hostile.closed_by_server(raw, CLOSE_WITHIN)
    raw.close()
    assert ending is not None and ending.startswith("close 100"), ending
    return f"HTTP {sorted(set(got))}; bad UTF-8 text on the stream -> {ending}"


WEIRD_IDS = ["²", "١٢", "-1", "0x10", "1" * 79, str(2**256), "1.0", "%201", "1_0"]


def weird_ids(route: RunningMarket) -> str:
    node = route.nodes[0]
    got = set()
    for raw in WEIRD_IDS:
        quoted = urllib.request.quote(raw, safe="%")
        for method, path in (
            ("GET", STREAM_PATH),
            ("POST", STEP_PATH),
            ("POST", END_PATH),
            ("GET", TRANSCRIPT_PATH),
        ):
            status, data, _ = http(
                method,
                node.endpoint + path.format(job=quoted),
                b"" if method == "POST" else None,
                key=node.tls_key,
            )
            got.add((status, data.get("code")))
            assert (status, data.get("code")) == (400, "bad_job_id"), (raw, method, path, status, data)
    return f"{sorted(got)} for {len(WEIRD_IDS)} ids x 4 routes"


CASES = [
    idle_sockets_beyond_the_per_ip_cap,
    compression_bomb,
    oversized_frame,
    slow_reader,
    unknown_job_flood,
    malformed_frames,
    weird_ids,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_hostile_case_is_refused_while_the_route_serves(
    route: RunningMarket, honest: Honest, case: Any
) -> None:
    outcome = case(route)
    print(f"{case.__name__}: {outcome}")
    assert_serving(route)


def test_honest_generations_completed_and_rss_stayed_bounded(route: RunningMarket, honest: Honest) -> None:
    from splitmesh.model.reference import reference_generate

    deadline = time.monotonic() + 120
    while not honest.outputs and not honest.errors and time.monotonic() < deadline:
        time.sleep(0.2)
    honest.stop.set()
    time.sleep(0.2)
    assert not honest.errors, f"the honest client failed: {honest.errors[0]!r}"
    assert honest.outputs, "no honest generation completed"
    reference = reference_generate(None, honest.prompt_ids, 6, repeats=1).tokens
    assert all(out == reference for out in honest.outputs), honest.outputs
    growth = {pid: (honest.peak[pid] - honest.baseline[pid]) / 1024 for pid in honest.baseline}
    print(f"honest generations: {len(honest.outputs)}; RSS growth MiB by node pid: {growth}")
    assert max(growth.values()) <= RSS_BOUND_MIB, growth


def test_total_cap_refuses_with_503_then_frees(route: RunningMarket) -> None:
    """TOTAL + 6 sockets from distinct addresses: the extra ones get 503 too_many_connections."""
    node = route.nodes[0]
    sources = [f"127.0.1.{i}" for i in range(1, TOTAL // PER_IP + 2)]
    sockets = [
        hostile.connect(node.endpoint, stream_path(1), source=src) for src in sources for _ in range(PER_IP)
    ]
    statuses = [s.status for s in sockets]
    for s in sockets:
        s.close()
    assert statuses.count(101) == TOTAL and statuses.count(503) == len(sockets) - TOTAL, statuses
    refused = [s for s in sockets if s.status == 503]
    assert all(s.headers.get("retry-after") for s in refused)
    # Closing frees the slots: a new stream is admitted.
    time.sleep(0.5)
    again = hostile.connect(node.endpoint, stream_path(1), source="127.0.2.1")
    again.close()
    assert again.status == 101
    assert_serving(route)


# ---------------------------------------------------------------------- fuzz (issue 15, deliverable 4)

FUZZ_EXAMPLES = int(os.environ.get("SPLITMESH_FUZZ_EXAMPLES", "60"))  # per fuzz test; CI keeps it small
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
FUZZ_COUNTS: dict[str, int] = {}


def _count(kind: str, n: int = 1) -> None:
    FUZZ_COUNTS[kind] = FUZZ_COUNTS.get(kind, 0) + n


def path_ids() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(min_value=-(2**300), max_value=2**300).map(str),
        st.text(min_size=1, max_size=90),
        st.sampled_from([*WEIRD_IDS, "0", "1", "99999999999999999999"]),
    )


def frames() -> st.SearchStrategy[bytes]:
    """Random bytes, and frames with the SMF1 magic, a length and a random (JSON or not) header."""
    header = st.one_of(
        st.dictionaries(
            st.text(max_size=8),
            st.recursive(
                st.none() | st.integers() | st.text(max_size=20),
                lambda c: st.lists(c, max_size=4),
                max_leaves=8,
            ),
            max_size=6,
        ).map(lambda d: json.dumps(d).encode()),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["float32", "float16", "int8", "x"]),
                "shape": st.lists(st.integers(-2, 2**40), max_size=5),
            }
        ).map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=64),
    )
    structured = st.tuples(header, st.binary(max_size=256), st.integers(0, 2**32 - 1) | st.none()).map(
        lambda t: b"SMF1" + (len(t[0]) if t[2] is None else t[2]).to_bytes(4, "little") + t[0] + t[1]
    )
    return st.one_of(st.binary(max_size=512), structured)


def assert_typed(status: int, data: dict[str, Any], what: str) -> None:
    assert status < 500 or (status == 503 and data.get("code") in ("busy", "too_many_connections")), (
        what,
        status,
        data,
    )


@FUZZ_SETTINGS
@given(
    method_path=st.sampled_from(
        [
            ("GET", STREAM_PATH),
            ("POST", STEP_PATH),
            ("POST", END_PATH),
            ("GET", TRANSCRIPT_PATH),
            ("GET", "/health"),
            ("GET", "/metrics"),
        ]
    ),
    job=path_ids(),
    body=frames(),
    headers=st.dictionaries(
        st.sampled_from(
            ["X-Splitmesh-Requester", "X-Splitmesh-Deadline", "X-Splitmesh-Signature", "Content-Type"]
        ),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=140),
    ),
)
def test_fuzz_node_http(
    route: RunningMarket, method_path: tuple[str, str], job: str, body: bytes, headers: dict[str, str]
) -> None:
    method, path = method_path
    url = route.nodes[0].endpoint + path.format(job=urllib.request.quote(job, safe=""))
    status, _, raw = pinned_request(
        method,
        url,
        route.nodes[0].tls_key,
        headers=headers,
        body=body if method == "POST" else None,
        timeout=60,
    )
    data = json.loads(raw) if status >= 400 and raw.startswith(b"{") else {}
    _count("node_http")
    assert_typed(status, data, f"{method} {url}")


@FUZZ_SETTINGS
@given(
    messages=st.lists(st.one_of(frames(), st.text(max_size=300)), min_size=1, max_size=8),
    job=st.integers(0, 2**256 - 1),
)
def test_fuzz_node_stream(route: RunningMarket, messages: list[bytes | str], job: int) -> None:
    from splitmesh.wire.websocket import BlockingWebSocket

    url = ws_url(route.nodes[0].endpoint, stream_path(job))
    with BlockingWebSocket(url, ssl=link_ssl(url, route.nodes[0].tls_key)) as ws:
        for message in messages:
            ws.send(message)
            reply = ws.receive(timeout=60)
            _count("node_ws")
            assert isinstance(reply, str), "a random message got a result frame"
            data = json.loads(reply)
            assert_typed(int(data["status"]), data, repr(message)[:100])


@pytest.fixture(scope="module")
def coordinator(route: RunningMarket, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import subprocess
    import sys

    from splitmesh.chain.launcher import free_port
    from splitmesh_cli.wait import wait_until

    tmp = tmp_path_factory.mktemp("coordinator")
    port = free_port()
    cmd = [
        sys.executable, "-m", "splitmesh_cli.main", "coordinator", "run", "--rpc-url", route.rpc_url,
        "--market", route.deployment.market, "--db", str(tmp / "index.sqlite"),
        "--port", str(port), "--no-keeper",
    ]  # fmt: skip
    log = (tmp / "coordinator.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: _api_up(url) if proc.poll() is None else _exited(proc),
            timeout=60,
            interval=0.2,
            message="coordinator not up",
        )
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _api_up(url: str) -> bool:
    try:
        return http("GET", url + "/api/status")[0] == 200
    except OSError:  # not listening yet (URLError is an OSError)
        return False


def _exited(proc: Any) -> bool:
    raise AssertionError(f"coordinator exited {proc.returncode}")


def query_values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(min_value=-(2**80), max_value=2**80).map(str),
        st.text(max_size=50),
        st.sampled_from(["open", "active", "0x" + "ab" * 20, "١٢", "²", "1e9", " 5", "1_0", ""]),
    )


@FUZZ_SETTINGS
@given(
    path=st.sampled_from(
        [
            "/api/status",
            "/api/jobs",
            "/api/jobs/{x}",
            "/api/nodes",
            "/api/nodes/{x}",
            "/api/models",
            "/",
            "/static/{x}",
        ]
    ),
    x=path_ids(),
    params=st.dictionaries(
        st.sampled_from(["client", "node", "status", "model", "shard", "limit", "offset", "junk"]),
        query_values(),
        max_size=5,
    ),
)
def test_fuzz_coordinator_api(coordinator: str, path: str, x: str, params: dict[str, str]) -> None:
    url = coordinator + path.format(x=urllib.request.quote(x, safe="")) + "?" + urllib.parse.urlencode(params)
    status, data, _ = http("GET", url)
    _count("coordinator")
    assert status < 500, (url, status, data)


def test_fuzz_counts_and_everything_still_serves(route: RunningMarket, coordinator: str) -> None:
    print(f"fuzz requests this run: {FUZZ_COUNTS} (total {sum(FUZZ_COUNTS.values())})")
    assert FUZZ_COUNTS and all(n >= FUZZ_EXAMPLES for n in FUZZ_COUNTS.values()), FUZZ_COUNTS
    assert_serving(route)
    assert http("GET", coordinator + "/api/status")[0] == 200

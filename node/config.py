"""Node daemon configuration: defaults, then SPLITMESH_NODE_* environment variables, then CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from splitmesh.audit.transcript import MAX_TRANSCRIPT_BYTES
from splitmesh.settings import Settings
from splitmesh.wire import DEFAULT_MAX_FRAME_BYTES


class NodeConfig(Settings):
    model_config = SettingsConfigDict(env_prefix="SPLITMESH_NODE_")

    model: str | None = None  # local HF model directory; None = SmolLM2-135M-Instruct
    shard: int = 1  # shard index of the registered plan this node serves
    model_id: int | None = None  # on-chain model id; None = the one registered with this model's weights
    device: str = "cpu"  # where the shard's layers and KV caches live: cpu, cuda, cuda:N or mps
    # float32, bfloat16, or auto = bfloat16 on cuda/mps, float32 on cpu. It is also the dtype of the frames
    # the node accepts and sends: its route's clients must send it (Client(wire_dtype=...)).
    dtype: str = "auto"
    host: str = "127.0.0.1"  # interface to bind
    port: int = 0  # TCP port; 0 = any free port
    public_url: str | None = None  # endpoint announced on-chain; None = https://host:port
    stake_wei: int = 10**18  # stake to hold; topped up at start if lower
    price_wei: int = 10**9  # price per token
    state_dir: Path | None = None  # where the node's SQLite file lives; None = $SPLITMESH_HOME/nodes
    # Folder of the TLS key (0600) and self-signed certificate whose SHA-256 is announced on-chain as the
    # node's encryption key; made on first start. None = <state_dir>/tls-<node address>.
    tls_dir: Path | None = None
    plaintext: bool = False  # DEVELOPMENT ONLY: serve http:// and register a zero key (peers refuse it)
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES  # bytes of one step frame accepted from a peer
    session_ttl: float = 120.0  # seconds a job session may stay idle before it is ended and committed
    max_sessions: int = 64  # concurrent job sessions
    max_cache_bytes: int = 1 << 30  # KV cache of all sessions together, bytes
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    duty_interval: float = 1.0  # seconds between passes over pending commits and claims
    # Seconds before a job's commit deadline (chain time) the node stops serving it and commits what it
    # served; 0 = 10% of the chain's commit timeout within [30, 600] s (node.deadlines.default_margin).
    commit_margin: float = 0.0
    # Wei the node may stake on its own, in total over the life of its state file, to get back to
    # stake_wei after a slash or an unbonding; 0 = off (the node only warns that it left the pool).
    auto_topup_wei: int = 0
    scan_blocks: int = 2000  # blocks per eth_getLogs request when scanning for jobs matched to this node
    relay_timeout: float = 60.0  # seconds the next node may take for one step
    # Admission control (node.admission): what a stranger can make the node hold or spend.
    max_connections: int = 256  # open WebSocket streams in all; one more gets 503 too_many_connections
    # Open streams from one IP address; one more gets 429. The previous hop opens one stream per job,
    # so keep it at least max_sessions.
    max_connections_per_ip: int = 64
    heartbeat: float = 20.0  # seconds between WebSocket pings; no pong within half of it drops the peer
    stream_idle_timeout: float = 120.0  # seconds a stream may go without a message before it is closed
    send_timeout: float = 30.0  # seconds one outgoing message may wait for a peer that stops reading
    lookup_threads: int = 4  # threads reading jobs from the chain (for job ids not seen yet)
    lookup_queue: int = 32  # chain lookups running or waiting; one more gets 503 busy
    refusal_ttl: float = 2.0  # seconds the chain's "no" about a job id (unknown, closed, not ours) is reused
    compute_queue: int = 8  # steps running or waiting for this node's layers; one more gets 503 busy
    # Batching (node.batcher): inference steps of concurrent sessions run through the layers together.
    batch_sessions: int = 16  # steps in one batch; 1 = no batching (each step alone, as before)
    batch_tokens: int = 512  # tokens of all steps in one batch
    batch_queue: int = 64  # inference steps waiting for the next batch; one more gets 503 busy
    retry_after: float = 2.0  # seconds suggested (Retry-After) to a peer refused by a full queue or cap
    keep_transcripts: bool = True  # keep step frames in SQLite for audits
    prune_interval: float = 30.0  # seconds between drops of transcripts no audit can ask for; 0 = keep all
    drain_timeout: float = 10.0  # seconds SIGTERM waits for open sessions to end before closing them
    verify: bool = True  # answer the AuditCourt when drawn as a verifier
    # Seconds one transcript fetch of an audit may take in total (a stalled one counts as withheld);
    # 0 = a quarter of the court's commit window (and never over a quarter of what is left of it).
    transcript_timeout: float = 0.0
    max_transcript_bytes: int = MAX_TRANSCRIPT_BYTES  # bytes of one transcript read before it is refused
    max_audits: int = 4  # audits judged at once, each with its own deadline
    cheat: str | None = None  # demo/test only (node.cheats): misbehave so audits can be shown to work
    verifier_lies: bool = False  # test only: vote the opposite of the verifier's judgement

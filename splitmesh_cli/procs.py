"""Node daemons as child processes: what the demo, the benchmarks and the integration tests start.

Each node is a real `splitmesh node run` process; it prints one JSON "ready" line on stdout once it
serves and is registered on-chain. Logs go to a file per node.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from splitmesh.errors import SplitmeshError
from splitmesh_cli.wait import WaitTimedOut, wait_until


class NodeStartFailed(SplitmeshError, RuntimeError):
    """A node process exited or stayed silent before it was ready; its log says why."""


class _Exited(Exception):
    """The node process closed its stdout (it exited) before it printed "ready"."""


@dataclass
class NodeSpec:
    shard: int
    key: str
    rpc_url: str
    market: str
    model: str | None = None
    model_id: int | None = None
    stake_eth: float = 1.0
    price_wei: int = 10**9
    port: int = 0
    dtype: str = "float32"
    state_dir: Path | None = None
    duty_interval: float = 0.5
    threads: int = 1
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Command the node runs under, e.g. ["ip", "netns", "exec", NS] to serve from another network
    # namespace (with --host/--public-url in extra_args); empty = this machine's loopback.
    prefix: list[str] = field(default_factory=list)


class NodeProcess:
    """One `splitmesh node run` child. `start()` returns once it is ready (or raises with its log tail)."""

    def __init__(self, spec: NodeSpec, log_path: Path):
        self.spec = spec
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def endpoint(self) -> str:
        return str(self.info["endpoint"])

    @property
    def tls_key(self) -> bytes:
        """The SHA-256 of the node's TLS certificate it announced on-chain (zero if it serves plaintext)."""
        return bytes.fromhex(str(self.info.get("tls_key", "0x" + "00" * 32))[2:])

    @property
    def address(self) -> str:
        return str(self.info["address"])

    def command(self) -> list[str]:
        s = self.spec
        cmd = [*s.prefix, sys.executable, "-m", "splitmesh_cli.main", "node", "run"]
        cmd += ["--shard", str(s.shard), "--rpc-url", s.rpc_url, "--market", s.market]
        cmd += ["--stake", repr(s.stake_eth), "--price", str(s.price_wei), "--port", str(s.port)]
        cmd += ["--dtype", s.dtype, "--duty-interval", repr(s.duty_interval), "--threads", str(s.threads)]
        if s.model:
            cmd += ["--model", s.model]
        if s.model_id is not None:
            cmd += ["--model-id", str(s.model_id)]
        if s.state_dir is not None:
            cmd += ["--state-dir", str(s.state_dir)]
        return cmd + s.extra_args

    def start(self, timeout: float = 120.0) -> NodeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SPLITMESH_PRIVATE_KEY": self.spec.key, **self.spec.env}
        log: IO[str] = open(self.log_path, "a")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=log, text=True, env=env, start_new_session=True
        )
        log.close()
        threading.Thread(target=self._pump, daemon=True).start()
        try:
            self.info = wait_until(self._ready_event, timeout=timeout, interval=0, message="not ready")
            return self
        except (WaitTimedOut, _Exited):
            self.stop()
            raise NodeStartFailed(
                f"node for shard {self.spec.shard} did not become ready within {timeout:g} s; "
                f"log {self.log_path}:\n{self.log_tail()}"
            ) from None

    def _ready_event(self) -> dict[str, Any] | None:
        """The "ready" line if the child printed it within a moment; raises _Exited once stdout closed."""
        try:
            line = self._lines.get(timeout=0.2)
        except queue.Empty:
            return None
        if line is None:
            raise _Exited
        event = _json_line(line)
        return event if event.get("event") == "ready" else None

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the node (SIGTERM: drain, commit, exit) and wait; SIGKILL if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def _json_line(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def start_nodes(specs: list[NodeSpec], log_dir: Path, timeout: float = 180.0) -> list[NodeProcess]:
    """Start all nodes in parallel (model loading overlaps); stop them all if one fails."""
    procs = [NodeProcess(s, log_dir / f"node-shard{s.shard}-{s.key[-6:]}.log") for s in specs]
    errors: list[BaseException] = []

    def run(p: NodeProcess) -> None:
        try:
            p.start(timeout)
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for p in procs:
            p.stop(5)
        raise errors[0]
    return procs


def stop_nodes(procs: list[NodeProcess], timeout: float = 30.0) -> list[int | None]:
    for p in procs:
        if p.running() and p.proc is not None:
            p.proc.send_signal(signal.SIGTERM)
    return [p.stop(timeout) for p in procs]

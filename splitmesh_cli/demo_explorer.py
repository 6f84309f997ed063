"""The demo's coordinator: a real `splitmesh coordinator run` process that indexes the demo's chain, so the
demo can end with the job as the index shows it (what `splitmesh jobs show` prints) and, with --serve,
keep the explorer open."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from splitmesh.chain.launcher import free_port, port_is_free
from splitmesh.errors import SplitmeshError
from splitmesh_cli.wait import wait_until


class CoordinatorFailed(SplitmeshError, RuntimeError):
    """The demo's coordinator process exited or did not answer; its log says why."""


class CoordinatorProcess:
    def __init__(self, rpc_url: str, market: str, db: Path, log_path: Path, port: int = 8700):
        self.port = port if port and port_is_free(port, "127.0.0.1") else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "splitmesh_cli.main", "coordinator", "run", "--rpc-url", rpc_url,
            "--market", market, "--db", str(db), "--port", str(self.port), "--poll", "0.25", "--no-keeper",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return dict(json.loads(response.read()))

    def wait_synced(self, block: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the index covers `block`; returns /api/status."""

        def synced() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise CoordinatorFailed(
                    f"the coordinator exited ({self.proc.returncode}); see {self.log_path}"
                )
            try:
                status = self.get("/api/status")
            except (urllib.error.URLError, OSError):
                return None
            return status if (status.get("synced_block") or -1) >= block else None

        return wait_until(
            synced,
            timeout=timeout,
            interval=0.2,
            message=f"the coordinator did not index block {block} in {timeout:g} s",
            error=CoordinatorFailed,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

"""Start and stop a local EVM chain (`hardhat node`) on a free loopback port."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from splitmesh.errors import ChainUnavailable, ConfigError
from splitmesh.paths import project_root

logger = logging.getLogger(__name__)

# The 20 accounts `hardhat node` funds with 10000 ETH each, derived from its well-known public test
# mnemonic ("test test ... junk"). They are public development keys: never use them on a real chain.
HARDHAT_DEV_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def rpc_chain_id(rpc_url: str, timeout: float = 2.0) -> int:
    """eth_chainId over plain HTTP; raises ChainUnavailable if the endpoint does not answer."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    request = urllib.request.Request(rpc_url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(json.loads(response.read())["result"], 16)
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        raise ChainUnavailable(f"no EVM JSON-RPC answer at {rpc_url}: {exc}") from exc


def hardhat_cli() -> Path:
    """Path of Hardhat's CLI script in node_modules (run with `node`, not through npx: faster, no shell)."""
    cli = project_root() / "node_modules" / "hardhat" / "internal" / "cli" / "cli.js"
    if not cli.exists():
        raise ConfigError(f"{cli} not found; run `npm ci` in {project_root()} (or `make setup`)")
    return cli


@dataclass
class LocalChain:
    """A `hardhat node` child process bound to 127.0.0.1. Use as a context manager or call start/stop."""

    port: int = 0  # 0 = pick a free port
    host: str = "127.0.0.1"
    # Command the node runs under, e.g. ("ip", "netns", "exec", NS) for a chain on another network
    # namespace's address (the port must then be given: it cannot be probed from here).
    prefix: tuple[str, ...] = ()
    startup_timeout: float = 60.0  # seconds to wait for eth_chainId to answer
    log_path: Path | None = None  # where the node's stdout/stderr go (default: discarded)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_file: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def dev_keys(self) -> tuple[str, ...]:
        return HARDHAT_DEV_KEYS

    def start(self) -> LocalChain:
        if self._process is not None:
            return self
        if self.prefix and self.port == 0:
            raise ConfigError("a chain started under a command prefix needs an explicit port")
        if self.port == 0:
            self.port = free_port(self.host)
        elif not self.prefix and not port_is_free(self.port, self.host):
            raise ConfigError(f"port {self.port} on {self.host} is in use; pick another with --port")
        cmd = ["node", str(hardhat_cli()), "node", "--hostname", self.host, "--port", str(self.port)]
        cmd = [*self.prefix, *cmd]
        stdout: int | IO[bytes] = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._log_file = log_file
            stdout = log_file
        logger.info("starting hardhat node on %s", self.rpc_url)
        # Its own process group, so stop() can take down node and any children together.
        self._process = subprocess.Popen(
            cmd,
            cwd=project_root(),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true"},
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise ChainUnavailable(
                    f"hardhat node exited with code {code} before answering on {self.rpc_url}"
                )
            try:
                rpc_chain_id(self.rpc_url, timeout=1.0)
                break
            except ChainUnavailable:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ChainUnavailable(
                        f"hardhat node did not answer on {self.rpc_url} within {self.startup_timeout:.0f}s"
                    ) from None
                time.sleep(0.1)
        logger.info("hardhat node ready on %s", self.rpc_url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> LocalChain:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def advance_time(w3: Any, seconds: int) -> int:
    """Move a dev chain's clock forward and mine a block (hardhat/anvil only); returns the new timestamp."""
    w3.provider.make_request("evm_increaseTime", [int(seconds)])
    w3.provider.make_request("evm_mine", [])
    return int(w3.eth.get_block("latest")["timestamp"])


HARDHAT_MNEMONIC = "test test test test test test test test test test test junk"  # public, dev only
HARDHAT_ACCOUNTS = 20  # funded accounts of a default `hardhat node`


@functools.lru_cache(maxsize=HARDHAT_ACCOUNTS)
def dev_key(index: int) -> str:
    """The well-known private key of hardhat's dev account `index` (0..19); public, never for value."""
    if not 0 <= index < HARDHAT_ACCOUNTS:
        raise ValueError(f"hardhat funds dev accounts 0..{HARDHAT_ACCOUNTS - 1}, not {index}")
    if index < len(HARDHAT_DEV_KEYS):
        return HARDHAT_DEV_KEYS[index]
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    account = Account.from_mnemonic(HARDHAT_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(account.key).hex()

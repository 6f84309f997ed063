"""Load on a local dev chain for the growth benchmarks: many accounts, many transactions, fast.

`Sender.transact` estimates, sends and waits for one transaction at a time (what a node or client does).
Filling a chain with thousands of jobs that way takes too long, so the benchmarks here sign
transactions with a local nonce, a fixed gas limit and fee, send them in JSON-RPC batches without
waiting, and mine them in blocks of many transactions (`evm_mine` with automine off). The transactions
are the same contract calls the SDK and the nodes make; only the pacing differs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import coincurve
import rlp
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.hdaccount import key_from_seed, seed_from_mnemonic
from eth_utils import keccak
from web3 import Web3

from coordinator.logcodec import abi_type
from splitmesh.chain.launcher import HARDHAT_ACCOUNTS, HARDHAT_MNEMONIC

GWEI = 10**9
MAX_FEE = 50 * GWEI  # wei per gas a benchmark transaction may pay (dev chain: base fee ~1 gwei)
TIP = GWEI  # wei per gas priority fee
SEND_BATCH = 200  # raw transactions per JSON-RPC batch


def machine() -> dict[str, Any]:
    """What every benchmark JSON records about the machine it ran on (others' jobs share the 2 cores)."""
    return {"cpus": os.cpu_count(), "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def extra_keys(count: int, first: int = HARDHAT_ACCOUNTS) -> list[str]:
    """Private keys of accounts `first`..`first + count - 1` of hardhat's public dev mnemonic: beyond the
    20 it funds, so the benchmark funds them itself. Public keys: dev chains only."""
    seed = seed_from_mnemonic(HARDHAT_MNEMONIC, "")  # PBKDF2 once, not once per account
    return ["0x" + key_from_seed(seed, f"m/44'/60'/0'/0/{i}").hex() for i in range(first, first + count)]


@dataclass
class FastSender:
    """Signs EIP-1559 transactions for one key with a locally counted nonce; never waits for them.
    Signs with coincurve directly (eth_account's signing costs ~1-5 ms a transaction, this ~0.1 ms)."""

    w3: Web3
    key: str
    chain_id: int
    address: str = field(init=False)
    nonce: int = field(init=False)

    def __post_init__(self) -> None:
        self.address = Account.from_key(self.key).address
        self.nonce = int(self.w3.eth.get_transaction_count(self.address, "pending"))
        self._private = coincurve.PrivateKey(bytes.fromhex(self.key.removeprefix("0x")))

    def sign(self, to: str, data: bytes = b"", value: int = 0, gas: int = 21_000) -> bytes:
        """The raw signed transaction (type 2), with the next nonce."""
        fields = [self.chain_id, self.nonce, TIP, MAX_FEE, gas, bytes.fromhex(to[2:]), value, data, []]
        self.nonce += 1
        unsigned = b"\x02" + rlp.encode(fields)
        signature = self._private.sign_recoverable(keccak(unsigned), hasher=None)  # r || s || recovery id
        r, s, v = (
            int.from_bytes(signature[0:32], "big"),
            int.from_bytes(signature[32:64], "big"),
            signature[64],
        )
        return b"\x02" + rlp.encode([*fields, v, r, s])

    def call(self, contract: Any, name: str, args: Sequence[Any], gas: int, value: int = 0) -> bytes:
        """A signed call of `contract.name(*args)` (a web3 contract; its ABI names each function once)."""
        return self.sign(contract.address, calldata(contract, name, args), value, gas)


_SELECTORS: dict[tuple[str, str], tuple[bytes, list[str]]] = {}


def calldata(contract: Any, name: str, args: Sequence[Any]) -> bytes:
    """ABI-encoded call data, with eth_abi directly (web3's encode_abi validates the whole ABI per call,
    ~9 ms here)."""
    key = (contract.address, name)
    if key not in _SELECTORS:
        (item,) = [i for i in contract.abi if i.get("type") == "function" and i["name"] == name]
        types = [abi_type(i) for i in item["inputs"]]
        _SELECTORS[key] = (keccak(text=f"{name}({','.join(types)})")[:4], types)
    selector, types = _SELECTORS[key]
    return selector + abi_encode(types, list(args))


def _rpc_batch(w3: Web3, method: str, params: Sequence[list[Any]]) -> list[Any]:
    """One JSON-RPC batch; raises on the first error answer."""
    provider: Any = w3.provider
    answers = provider.make_batch_request([(method, p) for p in params])
    out = []
    for a in answers:
        if a.get("error"):
            raise RuntimeError(f"{method} failed: {a['error']}")
        out.append(a["result"])
    return out


def send_raw(w3: Web3, raws: Iterable[bytes]) -> list[str]:
    """Send signed transactions in batches; returns their hashes (nothing waited for)."""
    raws = list(raws)
    hashes: list[str] = []
    for i in range(0, len(raws), SEND_BATCH):
        chunk = raws[i : i + SEND_BATCH]
        hashes += [
            str(h) for h in _rpc_batch(w3, "eth_sendRawTransaction", [["0x" + r.hex()] for r in chunk])
        ]
    return hashes


def set_automine(w3: Web3, on: bool) -> None:
    w3.provider.make_request("evm_setAutomine", [on])  # type: ignore[arg-type]


def mine_all(w3: Web3, per_block: int, pending: int) -> int:
    """Mine blocks until no transaction is pending (automine off); at most about `per_block` per block
    (the chain's gas limit may cut a block shorter). Returns the blocks mined."""
    blocks = 0
    while True:
        left = int(
            w3.provider.make_request("eth_getBlockTransactionCountByNumber", ["pending"])["result"], 16
        )  # type: ignore[arg-type]
        if left == 0:
            return blocks
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        blocks += 1
        if blocks > 10 * (pending // max(per_block, 1) + 1) + 100:
            raise RuntimeError(f"{left} transactions stay pending after {blocks} blocks")


def receipts(w3: Web3, hashes: Sequence[str]) -> list[dict[str, Any]]:
    """Receipts of mined transactions, in batches; raises if one reverted or is missing."""
    out: list[dict[str, Any]] = []
    for i in range(0, len(hashes), SEND_BATCH):
        chunk = hashes[i : i + SEND_BATCH]
        for h, r in zip(
            chunk, _rpc_batch(w3, "eth_getTransactionReceipt", [[h] for h in chunk]), strict=True
        ):
            if r is None:
                raise RuntimeError(f"transaction {h} was not mined")
            if int(r["status"], 16) != 1:
                raise RuntimeError(f"transaction {h} reverted (gas used {int(r['gasUsed'], 16)})")
            out.append(r)
    return out


def send_and_mine(w3: Web3, raws: Sequence[bytes], per_block: int = 100) -> list[dict[str, Any]]:
    """Send with automine off, mine them `per_block` at a time, return the receipts (all must succeed)."""
    set_automine(w3, False)
    try:
        hashes = []
        for i in range(0, len(raws), per_block):
            hashes += send_raw(w3, raws[i : i + per_block])
            w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        mine_all(w3, per_block, len(raws))
    finally:
        set_automine(w3, True)
    return receipts(w3, hashes)


def fund(w3: Web3, funder: FastSender, addresses: Sequence[str], amount: int) -> float:
    """Transfer `amount` wei to each address; returns the seconds it took."""
    t = time.perf_counter()
    send_and_mine(w3, [funder.sign(a, value=amount) for a in addresses], per_block=500)
    return time.perf_counter() - t


def emit(result: dict, out: Path) -> None:
    """Print a benchmark's JSON result and write it to `out` (bench/results/...)."""
    text = json.dumps(result, indent=2)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")

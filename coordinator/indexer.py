"""Follow the contracts' events into SQLite: resumable, and safe against reorgs up to a set depth.

Each sync:
1. checks that the last indexed block is still on the chain (same hash); if not, walks back through the
   stored hashes of the last `reorg_depth` blocks to the fork point, deletes the logs past it and folds
   the read model again from the remaining logs;
2. reads the logs of all three contracts in block ranges of at most `batch_blocks` (one eth_getLogs per
   range) and commits each range in one SQLite transaction together with the cursor, so a crash or a kill
   at any moment leaves the index at a range boundary: a restart neither skips nor repeats a log.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.types import RPCEndpoint

from coordinator import fold, schema
from coordinator.errors import ChainMoved, IndexMismatch, ReorgTooDeep
from coordinator.logcodec import codecs
from splitmesh.chain import Marketplace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexerConfig:
    reorg_depth: int = 12  # blocks re-checked for a reorg; a deeper reorg needs a rebuild
    batch_blocks: int = 2000  # most blocks read in one eth_getLogs call and committed in one transaction
    start_block: int | None = None  # first block to index; default: the deployment's block


@dataclass(frozen=True)
class SyncReport:
    from_block: int
    to_block: int  # the cursor after this sync (last indexed block)
    head: int
    logs: int  # logs added
    reorged_from: int | None = None  # first block rolled back, if a reorg was healed


@functools.lru_cache(maxsize=4096)
def _checksum(address: str) -> str:
    return to_checksum_address(address)  # a keccak per call: the same few addresses recur in every log


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | HexBytes):
        return "0x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, str) and len(value) == 42 and value.startswith("0x"):
        return _checksum(value)
    return value


def _int(value: Any) -> int:
    """A JSON-RPC quantity (0x-hex string) or an int."""
    return int(value, 16) if isinstance(value, str) else int(value)


def _hex(value: Any) -> str:
    """A JSON-RPC data value (0x-hex string, or bytes) as lowercase 0x-hex."""
    return value.lower() if isinstance(value, str) else "0x" + bytes(value).hex()


class Indexer:
    """Keeps one SQLite index of one deployment in step with the chain."""

    def __init__(
        self,
        marketplace: Marketplace,
        conn: sqlite3.Connection,
        config: IndexerConfig | None = None,
        *,
        on_batch: Callable[[SyncReport], None] | None = None,
    ):
        self.marketplace = marketplace
        self.w3: Web3 = marketplace.w3
        self.conn = conn
        self.config = config or IndexerConfig()
        self.on_batch = on_batch  # called after each committed range (progress output, tests)
        self._codecs = codecs(self._contracts())
        self._check_meta()

    @classmethod
    def open(cls, marketplace: Marketplace, path: str | Path, config: IndexerConfig | None = None) -> Indexer:
        return cls(marketplace, schema.connect(path), config)

    def _contracts(self) -> dict[str, Any]:
        m = self.marketplace
        out = {"NodeRegistry": m.registry, "JobMarket": m.job_market}
        if m.court is not None:
            out["AuditCourt"] = m.court
        return out

    def _check_meta(self) -> None:
        d = self.marketplace.deployment
        expected = {
            "schema_version": str(schema.SCHEMA_VERSION),
            "chain_id": str(d.chain_id),
            "market": d.market,
            "registry": d.registry,
            "court": d.court,
            # Immutable, and the one input of the fold besides the logs (every paid hop earns it).
            "hop_fee": str(self.marketplace.hop_fee()),
        }
        stored = {k: schema.get_meta(self.conn, k) for k in expected}
        if all(v is None for v in stored.values()):
            with self._transaction():
                for k, v in expected.items():
                    schema.set_meta(self.conn, k, v)
            return
        wrong = {k: (stored[k], v) for k, v in expected.items() if stored[k] != v}
        if wrong:
            raise IndexMismatch(
                "this index was built for another deployment ("
                + ", ".join(f"{k}: index {a}, asked {b}" for k, (a, b) in wrong.items())
                + "); use another --db file or delete it to rebuild"
            )

    # ------------------------------------------------------------------ cursor

    @property
    def first_block(self) -> int:
        start = self.config.start_block
        return self.marketplace.deployment.block if start is None else start

    @property
    def synced_block(self) -> int:
        """Last block whose logs are all in the index; first_block - 1 before the first sync."""
        value = schema.get_meta(self.conn, "synced_block")
        return self.first_block - 1 if value is None else int(value)

    def _transaction(self) -> Any:
        return _Transaction(self.conn)

    # ------------------------------------------------------------------ sync

    def sync(self, to_block: int | None = None) -> SyncReport:
        """Index up to `to_block` (default: the chain head). Returns what was done."""
        head = int(self.w3.eth.block_number)
        reorged_from = self._heal_reorg(head)
        target = head if to_block is None else min(to_block, head)
        start = self.synced_block + 1
        added = 0
        while self.synced_block < target:
            lo = self.synced_block + 1
            hi = min(target, lo + self.config.batch_blocks - 1)
            added += self._index_range(lo, hi, head)
            if self.on_batch is not None:
                self.on_batch(SyncReport(lo, hi, head, added, reorged_from))
        return SyncReport(start, self.synced_block, head, added, reorged_from)

    def _index_range(self, lo: int, hi: int, head: int) -> int:
        raw = self._get_logs(lo, hi)
        # Hashes of the blocks we may have to roll back (near the head) and of blocks with logs.
        wanted = {_int(log["blockNumber"]) for log in raw}
        wanted.update(range(max(lo, head - self.config.reorg_depth), hi + 1))
        headers = self._headers(sorted(wanted))
        records: list[fold.LogRecord] = []
        for log in raw:
            number = _int(log["blockNumber"])
            block_hash = _hex(log["blockHash"])
            if headers[number][0] != block_hash:
                # The chain moved between the two reads; try again on the next sync.
                raise ChainMoved(f"block {number} changed while it was being read")
            record = self._decode(log, headers[number][1])
            if record is not None:
                records.append(record)
        with self._transaction():
            for r in records:
                self.conn.execute(
                    "INSERT INTO logs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.block,
                        r.log_index,
                        r.block_hash,
                        r.block_time,
                        r.tx_hash,
                        r.contract,
                        r.event,
                        json.dumps(r.args),
                        r.job_id,
                    ),
                )
            fold.apply(self.conn, records)
            self.conn.executemany(
                "INSERT OR REPLACE INTO blocks (number, hash) VALUES (?, ?)",
                [(n, h) for n, (h, _) in headers.items() if n >= head - self.config.reorg_depth],
            )
            self.conn.execute("DELETE FROM blocks WHERE number < ?", (head - 4 * self.config.reorg_depth,))
            schema.set_meta(self.conn, "synced_block", hi)
        logger.debug("indexed blocks %d..%d: %d logs", lo, hi, len(records))
        return len(records)

    def _get_logs(self, lo: int, hi: int) -> list[Any]:
        """The contracts' logs of blocks lo..hi as the node sends them (hex strings), oldest first. A raw
        request: web3's result formatters would cost more than the decoding."""
        addresses = [c.address for c in self._contracts().values()]
        query = {"fromBlock": hex(lo), "toBlock": hex(hi), "address": addresses}
        raw: list[Any] = list(self.w3.manager.request_blocking(RPCEndpoint("eth_getLogs"), [query]))
        return sorted(raw, key=lambda log: (_int(log["blockNumber"]), _int(log["logIndex"])))

    def _decode(self, log: Any, block_time: int) -> fold.LogRecord | None:
        address = _checksum(_hex(log["address"]))
        topic = bytes.fromhex(_hex(log["topics"][0])[2:]) if log["topics"] else b""
        codec = self._codecs.get((address, topic))
        if codec is None:
            logger.warning(
                "skipping a log with unknown topic 0x%s from %s (newer contracts?)", topic.hex(), address
            )
            return None
        args = codec.decode(list(log["topics"]), log["data"])
        return fold.LogRecord(
            block=_int(log["blockNumber"]),
            log_index=_int(log["logIndex"]),
            block_hash=_hex(log["blockHash"]),
            block_time=block_time,
            tx_hash=_hex(log["transactionHash"]),
            contract=codec.contract,
            event=codec.name,
            args={k: _json_value(v) for k, v in args.items()},
        )

    def _headers(self, numbers: list[int]) -> dict[int, tuple[str, int]]:
        """(hash, timestamp) of each block, fetched in JSON-RPC batches."""
        out: dict[int, tuple[str, int]] = {}
        for i in range(0, len(numbers), 200):
            chunk = numbers[i : i + 200]
            with self.w3.batch_requests() as batch:
                for n in chunk:
                    batch.add(self.w3.eth.get_block(n))
                blocks: list[Any] = list(batch.execute())
            for n, block in zip(chunk, blocks, strict=True):
                out[n] = ("0x" + bytes(block["hash"]).hex(), int(block["timestamp"]))
        return out

    # ------------------------------------------------------------------ reorgs

    def _chain_hash(self, number: int, head: int) -> str | None:
        if number > head:
            return None
        return "0x" + bytes(self.w3.eth.get_block(number)["hash"]).hex()

    def _heal_reorg(self, head: int) -> int | None:
        """Roll back to the fork point if the last indexed block left the chain; the fork's first block."""
        synced = self.synced_block
        if synced < self.first_block:
            return None
        stored = self.conn.execute("SELECT hash FROM blocks WHERE number = ?", (synced,)).fetchone()
        if stored is None:
            if synced <= head:
                return None  # indexed long ago (deeper than the reorg window): final
        elif self._chain_hash(synced, head) == stored[0]:
            return None
        # Walk back to the newest stored block that is still on the chain.
        fork = None
        for row in self.conn.execute(
            "SELECT number, hash FROM blocks WHERE number < ? ORDER BY number DESC", (synced,)
        ).fetchall():
            if row["number"] < synced - self.config.reorg_depth:
                break
            if self._chain_hash(row["number"], head) == row["hash"]:
                fork = row["number"]
                break
        if fork is None:
            raise ReorgTooDeep(
                f"block {synced} of the index is no longer on the chain and no block within the last "
                f"{self.config.reorg_depth} matches; delete the index file to rebuild it, or raise "
                "--reorg-depth"
            )
        logger.warning("reorg: blocks %d..%d left the chain; re-indexing from %d", fork + 1, synced, fork + 1)
        with self._transaction():
            self.conn.execute("DELETE FROM logs WHERE block > ?", (fork,))
            self.conn.execute("DELETE FROM blocks WHERE number > ?", (fork,))
            schema.set_meta(self.conn, "synced_block", fork)
            self.refold()
        return fork + 1

    def refold(self) -> None:
        """Rebuild the read model from the stored logs (inside the caller's transaction)."""
        schema.clear_read_model(self.conn)
        rows = self.conn.execute("SELECT * FROM logs ORDER BY block, log_index").fetchall()
        fold.apply(self.conn, (fold.LogRecord.from_row(r) for r in rows))


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

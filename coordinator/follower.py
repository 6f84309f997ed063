"""The coordinator's background loop: sync the index, then run the keeper, every `poll` seconds."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from coordinator.errors import ChainMoved, ReorgTooDeep
from coordinator.indexer import Indexer, SyncReport
from coordinator.keeper import Keeper
from splitmesh.errors import SplitmeshError

logger = logging.getLogger(__name__)


@dataclass
class FollowerState:
    head: int | None = None
    synced_block: int | None = None
    last_sync: float | None = None  # unix seconds
    last_error: str | None = None
    reorgs: int = 0
    keeper_actions: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Follower:
    """Runs in its own thread (web3 is blocking); stops at the next poll after stop()."""

    def __init__(self, indexer: Indexer, keeper: Keeper | None, poll: float = 1.0):
        self.indexer = indexer
        self.keeper = keeper
        self.poll = poll  # seconds between two syncs
        self.state = FollowerState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> SyncReport | None:
        try:
            report = self.indexer.sync()
        except ChainMoved as exc:
            logger.info("%s; reading again", exc)
            return None
        except ReorgTooDeep:
            raise
        except (SplitmeshError, OSError, ValueError) as exc:
            self.state.last_error = f"{type(exc).__name__}: {exc}"
            logger.warning("index sync failed: %s; retrying in %.1f s", exc, self.poll)
            logger.debug("sync failure", exc_info=True)
            return None
        self.state.head, self.state.synced_block = report.head, report.to_block
        self.state.last_sync, self.state.last_error = time.time(), None
        if report.reorged_from is not None:
            self.state.reorgs += 1
        if self.keeper is not None:
            try:
                self.state.keeper_actions += len(self.keeper.tick())
            except (SplitmeshError, OSError, ValueError) as exc:
                logger.warning("keeper pass failed: %s; retrying next poll", exc)
        return report

    def start(self) -> Follower:
        self._thread = threading.Thread(target=self._loop, name="coordinator-follower", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except ReorgTooDeep as exc:
                self.state.last_error = str(exc)
                logger.error("%s", exc)
                return
            self._stop.wait(self.poll)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

"""One way to wait for something the chain, a node or the coordinator will do."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from splitmesh.errors import SplitmeshError

T = TypeVar("T")


class WaitTimedOut(SplitmeshError, TimeoutError):
    """What was awaited did not happen in time; the message says what and where to look."""


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,  # seconds before giving up
    message: str | Callable[[], str],  # the error then; a callable reports the state at that moment
    interval: float = 0.25,  # seconds between probes
    error: Callable[[str], Exception] = WaitTimedOut,
) -> T:
    """Call `probe` until it returns something other than None or False, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise error(message() if callable(message) else message)
        time.sleep(interval)

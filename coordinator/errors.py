"""Errors of the coordinator: the index, its queries and its HTTP API."""

from __future__ import annotations

from splitmesh.errors import SplitmeshError


class CoordinatorError(SplitmeshError):
    """Base of the coordinator's errors."""


class IndexMismatch(CoordinatorError, ValueError):
    """The index file belongs to another chain or deployment than the one asked for."""


class ReorgTooDeep(CoordinatorError, RuntimeError):
    """The chain reorganized deeper than the configured depth; the index must be rebuilt."""


class NotFound(CoordinatorError, LookupError):
    """No such job or node in the index."""


class BadQuery(CoordinatorError, ValueError):
    """A query parameter is malformed (unknown status, bad address, limit out of range)."""


class CoordinatorUnavailable(CoordinatorError, ConnectionError):
    """The coordinator's HTTP API did not answer."""


class ChainMoved(CoordinatorError, RuntimeError):
    """The chain changed while a block range was being read; the next sync reads it again."""

"""Errors of the model-shard layer."""

from __future__ import annotations

from splitmesh.errors import SplitmeshError


class ModelError(SplitmeshError):
    """Base class of model loading and shard execution errors."""


class ModelNotFound(ModelError, FileNotFoundError):
    """The model directory or one of its files is missing."""


class UnsupportedArchitecture(ModelError, ValueError):
    """The model type (or this variant of it) has no test of its split: see splitmesh.model.families."""


class InvalidShard(ModelError, ValueError):
    """A layer range or dtype does not fit the model."""


class UnknownSession(ModelError, KeyError):
    """No open session with this id on this runner (closed, expired, or never opened)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else "unknown session"


class BadPositions(ModelError, ValueError):
    """Position ids do not continue the session's sequence or do not match the hidden states."""


class CacheFull(ModelError, MemoryError):
    """The runner's KV-cache budget or session limit would be exceeded; retry later or use another node."""


class BadHiddenStates(ModelError, ValueError):
    """Hidden states have the wrong shape or dtype for this shard."""


class DeviceUnavailable(ModelError, ValueError):
    """The requested device (cuda, mps) is not present on this machine; use --device cpu."""

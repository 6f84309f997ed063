"""Exceptions shared by every part of splitmesh.

Each narrow error also inherits the matching builtin so callers can catch either.
"""

from __future__ import annotations


class SplitmeshError(Exception):
    """Base class of every error raised by splitmesh."""


class ConfigError(SplitmeshError, ValueError):
    """A setting or command-line option is missing or invalid."""


class ChainError(SplitmeshError, RuntimeError):
    """Talking to the chain failed (connection, transaction, unexpected state)."""


class ChainUnavailable(ChainError, ConnectionError):
    """The RPC endpoint does not answer."""


class ArtifactsMissing(ChainError, FileNotFoundError):
    """Compiled contract artifacts are missing; run `make contracts` (or `npx hardhat compile`)."""


class DeploymentNotFound(ChainError, LookupError):
    """No splitmesh deployment is known for this chain."""


class TransactionFailed(ChainError):
    """A transaction was mined but reverted, or could not be sent."""


class ContractRevert(TransactionFailed):
    """A contract call reverted with a decoded custom error.

    `name` is the Solidity error name (for example ``EscrowTooSmall``) and `args` its decoded arguments.
    """

    def __init__(self, contract: str, name: str, args: dict[str, object], message: str | None = None):
        self.contract = contract
        self.name = name
        self.args_by_name = args
        rendered = ", ".join(f"{k}={_render(v)}" for k, v in args.items())
        text = f"{contract} reverted with {name}({rendered})"
        if message:
            text += f": {message}"
        super().__init__(text)


def _render(value: object) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return repr(value) if isinstance(value, str) else str(value)

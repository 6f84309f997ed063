"""Settings shared by the CLI and the apps. Defaults < environment variables < command-line flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

from splitmesh.errors import ConfigError

ENV_PREFIX = "SPLITMESH_"


@dataclass(frozen=True)
class ChainSettings:
    rpc_url: str | None = None  # EVM JSON-RPC endpoint; None = start a local hardhat node
    private_key: str | None = None  # 0x-hex key that signs transactions; None = local dev key
    market: str | None = None  # JobMarket address; None = the remembered deployment for rpc_url
    tx_timeout: float = 120.0  # seconds to wait for a transaction receipt

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ChainSettings:
        """Defaults overridden by SPLITMESH_RPC_URL, SPLITMESH_PRIVATE_KEY, SPLITMESH_MARKET, ..."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = float(raw) if f.type in ("float", float) else raw
            except ValueError as exc:
                raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a number") from exc
        return cls(**values)

    def override(self, **flags: Any) -> ChainSettings:
        """Apply command-line flags that were given (None means not given)."""
        return replace(self, **{k: v for k, v in flags.items() if v is not None})

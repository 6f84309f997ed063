"""Compiled contract artifacts (Hardhat's JSON output) and the table of their custom errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak

from splitmesh.errors import ArtifactsMissing
from splitmesh.paths import artifacts_dir

CONTRACTS = ("NodeRegistry", "JobMarket", "AuditCourt")


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed creation code


@cache
def load_artifact(name: str, root: Path | None = None) -> Artifact:
    """Load artifacts/contracts/<name>.sol/<name>.json written by `hardhat compile`."""
    path = (root or artifacts_dir()) / "contracts" / f"{name}.sol" / f"{name}.json"
    if not path.exists():
        raise ArtifactsMissing(f"{path} not found; compile the contracts with `make contracts`")
    data = json.loads(path.read_text())
    return Artifact(name=data["contractName"], abi=data["abi"], bytecode=data["bytecode"])


@dataclass(frozen=True)
class ErrorSpec:
    contract: str
    name: str
    names: tuple[str, ...]  # argument names
    types: tuple[str, ...]  # canonical ABI types


def _canonical_type(item: dict[str, Any]) -> str:
    kind: str = item["type"]
    if kind.startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in item["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind


@lru_cache(maxsize=1)
def error_table() -> dict[bytes, ErrorSpec]:
    """4-byte selector -> error spec, over every error in the project's ABIs plus Solidity's builtins."""
    table: dict[bytes, ErrorSpec] = {
        keccak(text="Error(string)")[:4]: ErrorSpec("solidity", "Error", ("message",), ("string",)),
        keccak(text="Panic(uint256)")[:4]: ErrorSpec("solidity", "Panic", ("code",), ("uint256",)),
    }
    for name in CONTRACTS:
        for item in load_artifact(name).abi:
            if item.get("type") != "error":
                continue
            types = tuple(_canonical_type(i) for i in item["inputs"])
            selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
            names = tuple(i["name"] or f"arg{k}" for k, i in enumerate(item["inputs"]))
            table.setdefault(selector, ErrorSpec(name, item["name"], names, types))
    return table


def decode_error(data: bytes) -> tuple[ErrorSpec, dict[str, object]] | None:
    """Decode revert data into (spec, {arg: value}); None if the selector is unknown."""
    if len(data) < 4:
        return None
    spec = error_table().get(data[:4])
    if spec is None:
        return None
    try:
        values = abi_decode(list(spec.types), data[4:])
    except Exception:  # malformed payload: report the name without arguments
        return spec, {}
    return spec, dict(zip(spec.names, values, strict=True))

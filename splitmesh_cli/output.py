"""Printing for humans or as JSON (`--json`: one JSON object on stdout, progress on stderr)."""

from __future__ import annotations

import json
import sys
from typing import Any

ETHER = 10**18


def eth(wei: int) -> str:
    """Wei as ETH with up to 9 significant decimals."""
    text = f"{wei / ETHER:.9f}".rstrip("0").rstrip(".")
    return f"{text} ETH"


def short(address: str) -> str:
    return f"{address[:6]}..{address[-4:]}"


class Output:
    """Progress lines go to stderr in JSON mode so stdout holds exactly one JSON document."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def info(self, text: str = "", end: str = "\n") -> None:
        print(text, end=end, file=sys.stderr if self.as_json else sys.stdout, flush=True)

    def step(self, text: str) -> None:
        self.info(f"==> {text}")

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        if self.as_json:
            return
        cells = [[str(c) for c in row] for row in rows]
        widths = [
            max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
        ]
        print("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for row in cells:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))

    def result(self, data: dict[str, Any]) -> None:
        """The final result: JSON on stdout in JSON mode, nothing extra otherwise."""
        if self.as_json:
            print(json.dumps(data, indent=2, default=_default), flush=True)


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")

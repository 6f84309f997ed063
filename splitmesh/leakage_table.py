"""The shipped leakage table: measured prompt and output leakage and utility per (model, split, mechanism,
epsilon), written by `splitmesh privacy --write-table` and read by the client's receipts and the
coordinator's job pages.

A setting between two measured epsilons is reported at the next LARGER measured epsilon (less noise):
its leakage is an upper bound for the requested one, its utility an optimistic one; the entry says
which epsilon it was measured at.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from splitmesh.jobmeta import epsilon_from_json, epsilon_to_json

TABLE_RESOURCE = "data/leakage_table.json"
TABLE_FORMAT = 1
# Below this next-token agreement with the noiseless model an answer is not usable: the bar the privacy
# work set itself (70% agreement), and the one the SDK's default privacy setting is chosen against.
USABLE_AGREEMENT = 0.7


@dataclass(frozen=True)
class LeakageEntry:
    """One measured point of the shipped table (fractions in [0, 1])."""

    split: int
    mechanism: str
    epsilon: float  # the epsilon it was measured at (math.inf = no noise)
    next_token_agreement: float  # noised vs noiseless argmax on held-out text
    perplexity_ratio: float  # noised / noiseless perplexity
    prompt_recovery: float  # the best attack's token recovery on text it never trained on
    best_attack: str
    output_recovery_greedy: float  # generated tokens the last node reads, greedy decoding
    output_recovery_sampled: float  # the same with sampling (temperature 1, top-p 0.9)

    def to_json(self, requested_epsilon: float) -> dict[str, Any]:
        return {
            "source": "measured",
            "measured_at_epsilon": epsilon_to_json(self.epsilon),
            "requested_epsilon": epsilon_to_json(requested_epsilon),
            "split": self.split,
            "mechanism": self.mechanism,
            "prompt_recovery": self.prompt_recovery,
            "best_attack": self.best_attack,
            "output_recovery_greedy": self.output_recovery_greedy,
            "output_recovery_sampled": self.output_recovery_sampled,
            "next_token_agreement": self.next_token_agreement,
            "perplexity_ratio": self.perplexity_ratio,
        }


@dataclass(frozen=True)
class LeakageTable:
    weights_hash: str  # 0x-hex weights identity of the model it was measured on
    model: str
    eval_tokens: int  # private eval positions every recovery rate was measured on
    entries: tuple[LeakageEntry, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeakageTable:
        if data.get("format") != TABLE_FORMAT:
            raise ValueError(f"leakage table format {data.get('format')!r}; this SDK reads {TABLE_FORMAT}")
        entries = tuple(
            LeakageEntry(
                split=int(e["split"]),
                mechanism=str(e["mechanism"]),
                epsilon=epsilon_from_json(e["epsilon"]),
                next_token_agreement=float(e["next_token_agreement"]),
                perplexity_ratio=float(e["perplexity_ratio"]),
                prompt_recovery=float(e["prompt_recovery"]["best"]),
                best_attack=str(e["prompt_recovery"]["best_attack"]),
                output_recovery_greedy=float(e["output_recovery_greedy"]),
                output_recovery_sampled=float(e["output_recovery_sampled"]),
            )
            for e in data["entries"]
        )
        return cls(
            str(data["weights_hash"]).lower(), str(data.get("model", "")), int(data["eval_tokens"]), entries
        )

    def lookup(self, split: int, epsilon: float, mechanism: str = "plain") -> LeakageEntry | None:
        """The entry at the smallest measured epsilon >= `epsilon` for this split and mechanism."""
        candidates = [
            e for e in self.entries if e.split == split and e.mechanism == mechanism and e.epsilon >= epsilon
        ]
        return min(candidates, key=lambda e: e.epsilon) if candidates else None

    def recommended(self, split: int, min_agreement: float = USABLE_AGREEMENT) -> LeakageEntry | None:
        """The measured setting for `split` that leaks the least among those that keep the answer usable
        (agreement >= min_agreement). Recoveries closer than two standard errors of their estimate on
        the table's eval tokens are not told apart; among those the more useful setting wins."""
        usable = [e for e in self.entries if e.split == split and e.next_token_agreement >= min_agreement]
        if not usable:
            return None
        least = min(e.prompt_recovery for e in usable)
        stderr = math.sqrt(max(least * (1 - least), 1e-4) / self.eval_tokens)
        tied = [e for e in usable if e.prompt_recovery <= least + 2 * stderr]
        return max(tied, key=lambda e: (e.next_token_agreement, e.epsilon))


@functools.lru_cache(maxsize=4)
def load_table(path: str | None = None) -> LeakageTable | None:
    """The shipped table (or the one at `path`); None when none ships."""
    if path is not None:
        return LeakageTable.from_json(json.loads(Path(path).read_text()))
    resource = resources.files("splitmesh").joinpath(TABLE_RESOURCE)
    if not resource.is_file():
        return None
    return LeakageTable.from_json(json.loads(resource.read_text()))


def lookup(
    weights_hash: bytes | str,
    split: int,
    epsilon: float,
    mechanism: str = "plain",
    table_path: str | None = None,
) -> dict[str, Any]:
    """The measured leakage and utility for this setting, as a receipt field. Without a measurement for
    this model and setting, says so (`source: "not measured"`) instead of guessing."""
    key = ("0x" + weights_hash.hex()) if isinstance(weights_hash, bytes) else weights_hash
    table = load_table(table_path)
    if table is None or table.weights_hash != key.lower():
        return {"source": "not measured", "why": "no leakage table for this model; run `splitmesh privacy`"}
    entry = table.lookup(split, epsilon, mechanism)
    if entry is None:
        return {
            "source": "not measured",
            "why": f"no measured point for split {split}, mechanism {mechanism}, epsilon >= {epsilon}",
        }
    return entry.to_json(epsilon)

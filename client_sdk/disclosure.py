"""What a job discloses, in numbers and in words: the measured leakage beside the DP budget.

The DP budget alone says little a user can act on. `splitmesh privacy` measures, per (model, split,
mechanism, epsilon), how many prompt tokens the best known attack recovers from the noised Z, how many
generated tokens the last node reads, and how much of the answer quality is kept; the results ship in
`client_sdk/data/leakage_table.json`. A receipt carries the entry for its setting (`lookup`) and the
list of what each party can see (`exposure`).

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

TABLE_RESOURCE = "data/leakage_table.json"
TABLE_FORMAT = 1


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
            "measured_at_epsilon": _json_float(self.epsilon),
            "requested_epsilon": _json_float(requested_epsilon),
            "split": self.split,
            "mechanism": self.mechanism,
            "prompt_recovery": self.prompt_recovery,
            "best_attack": self.best_attack,
            "output_recovery_greedy": self.output_recovery_greedy,
            "output_recovery_sampled": self.output_recovery_sampled,
            "next_token_agreement": self.next_token_agreement,
            "perplexity_ratio": self.perplexity_ratio,
        }


def _json_float(value: float) -> float | str:
    return "inf" if math.isinf(value) else value


def _epsilon(value: Any) -> float:
    return math.inf if value == "inf" else float(value)


@dataclass(frozen=True)
class LeakageTable:
    weights_hash: str  # 0x-hex weights identity of the model it was measured on
    model: str
    entries: tuple[LeakageEntry, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeakageTable:
        if data.get("format") != TABLE_FORMAT:
            raise ValueError(f"leakage table format {data.get('format')!r}; this SDK reads {TABLE_FORMAT}")
        entries = tuple(
            LeakageEntry(
                split=int(e["split"]),
                mechanism=str(e["mechanism"]),
                epsilon=_epsilon(e["epsilon"]),
                next_token_agreement=float(e["next_token_agreement"]),
                perplexity_ratio=float(e["perplexity_ratio"]),
                prompt_recovery=float(e["prompt_recovery"]["best"]),
                best_attack=str(e["prompt_recovery"]["best_attack"]),
                output_recovery_greedy=float(e["output_recovery_greedy"]),
                output_recovery_sampled=float(e["output_recovery_sampled"]),
            )
            for e in data["entries"]
        )
        return cls(str(data["weights_hash"]).lower(), str(data.get("model", "")), entries)

    def lookup(self, split: int, epsilon: float, mechanism: str = "plain") -> LeakageEntry | None:
        """The entry at the smallest measured epsilon >= `epsilon` for this split and mechanism."""
        candidates = [
            e for e in self.entries if e.split == split and e.mechanism == mechanism and e.epsilon >= epsilon
        ]
        return min(candidates, key=lambda e: e.epsilon) if candidates else None


@functools.lru_cache(maxsize=4)
def load_table(path: str | None = None) -> LeakageTable | None:
    """The shipped table (or the one at `path`); None when none ships."""
    if path is not None:
        return LeakageTable.from_json(json.loads(Path(path).read_text()))
    resource = resources.files("client_sdk").joinpath(TABLE_RESOURCE)
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


def exposure(*, epsilon: float, public_bos: bool, greedy: bool, split: int) -> dict[str, str]:
    """What each party of a generation job can see, in words (checked by tests and measurements named
    in the README's privacy section)."""
    noised = (
        "no noise (epsilon inf): Z is readable" if math.isinf(epsilon) else f"noised at epsilon {epsilon}"
    )
    bos = "; the BOS position is public and sent un-noised" if public_bos else ""
    output = (
        "every generated token (greedy decoding: it applies the public final norm and LM head to its output)"
        if greedy
        else "the client's next-token distribution; with sampling it guesses each token as its argmax"
    )
    return {
        "every_route_node": (
            f"the activations after the client's {split} layers for every prompt and generated position, "
            f"{noised}{bos}; the prompt length, the number of generated tokens and their timing"
        ),
        "last_node": output,
        "chain": "the client address, model, split, epsilon, token budget, prices and escrow of the job",
        "nobody_but_the_client": "the token ids and text of the prompt (up to what the attacks recover)",
    }


def sentence(leakage: dict[str, Any]) -> str:
    """One plain sentence for the demo and the CLI."""
    if leakage.get("source") != "measured":
        return f"Leakage at this setting is not measured ({leakage.get('why', 'no table')})."
    eps = leakage["measured_at_epsilon"]
    return (
        f"At this setting (measured at epsilon {eps}, split {leakage['split']}) the best known attack "
        f"({leakage['best_attack']}) recovered {leakage['prompt_recovery']:.0%} of prompt tokens from what "
        f"the nodes see; the last node reads {leakage['output_recovery_greedy']:.0%} of greedy answer "
        f"tokens; the answer keeps {leakage['next_token_agreement']:.0%} next-token agreement with the "
        "noiseless model."
    )

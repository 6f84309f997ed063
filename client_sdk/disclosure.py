"""What a job discloses, in numbers and in words: the measured leakage beside the DP budget.

The DP budget alone says little a user can act on. `splitmesh privacy` measures, per (model, split,
mechanism, epsilon), how many prompt tokens the best known attack recovers from the noised Z, how many
generated tokens the last node reads, and how much of the answer quality is kept; the results ship in
`splitmesh/data/leakage_table.json` (see `splitmesh.leakage_table`). A receipt carries the entry for its
setting (`lookup`) and the list of what each party can see (`exposure`).
"""

from __future__ import annotations

import math
from typing import Any

from splitmesh.leakage_table import load_table, lookup

__all__ = ["exposure", "load_table", "lookup", "sentence"]


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

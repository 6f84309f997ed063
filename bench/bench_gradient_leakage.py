"""What a route node reads of the training labels from the gradient it relays, against guessing.

SmolLM2-135M-Instruct split at layer 4, route [4,13) [13,22) [22,30) as in bench_training. Each eval row of
the leakage corpus (public text the attacks never trained on; 16 rows of 32 tokens by default) is one
training step whose loss is the mean cross-entropy of its 31 next tokens; the client sends d(loss)/d(h_last)
back through the route, optionally clipped per position to the median norm G and noised with std sigma·G
(client_sdk.leakage.gradient).
For every forward epsilon (the Z noise) and gradient sigma, prints one JSON object with:

- recovery per node (its attack on the gradient it receives) and its ratio to the baselines measured in
  the same run: `most_frequent_token` (always guess the public text's most frequent token) and
  `forward_only` (the public model's argmax on h_last, which every node computes without any gradient);
- the defence's utility cost: cosine between the client's gradients with and without it, per row of
  dL/dZ' (a one-sequence step) and of the client layers' weight gradient summed over the eval rows (a
  batch of `rows` sequences: the noise averages out over more rows, the cosine grows with them);

and writes it to bench/results/gradient_leakage.json (--out).

Run: .venv/bin/python bench/bench_gradient_leakage.py [--sigmas 0,0.03,0.1,0.3,1] [--epsilons inf,100]
     [--eval-tokens 496]  (about 220 CPU-seconds at the defaults; 248 tokens take about 125)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from client_sdk.leakage.corpus import Corpus
from client_sdk.leakage.features import SplitFeatures, chunk_tokens, load_tokenizer
from client_sdk.leakage.gradient import GradientConfig, measure
from splitmesh.model.loader import ModelSpec

ROOT = Path(__file__).resolve().parent.parent
SPLIT = 4
NODE_ENDS = (13, 22, 30)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(","))  # float("inf") parses


def _ratio(value: float, baseline: float) -> float | None:
    return round(value / baseline, 2) if baseline > 0 else None


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Rounded cells with each node's recovery over the two baselines."""
    chance = result["most_frequent_token"]
    cells = []
    for cell in result["cells"]:
        forward_only = cell["forward_only"]
        cells.append(
            {
                "epsilon": cell["epsilon"],
                "sigma": cell["sigma"],
                "gradient_epsilon": cell["gradient_epsilon"],
                "recovery": {node: round(rate, 3) for node, rate in cell["recovery"].items()},
                "forward_only": round(forward_only, 3),
                "over_most_frequent": {node: _ratio(r, chance) for node, r in cell["recovery"].items()},
                "over_forward_only": {node: _ratio(r, forward_only) for node, r in cell["recovery"].items()},
                "grad_z_cosine": round(cell["grad_z_cosine"], 3),
                "client_weight_grad_cosine": round(cell["client_weight_grad_cosine"], 3),
            }
        )
    return {**result, "most_frequent_token": round(chance, 3), "cells": cells}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local HF directory (default: the converted SmolLM2)")
    parser.add_argument("--epsilons", type=_floats, default=(math.inf, 100.0))
    parser.add_argument("--sigmas", type=_floats, default=(0.0, 0.03, 0.1, 0.3, 1.0))
    parser.add_argument("--eval-tokens", type=int, default=496, help="labels measured (whole rows of 31)")
    parser.add_argument("--train-tokens", type=int, default=4000, help="public text for the baselines and G")
    parser.add_argument("--refine-steps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gradient_leakage.json")
    args = parser.parse_args()

    started = time.monotonic()
    torch.manual_seed(args.seed)  # nothing should draw from the global generator; pin it anyway
    spec = ModelSpec.open(args.model)
    tokenizer = load_tokenizer(spec)
    bos = int(getattr(spec.config, "bos_token_id", None) or 0)
    corpus = Corpus.load()
    train_ids = chunk_tokens(tokenizer, corpus.train, 32, args.train_tokens, bos)
    eval_ids = chunk_tokens(tokenizer, corpus.eval, 32, args.eval_tokens, bos)
    features = SplitFeatures.compute(spec, SPLIT, tokenizer, train_ids, eval_ids)
    cfg = GradientConfig(
        node_ends=NODE_ENDS,
        epsilons=args.epsilons,
        sigmas=args.sigmas,
        refine_steps=args.refine_steps,
        seed=args.seed,
    )
    result = summarize(measure(features, cfg))
    report = {
        "model": spec.source.path.name,
        "split": SPLIT,
        "threads": torch.get_num_threads(),
        **result,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()

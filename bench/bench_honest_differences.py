"""How far honest re-execution drifts, and how far cheats land, for audits of SmolLM2-135M shards.

Runs the whole split locally (client head + shards [4,13), [13,22), [22,30), greedy decode) on public
prompts, records every shard's per-step inputs and outputs, then replays each shard's transcripts under
honest variations (same process, other thread count and prefill chunking, bfloat16, bfloat16-rounded
weights) and cheats (garbage, skipped layers, tampered relays). Prints one JSON object: per variant the
distribution of per-token relative L2 errors, per-step worst errors and per-transcript mean errors; per
dtype pair the largest honest error, the smallest cheat error, their ratio (margin), and which cheats the
tolerance in splitmesh/audit/compare.py catches.

Run: .venv/bin/python bench/bench_honest_differences.py [--prompts 10] [--steps 24] [--sweep-prompts 3]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
from transformers import AutoTokenizer

from splitmesh.audit import Comparison, Step, Tolerance, compare_step, judge, replay_transcript
from splitmesh.model.client import ClientModel
from splitmesh.model.runner import ShardRunner
from splitmesh.model.source import ModelSource
from splitmesh.model.stack import LayerStack

PLAN = [0, 4, 13, 22, 30]
# (chat template?, text): chat prompts share the template's first tokens, raw text varies them.
PROMPTS = [
    (True, "What is the capital of France?"),
    (False, "The history of the printing press begins in"),
    (True, "Explain photosynthesis in two sentences."),
    (False, "def fibonacci(n):\n    "),
    (True, "Write a haiku about the sea."),
    (False, "Water boils at 100 degrees Celsius at sea level because"),
    (True, "How do vaccines work?"),
    (False, "Once upon a time, in a small village by the mountains,"),
    (True, "What is the difference between weather and climate?"),
    (False, "1, 2, 3, 5, 8, 13,"),
    (True, "Why is the sky blue?"),
    (False, "Le petit prince est un livre qui"),
]
HONEST = {  # variant -> dtype pair (audited node, verifier) whose tolerance must cover it
    "a_fp32_rerun_same_process": ("float32", "float32"),
    "b_fp32_1_thread_tokenwise_prefill": ("float32", "float32"),
    "c_bf16_node_fp32_verifier": ("bfloat16", "float32"),
    "c_fp32_node_bf16_verifier": ("float32", "bfloat16"),
    "c_bf16_node_bf16_verifier_1_thread_tokenwise": ("bfloat16", "bfloat16"),
}
# Measured like the honest variants but deliberately outside the float32 tolerance: a node whose weights
# lost precision is not the float32 model it claims to run (it must declare bfloat16).
OUTSIDE = {"d_bf16_rounded_weights_fp32_node": "fp32/fp32"}
Transcript = list[tuple[int, torch.Tensor, torch.Tensor]]  # (start position, input, output) per step


@dataclass
class Errors:
    """Errors of one variant on one shard, over all of its transcripts."""

    transcripts: list[list[Comparison]] = field(default_factory=list)

    def add(self, comparisons: list[Comparison]) -> None:
        self.transcripts.append(comparisons)

    def extend(self, other: Errors) -> None:
        self.transcripts.extend(other.transcripts)

    @property
    def tokens(self) -> list[float]:  # every per-token relative error
        return [t for cs in self.transcripts for c in cs for t in c.token_rel]

    @property
    def step_worst(self) -> list[float]:  # worst token of every step
        return [c.worst_token_rel for cs in self.transcripts for c in cs]

    @property
    def transcript_worst(self) -> list[float]:  # worst token of every transcript
        return [max(c.worst_token_rel for c in cs) for cs in self.transcripts]

    @property
    def transcript_mean(self) -> list[float]:  # token-weighted mean of every transcript
        return [
            sum(c.mean_token_rel * c.tokens for c in cs) / sum(c.tokens for c in cs)
            for cs in self.transcripts
        ]

    def flagged(self, tolerance: Tolerance) -> int:
        """Transcripts judge() calls fraud."""
        return sum(judge(cs, tolerance).is_fraud for cs in self.transcripts)

    def summary(self) -> dict[str, object]:
        return {
            "tokens": _dist(self.tokens),
            "step_worst": _dist(self.step_worst),
            "transcript_mean": _dist(self.transcript_mean),
        }


def _dist(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    p99 = s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]
    return {"n": len(s), "min": s[0], "median": statistics.median(s), "p99": p99, "max": s[-1]}


# ---------------------------------------------------------------------------------------- recording


def record(model_dir: str, prompts: list[tuple[bool, str]], steps: int) -> list[list[Transcript]]:
    """transcripts[shard][prompt]: every shard's inputs and outputs of a greedy split generation."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    client = ClientModel.load(model_dir, PLAN[1])
    runners = [ShardRunner.load(model_dir, a, b) for a, b in pairwise(PLAN[1:])]
    out: list[list[Transcript]] = [[] for _ in runners]
    for p, (chat, text) in enumerate(prompts):
        if chat:  # the template's text holds its special tokens already
            text = str(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
                )
            )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]  # [1, prompt]
        cache = client.new_cache()
        per_shard: list[Transcript] = [[] for _ in runners]
        position = 0
        with torch.inference_mode():
            for _ in range(steps + 1):  # the prefill, then `steps` decode steps
                q = ids.shape[1]
                positions = torch.arange(position, position + q)
                hidden = client.head(ids, positions.unsqueeze(0), cache)
                for s, runner in enumerate(runners):
                    output = runner.forward(f"p{p}", hidden, positions)
                    per_shard[s].append((position, hidden.clone(), output.clone()))
                    hidden = output
                ids = client.tail(hidden[:, -1:]).argmax(-1)  # [1, 1]
                position += q
        for s, runner in enumerate(runners):
            runner.close(f"p{p}")
            out[s].append(per_shard[s])
    return out


# ---------------------------------------------------------------------------------------- replays


def replay(
    runner: ShardRunner, steps: list[Step], *, threads: int | None = None, tokenwise: bool = False
) -> list[torch.Tensor]:
    """The runner's outputs; `tokenwise` feeds multi-token steps one token at a time and concatenates."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if not tokenwise:
            return replay_transcript(runner, steps)
        split = [(start + i, x[:, i : i + 1]) for start, x in steps for i in range(x.shape[1])]
        outs = replay_transcript(runner, split)
        grouped, k = [], 0
        for _, x in steps:
            grouped.append(torch.cat(outs[k : k + x.shape[1]], dim=1))
            k += x.shape[1]
        return grouped
    finally:
        torch.set_num_threads(before)


def skip_layers(runner: ShardRunner, skipped: Iterable[int]) -> ShardRunner:
    """The same runner object with some of its layers (global indices) removed: a cheating node."""
    stack = runner.stack
    keep = [
        (stack.start + i, layer) for i, layer in enumerate(stack.layers) if stack.start + i not in skipped
    ]
    # The first kept layer sizes the causal mask from its own cache slot (see LayerStack._masks).
    runner.stack = LayerStack(stack.config, stack.arch, keep[0][0], [m for _, m in keep], stack.rotary)
    return runner


def round_weights_bf16(runner: ShardRunner) -> ShardRunner:
    with torch.no_grad():
        for p in runner.stack.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
    return runner


def garbage_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random normal tokens with the per-token norms of x."""
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float32)
    noise = noise * (x.float().norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True))
    return noise.to(x.dtype)


def add_noise(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """x plus per-token Gaussian noise whose norm is `fraction` of the token's norm."""
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float32)
    noise = noise * (fraction * x.float().norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True))
    return (x.float() + noise).to(x.dtype)


def compare_all(expected: list[torch.Tensor], got: list[torch.Tensor]) -> list[Comparison]:
    return [compare_step(e, g, step=i) for i, (e, g) in enumerate(zip(expected, got, strict=True))]


# ---------------------------------------------------------------------------------------- the bench


def measure_shard(
    model_dir: str, start: int, end: int, transcripts: list[Transcript], sweep_prompts: int, seed: int
) -> dict[str, Errors]:
    gen = torch.Generator().manual_seed(seed)
    errors: dict[str, Errors] = {}

    def add(name: str, comparisons: list[Comparison]) -> None:
        errors.setdefault(name, Errors()).add(comparisons)

    fp32 = ShardRunner.load(model_dir, start, end)
    bf16 = ShardRunner.load(model_dir, start, end, "bfloat16")
    rounded = round_weights_bf16(ShardRunner.load(model_dir, start, end))
    n = end - start
    cheaters: dict[str, Callable[[str], ShardRunner]] = {
        "f_skip_last_layer": lambda dt: skip_layers(ShardRunner.load(model_dir, start, end, dt), [end - 1]),
        "f_skip_first_layer": lambda dt: skip_layers(ShardRunner.load(model_dir, start, end, dt), [start]),
        "g_skip_second_half": lambda dt: skip_layers(
            ShardRunner.load(model_dir, start, end, dt), range(start + n // 2, end)
        ),
    }
    cheat_runners = {
        (name, dt): make(dt) for name, make in cheaters.items() for dt in ("float32", "bfloat16")
    }

    sweep: list[tuple[list[Step], list[Step], list[torch.Tensor], list[torch.Tensor]]] = []
    for t, transcript in enumerate(transcripts):
        steps: list[Step] = [(pos, x) for pos, x, _ in transcript]
        recorded = [y for _, _, y in transcript]  # the fp32 node's outputs in the live pipeline
        steps_bf16: list[Step] = [(pos, x.to(torch.bfloat16)) for pos, x in steps]
        # Verifiers.
        v32 = replay(fp32, steps)
        v32_other = replay(fp32, steps, threads=1, tokenwise=True)
        v32_on_bf16 = replay(fp32, steps_bf16)  # a fp32 verifier replays a bf16 node's (bf16) inputs
        v16_on_bf16 = replay(bf16, steps_bf16, threads=1, tokenwise=True)
        # Honest nodes.
        bf16_node = replay(bf16, steps_bf16)
        if t < sweep_prompts:
            sweep.append((steps, steps_bf16, v32, v32_on_bf16))
        add("a_fp32_rerun_same_process", compare_all(v32, recorded))
        add("b_fp32_1_thread_tokenwise_prefill", compare_all(v32_other, recorded))
        add("c_bf16_node_fp32_verifier", compare_all(v32_on_bf16, bf16_node))
        add("c_fp32_node_bf16_verifier", compare_all(replay(bf16, steps), recorded))
        add("c_bf16_node_bf16_verifier_1_thread_tokenwise", compare_all(v16_on_bf16, bf16_node))
        add("d_bf16_rounded_weights_fp32_node", compare_all(v32, replay(rounded, steps)))
        # Cheating nodes; `verifiers` maps the cheater's dtype to (verifier outputs, pair label).
        for dt, node_steps, base, verifiers in (
            ("float32", steps, recorded, [(v32, "fp32/fp32")]),
            ("bfloat16", steps_bf16, bf16_node, [(v32_on_bf16, "bf16/fp32"), (v16_on_bf16, "bf16/bf16")]),
        ):
            outs: dict[str, list[torch.Tensor]] = {
                "e_garbage": [garbage_like(y, gen) for y in base],
                "h_tamper_output_1pct": [add_noise(y, 1e-2, gen) for y in base],
                "h_tamper_output_0.1pct": [add_noise(y, 1e-3, gen) for y in base],
                "h_tamper_input_1pct": replay(
                    bf16 if dt == "bfloat16" else fp32, [(p, add_noise(x, 1e-2, gen)) for p, x in node_steps]
                ),
                "h_tamper_input_0.1pct": replay(
                    bf16 if dt == "bfloat16" else fp32, [(p, add_noise(x, 1e-3, gen)) for p, x in node_steps]
                ),
            }
            for name in cheaters:
                outs[name] = replay(cheat_runners[(name, dt)], node_steps)
            for name, got in outs.items():
                for expected, pair in verifiers:
                    add(f"cheat {pair} {name}", compare_all(expected, got))

    # Skipping any single layer: the hardest one decides (a few transcripts, fp32 and bf16 nodes).
    for layer in range(start, end):
        for dt, pair in (("float32", "fp32/fp32"), ("bfloat16", "bf16/fp32")):
            cheater = skip_layers(ShardRunner.load(model_dir, start, end, dt), [layer])
            for steps, steps_bf16, v32, v32_on_bf16 in sweep:
                got = replay(cheater, steps if dt == "float32" else steps_bf16)
                expected = v32 if dt == "float32" else v32_on_bf16
                errors.setdefault(f"sweep {pair} skip layer {layer}", Errors()).add(
                    compare_all(expected, got)
                )
    return errors


def pair_of(name: str) -> str:
    if name in HONEST:
        a, v = HONEST[name]
        short = {"float32": "fp32", "bfloat16": "bf16"}
        return f"{short[a]}/{short[v]}"
    return name.split()[1]


def tolerance_of(pair: str) -> Tolerance:
    a, v = (s.replace("fp32", "float32").replace("bf16", "bfloat16") for s in pair.split("/"))
    return Tolerance.for_dtypes(a, v)


def analyse(per_shard: dict[str, dict[str, Errors]]) -> dict[str, dict[str, Any]]:
    """Per dtype pair: honest maxima, cheat minima, margins and detection under the chosen tolerance."""
    merged: dict[str, Errors] = {}
    for errs in per_shard.values():
        for name, e in errs.items():
            merged.setdefault(name, Errors()).extend(e)
    pairs: dict[str, dict[str, Any]] = {}
    for pair in ("fp32/fp32", "bf16/fp32", "bf16/bf16"):
        canonical = {"bf16/fp32": {"bf16/fp32", "fp32/bf16"}}.get(pair, {pair})
        honest = {n: e for n, e in merged.items() if n in HONEST and pair_of(n) in canonical}
        cheats = {
            n.split(" ", 2)[2]: e for n, e in merged.items() if n.startswith("cheat") and pair_of(n) == pair
        }
        sweep = {n: e for n, e in merged.items() if n.startswith("sweep") and pair_of(n) == pair}
        if sweep:  # the hardest single layer to miss decides: merge them all, minima are per layer
            cheats["skip_any_single_layer"] = Errors()
            for e in sweep.values():
                cheats["skip_any_single_layer"].extend(e)
        tol = tolerance_of(pair)
        honest_token = max(max(e.tokens) for e in honest.values())
        honest_mean = max(max(e.transcript_mean) for e in honest.values())
        rows: dict[str, dict[str, Any]] = {}
        for name, e in sorted(cheats.items()):
            rows[name] = {
                "min_step_worst": min(e.step_worst),
                "min_transcript_worst": min(e.transcript_worst),
                "min_transcript_mean": min(e.transcript_mean),
                "token_margin": min(e.transcript_worst) / honest_token,
                "mean_margin": min(e.transcript_mean) / honest_mean,
                "steps_over_token_bound": sum(w > tol.token_rel for w in e.step_worst) / len(e.step_worst),
                "transcripts_caught": e.flagged(tol) / len(e.transcripts),
            }
        if sweep:
            rows["skip_any_single_layer"]["per_layer_min_step_worst"] = {
                n.rsplit(" ", 1)[1]: min(e.step_worst) for n, e in sweep.items()
            }
        pairs[pair] = {
            "tolerance": {"token_rel": tol.token_rel, "mean_rel": tol.mean_rel},
            "honest_variants": sorted(honest),
            "honest_max_token_rel": honest_token,
            "honest_max_transcript_mean": honest_mean,
            "honest_transcripts_flagged": {n: e.flagged(tol) for n, e in sorted(honest.items())},
            "outside_tolerance_by_design": {
                n: {
                    "max_token_rel": max(e.tokens),
                    "max_transcript_mean": max(e.transcript_mean),
                    "transcripts_flagged": e.flagged(tol) / len(e.transcripts),
                }
                for n, e in sorted(merged.items())
                if OUTSIDE.get(n) == pair
            },
            "tolerance_over_honest": {
                "token": tol.token_rel / honest_token,
                "mean": tol.mean_rel / honest_mean,
            },
            "cheats": rows,
            "not_caught_everywhere": sorted(n for n, r in rows.items() if r["transcripts_caught"] < 1.0),
        }
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--steps", type=int, default=24, help="greedy decode steps after the prefill")
    parser.add_argument("--sweep-prompts", type=int, default=3, help="transcripts per single-layer skip")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    model_dir = str(ModelSource.resolve(None).path)
    t0 = time.perf_counter()
    transcripts = record(model_dir, PROMPTS[: args.prompts], args.steps)
    per_shard: dict[str, dict[str, Errors]] = {}
    for s, (start, end) in enumerate(pairwise(PLAN[1:])):
        per_shard[f"[{start},{end})"] = measure_shard(
            model_dir, start, end, transcripts[s], args.sweep_prompts, args.seed + s
        )
    result = {
        "model": "SmolLM2-135M-Instruct",
        "plan": PLAN,
        "prompts": args.prompts,
        "decode_steps": args.steps,
        "torch_threads": 2,
        "metric": "per-token relative L2 error ||got_t - expected_t|| / ||expected_t||",
        "pairs": analyse(per_shard),
        "shards": {
            shard: {name: e.summary() for name, e in sorted(errs.items())}
            for shard, errs in per_shard.items()
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

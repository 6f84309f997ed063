"""Decode-step cost of each shard vs the same layers inside the unsplit model, and frame codec cost.

Prints one JSON object. Baselines are measured in the same run: the unsplit Hugging Face model's decode
step, timed per layer range with forward hooks. Run: .venv/bin/python bench/bench_shards.py [--steps N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from itertools import pairwise

import torch
from transformers import AutoModelForCausalLM

from splitmesh.model.runner import ShardRunner
from splitmesh.model.source import ModelSource
from splitmesh.wire import decode_frame, encode_frame


def _mark(marks: dict[str, float], key: str) -> None:
    marks[key] = time.perf_counter()


def unsplit_range_times(
    model_dir: str, plan: list[int], prompt: int, steps: int
) -> tuple[list[float], float]:
    """Median seconds per decode step spent in each layer range, and in the whole forward."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    layers = model.model.layers
    marks: dict[str, float] = {}
    per_range: list[list[float]] = [[] for _ in pairwise(plan)]
    for r, (start, end) in enumerate(pairwise(plan)):
        layers[start].register_forward_pre_hook(lambda *_, r=r: _mark(marks, f"s{r}"))
        layers[end - 1].register_forward_hook(lambda *_, r=r: _mark(marks, f"e{r}"))
    ids = torch.randint(3, 1000, (1, prompt))
    whole: list[float] = []
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        cache = out.cache if "cache" in out else out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            t0 = time.perf_counter()
            out = model(token, cache=cache, use_cache=True)
            whole.append(time.perf_counter() - t0)
            for r in range(len(per_range)):
                per_range[r].append(marks[f"e{r}"] - marks[f"s{r}"])
            token = out.logits[:, -1:].argmax(-1)
    return [statistics.median(t) for t in per_range], statistics.median(whole)


def shard_times(model_dir: str, plan: list[int], prompt: int, steps: int) -> list[float]:
    times = []
    for start, end in pairwise(plan):
        runner = ShardRunner.load(model_dir, start, end)
        runner.forward("bench", torch.randn(1, prompt, runner.hidden_size), torch.arange(prompt))
        samples = []
        for i in range(steps):
            x = torch.randn(1, 1, runner.hidden_size)
            t0 = time.perf_counter()
            runner.forward("bench", x, torch.tensor([prompt + i]))
            samples.append(time.perf_counter() - t0)
        times.append(statistics.median(samples))
    return times


def frame_times(hidden: int, repeats: int = 2000) -> dict[str, float]:
    x = torch.randn(1, 1, hidden)
    meta = {"job": 1, "step": 7, "positions": [42]}
    enc, dec = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = encode_frame(x, meta)
        t1 = time.perf_counter()
        decode_frame(data)
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append(t2 - t1)
    return {"encode_us": statistics.median(enc) * 1e6, "decode_us": statistics.median(dec) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40, help="decode steps timed per measurement")
    parser.add_argument("--prompt", type=int, default=32, help="tokens in the cache before timing")
    parser.add_argument("--plan", default="4,13,22,30", help="node shard boundaries (client keeps 0..first)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = str(ModelSource.resolve(None).path)
    plan = [int(x) for x in args.plan.split(",")]
    ranges, whole = unsplit_range_times(model_dir, plan, args.prompt, args.steps)
    shards = shard_times(model_dir, plan, args.prompt, args.steps)
    frames = frame_times(576)
    result = {
        "model": "SmolLM2-135M-Instruct fp32",
        "torch_threads": torch.get_num_threads(),
        "plan": plan,
        "shard_decode_ms": [round(t * 1e3, 3) for t in shards],
        "unsplit_same_layers_ms": [round(t * 1e3, 3) for t in ranges],
        "unsplit_whole_decode_step_ms": round(whole * 1e3, 3),
        "shards_sum_over_unsplit_layers": round(sum(shards) / sum(ranges), 4),
        "target_ratio": 1.02,
        "frame_1x1x576_fp32": {k: round(v, 2) for k, v in frames.items()},
        "frame_roundtrip_us": round(frames["encode_us"] + frames["decode_us"], 2),
        "frame_target_us": 50,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark the tensor frame codec against torch.save/torch.load measured in the same run.

torch.save/load is only a cost baseline; peer data must never go through it. Prints JSON; no assertions.
Usage: python bench/bench_frames.py [--repeat N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import torch

from splitmesh.wire import decode_frame, encode_frame, frame_hash

SHAPES = [(1, 1, 576), (1, 64, 576)]  # [batch, seq, hidden]: one decode step, a 64-token prefill
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
META = {"job": 3, "step": 7, "positions": [5]}


def median_us(fn: Callable[[], object], repeat: int) -> float:
    """Median over `repeat` batches of the per-call time in microseconds."""
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()  # calls giving >= 0.2 s
    number = max(1, number * 20 // max(1, round(elapsed * 1000)))  # aim at ~20 ms per batch
    return statistics.median(t / number * 1e6 for t in timer.repeat(repeat=repeat, number=number))


def torch_save(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


def torch_load(data: bytes) -> torch.Tensor:
    return torch.load(io.BytesIO(data), weights_only=True)


def bench_case(shape: tuple[int, ...], name: str, repeat: int) -> dict[str, Any]:
    tensor = torch.randn(shape).to(DTYPES[name])
    frame = encode_frame(tensor, META)
    saved = torch_save(tensor)
    frames = {
        "encode_us": median_us(lambda: encode_frame(tensor, META), repeat),
        "decode_us": median_us(lambda: decode_frame(frame, expect_shape=(None, None, shape[-1])), repeat),
        "decode_unchecked_us": median_us(lambda: decode_frame(frame, check_finite=False), repeat),
        "round_trip_us": median_us(lambda: decode_frame(encode_frame(tensor, META)), repeat),
        "frame_hash_us": median_us(lambda: frame_hash(frame), repeat),
        "bytes": len(frame),
    }
    baseline = {
        "encode_us": median_us(lambda: torch_save(tensor), repeat),
        "decode_us": median_us(lambda: torch_load(saved), repeat),
        "round_trip_us": median_us(lambda: torch_load(torch_save(tensor)), repeat),
        "bytes": len(saved),
    }
    return {
        "shape": list(shape),
        "dtype": name,
        "frames": {k: round(v, 2) for k, v in frames.items()},
        "torch_save_load": {k: round(v, 2) for k, v in baseline.items()},
        "speedup_round_trip": round(baseline["round_trip_us"] / frames["round_trip_us"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=31, help="timed batches per measurement")
    args = parser.parse_args()
    report = {
        "benchmark": "wire.frames",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "repeat": args.repeat,
        "statistic": "median microseconds per call",
        "cases": [bench_case(shape, name, args.repeat) for shape in SHAPES for name in DTYPES],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

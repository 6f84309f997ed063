"""Mechanisms that might move the privacy frontier, each against plain per-token DP at equal leakage.

For SmolLM2-135M-Instruct at one split, on the leakage report's public text (the attacker trains on one
part, everything is measured on the other), per epsilon:

- plain: clip each released vector to C, add isotropic Gaussian noise (what the SDK does);
- shaped: the same mechanism in a public coordinate system, u = (Z - mu) / s with mu the mean and s the
  square root of the per-dimension std of Z on public text: clip u to its own median norm, add isotropic
  noise to u, release mu + s * (clip(u) + noise). The same (epsilon, delta) guarantee (post-processing of
  a Gaussian mechanism on u); the noise lands where the representation varies most;
- denoised: plain release, then the client corrects the last node's output with a linear map fitted on
  public text from [the noisy output, its own clipped Z] to the noiseless output. It is post-processing on
  the client, so prompt leakage is exactly plain's; and its greedy token is no longer the last node's;
- adapted: plain release from client layers carrying a noise-aware LoRA trained locally with the open
  weights (KL to the noiseless model's next-token distribution, noise sampled as the mechanism does); the
  attacker knows the adapter (shipped adapters are public) and re-fits its attacks on it;
- local only (a baseline, not a mechanism): the client predicts from its own clipped Z with a linear map
  and no route at all; zero leakage to the route. A mechanism below this line is worse than not using the
  route.

Leakage is the best of the nearest-token and learned (Gaussian discriminant) attacks of
client_sdk.leakage.attacks on the attacker's own noised copy; the slower optimization attack is left out
here (in the shipped table it adds at most ~8 points at epsilon 30-100). Utility is next-token agreement
with the noiseless model, teacher-forced on the eval rows.

    .venv/bin/python bench/bench_privacy_mechanisms.py [--split 4] [--epsilons 1000 300 100 30]
        [--lora-steps 80] [--lora-epsilons 300 100] [--plot bench/results/privacy_mechanisms.png]

Prints one JSON object and writes bench/results/privacy_mechanisms.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from client_sdk.adapters import AdapterConfig, ClientTrainer
from client_sdk.leakage import attacks
from client_sdk.leakage.corpus import Corpus
from client_sdk.leakage.features import SplitFeatures, chunk_tokens, load_tokenizer, positions_like
from client_sdk.leakage.mechanism import Mechanism, generator
from splitmesh.model.loader import ModelSpec

RESULTS = Path(__file__).resolve().parent / "results"
DELTA = 1e-5
RIDGE = 1e-4  # relative ridge of the linear maps (times the sample count)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Shape:
    """A public affine coordinate system for the mechanism: u = (z - center) / scale."""

    center: torch.Tensor
    scale: torch.Tensor

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.center) / self.scale

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.scale + self.center


class Bench:
    def __init__(self, split: int, seed: int):
        self.seed = seed
        spec = ModelSpec.open(None)
        self.tokenizer = load_tokenizer(spec)
        self.bos = int(getattr(spec.config, "bos_token_id", None) or 0)
        corpus = Corpus.load()
        self.train_ids = chunk_tokens(self.tokenizer, corpus.train, 32, 15500, self.bos)
        self.eval_ids = chunk_tokens(self.tokenizer, corpus.eval, 32, 496, self.bos)
        self.features = SplitFeatures.compute(spec, split, self.tokenizer, self.train_ids, self.eval_ids)
        self.client = self.features.model.client
        self.truth = attacks.private_vectors(self.eval_ids[..., None]).view(-1)
        self.clean_eval = self.normed_output(self.features.eval_z)
        self.clean_train = self.normed_output(self.features.train_z)
        self.reference = self.argmax(self.clean_eval)

    # ---------------------------------------------------------------- model pieces

    def normed_output(self, z: torch.Tensor) -> torch.Tensor:
        """Released Z [S, T, hidden] -> the final norm of the last layer's output [S, T, hidden]."""
        parts = []
        with torch.inference_mode():
            for i in range(0, z.shape[0], 16):
                piece = z[i : i + 16]
                parts.append(self.client.norm(self.features.model.rest(piece, positions_like(piece[..., 0]))))
        return torch.cat(parts)

    def argmax(self, normed: torch.Tensor) -> torch.Tensor:
        """[S, T, hidden] -> next-token choices at positions 0..T-2 [S, T - 1]."""
        with torch.inference_mode():
            return (normed[:, :-1] @ self.client.lm_head_weight.T).argmax(-1)

    def agreement(self, normed: torch.Tensor) -> float:
        return float((self.argmax(normed) == self.reference).double().mean())

    # ---------------------------------------------------------------- attacks

    def leakage(self, features: SplitFeatures, mech: Mechanism, shape: Shape | None) -> dict[str, float]:
        """Best of nearest and learned on the attacker's own noised copy, in the mechanism's coordinates."""
        enc = shape.encode if shape else (lambda z: z)
        cand = attacks.build_candidates(features, 8192, self.bos)
        cand = dataclasses.replace(
            cand, table=enc(cand.table), train_z=attacks.private_vectors(enc(features.train_z))
        )
        seen = attacks.private_vectors(
            mech.release(enc(features.eval_z), generator(self.seed, "attack", mech.epsilon))
        )
        nearest = float((attacks.nearest(seen, cand, mech) == self.truth).double().mean())
        learned = float((attacks.learned(seen, cand, mech) == self.truth).double().mean())
        return {"nearest": nearest, "learned": learned, "best": max(nearest, learned)}

    # ---------------------------------------------------------------- mechanisms

    def public_shape(self) -> tuple[Shape, float]:
        z = attacks.private_vectors(self.features.train_z)
        shape = Shape(z.mean(0), z.std(0).sqrt())
        return shape, float(
            attacks.private_vectors(shape.encode(self.features.train_z)).norm(dim=-1).median()
        )

    def released(self, mech: Mechanism, z: torch.Tensor, shape: Shape | None, purpose: str) -> torch.Tensor:
        gen = generator(self.seed, purpose, mech.epsilon)
        if shape is None:
            return mech.release(z, gen)
        return torch.cat([z[:, :1], shape.decode(mech.release(shape.encode(z), gen)[:, 1:])], dim=1)

    def plain(self, epsilon: float) -> dict[str, Any]:
        mech = Mechanism(epsilon, DELTA, self.features.clip)
        noisy = self.normed_output(self.released(mech, self.features.eval_z, None, "utility"))
        return {"agreement": self.agreement(noisy), "leakage": self.leakage(self.features, mech, None)}

    def shaped(self, epsilon: float) -> dict[str, Any]:
        shape, clip = self.public_shape()
        mech = Mechanism(epsilon, DELTA, clip)
        noisy = self.normed_output(self.released(mech, self.features.eval_z, shape, "utility"))
        return {
            "agreement": self.agreement(noisy),
            "leakage": self.leakage(self.features, mech, shape),
            "clip_u": clip,
        }

    def local_only(self) -> dict[str, Any]:
        clipped = Mechanism(math.inf, DELTA, self.features.clip).clip_vectors
        w = _ridge(self._own(clipped(self.features.train_z)), _private(self.clean_train))
        return {
            "agreement": self.agreement(self._rows(_apply(w, self._own(clipped(self.features.eval_z))))),
            "leakage": {"best": 0.0},
        }

    def denoised(self, epsilon: float) -> dict[str, Any]:
        mech = Mechanism(epsilon, DELTA, self.features.clip)
        own_train = self._own(mech.clip_vectors(self.features.train_z))
        own_eval = self._own(mech.clip_vectors(self.features.eval_z))
        noisy_train = _private(self.normed_output(self.released(mech, self.features.train_z, None, "fit")))
        noisy_eval = self.normed_output(self.released(mech, self.features.eval_z, None, "utility"))
        w = _ridge(torch.cat([noisy_train, own_train], 1), _private(self.clean_train))
        fixed = self._rows(_apply(w, torch.cat([_private(noisy_eval), own_eval], 1)))
        node_reads = self.argmax(noisy_eval)[:, 1:]  # what the last node computes from its own output
        return {
            "agreement": self.agreement(fixed),
            "leakage": self.leakage(self.features, mech, None),
            "last_node_reads_client_greedy": float((node_reads == self.argmax(fixed)[:, 1:]).double().mean()),
        }

    def adapted(self, epsilon: float, steps: int) -> dict[str, Any]:
        """Trains a noise-aware LoRA on a fresh copy of the client layers; leaves self.client untouched."""
        spec = self.client.spec
        features = SplitFeatures.compute(
            spec,
            self.features.model.split,
            self.tokenizer,
            self.train_ids[:1],
            self.eval_ids[:1],
            self.features.clip,
        )
        model = features.model
        mech = Mechanism(epsilon, DELTA, self.features.clip)
        trainer = ClientTrainer(model.client, AdapterConfig(lora_rank=8), seed=self.seed)
        optimizer = trainer.optimizer(lr=2e-3)
        gen = generator(self.seed, "lora", epsilon)
        for step in range(steps):
            rows = torch.randint(0, self.train_ids.shape[0], (8,), generator=gen)
            ids = self.train_ids[rows]
            with torch.no_grad():
                target = torch.log_softmax(
                    model.client.tail(model.rest(self.features.train_z[rows], positions_like(ids))).float(),
                    -1,
                )
            z = trainer.head_forward(ids).z
            noise = torch.randn(z[:, 1:].shape, generator=gen) * mech.std
            released = torch.cat([z[:, :1], mech.clip_vectors(z[:, 1:]) + noise], 1)
            logits = model.client.tail(model.rest(released, positions_like(ids))).float()
            loss = (
                torch.nn.functional.kl_div(
                    torch.log_softmax(logits, -1), target, log_target=True, reduction="batchmean"
                )
                / ids.shape[1]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 40 == 0 or step == steps - 1:
                log(f"  adapted epsilon {epsilon:g}: step {step + 1}/{steps} KL/token {loss.item():.3f}")
        adapted = dataclasses.replace(
            features,
            train_ids=self.train_ids,
            eval_ids=self.eval_ids,
            train_z=model.head(self.train_ids),
            eval_z=model.head(self.eval_ids),
        )
        noisy = self.normed_output(mech.release(adapted.eval_z, generator(self.seed, "utility", epsilon)))
        return {
            "agreement": self.agreement(noisy),
            "leakage": self.leakage(adapted, mech, None),
            "lora_steps": steps,
        }

    # ---------------------------------------------------------------- helpers

    def _own(self, clipped: torch.Tensor) -> torch.Tensor:
        return _private(clipped) / self.features.clip

    def _rows(self, flat: torch.Tensor) -> torch.Tensor:
        """[S * (T - 1), hidden] -> [S, T, hidden] with the (public, noiseless) BOS position back in front."""
        body = flat.view(self.eval_ids.shape[0], -1, flat.shape[-1])
        return torch.cat([self.clean_eval[:, :1], body], dim=1)


def _private(t: torch.Tensor) -> torch.Tensor:
    return attacks.private_vectors(t)


def _ridge(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = torch.cat([x, torch.ones(x.shape[0], 1)], 1).double()
    gram = x.T @ x + RIDGE * x.shape[0] * torch.eye(x.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, x.T @ y.double())


def _apply(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (torch.cat([x, torch.ones(x.shape[0], 1)], 1).double() @ w).float()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for i, (name, cells) in enumerate(result["mechanisms"].items()):
        xs = [c["leakage"]["best"] for c in cells]
        ys = [c["agreement"] for c in cells]
        ax.plot(xs, ys, marker="o", label=name, color=f"C{i}")
        for c, x, y in zip(cells, xs, ys, strict=True):
            ax.annotate(
                f"ε={c['epsilon']}",
                (x, y),
                textcoords="offset points",
                xytext=(5, 3),
                fontsize=6,
                color=f"C{i}",
            )
    local = result["local_only"]["agreement"]
    ax.axhline(local, color="grey", linestyle="--", label=f"local only, no route ({local:.2f})")
    ax.axhline(0.7, color="black", linewidth=0.5)
    ax.axvline(0.2, color="black", linewidth=0.5)
    ax.annotate("goal", (0.2, 0.7), textcoords="offset points", xytext=(-28, 4), fontsize=7)
    ax.set_xlabel("prompt leakage: best of nearest / learned attack's token recovery")
    ax.set_ylabel("utility: next-token agreement with the noiseless model")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{result['model']}, split {result['split']}: mechanisms vs plain DP")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", type=int, default=4)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1000.0, 300.0, 100.0, 30.0])
    parser.add_argument("--lora-steps", type=int, default=80, help="0 skips the adapted mechanism")
    parser.add_argument(
        "--lora-epsilons",
        type=float,
        nargs="+",
        default=[300.0, 100.0],
        help="epsilons the adapted mechanism is trained at (each training run costs minutes)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=RESULTS / "privacy_mechanisms.png")
    parser.add_argument("--out", type=Path, default=RESULTS / "privacy_mechanisms.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.monotonic()
    log("features and the noiseless reference")
    bench = Bench(args.split, args.seed)
    result: dict[str, Any] = {
        "model": bench.client.spec.source.path.name,
        "split": args.split,
        "delta": DELTA,
        "seed": args.seed,
        "eval_tokens": int(bench.truth.numel()),
        "attacks": ["nearest", "learned"],
        "local_only": bench.local_only(),
        "mechanisms": {"plain": [], "shaped": [], "denoised": []},
    }
    if args.lora_steps:
        result["mechanisms"]["adapted"] = []
    for epsilon in args.epsilons:
        for name, cells in result["mechanisms"].items():
            if name == "adapted" and epsilon not in args.lora_epsilons:
                continue
            log(f"{name} epsilon {epsilon:g}")
            cell = (
                bench.adapted(epsilon, args.lora_steps)
                if name == "adapted"
                else getattr(bench, name)(epsilon)
            )
            cells.append({"epsilon": epsilon, **cell})
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")  # partial results survive a crash
    result["seconds"] = round(time.monotonic() - started, 1)
    plot(result, args.plot)
    result["plot"] = (
        str(args.plot.relative_to(RESULTS.parent.parent))
        if args.plot.is_relative_to(RESULTS.parent.parent)
        else str(args.plot)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
